"""The flow: identity at init, invertibility, exact log-det, parameter counts, the fused network
kernel against plain autograd, checkpointing and precision options."""
from __future__ import annotations

import math

import pytest
import torch

from rgflow.config import ModelConfig, model_preset
from rgflow.flow import RGFlow
from rgflow.model import RGFlowModel
from rgflow.nn import ResidualMLP, Swish, WNLinear



def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.3) -> None:
    """Give every parameter (zero gains included) a random value near its scale."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if name.endswith("gain"):
                p.copy_(noise * std)
            elif name.endswith("beta") or name.endswith("weight_g"):
                p.mul_(1 + 0.2 * noise)
            else:
                p.add_(noise * 0.1)


def plain_mlp(net: ResidualMLP, x: torch.Tensor) -> torch.Tensor:
    """The spec's R, module by module, through ordinary autograd (the oracle for the fused kernel)."""
    for block in net.blocks:
        h = x
        for act, lin in zip(block.acts, block.linears):
            h = lin(act(h))
        x = (x + h) / math.sqrt(2)
    out = net.gain * x
    return torch.tanh(out) if net.final_tanh else out


# ---------------------------------------------------------------- structure and parameter counts

def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset,expected", [("celeba32", 100_647_680), ("msds", 80_518_144)])
def test_preset_parameter_counts_exact(preset, expected):
    with torch.device("meta"):
        model = RGFlowModel(model_preset(preset))
    assert count(model) == expected
    assert count(model.flow.sublayers[0].couplings[0].s) == 1_258_096
    per_sublayer = {"celeba32": [8, 8, 6, 6, 4, 4, 2, 2], "msds": [4] * 8}[preset]
    assert [len(s.couplings) for s in model.flow.sublayers] == per_sublayer


def test_tiny_parameter_count_and_structure():
    model = RGFlowModel(model_preset("tiny"))
    assert [len(s.couplings) for s in model.flow.sublayers] == [1] * 8
    # per R: 1 block of Swish(48)+WN(48→32)+Swish(32)+WN(32→32)+Swish(32)+WN(32→48), plus gain 48
    per_r = 48 + (48 * 32 + 64) + 32 + (32 * 32 + 64) + 32 + (32 * 48 + 96) + 48
    assert count(model) == 16 * per_r


def test_reference_initialisation():
    torch.manual_seed(0)
    lin = WNLinear(512, 48)
    bound = math.sqrt(3 * 2.81 / 512)
    assert lin.weight_v.abs().max() <= bound and lin.weight_v.abs().max() > 0.95 * bound
    assert torch.allclose(lin.weight(), lin.weight_v.detach(), atol=1e-6)
    assert lin.weight_g.shape == (48, 1) and not lin.bias.any()
    assert torch.equal(Swish(7).beta, torch.ones(7))
    assert not ResidualMLP(48, 16, 2, 1, True).gain.any()


# ---------------------------------------------------------------- identity at init

@pytest.mark.parametrize("preset", ["celeba32", "msds", "tiny"])
def test_identity_at_init_exact(preset):
    # every preset's structure (sub-layers, couplings, blocks); width does not change exactness
    cfg = model_preset(preset, nhidden=8, nresblocks=1) if preset != "tiny" else model_preset("tiny")
    flow = RGFlow(cfg)
    y = torch.randn(2, 3, 32, 32) * 3
    z, ld = flow(y)
    assert torch.equal(z, y) and ld.shape == (2,) and torch.equal(ld, torch.zeros(2))
    back, ild = flow.inverse(z)
    assert torch.equal(back, y) and torch.equal(ild, torch.zeros(2))


# ---------------------------------------------------------------- invertibility and log-det

@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_invertible_after_randomising(dtype, tol):
    torch.manual_seed(0)
    flow = RGFlow(model_preset("tiny", nlayers=(2,))).to(dtype)
    randomize(flow, std=0.2)
    y = torch.randn(3, 3, 32, 32, dtype=dtype, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z, ld = flow(y)
        back, ild = flow.inverse(z)
    assert (z - y).abs().max() > 0.1  # the flow is far from the identity now
    assert ld.abs().max() > 1.0
    assert (back - y).abs().max() <= tol
    assert (ld + ild).abs().max() <= tol * 100 * ld.abs().max()


@pytest.mark.parametrize("channels", [1, 3])
def test_logdet_equals_autograd_jacobian(channels):
    cfg = ModelConfig(channels=channels, size=8, kernel=4, nlayers=(2, 1), nhidden=16, nresblocks=2)
    flow = RGFlow(cfg).double()
    randomize(flow, seed=3)
    y = torch.randn(1, channels, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    d = y.numel()
    copies = y.repeat(d, 1, 1, 1).requires_grad_()  # copy i gives row i of the Jacobian
    z = flow(copies)[0].reshape(d, d)
    jac = torch.autograd.grad(z.diagonal().sum(), copies)[0].reshape(d, d)
    sign, logabsdet = torch.linalg.slogdet(jac)
    _, ld = flow(y)
    assert abs(ld.item()) > 0.5
    assert torch.allclose(ld, logabsdet.reshape(1), atol=1e-10, rtol=0)
    _, ild = flow.inverse(flow(y)[0])
    assert torch.allclose(ild, -logabsdet.reshape(1), atol=1e-10, rtol=0)


# ---------------------------------------------------------------- fused network kernel

@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("tanh", [False, True])
def test_fused_mlp_matches_plain_autograd(checkpointing, tanh):
    torch.manual_seed(0)
    net = ResidualMLP(12, 10, 3, 2, final_tanh=tanh).double()
    randomize(net, seed=4)
    x = torch.randn(7, 12, dtype=torch.float64, requires_grad=True)
    out = net(x, checkpointing=checkpointing)
    ref = plain_mlp(net, x)
    assert torch.allclose(out, ref, atol=1e-13)
    gy = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, *net.parameters()], gy)
    want = torch.autograd.grad(ref, [x, *net.parameters()], gy)
    for (name, _), a, b in zip([("x", None), *net.named_parameters()], got, want):
        assert torch.allclose(a, b, atol=1e-12), name
    # the kernel itself, on independent inputs [β, Ŵ, b]… (gradcheck perturbs them in place)
    params = [p.detach().clone().requires_grad_() for p in net.effective_params()]
    assert torch.autograd.gradcheck(
        lambda inp, *ps: net(inp, list(ps), checkpointing=checkpointing), (x, *params), eps=1e-6, atol=1e-6)


def test_checkpointing_gradients_agree():
    torch.manual_seed(0)
    a = RGFlowModel(model_preset("tiny", checkpointing=True))
    b = RGFlowModel(model_preset("tiny", checkpointing=False))
    randomize(a, seed=5)
    b.load_state_dict(a.state_dict())
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    la, lb = a.nll_per_dim(x), b.nll_per_dim(x)
    la.backward()
    lb.backward()
    assert torch.allclose(la, lb, atol=0, rtol=1e-6)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, rtol=1e-4, atol=1e-7), name


# ---------------------------------------------------------------- precision options

def _loss_and_grads(model, x):
    model.zero_grad()
    loss = model.nll_per_dim(x)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("precision,rtol", [("tf32", 1e-6), ("bf16", 3e-2)])
def test_precision_agrees_with_fp32(precision, rtol):
    base = RGFlowModel(model_preset("tiny"))
    randomize(base, seed=6)
    other = RGFlowModel(model_preset("tiny", precision=precision))
    other.load_state_dict(base.state_dict())
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    l0, g0 = _loss_and_grads(base, x)
    l1, g1 = _loss_and_grads(other, x)
    assert abs(l1 - l0) <= rtol * abs(l0)
    assert (g1 - g0).norm() <= 5 * rtol * g0.norm()
    with torch.no_grad():
        z0, ld0 = base.flow(x)
        z1, ld1 = other.flow(x)
    assert ld1.dtype == torch.float32  # log-det accumulated in float32
    assert torch.allclose(z1, z0, rtol=rtol, atol=rtol) and torch.allclose(ld1, ld0, rtol=rtol, atol=rtol * 10)


@pytest.mark.slow
def test_compiled_kernel_agrees_with_eager():
    """``model.compile``: the same kernels through torch.compile (inductor; compiling takes ~1 min on 2 cores)."""
    torch.manual_seed(0)
    net = ResidualMLP(12, 16, 2, 2, final_tanh=True)
    randomize(net, seed=4)
    x = torch.randn(10, 12, requires_grad=True)
    ref = net(x, checkpointing=True)
    got = net(x, checkpointing=True, compiled=True)
    assert torch.allclose(got, ref, atol=1e-6)
    for a, b in zip(torch.autograd.grad(got.sum(), [x, *net.parameters()]),
                    torch.autograd.grad(ref.sum(), [x, *net.parameters()])):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # the sampling path (no saved tensors), another batch size
        x2 = torch.randn(33, 12)
        assert torch.allclose(net(x2, compiled=True), net(x2), atol=1e-6)
