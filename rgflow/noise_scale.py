"""The gradient noise scale B_simple = tr(Σ)/|G|² (McCandlish et al. 2018, appendix A.1).

``G`` is the true gradient of the loss and ``Σ`` the per-example covariance of gradients. The
squared norm of a batch-mean gradient over ``b`` i.i.d. examples has expectation
``E|G_b|² = |G|² + tr(Σ)/b``. Measuring it at two batch sizes ``b_small < b_big`` gives unbiased
estimates of both unknowns::

    |G|²  ≈ (b_big·|G_big|² − b_small·|G_small|²) / (b_big − b_small)
    tr(Σ) ≈ (|G_small|² − |G_big|²) / (1/b_small − 1/b_big)

Each single estimate is very noisy (and |G|² may come out negative), so the numerator and the
denominator are smoothed separately with an exponential moving average and the *ratio of the
averages* is reported (``smoothed``), next to the ratio of the single estimates (``raw``). Both
are in examples (images); the loss's scale cancels in the ratio.

During training the two sizes come for free: :func:`backward_two_halves` back-propagates a batch
of B as two halves of sizes b1 = ⌊B/2⌋ and b2 = B − b1, weighted so that the accumulated gradient
is exactly the full-batch mean gradient. Then ``|G_big|²`` is the full-batch norm and
``|G_small|²`` the mean of the two half norms, with ``1/b_small = (1/b1 + 1/b2)/2``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GradientNorms:
    """Squared gradient norms measured at two batch sizes (``b_small < b_big``, in examples)."""

    b_small: float
    sq_small: float
    b_big: float
    sq_big: float


@dataclass(frozen=True)
class NoiseScale:
    """One update of the estimator: the raw and smoothed B_simple (examples), and the smoothed
    estimates of |G|² and tr(Σ) (in the loss's units squared, bias-corrected EMA)."""

    raw: float
    smoothed: float
    grad_sq: float
    trace: float


class NoiseScaleEstimator:
    """EMA-smoothed B_simple; ``ema`` is the decay (0: no smoothing)."""

    def __init__(self, ema: float):
        if not 0 <= ema < 1:
            raise ValueError(f"ema must be in [0, 1), got {ema}")
        self.ema = ema
        self.grad_sq_avg = 0.0
        self.trace_avg = 0.0
        self.updates = 0

    def update(self, norms: GradientNorms) -> NoiseScale:
        if not norms.b_small < norms.b_big:
            raise ValueError(f"need b_small < b_big, got {norms.b_small} and {norms.b_big}")
        grad_sq = (norms.b_big * norms.sq_big - norms.b_small * norms.sq_small) / (norms.b_big - norms.b_small)
        trace = (norms.sq_small - norms.sq_big) / (1 / norms.b_small - 1 / norms.b_big)
        self.grad_sq_avg = self.ema * self.grad_sq_avg + (1 - self.ema) * grad_sq
        self.trace_avg = self.ema * self.trace_avg + (1 - self.ema) * trace
        self.updates += 1
        correction = 1 - self.ema**self.updates
        return NoiseScale(
            raw=_ratio(trace, grad_sq),
            smoothed=_ratio(self.trace_avg, self.grad_sq_avg),
            grad_sq=self.grad_sq_avg / correction,
            trace=self.trace_avg / correction,
        )

    def state_dict(self) -> dict[str, float | int]:
        return {"ema": self.ema, "grad_sq_avg": self.grad_sq_avg, "trace_avg": self.trace_avg, "updates": self.updates}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.ema = float(state["ema"])
        self.grad_sq_avg = float(state["grad_sq_avg"])
        self.trace_avg = float(state["trace_avg"])
        self.updates = int(state["updates"])


def _ratio(trace: float, grad_sq: float) -> float:
    """tr(Σ)/|G|²; NaN while the |G|² estimate is not positive (the ratio is then meaningless)."""
    return trace / grad_sq if grad_sq > 0 else math.nan


def _sq_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([t.double().square().sum() for t in tensors]).sum()


def backward_two_halves(
    loss_of: Callable[[slice], torch.Tensor], batch_size: int, params: Sequence[torch.nn.Parameter]
) -> tuple[float, GradientNorms]:
    """Back-propagate a batch as two halves and measure the gradient norms of both sizes.

    ``loss_of(sl)`` must return the *mean* loss over the examples ``sl`` of the batch (a scalar
    tensor). ``params``' ``.grad`` must be ``None`` or zero on entry; on return it holds the
    full-batch mean gradient (the same as one backward of the full-batch mean, up to float
    round-off). Costs one forward and one backward of the batch in total, plus one gradient-sized
    copy. Returns the full-batch mean loss (float) and the :class:`GradientNorms`.
    """
    if batch_size < 2:
        raise ValueError(f"the noise scale needs a batch of at least 2 examples, got {batch_size}")
    b1 = batch_size // 2
    b2 = batch_size - b1
    params = [p for p in params if p.requires_grad]
    loss1 = loss_of(slice(0, b1))
    (loss1 * (b1 / batch_size)).backward()
    first = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    loss2 = loss_of(slice(b1, batch_size))
    (loss2 * (b2 / batch_size)).backward()
    full = [p.grad.detach() if p.grad is not None else torch.zeros_like(p) for p in params]
    # first = (b1/B)·G1 and full − first = (b2/B)·G2, with G1, G2 the two half-batch mean gradients.
    sq1 = _sq_norm(first) * (batch_size / b1) ** 2
    sq2 = _sq_norm([f - a for f, a in zip(full, first)]) * (batch_size / b2) ** 2
    sq_full = _sq_norm(full)
    loss = (loss1.detach().double() * b1 + loss2.detach().double() * b2) / batch_size
    values = torch.stack([loss, sq1, sq2, sq_full]).tolist()
    norms = GradientNorms(
        b_small=2 / (1 / b1 + 1 / b2), sq_small=(values[1] + values[2]) / 2, b_big=float(batch_size), sq_big=values[3]
    )
    return values[0], norms


__all__ = ["GradientNorms", "NoiseScale", "NoiseScaleEstimator", "backward_two_halves"]
