"""RG-Flow as a density model over dequantised images: logit bijector + flow + prior (spec §6).

``log p(x̃) = log p_Z(f(y)) + log|det ∂f/∂y| + log|det ∂y/∂x̃|``, nats per image.
Bits per dim include the ``log 256`` term of the 8-bit discretisation:
``BPD = (−log p(x̃)/D + log 256) / log 2`` with ``D = C·L·L``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from rgflow.config import ModelConfig, PriorConfig
from rgflow.flow import RGFlow
from rgflow.geometry import level_map
from rgflow.logit import from_logit, to_logit
from rgflow.priors import make_prior

_LOG2 = math.log(2.0)
_LOG256 = math.log(256.0)


def bits_per_dim(log_prob_nats: torch.Tensor, dims: int) -> torch.Tensor:
    """Log-likelihood of dequantised images (nats per image) → bits per dim of the 8-bit images."""
    return (-log_prob_nats / dims + _LOG256) / _LOG2


class RGFlowModel(nn.Module):
    """The density model. ``.flow`` (:class:`RGFlow`), ``.prior``, ``.cfg`` (:class:`ModelConfig`)."""

    def __init__(self, model_cfg: ModelConfig, prior_cfg: PriorConfig | None = None):
        super().__init__()
        self.cfg = model_cfg
        self.prior_cfg = prior_cfg or PriorConfig()
        self.flow = RGFlow(model_cfg)
        self.prior = make_prior(self.prior_cfg)
        self.register_buffer("levels", level_map(model_cfg), persistent=False)

    @property
    def dims(self) -> int:
        """D = C·L·L."""
        return self.cfg.dims

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        p = next(self.parameters())
        return p.device, p.dtype

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``x̃ (B, C, L, L)`` in [0, 1) → ``log p(x̃)`` ``(B,)`` nats per image."""
        y, ld_logit = to_logit(x)
        z, ld_flow = self.flow(y)
        return self.prior.log_prob(z) + ld_flow + ld_logit

    def bpd(self, x: torch.Tensor) -> torch.Tensor:
        """``x̃ (B, C, L, L)`` → bits per dim ``(B,)``."""
        return bits_per_dim(self.log_prob(x), self.dims)

    def nll_per_dim(self, x: torch.Tensor) -> torch.Tensor:
        """Training loss: mean over the batch of ``−log p(x̃)/D``, nats per dim (scalar)."""
        return -self.log_prob(x).mean() / self.dims

    def _latents(self, n: int, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
        device, dtype = self._device_dtype()
        shape = (n, self.cfg.channels, self.cfg.size, self.cfg.size)
        return self.prior.sample(shape, temperature, generator, device=device, dtype=dtype)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(n, C, L, L)`` → display images in [0, 1]."""
        y, _ = self.flow.inverse(z)
        return from_logit(y)

    def sample(self, n: int, temperature: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images ``(n, C, L, L)`` in [0, 1] at sampling ``temperature`` (``None``: the prior's)."""
        return self.decode(self._latents(n, temperature, generator))

    def sample_mixed(self, n: int, t_low: float, t_high: float, level: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Mixed-temperature samples (spec §5): all latents at ``t_low``, then those of RG level
        ``≥ level`` redrawn at ``t_high``. Returns ``(n, C, L, L)`` in [0, 1]."""
        if not 0 <= level < self.cfg.levels:
            raise ValueError(f"level={level}: must be in 0..{self.cfg.levels - 1}")
        z = self._latents(n, t_low, generator)
        z_high = self._latents(n, t_high, generator)
        return self.decode(torch.where(self.levels >= level, z_high, z))


__all__ = ["bits_per_dim", "RGFlowModel"]
