"""The gradient noise scale B_simple = tr(Σ)/|G|² (McCandlish et al. 2018, appendix A.1).

``G`` is the true gradient of the loss and ``Σ`` the per-example covariance of gradients. The
squared norm of a batch-mean gradient over ``b`` i.i.d. examples has expectation
``E|G_b|² = |G|² + tr(Σ)/b``. Measuring it at two batch sizes ``b_small < b_big`` gives unbiased
single estimates of both unknowns (:meth:`GradientNorms.estimates`)::

    |G|²  ≈ (b_big·|G_big|² − b_small·|G_small|²) / (b_big − b_small)
    tr(Σ) ≈ (|G_small|² − |G_big|²) / (1/b_small − 1/b_big)

Units: with the training loss in nats/dim, both are squared L2 norms in parameter space of
gradients of that loss, in (nats/dim)² (``tr(Σ)`` per example); B_simple is in examples (images),
the loss's scale cancels in it.

What a measurement yields (:class:`NoiseScale`, logged by :mod:`rgflow.train` as ``noise_grad_sq``,
``noise_trace``, ``noise_scale_raw`` and ``noise_scale``): the two single estimates, their ratio
(``raw``), and the ratio of their exponential moving averages (``smoothed``). A single estimate is
very noisy and |G|² may come out negative; it is still unbiased, so the single estimates are the
numbers to aggregate: the B_simple of a trial is the **ratio of sums** Σ tr(Σ) / Σ |G|² over a late
window of measurements (consistent, unlike a mean of single ratios, which is biased and undefined
whenever one |G|² estimate is not positive). The EMA's time constant is ``ema_steps`` optimizer
steps, whatever the measurement cadence: a measurement ``Δ`` steps after the previous one (the
first: after step 0) decays the averages by ``exp(−Δ/ema_steps)``, and the averages are divided by
the sum of the weights ``1 − Π decays`` (bias correction for variable decays), so they are weighted
means of the single estimates from the first measurement on.

B_simple approximates the critical batch size only under plain-SGD assumptions: for SGD with the
optimal step on a locally quadratic loss the critical batch size is B_noise = tr(HΣ)/(GᵀHG)
(``H`` the Hessian), and B_simple (McCandlish et al., eq. 2.8) is B_noise when ``H`` is
proportional to the identity. B_simple is a property of the gradient noise, not of the optimizer.
Adam's update is ``−lr·P·g`` (momentum aside) with the preconditioner ``P = diag(1/(√v̂ + ε))``
(``v̂`` the bias-corrected second-moment estimate); for such an update the same argument gives
tr(PHPΣ)/(GᵀPHPG), which under the same ``H ∝ I`` assumption is ``tr(PΣP)/|P G|²``, the noise scale
of the update vector itself. The preconditioned analogue is therefore the same estimator with every
squared norm taken as ``|P g|²`` = Σ w·g², weights ``w = 1/(√v̂ + ε)²`` per parameter element
(:func:`adam_weights`); it is in examples, with ``|P G|²`` and ``tr(PΣP)`` dimensionless (logged as
``noise_grad_sq_adam``, ``noise_trace_adam``, ``noise_scale_adam_raw``, ``noise_scale_adam``). ``P``
is taken as fixed during the measurement (``v̂`` from the steps before it).

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

    def estimates(self) -> tuple[float, float]:
        """The unbiased single estimates ``(|G|², tr(Σ))``, in the squared norms' units."""
        if not self.b_small < self.b_big:
            raise ValueError(f"need b_small < b_big, got {self.b_small} and {self.b_big}")
        grad_sq = (self.b_big * self.sq_big - self.b_small * self.sq_small) / (self.b_big - self.b_small)
        trace = (self.sq_small - self.sq_big) / (1 / self.b_small - 1 / self.b_big)
        return grad_sq, trace


@dataclass(frozen=True)
class NoiseScale:
    """One measurement: the single estimates ``grad_sq`` (|G|²) and ``trace`` (tr(Σ)) and their
    ratio ``raw``; the bias-corrected EMAs ``grad_sq_avg`` and ``trace_avg`` and their ratio
    ``smoothed``. Ratios are in examples (NaN while their |G|² is not positive); the others are in
    the squared norms' units."""

    grad_sq: float
    trace: float
    raw: float
    grad_sq_avg: float
    trace_avg: float
    smoothed: float


class NoiseScaleEstimator:
    """B_simple from measurements at increasing optimizer steps, smoothed with an EMA whose time
    constant is ``ema_steps`` optimizer steps (see the module docstring)."""

    def __init__(self, ema_steps: float):
        if not ema_steps > 0:
            raise ValueError(f"ema_steps must be positive, got {ema_steps}")
        self.ema_steps = ema_steps
        self.grad_sq_avg = 0.0
        self.trace_avg = 0.0
        self.weight = 0.0  # sum of the EMA weights, 1 − Π decays
        self.last_step = 0

    def update(self, norms: GradientNorms, step: int) -> NoiseScale:
        """Add the measurement taken at optimizer step ``step`` (greater than the previous one)."""
        if step <= self.last_step:
            raise ValueError(f"step {step} is not after the previous measurement's step {self.last_step}")
        grad_sq, trace = norms.estimates()
        if not (math.isfinite(grad_sq) and math.isfinite(trace)):
            raise ValueError(f"non-finite gradient norms {norms}")
        decay = math.exp(-(step - self.last_step) / self.ema_steps)
        self.weight = decay * self.weight + (1 - decay)
        gain = (1 - decay) / self.weight  # the new estimate's share of the weighted mean
        self.grad_sq_avg += gain * (grad_sq - self.grad_sq_avg)
        self.trace_avg += gain * (trace - self.trace_avg)
        self.last_step = step
        return NoiseScale(
            grad_sq=grad_sq,
            trace=trace,
            raw=_ratio(trace, grad_sq),
            grad_sq_avg=self.grad_sq_avg,
            trace_avg=self.trace_avg,
            smoothed=_ratio(self.trace_avg, self.grad_sq_avg),
        )

    def state_dict(self) -> dict[str, float | int]:
        return {"ema_steps": self.ema_steps, "grad_sq_avg": self.grad_sq_avg, "trace_avg": self.trace_avg,
                "weight": self.weight, "last_step": self.last_step}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        if set(state) != set(self.state_dict()):
            raise ValueError(f"noise-scale state has keys {sorted(state)}, expected {sorted(self.state_dict())}")
        self.ema_steps = state["ema_steps"]
        self.grad_sq_avg = float(state["grad_sq_avg"])
        self.trace_avg = float(state["trace_avg"])
        self.weight = float(state["weight"])
        self.last_step = int(state["last_step"])


def _ratio(trace: float, grad_sq: float) -> float:
    """tr(Σ)/|G|²; NaN while the |G|² estimate is not positive (the ratio is then meaningless)."""
    return trace / grad_sq if grad_sq > 0 else math.nan


@torch.no_grad()
def adam_weights(optimizer: torch.optim.Optimizer, params: Sequence[torch.nn.Parameter]) -> list[torch.Tensor] | None:
    """The weights ``w = 1/(√v̂ + ε)²`` of Adam's metric, one tensor per parameter (its shape).

    ``v̂ = exp_avg_sq / (1 − β₂^step)`` is the optimizer's bias-corrected second-moment estimate
    (Adam/AdamW state; ``β₂`` and ``ε`` from the parameter's group), so ``Σ w·g²`` is ``|P g|²`` with
    Adam's preconditioner ``P = diag(1/(√v̂ + ε))``; ``w`` is in 1/(gradient units)². ``None`` while
    some parameter has no optimizer state yet (before the first step).
    """
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    weights = []
    for p in params:
        state = optimizer.state.get(p)
        if not state:
            return None
        group = group_of[id(p)]
        correction = 1 - group["betas"][1] ** torch.as_tensor(state["step"], dtype=torch.float64)
        v_hat = state["exp_avg_sq"] / correction
        weights.append(v_hat.sqrt_().add_(group["eps"]).square_().reciprocal_())
    return weights


def _sq_norms(tensors: Sequence[torch.Tensor], weights: Sequence[torch.Tensor] | None) -> list[torch.Tensor]:
    """``[Σ t²]``, or ``[Σ t², Σ w·t²]`` with weights (float64 scalar tensors, summed over all)."""
    plain, weighted = [], []
    for i, t in enumerate(tensors):  # one float64 square at a time, reused by both reductions
        sq = t.double().square()
        plain.append(sq.sum())
        if weights is not None:
            weighted.append((sq * weights[i]).sum())
    sums = [torch.stack(plain).sum()]
    if weights is not None:
        sums.append(torch.stack(weighted).sum())
    return sums


def backward_two_halves(
    loss_of: Callable[[slice], torch.Tensor],
    batch_size: int,
    params: Sequence[torch.nn.Parameter],
    weights: Sequence[torch.Tensor] | None = None,
) -> tuple[float, GradientNorms, GradientNorms | None]:
    """Back-propagate a batch as two halves and measure the gradient norms of both sizes.

    ``loss_of(sl)`` must return the *mean* loss over the examples ``sl`` of the batch (a scalar
    tensor). ``params``' ``.grad`` must be ``None`` or zero on entry; on return it holds the
    full-batch mean gradient (the same as one backward of the full-batch mean, up to float
    round-off). ``weights`` (optional, one tensor per parameter, broadcastable to its shape, e.g.
    :func:`adam_weights`) adds the same norms in the metric ``Σ w·g²``. Costs one forward and one
    backward of the batch in total, plus one gradient-sized copy and, with weights, one more
    weighted reduction per tensor. Returns the full-batch mean loss (float), the plain
    :class:`GradientNorms`, and the weighted ones (``None`` without weights).
    """
    if batch_size < 2:
        raise ValueError(f"the noise scale needs a batch of at least 2 examples, got {batch_size}")
    if weights is not None and len(weights) != len(params):
        raise ValueError(f"got {len(weights)} weight tensors for {len(params)} parameters")
    b1 = batch_size // 2
    b2 = batch_size - b1
    keep = [i for i, p in enumerate(params) if p.requires_grad]
    params = [params[i] for i in keep]
    weights = None if weights is None else [weights[i] for i in keep]
    loss1 = loss_of(slice(0, b1))
    (loss1 * (b1 / batch_size)).backward()
    first = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    loss2 = loss_of(slice(b1, batch_size))
    (loss2 * (b2 / batch_size)).backward()
    full = [p.grad.detach() if p.grad is not None else torch.zeros_like(p) for p in params]
    # first = (b1/B)·G1 and full − first = (b2/B)·G2, with G1, G2 the two half-batch mean gradients.
    sq1 = [s * (batch_size / b1) ** 2 for s in _sq_norms(first, weights)]
    sq2 = [s * (batch_size / b2) ** 2 for s in _sq_norms([f - a for f, a in zip(full, first)], weights)]
    sq_full = _sq_norms(full, weights)
    loss = (loss1.detach().double() * b1 + loss2.detach().double() * b2) / batch_size
    loss_value, *values = torch.stack([loss, *sq1, *sq2, *sq_full]).tolist()
    n = len(sq1)  # 1 plain, or 2: plain and weighted
    b_small = 2 / (1 / b1 + 1 / b2)
    norms = [
        GradientNorms(b_small=b_small, sq_small=(s1 + s2) / 2, b_big=float(batch_size), sq_big=s_full)
        for s1, s2, s_full in zip(values[:n], values[n:2 * n], values[2 * n:])
    ]
    return loss_value, norms[0], norms[1] if weights is not None else None


__all__ = ["GradientNorms", "NoiseScale", "NoiseScaleEstimator", "adam_weights", "backward_two_halves"]
