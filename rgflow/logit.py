"""Data ↔ logit space (spec §6): dequantise, rescale to [0.05, 0.95], logit; and back for display.

``x̃ = (k + u) / 256`` with ``u ~ U[0, 1)``; ``p = 0.05 + 0.9·x̃``; ``y = log p − log(1 − p)``.
Per-dim log-det of ``x̃ → y``: ``log 0.9 − log p − log(1 − p) = log 0.9 + softplus(y) + softplus(−y)``
(the softplus form is the stable one). No function here mutates its input.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ALPHA = 0.05  # p = ALPHA + (1 − 2·ALPHA)·x̃
_LOG_SCALE = math.log(1.0 - 2.0 * ALPHA)


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None, *,
               noise: torch.Tensor | None = None) -> torch.Tensor:
    """``uint8`` images ``(B, C, L, L)`` → ``x̃ = (x + u)/256 ∈ [0, 1)``, float32 on ``x``'s device.

    ``u ~ U[0, 1)`` per dim: ``noise`` when given (float32, ``x``'s shape and device, values in
    ``[0, 1)``, e.g. :meth:`rgflow.data.EpochBatcher.eval_batches`' per-image noise; not
    modified), else drawn from ``generator`` (which must live on ``x``'s device).
    """
    if x.dtype != torch.uint8:
        raise TypeError(f"dequantize: expected uint8 images, got dtype {x.dtype}; pass the raw 8-bit tensor")
    if noise is None:
        shifted = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32).add_(x)
    elif noise.shape != x.shape or noise.dtype != torch.float32:
        raise ValueError(f"dequantize: noise must be float32 of shape {tuple(x.shape)}, "
                         f"got {noise.dtype} {tuple(noise.shape)}")
    else:
        shifted = noise.add(x)
    return shifted.mul_(1.0 / 256.0)


def to_logit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x̃ ∈ [0, 1]`` ``(B, …)`` → ``(y, log|det ∂y/∂x̃| (B,) nats)``."""
    p = x * (1.0 - 2.0 * ALPHA) + ALPHA
    y = torch.log(p) - torch.log1p(-p)
    logdet = (F.softplus(y) + F.softplus(-y)).reshape(x.shape[0], -1).sum(1) + _LOG_SCALE * x[0].numel()
    return y, logdet


def from_logit(y: torch.Tensor) -> torch.Tensor:
    """Logit-space ``y`` → image ``x = clamp((sigmoid(y) − 0.05)/0.9, 0, 1)``, same shape.

    Differentiable (forward and reverse mode): ``dx/dy = σ(y)(1 − σ(y))/0.9`` where ``0 < x < 1``,
    0 where clamped (the image-space receptive fields of :mod:`rgflow.receptive` go through it).
    """
    return ((torch.sigmoid(y) - ALPHA) / (1.0 - 2.0 * ALPHA)).clamp_(0.0, 1.0)


__all__ = ["ALPHA", "dequantize", "to_logit", "from_logit"]
