"""Priors (spec §5) against torch.distributions, and their samples' moments."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Laplace, Normal

from rgflow.config import PriorConfig
from rgflow.priors import GaussianPrior, LaplacePrior, make_prior

TEMPS = [0.5, 1.0, 1.7]


def reference_dist(kind: str, convention: str, t: float):
    zero = torch.tensor(0.0, dtype=torch.float64)
    if kind == "gaussian":
        return Normal(zero, zero + t)
    return Laplace(zero, zero + (t / math.sqrt(2) if convention == "reference" else t))


@pytest.mark.parametrize("t", TEMPS)
@pytest.mark.parametrize("kind,convention", [("gaussian", "reference"), ("laplace", "reference"), ("laplace", "seed")])
def test_log_prob_matches_torch_distributions(kind, convention, t):
    prior = make_prior(PriorConfig(kind=kind, temperature=t, laplace_scale=convention))
    z = torch.randn(5, 3, 4, 4, dtype=torch.float64) * 2
    want = reference_dist(kind, convention, t).log_prob(z).reshape(5, -1).sum(1)
    got = prior.log_prob(z)
    assert got.shape == (5,)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-10)


def test_make_prior_kinds_and_scale():
    assert isinstance(make_prior(PriorConfig(kind="gaussian")), GaussianPrior)
    lap = make_prior(PriorConfig(kind="laplace", temperature=2.0))
    assert isinstance(lap, LaplacePrior) and lap.scale == pytest.approx(2 / math.sqrt(2))
    assert make_prior(PriorConfig(kind="laplace", temperature=2.0, laplace_scale="seed")).scale == 2.0
    assert list(lap.parameters()) == []  # not learnable


@pytest.mark.parametrize("t", [0.75, 1.3])
@pytest.mark.parametrize("kind,convention", [("gaussian", "reference"), ("laplace", "reference"), ("laplace", "seed")])
def test_sample_moments(kind, convention, t):
    prior = make_prior(PriorConfig(kind=kind, temperature=1.0, laplace_scale=convention))
    z = prior.sample((400_000,), temperature=t, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dist = reference_dist(kind, convention, t)
    assert abs(z.mean().item()) < 0.01 * t
    assert z.var().item() == pytest.approx(dist.variance.item(), rel=0.02)
    mean_abs = dist.scale.item() if kind == "laplace" else t * math.sqrt(2 / math.pi)
    assert z.abs().mean().item() == pytest.approx(mean_abs, rel=0.01)
    # the density itself: the empirical mean log-density matches the entropy
    assert -dist.log_prob(z).mean().item() == pytest.approx(dist.entropy().item(), abs=0.01)


def test_sample_temperature_default_generator_and_shape():
    prior = make_prior(PriorConfig(kind="laplace", temperature=0.5))
    a = prior.sample((2, 3, 8, 8), generator=torch.Generator().manual_seed(3))
    b = prior.sample((2, 3, 8, 8), temperature=0.5, generator=torch.Generator().manual_seed(3))
    c = prior.sample((2, 3, 8, 8), temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert a.shape == (2, 3, 8, 8) and a.dtype == torch.float32
    assert torch.equal(a, b)  # None = the prior's own temperature
    assert torch.allclose(c, 2 * a)  # temperature multiplies the scale
    assert torch.isfinite(prior.sample((100_000,), generator=torch.Generator().manual_seed(1))).all()
    with pytest.raises(ValueError, match="temperature"):
        prior.sample((2,), temperature=0.0)
