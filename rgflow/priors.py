"""Factorised latent priors with a temperature (spec §5).

Temperature ``T`` multiplies the standard deviation. Gaussian: ``N(0, T²)`` per dim. Laplace:
scale ``b = T/√2`` (variance T², the reference) or ``b = T`` (variance 2T², the 2025 seed's
convention, ``laplace_scale='seed'``). ``log_prob`` returns nats per image, summed over all
latent dims, shape ``(B,)``, always at the prior's own (training) temperature; ``sample`` takes
an optional sampling temperature.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from rgflow.config import PriorConfig

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class Prior(nn.Module):
    """Base class: a factorised, non-learnable density over latents of any shape ``(B, …)``."""

    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.cfg = cfg
        self.temperature = float(cfg.temperature)

    def scale_at(self, temperature: float) -> float:
        """The distribution's scale parameter at ``temperature``."""
        raise NotImplementedError

    @property
    def scale(self) -> float:
        """Scale parameter at the training temperature (``prior.scale`` of the reference layout)."""
        return self.scale_at(self.temperature)

    def _log_density(self, z: torch.Tensor, scale: float) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z)`` in nats per sample, summed over every dim but the first: ``(B,)``."""
        return self._log_density(z, self.scale).reshape(z.shape[0], -1).sum(1)

    def _standard(self, shape, generator, device, dtype) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, shape, temperature: float | None = None, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Draw ``z`` of ``shape`` at ``temperature`` (``None``: the prior's own).

        Noise comes from ``generator`` (its device is used when ``device`` is ``None``).
        """
        t = self.temperature if temperature is None else float(temperature)
        if not t > 0:
            raise ValueError(f"temperature={temperature!r}: must be positive")
        if device is None:
            device = generator.device if generator is not None else "cpu"
        return self._standard(tuple(shape), generator, device, dtype).mul_(self.scale_at(t))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, scale={self.scale:.6g}"


class GaussianPrior(Prior):
    def scale_at(self, temperature: float) -> float:
        return temperature

    def _log_density(self, z: torch.Tensor, scale: float) -> torch.Tensor:
        return -0.5 * (z / scale) ** 2 - (math.log(scale) + _HALF_LOG_2PI)

    def _standard(self, shape, generator, device, dtype) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)


class LaplacePrior(Prior):
    def scale_at(self, temperature: float) -> float:
        return temperature / math.sqrt(2.0) if self.cfg.laplace_scale == "reference" else temperature

    def _log_density(self, z: torch.Tensor, scale: float) -> torch.Tensor:
        return -z.abs() / scale - math.log(2.0 * scale)

    def _standard(self, shape, generator, device, dtype) -> torch.Tensor:
        # Inverse CDF of the unit Laplace on u ∈ (−1, 1): sign(u)·(−log(1 − |u|)).
        u = torch.rand(shape, generator=generator, device=device, dtype=dtype).mul_(2).sub_(1)
        u.clamp_(min=torch.finfo(dtype).eps - 1)
        return -u.sign() * torch.log1p(-u.abs())


def make_prior(cfg: PriorConfig) -> Prior:
    """The prior described by ``cfg``."""
    return {"laplace": LaplacePrior, "gaussian": GaussianPrior}[cfg.kind](cfg)


__all__ = ["Prior", "GaussianPrior", "LaplacePrior", "make_prior"]
