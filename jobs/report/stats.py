"""The statistics behind the verdict: t intervals over seeds, two-arm tests, family-wise
adjustment, TOST, simultaneous intervals, divergence counts, convergence of a curve.

Every function takes plain numbers (one value per seed) and returns frozen dataclasses or floats;
nothing here knows about MLflow or pandas. The unit of replication is the **seed**: a setting's
uncertainty is its between-seed spread, so a mean over ``n`` seeds has a t interval on ``n − 1``
degrees of freedom, and a comparison of two settings is

* a **paired-by-seed t** when both arms ran the same seeds (same initial weights and data order),
  on the per-seed differences (``n − 1`` df), else
* **Welch's t** with the Welch–Satterthwaite degrees of freedom.

``estimate`` is always ``mean(a) − mean(b)`` (the arms' units, bits/dim for BPD). One question's
``m`` comparisons are one family: each has a difference null (Δ = 0) and an equivalence null
(|Δ| ≥ margin, two one-sided tests, TOST), and :func:`family_adjust` adjusts all ``2m`` together
(Holm's step-down with Shaffer's logical restriction: at most one null of a pair is true), so the
family-wise error rate over both kinds of conclusion is ≤ α. :func:`simultaneous_interval` is the
matching Bonferroni interval (level ``1 − α/m``): the ``m`` intervals cover all ``m`` true
differences together with probability ≥ ``1 − α``. Divergence counts are compared with Fisher's
exact test (:func:`divergence_test`); a curve is ``converged`` only when the upper confidence bound
of its remaining improvement is below a minimum gain (:func:`slope_test`).
See docs/STATISTICS.md for the reasoning and :func:`conclude` for the four conclusions.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

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


def family_adjust(p_diff: Sequence[float], p_tost: Sequence[float]) -> tuple[list[float], list[float]]:
    """Adjusted p-values of one question's ``2m`` hypotheses, with family-wise error rate ≤ α.

    Comparison ``i`` has a difference null (Δ_i = 0, p ``p_diff[i]``) and an equivalence null
    (|Δ_i| ≥ margin, TOST p ``p_tost[i]``); at most one of the pair is true. Holm's step-down over
    all ``2m`` p-values, smallest first, with Shaffer's logical restriction: at each step the
    divisor is the number of comparisons that still have an unrejected hypothesis — at most one
    true null each, so never fewer than the true nulls left once only false ones were rejected
    (Shaffer 1986). Never larger than Holm over the ``2m``; equal to :func:`holm` of ``p_diff``
    when every ``p_tost`` is NaN. Running maximum, capped at 1; NaN entries stay NaN and do not
    count. Returns ``(p_diff adjusted, p_tost adjusted)`` in the input order.
    """
    diff, tost = np.asarray(p_diff, dtype=float), np.asarray(p_tost, dtype=float)
    if diff.shape != tost.shape or diff.ndim != 1:
        raise ValueError(f"family_adjust: {diff.size} difference and {tost.size} TOST p-values: one pair per "
                         "comparison")
    m = diff.size
    p = np.concatenate([diff, tost])
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    unrejected = np.bincount(idx % max(m, 1), minlength=m)  # finite hypotheses not yet rejected, per comparison
    running = 0.0
    for i in idx[np.argsort(p[idx], kind="stable")]:
        running = max(running, min(1.0, np.count_nonzero(unrejected) * p[i]))
        out[i] = running
        unrejected[i % m] -= 1
    return out[:m].tolist(), out[m:].tolist()


def simultaneous_interval(test: TwoArm, m: int, alpha: float = ALPHA) -> tuple[float, float]:
    """The t interval of ``test``'s estimate at level ``1 − α/m`` (Bonferroni, the estimate's units):
    the intervals of a family of ``m`` comparisons cover all ``m`` true differences together with
    probability ≥ ``1 − α``, whatever their dependence. (NaN, NaN) when not testable."""
    if m < 1:
        raise ValueError(f"simultaneous_interval: a family of {m} comparisons")
    return test.interval(1 - alpha / m)


def conclude(test: TwoArm, p_holm: float, p_tost_holm: float, alpha: float = ALPHA) -> str:
    """One of :data:`CONCLUSIONS`: ``not_tested`` (an arm has < 2 seeds), ``different`` (adjusted
    difference p < α), ``equivalent`` (adjusted TOST p < α: the difference lies within the margin),
    else ``inconclusive``. ``p_holm``/``p_tost_holm``: the comparison's adjusted p-values, e.g.
    from :func:`family_adjust`."""
    if not test.testable:
        return "not_tested"
    if p_holm < alpha:
        return "different"
    if p_tost_holm < alpha:
        return "equivalent"
    return "inconclusive"


def divergence_test(k_a: int, n_a: int, k_b: int, n_b: int) -> float:
    """Two-sided p of Fisher's exact test that arms *a* and *b* diverge equally often: ``k_a`` of
    ``n_a`` trials diverged in *a*, ``k_b`` of ``n_b`` in *b* (counts of trials). NaN when an arm
    has no trials (nothing to compare)."""
    for k, n in ((k_a, n_a), (k_b, n_b)):
        if not 0 <= k <= n:
            raise ValueError(f"divergence_test: {k} diverged of {n} trials")
    if n_a == 0 or n_b == 0:
        return math.nan
    return float(sps.fisher_exact([[k_a, n_a - k_a], [k_b, n_b - k_b]], alternative="two-sided").pvalue)


SLOPE_STATES = ("improving", "converged", "worsening", "inconclusive", "not_tested")


@dataclass(frozen=True)
class SlopeTest:
    """Late-training slope of validation BPD over seeds.

    ``slope``: mean of one OLS slope per seed over its own late window (bits/dim per epoch) with
    its t interval; their spread across seeds is the uncertainty (it absorbs the autocorrelation
    of a curve's successive validations, which a single fit's residual s.e. ignores). ``p``: two-
    sided t test of slope = 0. ``gain``: the projected improvement over the horizon, −slope ×
    horizon (bits/dim; negative when getting worse); ``gain_upper``: its one-sided (1 − α) upper
    confidence bound (bits/dim). ``p_converged``: one-sided t test of the null "gain ≥ min_gain"
    (< α exactly when ``gain_upper`` < min_gain); at most one of its null and slope = 0 is true, so
    a family of slope tests is adjusted with :func:`family_adjust`. ``p``, ``p_converged``,
    ``gain_upper``: NaN when not tested. ``state``: one of :data:`SLOPE_STATES`, see
    :func:`slope_state`, here from the unadjusted p-values.
    """

    slope: MeanCI
    p: float
    p_converged: float
    gain: float
    gain_upper: float
    state: str


def slope_state(test: SlopeTest, p: float, p_converged: float, min_gain: float, alpha: float = ALPHA) -> str:
    """The state of ``test`` from its slope p and convergence p (``test.p``/``test.p_converged``, or
    family-adjusted ones); the first rule that holds:

    * ``not_tested``: fewer than 2 seeds with a slope;
    * ``worsening``: slope > 0 with p < α and a projected loss (−gain) ≥ ``min_gain`` (bits/dim);
    * ``converged``: ``p_converged`` < α — an equivalence-style gate: a curve whose remaining
      improvement is at least ``min_gain`` is called converged with probability ≤ α;
    * ``improving``: slope < 0 with p < α and gain ≥ ``min_gain``;
    * ``inconclusive`` otherwise.
    """
    if not test.slope.known:
        return "not_tested"
    if test.slope.mean > 0 and p < alpha and -test.gain >= min_gain:
        return "worsening"
    if p_converged < alpha:
        return "converged"
    if test.slope.mean < 0 and p < alpha and test.gain >= min_gain:
        return "improving"
    return "inconclusive"


def slope_test(slopes, horizon: float, min_gain: float, alpha: float = ALPHA) -> SlopeTest:
    """Test per-seed ``slopes`` (bits/dim per epoch) over ``horizon`` further epochs against
    ``min_gain`` (bits/dim): ``gain`` = −mean × horizon, ``gain_upper`` = −(mean − t₁₋α,ₙ₋₁·se) ×
    horizon, ``p_converged`` = P(T ≥ (mean + min_gain/horizon)/se); state by :func:`slope_state`."""
    est = mean_ci(slopes)
    gain = -est.mean * horizon
    if not est.known:
        return SlopeTest(est, math.nan, math.nan, gain, math.nan, "not_tested")
    se = est.sd / math.sqrt(est.n)
    df = est.n - 1
    if se == 0:
        p = 0.0 if est.mean else 1.0
        p_converged = 0.0 if gain < min_gain else 1.0
        gain_upper = gain
    else:
        p = float(2 * sps.t.sf(abs(est.mean) / se, df))
        p_converged = float(sps.t.sf((est.mean + min_gain / horizon) / se, df))
        gain_upper = -(est.mean - float(sps.t.ppf(1 - alpha, df)) * se) * horizon
    test = SlopeTest(est, p, p_converged, gain, gain_upper, "not_tested")
    return replace(test, state=slope_state(test, p, p_converged, min_gain, alpha))


__all__ = ["ALPHA", "CONCLUSIONS", "SLOPE_STATES", "MeanCI", "TwoArm", "SlopeTest", "mean_ci", "welch", "paired",
           "one_sample", "by_seed", "holm", "family_adjust", "simultaneous_interval", "conclude",
           "divergence_test", "slope_state", "slope_test", "finite"]
