"""Building blocks of the coupling networks (spec §4): Swish(β), weight-normalised Linear, and the
residual MLP ``R`` with its zero-initialised output gain.

The residual MLP runs through one fused autograd function (:class:`_ResidualMLPFunction`) with a
hand-written backward. Compared with module-by-module autograd it

* saves only what the backward needs. Without ``checkpointing``: the scaled input and the output
  of every Swish, nothing is recomputed. With ``checkpointing``: only the Swish inputs, and not
  the output of the cheap first ``C·m²→nhidden`` layer; the backward recomputes that layer (≈3 %
  more FLOPs) and the Swish outputs, for ≈¼ of the activation memory. It does not keep the folded
  matrices either (:class:`_RefoldingMLPFunction` folds them again in the backward);
* folds every Swish ``β`` into its neighbouring matrices (see :meth:`ResidualMLP.effective_params`),
  so a layer is one ``addmm`` (bias fused) and one ``silu``, in place where its input is not kept;
* otherwise receives the folded, weight-normalised matrices from the caller, so weight norm runs
  once per forward per network, not once per use (each network is used by both half-steps of its
  coupling).

Shapes: every network maps ``(N, F)`` → ``(N, F)`` with ``F = C·m²`` and ``N = B·patches``.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
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
        """Flat list, per block, ``[β₀, Ŵ₀, b̂₀, …, Ŵₙ₋₁, b̂ₙ₋₁]``, differentiable in the parameters.

        Every Swish ``u·σ(βu) = silu(βu)/β`` is split across its neighbours: the ``1/β`` is folded
        into the columns of the next matrix and, for the hidden Swishes, the ``β`` into the rows
        (and bias) of the previous one, ``Ŵᵢ = diag(βᵢ₊₁) · Wᵢ · diag(1/βᵢ)``, ``b̂ᵢ = βᵢ₊₁ ⊙ bᵢ``.
        Each GEMM then produces the next Swish's scaled input ``v = βu`` directly, so a layer is one
        ``addmm`` and one ``silu`` (and, backward, one ``silu_backward`` and one row sum): no
        activation-sized ``β`` multiplications. Only the block's first ``β₀`` (it acts on the
        residual stream, which has no preceding matrix) stays explicit. ``β`` is kept at least
        ``1e-12`` away from 0 (β = 0 exactly would make the fold singular; the function differs by
        < 1e-12 relative there).
        """
        return _fold(self.raw_params(), self.nlayers)

    def raw_params(self) -> list[torch.Tensor]:
        """The parameters :func:`_fold` reads, per block ``[β₀…βₙ₋₁, v₀, g₀, b₀, …, vₙ₋₁, gₙ₋₁, bₙ₋₁]``."""
        out: list[torch.Tensor] = []
        for block in self.blocks:
            out += [act.beta for act in block.acts]
            for lin in block.linears:
                out += [lin.weight_v, lin.weight_g, lin.bias]
        return out

    def forward(self, x: torch.Tensor, params: list[torch.Tensor] | None = None,
                checkpointing: bool = False, precision: str = "fp32", compiled: bool = False) -> torch.Tensor:
        """``(N, F)`` → ``(N, F)``. ``params`` from :meth:`effective_params` (computed here if ``None``).

        With ``checkpointing``, no ``params`` and autograd recording, the folded matrices are not
        kept for the backward either: it folds them again from the parameters (a few passes over
        the weights) instead of holding a second copy of every matrix between forward and backward.
        """
        spec = _Spec(self.nlayers, self.final_tanh, not checkpointing, precision, compiled)
        if params is None and checkpointing and torch.is_grad_enabled() and not _PLAIN.get():
            return _RefoldingMLPFunction.apply(x, self.gain, spec, *self.raw_params())
        params = self.effective_params() if params is None else params
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or self.gain.requires_grad or any(p.requires_grad for p in params))
        if _PLAIN.get():
            with gemm_precision(precision):
                return _forward_impl(x, self.gain, params, spec, False)[0]
        if not needs_grad:
            with gemm_precision(precision):
                return _impl(compiled, "forward")(x, self.gain, params, spec, False)[0]
        return _ResidualMLPFunction.apply(x, self.gain, spec, *params)


class _FoldedWeight(torch.autograd.Function):
    """``Ŵ = diag(r) · (g ⊙ v / ‖v‖) · diag(c)``: weight norm with a row scale ``r`` (or ``None``)
    and a column scale ``c`` folded in, in one op that keeps no intermediate matrix alive for the
    backward (only the row norms). Both directions make few passes over the matrix: the backward's
    row and column reductions are matrix-vector products of one element-wise product."""

    @staticmethod
    def forward(ctx, v, g, row, col):
        norm = torch.linalg.vector_norm(v, dim=1, keepdim=True)
        scale = g / norm if row is None else (g / norm).mul_(row[:, None])
        ctx.save_for_backward(v, g, row, col, norm)
        return torch.mul(v, scale).mul_(col)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        v, g, row, col, norm = ctx.saved_tensors
        unit = g / norm  # W = unit ⊙ v is the weight-normalised matrix
        scale = unit if row is None else unit * row[:, None]
        gv_ = grad * v
        g_col = torch.mv(gv_.t(), scale.squeeze(1))
        dot_v = torch.mv(gv_, col).unsqueeze(1)  # Σ_in G ⊙ c ⊙ v, per row
        g_row = None if row is None else (dot_v * unit).squeeze(1)
        dot_w = dot_v if row is None else dot_v * row[:, None]  # Σ_in ∂L/∂W ⊙ v, per row
        gv = torch.mul(grad, col).mul_(scale)  # ∂L/∂W ⊙ unit
        gv.addcmul_(v, dot_w * unit / norm**2, value=-1.0)
        return gv, dot_w / norm, g_row, g_col


def _fold(raw: list[torch.Tensor], nlayers: int) -> list[torch.Tensor]:
    """:meth:`ResidualMLP.effective_params` from :meth:`ResidualMLP.raw_params` (``nlayers``
    Swish/Linear pairs per block); differentiable in ``raw``."""
    out: list[torch.Tensor] = []
    per_block = 4 * nlayers
    for r in range(len(raw) // per_block):
        block = raw[r * per_block: (r + 1) * per_block]
        betas = [_away_from_zero(b) for b in block[:nlayers]]
        out.append(betas[0])
        for i in range(nlayers):
            v, g, bias = block[nlayers + 3 * i: nlayers + 3 * i + 3]
            row = betas[i + 1] if i + 1 < nlayers else None
            out += [_FoldedWeight.apply(v, g, row, 1.0 / betas[i]), bias if row is None else bias * row]
    return out


def _away_from_zero(beta: torch.Tensor, tiny: float = 1e-12) -> torch.Tensor:
    return torch.where(beta >= 0, beta.clamp(min=tiny), beta.clamp(max=-tiny))


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
    """Forward pass over the folded parameters of :meth:`ResidualMLP.effective_params`.

    Returns ``(y, saved)``; ``saved`` (when ``save``) lists, per block, the scaled Swish inputs
    ``vᵢ`` of every layer (interleaved with the Swish outputs ``silu(vᵢ)`` when ``spec.keep_all``;
    otherwise all but ``v₁``, which the backward recomputes with the cheap first layer), then the
    pre-gain stream."""
    nl, prec = spec.nlayers, spec.precision
    per_block = 1 + 2 * nl
    saved: list[torch.Tensor] = []
    reuse = not torch.is_grad_enabled()  # Swish in place where nothing else needs its input
    stream = x
    for r in range(len(params) // per_block):
        block = params[r * per_block: (r + 1) * per_block]
        v = stream * block[0]
        for i in range(nl):
            keep_v = save and (spec.keep_all or i != 1)
            a = F.silu(v, inplace=reuse and not keep_v)
            if keep_v:
                saved.append(v)
            if save and spec.keep_all:
                saved.append(a)
            v = _linear(a, block[1 + 2 * i], block[2 + 2 * i], prec)
        stream = (stream + v).mul_(INV_SQRT2)
    y = gain * stream
    if spec.final_tanh:
        y = torch.tanh(y)
    if save:
        saved.append(stream)
    return y, saved


def _backward_impl(gy: torch.Tensor, y: torch.Tensor, gain: torch.Tensor, params: list[torch.Tensor],
                   saved: list[torch.Tensor], spec: _Spec):
    """Gradients ``(gx, g_gain, grads)`` from the tensors saved by the forward; ``grads`` is laid
    out like ``params``: per block ``[gβ₀, gŴ₀, gb̂₀, …]``."""
    nl, prec = spec.nlayers, spec.precision
    per_block = 1 + 2 * nl
    nblocks = len(params) // per_block
    kept = 2 * nl if spec.keep_all else nl - 1  # saved tensors per block
    g = gy * (1.0 - y * y) if spec.final_tanh else gy
    g_gain = (g * saved[-1]).sum(0)
    g = g * gain
    grads: list[torch.Tensor] = [gy] * len(params)  # placeholders, all overwritten below
    for r in reversed(range(nblocks)):
        block = params[r * per_block: (r + 1) * per_block]
        kept_r = saved[r * kept: (r + 1) * kept]
        if spec.keep_all:  # Swish inputs and outputs of every layer
            vs, acts = kept_r[0::2], kept_r[1::2]
        else:  # recompute the cheap first layer's output, and every Swish output
            vs = [kept_r[0], _linear(F.silu(kept_r[0]), block[1], block[2], prec), *kept_r[1:]]
            acts = [None] * nl
        go = g * INV_SQRT2
        gh = go  # gradient w.r.t. the current layer's output
        for i in reversed(range(nl)):
            j = r * per_block + 1 + 2 * i
            v = vs[i]
            grads[j] = _mm(gh.t(), F.silu(v) if acts[i] is None else acts[i], prec)
            grads[j + 1] = gh.sum(0)
            gh = torch.ops.aten.silu_backward(_mm(gh, block[1 + 2 * i], prec), v)
        beta0 = block[0]
        grads[r * per_block] = (gh * vs[0]).sum(0).div_(beta0)  # Σ gv ⊙ u, since v = β ⊙ u
        g = torch.addcmul(go, gh, beta0)
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


def _kernel_forward(ctx, x, gain, spec: _Spec, params: list[torch.Tensor], keep: Sequence[torch.Tensor]):
    """Run the forward kernel and save what its backward needs, plus ``keep`` (after them)."""
    with gemm_precision(spec.precision):
        y, saved = _impl(spec.compiled, "forward")(x, gain, params, spec, True)
    ctx.spec = spec
    ctx.n_saved = len(saved)
    ctx.save_for_backward(y, gain, *saved, *keep)
    return y


def _kernel_backward(ctx, gy, params_of_keep):
    """``(gx, g_gain, grads of the folded params, kept tensors)``; ``params_of_keep`` maps the
    tensors kept by :func:`_kernel_forward` to the folded parameters."""
    y, gain, *rest = ctx.saved_tensors
    saved, keep = rest[: ctx.n_saved], rest[ctx.n_saved:]
    params = params_of_keep(keep)
    with gemm_precision(ctx.spec.precision):
        gx, g_gain, grads = _impl(ctx.spec.compiled, "backward")(
            gy.contiguous(), y, gain, [p.detach() for p in params], list(saved), ctx.spec)
    return gx, g_gain, grads, params


class _ResidualMLPFunction(torch.autograd.Function):
    """The kernel over folded parameters (:meth:`ResidualMLP.effective_params`)."""

    @staticmethod
    def forward(ctx, x, gain, spec, *params):
        return _kernel_forward(ctx, x, gain, spec, list(params), params)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        gx, g_gain, grads, _ = _kernel_backward(ctx, gy, list)
        return (gx, g_gain, None, *grads)


class _RefoldingMLPFunction(torch.autograd.Function):
    """The checkpointing kernel over the raw parameters: folds them (no autograd) for the forward,
    and again, differentiably, in the backward, where the gradients of the folded parameters are
    pulled back through the fold."""

    @staticmethod
    def forward(ctx, x, gain, spec, *raw):
        return _kernel_forward(ctx, x, gain, spec, _fold(list(raw), spec.nlayers), raw)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        leaves: list[torch.Tensor] = []

        def refold(raw):
            leaves.extend(p.detach().requires_grad_() for p in raw)
            with torch.enable_grad():
                return _fold(leaves, ctx.spec.nlayers)

        gx, g_gain, grads, params = _kernel_backward(ctx, gy, refold)
        return (gx, g_gain, None, *torch.autograd.grad(params, leaves, grads))


__all__ = ["Swish", "WNLinear", "ResidualBlock", "ResidualMLP", "gemm_precision", "plain_autograd"]
