"""Patch geometry of the MERA sub-layers (spec §2) and the RG level of every latent (spec §1).

Sub-layer ``k`` (level ``h = k // 2``) cuts the ``C×L×L`` image into non-overlapping dilated
``m×m`` patches with dilation ``2^h``, stride ``m·2^h`` and offset ``0`` (disentangler, even ``k``)
or ``m·2^h / 2`` (decimator, odd ``k``), with periodic wrap-around. A patch is flattened
channel-major, then row-major inside the window, into ``C·m²`` numbers; patches are ordered
row-major over the block grid ``(p, q)``.

Gathering and scattering use one precomputed index per sub-layer into the flattened image
(``C·L·L``), so a batch is cut into patches by a single ``index_select`` and written back by a
single ``index_copy`` — no roll/unfold/fold copies.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from rgflow.config import ModelConfig


def sublayer_geometry(k: int, cfg: ModelConfig) -> tuple[int, int, int]:
    """``(dilation, stride, offset)`` in pixels of sub-layer ``k`` (0 ≤ k < 2·levels)."""
    if not 0 <= k < 2 * cfg.levels:
        raise ValueError(f"sub-layer k={k} out of range 0..{2 * cfg.levels - 1} for size {cfg.size}, kernel {cfg.kernel}")
    return _geometry(k, cfg.kernel)


def _geometry(k: int, kernel: int) -> tuple[int, int, int]:
    dilation = 2 ** (k // 2)
    stride = kernel * dilation
    return dilation, stride, 0 if k % 2 == 0 else stride // 2


@lru_cache(maxsize=None)
def _patch_index(k: int, channels: int, size: int, kernel: int) -> torch.Tensor:
    d, s, o = _geometry(k, kernel)
    n = size // s
    cpu = torch.device("cpu")  # cached: never build it under an ambient (e.g. meta) device
    win = torch.arange(kernel, device=cpu) * d
    start = torch.arange(n, device=cpu) * s
    rows = (o + start[:, None] + win[None, :]) % size  # (n, m): block p, window row a
    # index[p, q, c, a, b] = c·L² + row(p, a)·L + col(q, b)
    index = (
        torch.arange(channels, device=cpu).view(1, 1, channels, 1, 1) * size * size
        + rows.view(n, 1, 1, kernel, 1) * size
        + rows.view(1, n, 1, 1, kernel)
    )
    return index.reshape(n * n, channels * kernel * kernel)


def patch_index(k: int, cfg: ModelConfig) -> torch.Tensor:
    """LongTensor ``(P, C·m²)``: flat position in ``C·L·L`` of every entry of every patch of sub-layer ``k``."""
    sublayer_geometry(k, cfg)
    return _patch_index(k, cfg.channels, cfg.size, cfg.kernel)


def to_patches(x: torch.Tensor, k: int, cfg: ModelConfig) -> torch.Tensor:
    """Cut images ``x (B, C, L, L)`` into the patches of sub-layer ``k``: ``(B·P, C·m²)``."""
    index = patch_index(k, cfg).to(x.device)
    b = x.shape[0]
    return x.reshape(b, -1).index_select(1, index.view(-1)).view(b * index.shape[0], index.shape[1])


def from_patches(p: torch.Tensor, k: int, cfg: ModelConfig, batch: int, into: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of :func:`to_patches`: ``(B·P, C·m²)`` → ``(B, C, L, L)``.

    Pixels that sub-layer ``k`` does not touch (levels ≥ 1 act on a sub-lattice) are taken from
    ``into`` (not modified; a new tensor is returned), or are zero when ``into`` is ``None``.
    """
    index = patch_index(k, cfg).to(p.device)
    shape = (batch, cfg.channels, cfg.size, cfg.size)
    base = p.new_zeros(shape) if into is None else into
    return base.reshape(batch, -1).index_copy(1, index.view(-1), p.reshape(batch, -1)).view(shape)


def _v2(n: torch.Tensor, cap: int) -> torch.Tensor:
    """2-adic valuation of each entry, capped at ``cap`` (v2(0) = cap)."""
    out = torch.zeros_like(n)
    for e in range(1, cap + 1):
        out += (n % 2**e == 0).long()
    return out


def level_map(cfg: ModelConfig) -> torch.Tensor:
    """LongTensor ``(L, L)``: RG level of each pixel position, ``min(v2(i), v2(j), H−1)``."""
    idx = torch.arange(cfg.size)
    v = _v2(idx, cfg.levels - 1)
    return torch.minimum(v[:, None], v[None, :])


def level_dims(cfg: ModelConfig) -> list[int]:
    """Number of latent dimensions (``C ×`` positions) of each RG level, finest first."""
    lm = level_map(cfg)
    return [int((lm == h).sum()) * cfg.channels for h in range(cfg.levels)]


__all__ = ["sublayer_geometry", "patch_index", "to_patches", "from_patches", "level_map", "level_dims"]
