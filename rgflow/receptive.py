"""Receptive fields of latents (spec §8, the paper's definition).

``RF_l = E_{z∼p_T(z)} |∂G(z)/∂z_l|`` summed over the colour channels of the output, where ``G`` is
the generator. In ``image`` space (the paper's definition, the default) ``G`` maps ``z`` to the
image ``x ∈ [0, 1]``: the inverse flow ``z → y`` (logit space) followed by
:func:`rgflow.logit.from_logit`, ``x = clamp((σ(y) − 0.05)/0.9, 0, 1)``, whose derivative
``σ'(y)/0.9`` (0 where clamped) reweights each pixel of each sample; in ``logit`` space ``G`` stops
at ``y``. One representative latent per RG level is used: channel 0 at the position of that level
closest to the image centre (see :func:`representative_latents`). Each column ``∂G/∂z_l`` is one
forward-mode (JVP) pass through the generator, exact (autograd, not finite differences); the levels
of one prior draw share a single batched pass.
"""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwad

from rgflow.config import RECEPTIVE_FIELD_SPACES, ModelConfig
from rgflow.geometry import level_map
from rgflow.logit import from_logit
from rgflow.model import RGFlowModel
from rgflow.nn import plain_autograd

SPACES = RECEPTIVE_FIELD_SPACES


def representative_latents(cfg: ModelConfig) -> dict[int, tuple[int, int, int]]:
    """``{level: (channel, row, col)}``: channel 0 at the site of that level nearest the centre
    ``(L/2, L/2)`` (ties: smallest row, then column)."""
    lm = level_map(cfg)
    centre = cfg.size / 2
    out = {}
    for h in range(cfg.levels):
        sites = (lm == h).nonzero().tolist()
        i, j = min(sites, key=lambda s: ((s[0] - centre) ** 2 + (s[1] - centre) ** 2, s[0], s[1]))
        out[h] = (0, i, j)
    return out


def receptive_fields(model: RGFlowModel, n_samples: int, temperature: float | None = None,
                     generator: torch.Generator | None = None, chunk: int = 16,
                     space: str = "image") -> dict[int, torch.Tensor]:
    """``{level: (L, L) float32 CPU map}`` of ``E|∂G(z)/∂z_l|`` summed over output channels.

    ``z`` is drawn from the model's prior at ``temperature`` (``None``: the prior's own) with
    ``generator``; ``n_samples`` draws, ``chunk`` of them per batched pass. ``space``: ``"image"``
    (``G(z) = from_logit(flow⁻¹(z))``, image intensity in [0, 1] per unit latent) or ``"logit"``
    (``G(z) = flow⁻¹(z)``, logit units per unit latent).
    """
    if n_samples < 1:
        raise ValueError(f"n_samples={n_samples}: must be at least 1")
    if space not in SPACES:
        raise ValueError(f"space={space!r}: must be one of {', '.join(map(repr, SPACES))}")
    cfg = model.cfg
    p = next(model.parameters())
    sites = representative_latents(cfg)
    levels = len(sites)
    total = torch.zeros(levels, cfg.size, cfg.size, dtype=torch.float64)
    shape = (cfg.channels, cfg.size, cfg.size)
    done = 0
    with torch.no_grad(), plain_autograd():
        while done < n_samples:
            n = min(chunk, n_samples - done)
            z = model.prior.sample((n, *shape), temperature, generator, device=p.device, dtype=p.dtype)
            z = z.repeat(levels, 1, 1, 1)  # block h of n copies carries the tangent of level h's latent
            tangent = torch.zeros_like(z)
            for h, (c, i, j) in sites.items():
                tangent[h * n:(h + 1) * n, c, i, j] = 1.0
            with fwad.dual_level():
                y, _ = model.flow.inverse(fwad.make_dual(z, tangent))
                column = fwad.unpack_dual(from_logit(y) if space == "image" else y).tangent
            total += column.abs().sum(1).view(levels, n, cfg.size, cfg.size).sum(1).double().cpu()
            done += n
    return {h: (total[h] / n_samples).float() for h in range(levels)}


__all__ = ["SPACES", "representative_latents", "receptive_fields"]
