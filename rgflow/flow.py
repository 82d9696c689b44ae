"""The RG-Flow bijection (spec §2–§3): RealNVP couplings on patches, MERA sub-layers, the flow.

``RGFlow.forward`` maps data ``y`` (logit space, ``(B, C, L, L)``) to the latent ``z`` (same shape)
and returns the log-determinant of the Jacobian ``log|det ∂z/∂y|`` per image in nats, shape
``(B,)``. ``RGFlow.inverse`` is the generator ``z → y`` with ``log|det ∂y/∂z|``. At
initialisation every output gain is zero, so the flow is exactly the identity with log-det 0.

Internally the batch is kept flat, ``(B, C·L·L)``; each sub-layer gathers its patches with one
precomputed index (``rgflow.geometry.patch_index``), runs its couplings on the ``(B·P, C·m²)``
matrix and scatters the result back with one ``index_copy``.
"""
from __future__ import annotations

import torch
from torch import nn

from rgflow.config import ModelConfig
from rgflow.geometry import patch_index
from rgflow.nn import ResidualMLP


def checkerboard_masks(channels: int, kernel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E, O)`` flattened to ``C·m²`` (channel-major, row-major): E = 1 where (a + b) is even."""
    a = torch.arange(kernel)
    even = ((a[:, None] + a[None, :]) % 2 == 0).float().expand(channels, kernel, kernel).reshape(-1)
    return even, 1.0 - even


class Coupling(nn.Module):
    """One coupling layer: one S and one T network, two half-steps (E conditions, then O)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        f = cfg.patch_dim
        self.s = ResidualMLP(f, cfg.nhidden, cfg.nmlp, cfg.nresblocks, final_tanh=True)
        self.t = ResidualMLP(f, cfg.nhidden, cfg.nmlp, cfg.nresblocks, final_tanh=False)
        self._opts = dict(checkpointing=cfg.checkpointing, precision=cfg.precision, compiled=cfg.compile)

    def _st(self, c: torch.Tensor, ps: list | None, pt: list | None, move: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.s(c, ps, **self._opts) * move, self.t(c, pt, **self._opts) * move

    def _params(self) -> tuple[list | None, list | None]:
        """Folded S and T parameters shared by both half-steps; ``None`` (each call folds its own,
        and the backward folds again) when checkpointing under autograd, to save memory."""
        if self._opts["checkpointing"] and torch.is_grad_enabled():
            return None, None
        return self.s.effective_params(), self.t.effective_params()

    def forward(self, x: torch.Tensor, even: torch.Tensor, odd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (N, F)`` → ``(x', logdet (N,))``: ``x' = x ⊙ exp(s) + t`` on the moving sites."""
        ps, pt = self._params()
        logdet = None
        for cond, move in ((even, odd), (odd, even)):
            s, t = self._st(x * cond, ps, pt, move)
            x = torch.addcmul(t, x, s.exp())
            ld = s.sum(1)
            logdet = ld if logdet is None else logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor, even: torch.Tensor, odd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Undo :meth:`forward`: ``(x, logdet (N,))`` with logdet = −(forward logdet)."""
        ps, pt = self._params()
        logdet = None
        for cond, move in ((odd, even), (even, odd)):
            s, t = self._st(z * cond, ps, pt, move)
            z = (z - t) * (-s).exp()
            ld = -s.sum(1)
            logdet = ld if logdet is None else logdet + ld
        return z, logdet


class SubLayer(nn.Module):
    """Sub-layer ``k``: a stack of couplings shared by every patch of the sub-layer's geometry."""

    def __init__(self, k: int, ncouplings: int, cfg: ModelConfig):
        super().__init__()
        self.k = k
        self.couplings = nn.ModuleList(Coupling(cfg) for _ in range(ncouplings))
        self.register_buffer("index", patch_index(k, cfg).reshape(-1), persistent=False)
        even, odd = checkerboard_masks(cfg.channels, cfg.kernel)
        self.register_buffer("even", even, persistent=False)
        self.register_buffer("odd", odd, persistent=False)
        self.patch_dim = cfg.patch_dim

    def _run(self, state: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        b = state.shape[0]
        p = state.index_select(1, self.index).view(-1, self.patch_dim)
        even, odd = self.even.to(p.dtype), self.odd.to(p.dtype)
        logdet = torch.zeros(p.shape[0], dtype=torch.float32 if p.dtype != torch.float64 else p.dtype, device=p.device)
        for c in (reversed(self.couplings) if inverse else self.couplings):
            p, ld = (c.inverse if inverse else c)(p, even, odd)
            logdet = logdet + ld
        return state.index_copy(1, self.index, p.reshape(b, -1)), logdet.view(b, -1).sum(1)

    def forward(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``state (B, C·L·L)`` → ``(state', logdet (B,))``."""
        return self._run(state, inverse=False)

    def inverse(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(state, inverse=True)


class RGFlow(nn.Module):
    """The bijection: ``2·levels`` sub-layers applied k = 0…2H−1 for data → latent."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.sublayers = nn.ModuleList(
            SubLayer(k, n, cfg) for k, n in enumerate(cfg.couplings_per_sublayer))

    def _check(self, x: torch.Tensor, name: str) -> None:
        c, size = self.cfg.channels, self.cfg.size
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, size, size):
            raise ValueError(f"RGFlow: {name} must have shape (B, {c}, {size}, {size}), got {tuple(x.shape)}")

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y (B, C, L, L)`` → ``(z (B, C, L, L), log|det ∂z/∂y| (B,) nats)``."""
        self._check(y, "y")
        state = y.reshape(y.shape[0], -1)
        logdet = 0
        for sub in self.sublayers:
            state, ld = sub(state)
            logdet = logdet + ld
        return state.view_as(y), logdet

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z (B, C, L, L)`` → ``(y (B, C, L, L), log|det ∂y/∂z| (B,) nats)``."""
        self._check(z, "z")
        state = z.reshape(z.shape[0], -1)
        logdet = 0
        for sub in reversed(self.sublayers):
            state, ld = sub.inverse(state)
            logdet = logdet + ld
        return state.view_as(z), logdet


__all__ = ["checkerboard_masks", "Coupling", "SubLayer", "RGFlow"]
