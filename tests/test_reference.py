"""Import/export of the authors' checkpoint layout (spec §10), checked against an independent
re-implementation of the reference forward pass that reads the raw state dict."""
from __future__ import annotations

import math

import pytest
import torch

from rgflow.config import ModelConfig, PriorConfig
from rgflow.logit import to_logit
from rgflow.model import RGFlowModel
from rgflow.reference import ReferenceLayoutError, export_reference_state, import_reference_state

CFG = ModelConfig(channels=3, size=8, kernel=4, nlayers=(2, 1), nhidden=16, nmlp=2, nresblocks=2)
PRIOR = PriorConfig(kind="laplace", temperature=1.0)


def random_reference_state(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A reference-layout flow state dict with random values, built from the spec's key list."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.3, offset=0.0):
        return (torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset)

    f, hid, m, c = cfg.patch_dim, cfg.nhidden, cfg.kernel, cfg.channels
    widths = [f] + [hid] * cfg.nmlp + [f]
    left = torch.zeros(c, m, m, dtype=torch.float64)
    left[:, ::2, ::2] = 1
    left[:, 1::2, 1::2] = 1
    sd = {"prior.scale": torch.tensor(1 / math.sqrt(2), dtype=torch.float64)}
    for k, n in enumerate(cfg.couplings_per_sublayer):
        sd[f"layers.{k}.mask_left"] = left.clone()
        sd[f"layers.{k}.mask_right"] = 1 - left
        for st in "st":
            for j in range(n):
                pre = f"layers.{k}.{st}_layers.{j}"
                for r in range(cfg.nresblocks):
                    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
                        sd[f"{pre}.res_blocks.{r}.{2 * i}.scale"] = rnd(a, scale=0.2, offset=1.0)
                        sd[f"{pre}.res_blocks.{r}.{2 * i + 1}.weight_v"] = rnd(b, a, scale=math.sqrt(3 / a))
                        sd[f"{pre}.res_blocks.{r}.{2 * i + 1}.weight_g"] = rnd(b, 1, scale=0.2, offset=1.0)
                        sd[f"{pre}.res_blocks.{r}.{2 * i + 1}.bias"] = rnd(b, scale=0.1)
                sd[f"{pre}.scale.scale"] = rnd(f, scale=0.3)
                sd[f"{pre}.scale.saved_mean"] = torch.zeros(f, dtype=torch.float64)
                sd[f"{pre}.scale.saved_var"] = torch.ones(f, dtype=torch.float64)
    return sd


# ---------------------------------------------------------------- the reference forward pass

def ref_indices(size, m, k):
    """Row/column index arrays (P, m²) of sub-layer k, as the reference's MERA index builder."""
    h = k // 2
    d, s = 2**h, m * 2**h
    o = 0 if k % 2 == 0 else s // 2
    n = size // s
    rows = torch.tensor([[(o + d * a + s * p) % size for a in range(m) for b in range(m)] for p in range(n) for q in range(n)])
    cols = torch.tensor([[(o + d * b + s * q) % size for a in range(m) for b in range(m)] for p in range(n) for q in range(n)])
    return rows, cols


def ref_resnet(sd, pre, nres, nlin, x, tanh):
    shape = x.shape
    x = x.reshape(shape[0], -1)
    for r in range(nres):
        h = x
        for i in range(nlin):
            beta = sd[f"{pre}.res_blocks.{r}.{2 * i}.scale"]
            h = h * torch.sigmoid(beta * h)
            v = sd[f"{pre}.res_blocks.{r}.{2 * i + 1}.weight_v"]
            gw = sd[f"{pre}.res_blocks.{r}.{2 * i + 1}.weight_g"]
            w = gw * v / v.norm(dim=1, keepdim=True)
            h = h @ w.t() + sd[f"{pre}.res_blocks.{r}.{2 * i + 1}.bias"]
        x = (x + h) / math.sqrt(2)
    x = sd[f"{pre}.scale.scale"] * x
    if tanh:
        x = torch.tanh(x)
    return x.view(shape)


def ref_log_prob(sd, cfg: ModelConfig, x_tilde: torch.Tensor) -> torch.Tensor:
    """log p(x̃) per image as the reference code computes it, from the raw state dict alone."""
    y, ld_logit = to_logit(x_tilde)
    b, c, size, m = y.shape[0], cfg.channels, cfg.size, cfg.kernel
    x = y
    ldj = torch.zeros(b, dtype=y.dtype)
    for k, n in enumerate(cfg.couplings_per_sublayer):
        ri, ci = ref_indices(size, m, k)
        p = x[:, :, ri, ci]  # (B, C, P, m²)
        p = p.permute(0, 2, 1, 3).reshape(-1, c, m, m)
        left, right = sd[f"layers.{k}.mask_left"], sd[f"layers.{k}.mask_right"]
        for j in range(n):
            for mask, inv in ((left, right), (right, left)):
                s_pre, t_pre = f"layers.{k}.s_layers.{j}", f"layers.{k}.t_layers.{j}"
                mx = mask * p
                s = inv * ref_resnet(sd, s_pre, cfg.nresblocks, cfg.nmlp + 1, mx, True)
                t = inv * ref_resnet(sd, t_pre, cfg.nresblocks, cfg.nmlp + 1, mx, False)
                p = mx + inv * (p * torch.exp(s) + t)
                ldj = ldj + s.reshape(b, -1).sum(1)
        p = p.reshape(b, -1, c, m * m).permute(0, 2, 1, 3)
        x = x.clone()
        x[:, :, ri, ci] = p
    scale = sd["prior.scale"]
    log_pz = (-x.abs() / scale - torch.log(2 * scale)).reshape(b, -1).sum(1)
    return log_pz + ldj + ld_logit


# ---------------------------------------------------------------- tests

def x_batch(n=3, dtype=torch.float64):
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(7), dtype=dtype)


def test_import_computes_the_reference_function():
    sd = random_reference_state(CFG)
    model = RGFlowModel(CFG, PRIOR).double()
    import_reference_state(model, {"flow": sd, "optimizer": {"state": {}}})
    x = x_batch()
    want = ref_log_prob(sd, CFG, x)
    got = model.log_prob(x)
    assert (got - ref_log_prob(random_reference_state(CFG, seed=1), CFG, x)).abs().min() > 1e-3  # weights matter
    assert torch.allclose(got, want, rtol=0, atol=1e-9)
    # float32: same function to round-off
    model32 = RGFlowModel(CFG, PRIOR)
    import_reference_state(model32, {k: v.float() for k, v in sd.items()})
    assert torch.allclose(model32.log_prob(x.float()).double(), want, rtol=1e-5)


def test_export_reproduces_the_reference_layout_and_roundtrips():
    sd = random_reference_state(CFG, seed=2)
    model = RGFlowModel(CFG, PRIOR).double()
    import_reference_state(model, sd)
    out = export_reference_state(model)
    assert set(out) == set(sd)
    for key, value in sd.items():
        assert out[key].shape == value.shape, key
        assert torch.allclose(out[key].double(), value), key
    fresh = RGFlowModel(CFG, PRIOR).double()
    import_reference_state(fresh, out)
    x = x_batch()
    assert torch.equal(fresh.log_prob(x), model.log_prob(x))


def test_export_of_a_fresh_model_is_importable_and_identity():
    model = RGFlowModel(CFG, PriorConfig(kind="gaussian", temperature=0.8))
    out = export_reference_state(model)
    assert out["prior.scale"].item() == pytest.approx(0.8)
    assert all(not out[k].any() for k in out if k.endswith("scale.scale"))  # zero gains
    other = RGFlowModel(CFG, PriorConfig(kind="gaussian", temperature=0.8))
    import_reference_state(other, out)
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mutate,match", [
    (lambda sd: sd.update({"layers.0.s_layers.0.res_blocks.0.9.bias": torch.zeros(3)}), r"layers\.0\.s_layers\.0\.res_blocks\.0\.9\.bias: unexpected"),
    (lambda sd: sd.update({"layers.0.s_layers.5.scale.scale": torch.zeros(48)}), r"layers\.0\.s_layers\.5\.scale\.scale: unexpected"),
    (lambda sd: sd.pop("layers.3.t_layers.0.res_blocks.1.3.weight_g"), r"layers\.3\.t_layers\.0\.res_blocks\.1\.3\.weight_g: missing"),
    (lambda sd: sd.pop("layers.2.mask_left"), r"layers\.2\.mask_left: missing"),
    (lambda sd: sd.update({"layers.1.mask_left": 1 - sd["layers.1.mask_left"]}), r"layers\.1\.mask_left: mask differs"),
    (lambda sd: sd.update({"layers.0.s_layers.0.res_blocks.0.1.weight_v": torch.zeros(17, 48)}), r"weight_v: shape \(17, 48\)"),
    (lambda sd: sd.update({"prior.scale": torch.tensor(1.0)}), r"prior\.scale: checkpoint has 1 .*laplace"),
])
def test_bad_state_dicts_name_the_key(mutate, match):
    sd = random_reference_state(CFG)
    mutate(sd)
    model = RGFlowModel(CFG, PRIOR).double()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ReferenceLayoutError, match=match):
        import_reference_state(model, sd)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # nothing half-loaded
