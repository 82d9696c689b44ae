"""Power of the report's seed comparisons, known before a GPU-hour is spent (scipy only).

A comparison of two arms over ``n`` seeds, paired by seed, is a one-sample t test on the ``n``
per-seed differences (``n − 1`` df; :mod:`jobs.report.stats`). Throughout, ``sd`` is the s.d. of
one per-seed difference and every difference, margin and s.d. is in bits/dim; for two arms whose
seeds vary independently, each with s.d. σ over seeds, ``sd`` is √2·σ.

* :func:`t_power` — the two-sided t test of difference 0: exact, from the noncentral t.
* :func:`tost_power` — two one-sided t tests (TOST) against ``±margin``: exact. Given the sample
  s.d. ``s``, both tests reject when the sample mean lies in ``±(margin − t·s/√n)``; the
  probability of that (normal) is integrated over the distribution of ``s`` (χ with ``n − 1`` df),
  in the χ quantile so that the integrand is bounded and smooth (Owen 1965).
* :func:`min_detectable_difference`, :func:`seeds_for_tost` — their inverses, for ``--dry-run``.
"""
from __future__ import annotations

import math

from scipy import integrate, optimize
from scipy import stats as sps

ALPHA = 0.05
POWER = 0.8
MAX_SEEDS = 1000  # seeds_for_tost looks no further


def _check(sd: float, alpha: float) -> None:
    if not sd > 0:
        raise ValueError(f"sd={sd!r}: must be a positive number (bits/dim)")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha={alpha!r}: must be in (0, 0.5)")


def t_power(n: int, sd: float, diff: float, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t test (level ``alpha``) over ``n`` seeds when the true mean
    difference is ``diff`` (bits/dim); 0 for ``n < 2`` (nothing is tested)."""
    _check(sd, alpha)
    if n < 2:
        return 0.0
    df = n - 1
    crit = sps.t.ppf(1 - alpha / 2, df)
    shift = diff * math.sqrt(n) / sd
    # P(T < −c) as P(−T > c): scipy's nct.cdf gives NaN far in the lower tail
    return float(sps.nct.sf(crit, df, shift) + sps.nct.sf(crit, df, -shift))


def tost_power(n: int, sd: float, margin: float, alpha: float = ALPHA, true_diff: float = 0.0) -> float:
    """Power of the paired TOST (each one-sided test at level ``alpha``) to show equivalence within
    ``±margin`` (bits/dim) over ``n`` seeds when the true mean difference is ``true_diff``; 0 for
    ``n < 2``."""
    _check(sd, alpha)
    if not margin > 0:
        raise ValueError(f"margin={margin!r}: must be a positive number (bits/dim)")
    if n < 2:
        return 0.0
    df = n - 1
    crit = sps.t.ppf(1 - alpha, df)
    upper = (margin - true_diff) * math.sqrt(n) / sd
    lower = (-margin - true_diff) * math.sqrt(n) / sd
    w_max = (upper - lower) / (2 * crit)  # s/sd beyond which the interval ±(margin − t·s/√n) is empty
    p_max = sps.chi.cdf(w_max * math.sqrt(df), df)

    def inside(p: float) -> float:
        w = sps.chi.ppf(p, df) / math.sqrt(df)
        return max(sps.norm.cdf(upper - crit * w) - sps.norm.cdf(lower + crit * w), 0.0)

    value, _ = integrate.quad(inside, 0.0, p_max, epsabs=1e-10, epsrel=1e-8, limit=200)
    return min(max(float(value), 0.0), 1.0)


def min_detectable_difference(n: int, sd: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true mean difference (bits/dim) that the two-sided paired t test at level
    ``alpha`` over ``n`` seeds detects with probability ``power``; ``inf`` for ``n < 2``."""
    _check(sd, alpha)
    if not alpha < power < 1:
        raise ValueError(f"power={power!r}: must be in (alpha, 1)")
    if n < 2:
        return math.inf
    hi = 1.0
    while t_power(n, 1.0, hi / math.sqrt(n), alpha) < power:
        hi *= 2
    shift = optimize.brentq(lambda s: t_power(n, 1.0, s / math.sqrt(n), alpha) - power, 0.0, hi, xtol=1e-10)
    return shift * sd / math.sqrt(n)


def seeds_for_tost(sd: float, margin: float, power: float = POWER, alpha: float = ALPHA, true_diff: float = 0.0,
                   max_n: int = MAX_SEEDS) -> int | None:
    """The fewest seeds (≥ 2) at which the paired TOST shows equivalence within ``±margin``
    (bits/dim) with probability ``power`` when the true difference is ``true_diff``; None when
    more than ``max_n`` would be needed. Found by bisection: the power grows with ``n`` except for
    a dip at a few seeds while it is still small (below 0.05 when ``sd`` is twice the margin or
    more), so the first ``n`` that reaches ``power`` is the one bisection finds."""
    if not 0 < power < 1:
        raise ValueError(f"power={power!r}: must be in (0, 1)")
    if tost_power(max_n, sd, margin, alpha, true_diff) < power:
        return None
    lo, hi = 1, max_n  # tost_power(lo) < power ≤ tost_power(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if tost_power(mid, sd, margin, alpha, true_diff) >= power:
            hi = mid
        else:
            lo = mid
    return hi


__all__ = ["ALPHA", "POWER", "MAX_SEEDS", "t_power", "tost_power", "min_detectable_difference", "seeds_for_tost"]
