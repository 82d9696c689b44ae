"""Dequantisation, the logit bijector, log-likelihood, bits per dim and sampling (spec §5–§6)."""
from __future__ import annotations

import math

import pytest
import torch

from rgflow.config import PriorConfig, model_preset
from rgflow.geometry import level_map
from rgflow.logit import dequantize, from_logit, to_logit
from rgflow.model import RGFlowModel, bits_per_dim


def uniform_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- dequantise and logit

def test_dequantize_range_determinism_and_no_mutation():
    x = uniform_images(4)
    before = x.clone()
    a = dequantize(x, torch.Generator().manual_seed(1))
    b = dequantize(x, torch.Generator().manual_seed(1))
    c = dequantize(x, torch.Generator().manual_seed(2))
    assert torch.equal(x, before)
    assert a.dtype == torch.float32 and a.shape == x.shape and a.device == x.device
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() < 1
    assert torch.equal(torch.floor(a * 256).to(torch.uint8), x)  # noise stays inside its bin
    frac = a * 256 - x
    assert abs(frac.mean().item() - 0.5) < 0.01  # U[0, 1) noise
    with pytest.raises(TypeError, match="uint8"):
        dequantize(x.float(), torch.Generator())


def test_logit_roundtrip_and_logdet_by_autograd():
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    before = x.detach().clone()
    y, ld = to_logit(x)
    assert torch.equal(x.detach(), before)
    assert torch.allclose(from_logit(y), x, atol=1e-12)
    # the Jacobian is diagonal: its log-det is the sum of log ∂y_d/∂x_d
    dydx = torch.autograd.grad(y.sum(), x)[0]
    assert torch.allclose(ld, dydx.log().reshape(3, -1).sum(1), atol=1e-9)
    p = 0.05 + 0.9 * before
    assert torch.allclose(y, torch.log(p / (1 - p)), atol=1e-12)
    assert from_logit(torch.tensor([-50.0, 50.0])).tolist() == [0.0, 1.0]  # display clamp


def test_bits_per_dim_formula():
    assert bits_per_dim(torch.tensor([0.0]), 3072).item() == pytest.approx(8.0)  # the log 256 term
    lp = torch.tensor([-3072 * math.log(2)])  # 1 bit per dim of density
    assert bits_per_dim(lp, 3072).item() == pytest.approx(9.0)


# ---------------------------------------------------------------- likelihood of the identity flow

def closed_form_log_prob(x: torch.Tensor, kind: str, t: float) -> torch.Tensor:
    """log p(x̃) of the identity flow, per image: Σ_d [log p_Z(y_d) + log 0.9 − log p_d − log(1 − p_d)]."""
    x = x.double()
    p = 0.05 + 0.9 * x
    y = torch.log(p) - torch.log(1 - p)
    if kind == "laplace":
        b = t / math.sqrt(2)
        log_pz = -y.abs() / b - math.log(2 * b)
    else:
        log_pz = -0.5 * (y / t) ** 2 - math.log(t) - 0.5 * math.log(2 * math.pi)
    return (log_pz + math.log(0.9) - torch.log(p) - torch.log(1 - p)).reshape(x.shape[0], -1).sum(1)


@pytest.mark.parametrize("kind,t", [("laplace", 1.0), ("laplace", 0.6), ("gaussian", 1.0), ("gaussian", 1.4)])
def test_identity_flow_log_prob_equals_closed_form(kind, t):
    model = RGFlowModel(model_preset("tiny"), PriorConfig(kind=kind, temperature=t))
    x = dequantize(uniform_images(3), torch.Generator().manual_seed(0))
    want = closed_form_log_prob(x, kind, t)
    got = model.log_prob(x)
    assert got.shape == (3,)
    assert torch.allclose(got.double(), want, rtol=1e-5)
    assert torch.allclose(model.bpd(x).double(), (-want / 3072 + math.log(256)) / math.log(2), rtol=1e-5)
    assert model.nll_per_dim(x).item() == pytest.approx(-want.mean().item() / 3072, rel=1e-5)


def expected_laplace_bpd_on_uniform_images() -> float:
    """E[BPD] of the identity flow + Laplace(T=1) prior when x̃ ~ U[0, 1) per dim, in closed form.

    With p = 0.05 + 0.9x̃ ~ U[0.05, 0.95], b = 1/√2, F(p) = p log p + (1−p) log(1−p) and
    G(p) = p log p − p:  E|logit p| = 2(F(0.95) − F(0.5))/0.9,
    E[log p + log(1−p)] = 2(G(0.95) − G(0.05))/0.9, and per dim
    E[−log p(x̃)] = E|y|/b + log 2b − log 0.9 + E[log p + log(1 − p)].
    """
    def f(p):
        return p * math.log(p) + (1 - p) * math.log(1 - p)

    def g(p):
        return p * math.log(p) - p

    b = 1 / math.sqrt(2)
    e_abs_y = 2 * (f(0.95) - f(0.5)) / 0.9
    e_log = 2 * (g(0.95) - g(0.05)) / 0.9
    nll = e_abs_y / b + math.log(2 * b) - math.log(0.9) + e_log
    return (nll + math.log(256)) / math.log(2)


def test_identity_flow_bpd_on_uniform_images_is_8_33():
    expected = expected_laplace_bpd_on_uniform_images()
    assert expected == pytest.approx(8.333, abs=0.001)
    model = RGFlowModel(model_preset("tiny"), PriorConfig(kind="laplace"))
    x = dequantize(uniform_images(32, seed=5), torch.Generator().manual_seed(5))
    assert model.bpd(x).mean().item() == pytest.approx(expected, abs=0.01)


def test_log_prob_is_differentiable_and_does_not_mutate():
    model = RGFlowModel(model_preset("tiny"))
    x = dequantize(uniform_images(2), torch.Generator().manual_seed(0))
    before = x.clone()
    loss = model.nll_per_dim(x)
    loss.backward()
    assert torch.equal(x, before)
    gains = [p.grad for n, p in model.named_parameters() if n.endswith("gain")]
    assert all(g is not None for g in gains) and any(g.abs().sum() > 0 for g in gains)


# ---------------------------------------------------------------- sampling

def test_sample_shape_range_and_determinism():
    model = RGFlowModel(model_preset("tiny"))
    a = model.sample(5, 0.75, generator=torch.Generator().manual_seed(0))
    b = model.sample(5, 0.75, generator=torch.Generator().manual_seed(0))
    assert a.shape == (5, 3, 32, 32) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1 and not a.requires_grad
    # identity flow at init: the image is from_logit of a prior draw at that temperature
    z = model.prior.sample((5, 3, 32, 32), 0.75, torch.Generator().manual_seed(0))
    assert torch.equal(a, from_logit(z))


def test_sample_mixed_redraws_only_coarse_levels():
    model = RGFlowModel(model_preset("tiny"))
    level = 2
    img = model.sample_mixed(4, t_low=1e-6, t_high=1.0, level=level, generator=torch.Generator().manual_seed(0))
    coarse = (level_map(model.cfg) >= level).expand_as(img)
    dev = (img - 0.5).abs()  # from_logit(0) = 0.5: a latent at T ≈ 0 displays as 0.5
    assert dev[~coarse].max() < 1e-5
    assert dev[coarse].mean() > 0.05
    with pytest.raises(ValueError, match="level"):
        model.sample_mixed(1, 0.5, 1.0, level=4)
