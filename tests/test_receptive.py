"""Receptive fields (spec §8): exact at the identity, supported on the generator's light cone, in
logit space and in image space (through the logit inverse)."""
from __future__ import annotations

import pytest
import torch

from rgflow.config import model_preset
from rgflow.geometry import level_map, patch_index
from rgflow.logit import ALPHA, from_logit
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
    rf = receptive_fields(model, 3, 1.0, torch.Generator().manual_seed(0), space="logit")
    assert sorted(rf) == [0, 1, 2, 3]
    for h, (_, i, j) in representative_latents(model.cfg).items():
        want = torch.zeros(32, 32)
        want[i, j] = 1.0
        assert rf[h].shape == (32, 32) and rf[h].dtype == torch.float32
        assert torch.equal(rf[h], want)


def test_random_flow_fields_fill_the_light_cone_and_grow_with_level():
    model = RGFlowModel(model_preset("tiny", size=16))
    randomize(model, seed=1)
    rf = receptive_fields(model, 4, 0.8, torch.Generator().manual_seed(0), chunk=3, space="logit")
    sizes = []
    for h, (_, i, j) in representative_latents(model.cfg).items():
        support = {tuple(p) for p in (rf[h] > 0).nonzero().tolist()}
        assert support == reachable(model.cfg, (i, j)), h
        sizes.append(len(support))
    assert sizes[0] == 64 < sizes[1] <= sizes[2] == 256
    # averaging: same generator seed → same map; another temperature → another map
    again = receptive_fields(model, 4, 0.8, torch.Generator().manual_seed(0), chunk=4, space="logit")
    assert torch.allclose(again[1], rf[1], rtol=1e-5)
    other = receptive_fields(model, 4, 0.3, torch.Generator().manual_seed(0), space="logit")
    assert not torch.allclose(other[1], rf[1], rtol=1e-3)


def _backward_jacobian(model, z, space):
    """Full Jacobian ``(n, d outputs, C, L, L inputs)`` of ``G`` at each sample of ``z`` by reverse
    mode (copy o of a sample yields row o), and the logit-space outputs ``y`` ``(n, C, L, L)``."""
    d = z[0].numel()
    cols, ys = [], []
    for sample in z:
        copies = sample.expand(d, *sample.shape).clone().requires_grad_()
        y = model.flow.inverse(copies)[0]
        out = (from_logit(y) if space == "image" else y).reshape(d, d)
        cols.append(torch.autograd.grad(out.diagonal().sum(), copies)[0])
        ys.append(y[0].detach())
    return torch.stack(cols), torch.stack(ys)


@pytest.mark.parametrize("space", ["logit", "image"])
def test_receptive_fields_match_a_backward_jacobian(space):
    model = RGFlowModel(model_preset("tiny", size=16)).double()
    randomize(model, seed=2)
    rf = receptive_fields(model, 2, 1.0, torch.Generator().manual_seed(3), space=space)
    z = model.prior.sample((2, 3, 16, 16), 1.0, torch.Generator().manual_seed(3), dtype=torch.float64)
    jac, _ = _backward_jacobian(model, z, space)  # (2, d, 3, 16, 16)
    for h, (c, i, j) in representative_latents(model.cfg).items():
        want = jac[:, :, c, i, j].abs().view(2, 3, 16, 16).sum(1).mean(0)
        assert want.count_nonzero() > 16
        assert torch.allclose(rf[h].double(), want, rtol=1e-5, atol=1e-7), h


def test_image_space_is_the_logit_jacobian_times_the_logit_inverse_derivative():
    """∂x/∂z = ∂y/∂z · dx/dy with dx/dy = σ'(y)/(1 − 2α) where 0 < x < 1 and 0 where clamped
    (checked against a central finite difference of from_logit), per sample and output pixel."""
    model = RGFlowModel(model_preset("tiny", size=16)).double()
    randomize(model, seed=2)
    z = model.prior.sample((2, 3, 16, 16), 1.0, torch.Generator().manual_seed(3), dtype=torch.float64)
    jac, y = _backward_jacobian(model, z, "logit")
    p = torch.sigmoid(y)
    slope = torch.where((p > ALPHA) & (p < 1 - ALPHA), p * (1 - p) / (1 - 2 * ALPHA), torch.zeros_like(p))
    eps = 1e-6
    assert torch.allclose(slope, (from_logit(y + eps) - from_logit(y - eps)) / (2 * eps), atol=1e-6)
    assert 0 < int((slope == 0).sum()) < slope.numel() // 4  # some outputs are clamped, most are not
    rf = receptive_fields(model, 2, 1.0, torch.Generator().manual_seed(3), space="image")
    logit_rf = receptive_fields(model, 2, 1.0, torch.Generator().manual_seed(3), space="logit")
    for h, (c, i, j) in representative_latents(model.cfg).items():
        column = jac[:, :, c, i, j].view(2, 3, 16, 16)
        want = (column.abs() * slope).sum(1).mean(0)
        assert torch.allclose(rf[h].double(), want, rtol=1e-5, atol=1e-7), h
        # slope ≤ 1/(4·0.9) everywhere: the image-space map is the smaller one, pixel by pixel
        assert bool((rf[h] <= logit_rf[h] / (4 * (1 - 2 * ALPHA)) + 1e-6).all()) and rf[h].sum() > 0


def test_identity_flow_in_image_space_is_the_logit_inverse_slope_at_the_latent():
    model = RGFlowModel(model_preset("tiny"))
    rf = receptive_fields(model, 3, 1.0, torch.Generator().manual_seed(0))  # default: image space
    z = model.prior.sample((3, 3, 32, 32), 1.0, torch.Generator().manual_seed(0))
    for h, (c, i, j) in representative_latents(model.cfg).items():
        p = torch.sigmoid(z[:, c, i, j])
        slope = torch.where((p > ALPHA) & (p < 1 - ALPHA), p * (1 - p) / (1 - 2 * ALPHA), torch.zeros_like(p))
        want = torch.zeros(32, 32)
        want[i, j] = slope.mean()
        assert torch.allclose(rf[h], want, rtol=1e-6, atol=0), h


def test_bad_sample_count_and_space():
    with pytest.raises(ValueError, match="n_samples"):
        receptive_fields(RGFlowModel(model_preset("tiny")), 0)
    with pytest.raises(ValueError, match="space='pixel': must be one of 'image', 'logit'"):
        receptive_fields(RGFlowModel(model_preset("tiny")), 1, space="pixel")
