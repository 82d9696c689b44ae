"""Receptive fields (spec §8): exact at the identity, supported on the generator's light cone."""
from __future__ import annotations

import pytest
import torch

from rgflow.config import model_preset
from rgflow.geometry import level_map, patch_index
from rgflow.model import RGFlowModel
from rgflow.receptive import receptive_fields, representative_latents

from tests.test_flow import randomize


def reachable(cfg, site) -> set[tuple[int, int]]:
    """Pixels that latent ``site`` can influence through the generator (sub-layers 2H−1 … 0):
    a coupling mixes every pixel of a patch, so a patch touching the set adds all its pixels."""
    size = cfg.size
    reach = {site}
    for k in reversed(range(2 * cfg.levels)):
        for patch in patch_index(k, cfg)[:, : cfg.kernel**2].tolist():  # channel 0 positions
            pix = {(p // size, p % size) for p in patch}
            if pix & reach:
                reach |= pix
    return reach


def test_representative_latents_are_central_and_of_their_level():
    cfg = model_preset("tiny")
    sites = representative_latents(cfg)
    lm = level_map(cfg)
    assert sites == {0: (0, 15, 16), 1: (0, 14, 16), 2: (0, 12, 16), 3: (0, 16, 16)}
    assert all(lm[i, j] == h for h, (_, i, j) in sites.items())


def test_identity_flow_gives_a_unit_delta():
    model = RGFlowModel(model_preset("tiny"))
    rf = receptive_fields(model, 3, 1.0, torch.Generator().manual_seed(0))
    assert sorted(rf) == [0, 1, 2, 3]
    for h, (_, i, j) in representative_latents(model.cfg).items():
        want = torch.zeros(32, 32)
        want[i, j] = 1.0
        assert rf[h].shape == (32, 32) and rf[h].dtype == torch.float32
        assert torch.equal(rf[h], want)


def test_random_flow_fields_fill_the_light_cone_and_grow_with_level():
    model = RGFlowModel(model_preset("tiny", size=16))
    randomize(model, seed=1)
    rf = receptive_fields(model, 4, 0.8, torch.Generator().manual_seed(0), chunk=3)
    sizes = []
    for h, (_, i, j) in representative_latents(model.cfg).items():
        support = {tuple(p) for p in (rf[h] > 0).nonzero().tolist()}
        assert support == reachable(model.cfg, (i, j)), h
        sizes.append(len(support))
    assert sizes[0] == 64 < sizes[1] <= sizes[2] == 256
    # averaging: same generator seed → same map; another temperature → another map
    again = receptive_fields(model, 4, 0.8, torch.Generator().manual_seed(0), chunk=4)
    assert torch.allclose(again[1], rf[1], rtol=1e-5)
    other = receptive_fields(model, 4, 0.3, torch.Generator().manual_seed(0))
    assert not torch.allclose(other[1], rf[1], rtol=1e-3)


def test_receptive_fields_match_a_backward_jacobian():
    model = RGFlowModel(model_preset("tiny", size=16)).double()
    randomize(model, seed=2)
    rf = receptive_fields(model, 2, 1.0, torch.Generator().manual_seed(3))
    z = model.prior.sample((2, 3, 16, 16), 1.0, torch.Generator().manual_seed(3), dtype=torch.float64)
    d = z[0].numel()
    cols = []
    for sample in z:  # full Jacobian by reverse mode: copy o of the sample yields row o
        copies = sample.expand(d, 3, 16, 16).clone().requires_grad_()
        y = model.flow.inverse(copies)[0].reshape(d, d)
        cols.append(torch.autograd.grad(y.diagonal().sum(), copies)[0])  # (d outputs, 3, 16, 16 inputs)
    jac = torch.stack(cols)  # (2, d, 3, 16, 16)
    for h, (c, i, j) in representative_latents(model.cfg).items():
        want = jac[:, :, c, i, j].abs().view(2, 3, 16, 16).sum(1).mean(0)
        assert want.count_nonzero() > 16
        assert torch.allclose(rf[h].double(), want, rtol=1e-5, atol=1e-7), h


def test_bad_sample_count():
    with pytest.raises(ValueError, match="n_samples"):
        receptive_fields(RGFlowModel(model_preset("tiny")), 0)
