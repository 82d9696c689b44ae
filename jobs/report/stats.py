"""The statistics behind the verdict: t intervals over seeds, two-arm tests, Holm, TOST.

Every function takes plain numbers (one value per seed) and returns frozen dataclasses; nothing
here knows about MLflow or pandas. The unit of replication is the **seed**: a setting's
uncertainty is its between-seed spread, so a mean over ``n`` seeds has a t interval on ``n − 1``
degrees of freedom, and a comparison of two settings is

* a **paired-by-seed t** when both arms ran the same seeds (same initial weights and data order),
  on the per-seed differences (``n − 1`` df), else
* **Welch's t** with the Welch–Satterthwaite degrees of freedom.

``estimate`` is always ``mean(a) − mean(b)``. A family of comparisons is corrected with
Holm–Bonferroni (:func:`holm`); the *adjusted* interval of a comparison is its t interval at the
level ``1 − α·p/p_holm``, which excludes 0 exactly when ``p_holm < α`` (for Bonferroni this is
the familiar ``1 − α/m``). Equivalence is two one-sided tests (TOST) against ``±margin``.
See docs/STATISTICS.md for the reasoning and :func:`conclude` for the four conclusions.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

ALPHA = 0.05
CONCLUSIONS = ("different", "equivalent", "inconclusive", "not_tested")


def finite(values) -> np.ndarray:
    """The finite values of ``values`` as a float64 array (NaN/inf/None dropped)."""
    v = np.asarray([np.nan if x is None else x for x in values], dtype=float)
    return v[np.isfinite(v)]


@dataclass(frozen=True)
class MeanCI:
    """Mean over ``n`` values with its t interval at ``level`` (``lo``/``hi`` NaN when ``n < 2``)."""

    mean: float
    sd: float
    n: int
    lo: float
    hi: float
    level: float = 0.95

    @property
    def known(self) -> bool:
        return self.n >= 2 and math.isfinite(self.lo)

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2 if self.known else math.nan


def mean_ci(values, level: float = 0.95) -> MeanCI:
    """Mean of the finite ``values`` and its two-sided t interval (df = n − 1)."""
    v = finite(values)
    if v.size == 0:
        return MeanCI(math.nan, math.nan, 0, math.nan, math.nan, level)
    mean = float(v.mean())
    if v.size < 2:
        return MeanCI(mean, math.nan, 1, math.nan, math.nan, level)
    sd = float(v.std(ddof=1))
    half = float(sps.t.ppf(0.5 + level / 2, v.size - 1)) * sd / math.sqrt(v.size)
    return MeanCI(mean, sd, int(v.size), mean - half, mean + half, level)


@dataclass(frozen=True)
class TwoArm:
    """A two-arm t test of ``mean(a) − mean(b)``.

    ``test``: ``"paired t"`` or ``"Welch t"`` (``None`` when not testable: an arm has < 2 values,
    or no spread at all). ``se``/``df``/``t``/``p`` are NaN then. ``ci95`` is the unadjusted 95 %
    t interval of the estimate.
    """

    estimate: float
    se: float
    df: float
    t: float
    p: float
    test: str | None
    n_a: int
    n_b: int

    @property
    def testable(self) -> bool:
        return self.test is not None

    def interval(self, level: float) -> tuple[float, float]:
        """Two-sided t interval of the estimate at ``level`` ((NaN, NaN) when not testable)."""
        if not self.testable:
            return math.nan, math.nan
        if self.se == 0:
            return self.estimate, self.estimate
        half = float(sps.t.ppf(0.5 + level / 2, self.df)) * self.se
        return self.estimate - half, self.estimate + half

    @property
    def ci95(self) -> tuple[float, float]:
        return self.interval(0.95)

    def tost_p(self, margin: float) -> float:
        """p of the two one-sided tests of |true difference| < ``margin`` (NaN when not testable)."""
        if not self.testable or not margin > 0:
            return math.nan
        if self.se == 0:
            return 0.0 if abs(self.estimate) < margin else 1.0
        upper = float(sps.t.cdf((self.estimate - margin) / self.se, self.df))   # H0: diff ≥ +margin
        lower = float(sps.t.sf((self.estimate + margin) / self.se, self.df))    # H0: diff ≤ −margin
        return max(upper, lower)


def _untestable(a: np.ndarray, b: np.ndarray) -> TwoArm:
    est = float(a.mean() - b.mean()) if a.size and b.size else math.nan
    return TwoArm(est, math.nan, math.nan, math.nan, math.nan, None, int(a.size), int(b.size))


def welch(a, b) -> TwoArm:
    """Welch's t test (unequal variances, Welch–Satterthwaite df) of ``mean(a) − mean(b)``."""
    a, b = finite(a), finite(b)
    if a.size < 2 or b.size < 2:
        return _untestable(a, b)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    est = float(a.mean() - b.mean())
    if se == 0:
        return TwoArm(est, 0.0, math.inf, math.nan, 0.0 if est else 1.0, "Welch t", int(a.size), int(b.size))
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    t = est / se
    return TwoArm(est, se, float(df), t, float(2 * sps.t.sf(abs(t), df)), "Welch t", int(a.size), int(b.size))


def paired(a: Sequence[float], b: Sequence[float]) -> TwoArm:
    """Paired t test on the per-pair differences ``a[i] − b[i]`` (pairs with a non-finite side dropped)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired: arms of {a.size} and {b.size} values; pairs need equal lengths")
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    n = int(d.size)
    if n < 2:
        return _untestable(finite(a), finite(b))
    est = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(n))
    if se == 0:
        return TwoArm(est, 0.0, float(n - 1), math.nan, 0.0 if est else 1.0, "paired t", n, n)
    t = est / se
    return TwoArm(est, se, float(n - 1), t, float(2 * sps.t.sf(abs(t), n - 1)), "paired t", n, n)


def one_sample(a, reference: float) -> TwoArm:
    """One-sample t test of ``mean(a) − reference`` for a published value without uncertainty
    (``n_b`` is 0; ``a`` needs ≥ 2 finite values to be testable)."""
    a = finite(a)
    if a.size < 2:
        return TwoArm(float(a.mean() - reference) if a.size else math.nan, math.nan, math.nan, math.nan, math.nan,
                      None, int(a.size), 0)
    est = float(a.mean() - reference)
    se = float(a.std(ddof=1) / math.sqrt(a.size))
    if se == 0:
        return TwoArm(est, 0.0, float(a.size - 1), math.nan, 0.0 if est else 1.0, "one-sample t", int(a.size), 0)
    t = est / se
    return TwoArm(est, se, float(a.size - 1), t, float(2 * sps.t.sf(abs(t), a.size - 1)), "one-sample t",
                  int(a.size), 0)


def by_seed(a: dict[int, float], b: dict[int, float]) -> TwoArm:
    """Paired-by-seed t when both arms hold the same seeds (at least 2), else Welch's t.

    ``a``/``b``: ``{seed: value}``; a non-finite value (a diverged seed) leaves its arm's seed set,
    so an arm that lost a seed is compared unpaired.
    """
    fa = {s: v for s, v in a.items() if v is not None and math.isfinite(v)}
    fb = {s: v for s, v in b.items() if v is not None and math.isfinite(v)}
    if set(fa) == set(fb) and len(fa) >= 2:
        seeds = sorted(fa)
        return paired([fa[s] for s in seeds], [fb[s] for s in seeds])
    return welch(list(fa.values()), list(fb.values()))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input order; NaN entries stay NaN and do not count
    towards the family size."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def adjusted_interval(test: TwoArm, p_holm: float, alpha: float = ALPHA) -> tuple[float, float]:
    """The interval at level ``1 − α·p/p_holm``: it excludes 0 exactly when ``p_holm < α``."""
    if not test.testable or not math.isfinite(p_holm):
        return math.nan, math.nan
    ratio = test.p / p_holm if p_holm > 0 else 1.0
    return test.interval(1 - alpha * min(1.0, ratio))


def conclude(test: TwoArm, p_holm: float, p_tost_holm: float, alpha: float = ALPHA) -> str:
    """One of :data:`CONCLUSIONS`: ``not_tested`` (an arm has < 2 seeds), ``different`` (Holm-adjusted
    p < α, i.e. the adjusted interval excludes 0), ``equivalent`` (Holm-adjusted TOST p < α: the
    difference lies within the margin), else ``inconclusive``."""
    if not test.testable:
        return "not_tested"
    if p_holm < alpha:
        return "different"
    if p_tost_holm < alpha:
        return "equivalent"
    return "inconclusive"


@dataclass(frozen=True)
class SlopeTest:
    """Late-training slope of validation BPD over seeds (bits/dim per epoch).

    One OLS slope per seed over its own late window; their spread across seeds is the
    uncertainty (it absorbs the autocorrelation of a curve's successive validations, which a
    single fit's residual s.e. ignores). ``state``: ``improving`` (slope < 0 by its t test and the
    projected gain ≥ ``min_gain``), ``worsening``, ``flat`` (projected change within ±``min_gain``
    by TOST), ``inconclusive``, or ``not_tested`` (< 2 seeds with a slope).
    """

    slope: MeanCI
    p: float
    p_flat: float
    gain: float
    state: str


def slope_test(slopes, horizon: float, min_gain: float, alpha: float = ALPHA) -> SlopeTest:
    """Test per-seed ``slopes`` (bits/dim per epoch); ``gain`` = −slope × ``horizon`` epochs is the
    projected improvement over that many further epochs, compared with ``min_gain`` (bits/dim)."""
    est = mean_ci(slopes)
    if not est.known:
        return SlopeTest(est, math.nan, math.nan, -est.mean * horizon, "not_tested")
    se = est.sd / math.sqrt(est.n)
    df = est.n - 1
    gain = -est.mean * horizon
    if se == 0:
        p = 0.0 if est.mean else 1.0
        p_flat = 0.0 if abs(gain) < min_gain else 1.0
    else:
        p = float(2 * sps.t.sf(abs(est.mean) / se, df))
        bound = min_gain / horizon  # |slope| below this ⇔ |projected change| below min_gain
        p_flat = max(float(sps.t.cdf((est.mean - bound) / se, df)), float(sps.t.sf((est.mean + bound) / se, df)))
    if p < alpha and gain >= min_gain:
        state = "improving"
    elif p < alpha and -gain >= min_gain:
        state = "worsening"
    elif p_flat < alpha:
        state = "flat"
    else:
        state = "inconclusive"
    return SlopeTest(est, p, p_flat, gain, state)


__all__ = ["ALPHA", "CONCLUSIONS", "MeanCI", "TwoArm", "SlopeTest", "mean_ci", "welch", "paired", "one_sample", "by_seed", "holm",
           "adjusted_interval", "conclude", "slope_test", "finite"]
