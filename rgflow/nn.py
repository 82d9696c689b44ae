"""Building blocks of the coupling networks (spec §4): Swish(β), weight-normalised Linear, and the
residual MLP ``R`` with its zero-initialised output gain.

The residual MLP runs through one fused autograd function (:class:`_ResidualMLPFunction`) with a
hand-written backward. Compared with module-by-module autograd it

* saves only what the backward needs: the stream entering each residual block and the hidden
  pre-activations (all of them, or — with ``checkpointing`` — only those produced by the
  ``nhidden×nhidden`` layers, recomputing the cheap first ``C·m²→nhidden`` layer and every
  element-wise op in the backward: ≈3 % more FLOPs for ≈half the activation memory);
* fuses bias additions into the GEMMs (``addmm``) and recomputes Swish sigmoids instead of
  storing them;
* receives the weight-normalised matrices from the caller, so weight norm runs once per forward
  per network, not once per use (each network is used by both half-steps of its coupling).

Shapes: every network maps ``(N, F)`` → ``(N, F)`` with ``F = C·m²`` and ``N = B·patches``.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator, NamedTuple, Sequence

import torch
from torch import nn

SWISH_GAIN = 2.81  # the reference initialisation's gain for Swish
INV_SQRT2 = 1.0 / math.sqrt(2.0)
_PLAIN = contextvars.ContextVar("rgflow_plain_autograd", default=False)


@contextlib.contextmanager
def plain_autograd() -> Iterator[None]:
    """Inside the block, networks run as ordinary differentiable torch ops instead of the fused
    kernel: slower and heavier in memory, but supports forward-mode AD and higher derivatives
    (used by ``rgflow.receptive``)."""
    token = _PLAIN.set(True)
    try:
        yield
    finally:
        _PLAIN.reset(token)


class Swish(nn.Module):
    """``x · sigmoid(β ⊙ x)`` with a learnable per-feature ``β`` (initialised to 1)."""

    def __init__(self, features: int):
        super().__init__()
        self.beta = nn.Parameter(torch.ones(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.beta * x)


class WNLinear(nn.Module):
    """Weight-normalised Linear: ``W = g ⊙ v / ‖v‖`` per output row, reference initialisation.

    ``v ~ U(−b, b)`` with ``b = sqrt(3 · 2.81 / fan_in)``, ``g`` = the row norms of ``v`` (so ``W = v``
    at initialisation), zero bias. Parameters: ``weight_v (out, in)``, ``weight_g (out, 1)``,
    ``bias (out,)``.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        bound = math.sqrt(3.0 * SWISH_GAIN / in_features)
        v = torch.empty(out_features, in_features).uniform_(-bound, bound)
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(v.norm(dim=1, keepdim=True))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def weight(self) -> torch.Tensor:
        """The effective matrix ``(out, in)`` (differentiable in ``v`` and ``g``)."""
        return torch._weight_norm(self.weight_v, self.weight_g, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight().t())


class ResidualBlock(nn.Module):
    """Pre-activation block ``Swish → WNLinear → … → Swish → WNLinear`` over ``widths``."""

    def __init__(self, widths: Sequence[int]):
        super().__init__()
        self.acts = nn.ModuleList(Swish(w) for w in widths[:-1])
        self.linears = nn.ModuleList(WNLinear(a, b) for a, b in zip(widths[:-1], widths[1:]))


class ResidualMLP(nn.Module):
    """``R`` followed by the output gain ``g`` (zero at init) and optionally ``tanh`` (spec §3–§4).

    ``x ← (x + block(x)) / √2`` for each of ``nresblocks`` blocks with widths
    ``[F] + [nhidden]·nmlp + [F]``; output ``tanh(g ⊙ x)`` (S networks) or ``g ⊙ x`` (T networks).
    """

    def __init__(self, features: int, nhidden: int, nmlp: int, nresblocks: int, final_tanh: bool):
        super().__init__()
        widths = [features] + [nhidden] * nmlp + [features]
        self.blocks = nn.ModuleList(ResidualBlock(widths) for _ in range(nresblocks))
        self.gain = nn.Parameter(torch.zeros(features))
        self.final_tanh = final_tanh
        self.nlayers = nmlp + 1

    def effective_params(self) -> list[torch.Tensor]:
        """Flat list ``[β, W, b]`` per layer, block-major, with ``W`` weight-normalised (once)."""
        out: list[torch.Tensor] = []
        for block in self.blocks:
            for act, lin in zip(block.acts, block.linears):
                out += [act.beta, lin.weight(), lin.bias]
        return out

    def forward(self, x: torch.Tensor, params: list[torch.Tensor] | None = None,
                checkpointing: bool = False, precision: str = "fp32", compiled: bool = False) -> torch.Tensor:
        """``(N, F)`` → ``(N, F)``. ``params`` from :meth:`effective_params` (computed here if ``None``)."""
        params = self.effective_params() if params is None else params
        spec = _Spec(self.nlayers, self.final_tanh, not checkpointing, precision, compiled)
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or self.gain.requires_grad or any(p.requires_grad for p in params))
        if _PLAIN.get():
            with gemm_precision(precision):
                return _forward_impl(x, self.gain, params, spec, False)[0]
        if not needs_grad:
            with gemm_precision(precision):
                return _impl(compiled, "forward")(x, self.gain, params, spec, False)[0]
        return _ResidualMLPFunction.apply(x, self.gain, spec, *params)


class _Spec(NamedTuple):
    """Static description of one network call (hashable, not a tensor)."""

    nlayers: int
    final_tanh: bool
    keep_all: bool  # keep every hidden pre-activation (no recomputation in the backward)
    precision: str
    compiled: bool


@contextlib.contextmanager
def gemm_precision(precision: str) -> Iterator[None]:
    """Allow TF32 GEMMs on CUDA inside the block when ``precision == 'tf32'`` (no-op otherwise)."""
    if precision != "tf32":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _linear(a: torch.Tensor, w: torch.Tensor, b: torch.Tensor, precision: str) -> torch.Tensor:
    """``a @ wᵀ + b``; with ``bf16`` the product runs in bfloat16 and is returned in ``a``'s dtype."""
    if precision == "bf16":
        return torch.mm(a.to(torch.bfloat16), w.to(torch.bfloat16).t()).to(a.dtype).add_(b)
    return torch.addmm(b, a, w.t())


def _mm(a: torch.Tensor, b: torch.Tensor, precision: str) -> torch.Tensor:
    if precision == "bf16":
        return torch.mm(a.to(torch.bfloat16), b.to(torch.bfloat16)).to(a.dtype)
    return torch.mm(a, b)


def _forward_impl(x: torch.Tensor, gain: torch.Tensor, params: list[torch.Tensor], spec: _Spec, save: bool):
    """Forward pass. Returns ``(y, saved)``; ``saved`` (when ``save``) lists, per block, the stream
    entering it and the kept hidden pre-activations, then the pre-gain stream."""
    nl, prec = spec.nlayers, spec.precision
    saved: list[torch.Tensor] = []
    stream = x
    for r in range(len(params) // (3 * nl)):
        if save:
            saved.append(stream)
        u = stream
        for i in range(nl):
            beta, w, b = params[3 * (r * nl + i): 3 * (r * nl + i) + 3]
            a = u * torch.sigmoid(u * beta)
            u = _linear(a, w, b, prec)
            if save and i < nl - 1 and (spec.keep_all or i >= 1):
                saved.append(u)
        stream = (stream + u).mul_(INV_SQRT2)
    y = gain * stream
    if spec.final_tanh:
        y = torch.tanh(y)
    if save:
        saved.append(stream)
    return y, saved


def _backward_impl(gy: torch.Tensor, y: torch.Tensor, gain: torch.Tensor, params: list[torch.Tensor],
                   saved: list[torch.Tensor], spec: _Spec):
    """Gradients ``(gx, g_gain, [gβ, gW, gb] per layer)`` from the tensors saved by the forward."""
    nl, prec = spec.nlayers, spec.precision
    nblocks = len(params) // (3 * nl)
    kept = (nl - 1) if spec.keep_all else max(nl - 2, 0)  # hidden pre-activations kept per block
    pre = saved[-1]
    g = gy * (1.0 - y * y) if spec.final_tanh else gy
    g_gain = (g * pre).sum(0)
    g = g * gain
    grads: list[torch.Tensor] = [gy] * len(params)  # placeholders, all overwritten below
    for r in reversed(range(nblocks)):
        base = r * (1 + kept)
        us = [saved[base]]
        if not spec.keep_all and nl > 1:
            beta, w, b = params[3 * r * nl: 3 * r * nl + 3]
            u0 = us[0]
            us.append(_linear(u0 * torch.sigmoid(u0 * beta), w, b, prec))
        us += saved[base + 1: base + 1 + kept]
        go = g * INV_SQRT2
        gh = go
        for i in reversed(range(nl)):
            j = 3 * (r * nl + i)
            beta, w = params[j], params[j + 1]
            u = us[i]
            sig = torch.sigmoid(u * beta)
            grads[j + 1] = _mm(gh.t(), u * sig, prec)
            grads[j + 2] = gh.sum(0)
            ga = _mm(gh, w, prec)
            t = (1.0 - sig).mul_(sig).mul_(u)  # u·σ(1−σ)
            grads[j] = (ga * t).mul_(u).sum(0)
            gh = t.mul_(beta).add_(sig).mul_(ga)  # ∂a/∂u = σ + β·u·σ(1−σ)
        g = go + gh
    return g, g_gain, grads


_COMPILED: dict[str, object] = {}


def _impl(compiled: bool, which: str):
    """The forward/backward kernel, optionally through ``torch.compile`` (compiled once, shared)."""
    fn = _forward_impl if which == "forward" else _backward_impl
    if not compiled:
        return fn
    if which not in _COMPILED:
        _COMPILED[which] = torch.compile(fn, dynamic=True)
    return _COMPILED[which]


class _ResidualMLPFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gain, spec, *params):
        with gemm_precision(spec.precision):
            y, saved = _impl(spec.compiled, "forward")(x, gain, list(params), spec, True)
        ctx.spec = spec
        ctx.n_saved = len(saved)
        ctx.save_for_backward(y, gain, *saved, *params)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        y, gain, *rest = ctx.saved_tensors
        saved, params = rest[: ctx.n_saved], rest[ctx.n_saved:]
        with gemm_precision(ctx.spec.precision):
            gx, g_gain, grads = _impl(ctx.spec.compiled, "backward")(gy.contiguous(), y, gain, list(params), list(saved), ctx.spec)
        return (gx, g_gain, None, *grads)


__all__ = ["Swish", "WNLinear", "ResidualBlock", "ResidualMLP", "gemm_precision", "plain_autograd"]
