"""One question's comparisons as one family: difference and equivalence adjusted together
(:func:`jobs.report.stats.family_adjust`) and simultaneous intervals, checked by simulation with
known truth (family-wise error rate, simultaneous coverage)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from jobs.report import stats as S

ALPHA = S.ALPHA
MARGIN = 0.01  # bits/dim
FAMILIES = 2000
TOLERANCE = 3 * math.sqrt(ALPHA * (1 - ALPHA) / FAMILIES)  # 3 binomial s.e. of a rate α over FAMILIES


def paired_stats(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(estimate, se, df) of the paired t over the last axis (seeds), vectorised."""
    d = a - b
    n = d.shape[-1]
    return d.mean(-1), d.std(-1, ddof=1) / math.sqrt(n), n - 1


def welch_stats(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(estimate, se, df) of Welch's t over the last axis, vectorised."""
    va, vb = a.var(-1, ddof=1) / a.shape[-1], b.var(-1, ddof=1) / b.shape[-1]
    df = (va + vb) ** 2 / (va**2 / (a.shape[-1] - 1) + vb**2 / (b.shape[-1] - 1))
    return a.mean(-1) - b.mean(-1), np.sqrt(va + vb), df


def p_values(est, se, df) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided difference p and TOST p against ±MARGIN, as :class:`TwoArm` computes them."""
    p = 2 * sps.t.sf(np.abs(est / se), df)
    tost = np.maximum(sps.t.cdf((est - MARGIN) / se, df), sps.t.sf((est + MARGIN) / se, df))
    return p, tost


def family(rng, deltas, n, sd, families=FAMILIES, shared=False) -> tuple[np.ndarray, np.ndarray]:
    """Per-seed values of ``len(deltas)`` arms and their baselines, ``families`` times: arm i has true
    difference ``deltas[i]`` (in margins) from its baseline; ``sd`` (in margins) is the s.d. of a
    per-seed difference. ``shared``: every arm against one baseline (each larger batch vs the
    smallest), which correlates the comparisons."""
    m = len(deltas)
    noise = sd * MARGIN / math.sqrt(2)
    a = MARGIN * np.asarray(deltas, dtype=float)[:, None] + rng.normal(0, noise, (families, m, n))
    b = rng.normal(0, noise, (families, 1 if shared else m, n))
    return a, np.broadcast_to(b, a.shape)


def test_the_vectorised_simulation_is_the_stats_module():
    a, b = family(np.random.default_rng(0), [0.0, 1.0, 3.0], 4, 0.5, families=5)
    est, se, df = paired_stats(a, b)
    p, tost = p_values(est, se, df)
    for f in range(5):
        for i in range(3):
            t = S.paired(a[f, i], b[f, i])
            assert (t.estimate, t.se, t.df) == pytest.approx((est[f, i], se[f, i], df))
            assert (t.p, t.tost_p(MARGIN)) == pytest.approx((p[f, i], tost[f, i]))
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, (5, 2, 3)), rng.normal(0, 3, (5, 2, 6))
    est, se, df = welch_stats(a, b)
    for f in range(5):
        w = S.welch(a[f, 1], b[f, 1])
        assert (w.estimate, w.se, w.df) == pytest.approx((est[f, 1], se[f, 1], df[f, 1]))


def test_family_adjust_by_hand():
    diff, tost = S.family_adjust([0.01, 0.04, 0.03], [0.2, 0.002, math.nan])
    # order t1 d0 d2 d1 t0; comparisons with an unrejected hypothesis: 3, 3, 3, 2, 1
    assert diff == pytest.approx([0.03, 0.09, 0.09])
    assert tost == pytest.approx([0.2, 0.006, math.nan], nan_ok=True)
    holm = S.holm([0.01, 0.04, 0.03, 0.2, 0.002])  # Holm over the 5: 0.04, 0.09, 0.09, 0.2, 0.01
    assert holm == pytest.approx([0.04, 0.09, 0.09, 0.2, 0.01])
    assert S.family_adjust([], []) == ([], [])
    assert np.isnan(S.family_adjust([math.nan], [math.nan])).all()
    assert S.family_adjust([0.9, 0.8], [0.7, 0.6]) == ([1.0, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError):
        S.family_adjust([0.1, 0.2], [0.3])


def test_family_adjust_is_holm_without_equivalence_and_never_weaker_than_holm_over_2m():
    rng = np.random.default_rng(2)
    for _ in range(500):
        m = int(rng.integers(1, 8))
        diff = rng.uniform(0, 0.2, m) ** rng.uniform(0.5, 3)
        tost = rng.uniform(0, 0.2, m) ** rng.uniform(0.5, 3)
        diff[rng.uniform(size=m) < 0.1] = math.nan
        tost[rng.uniform(size=m) < 0.2] = math.nan
        nan = np.full(m, math.nan)
        assert S.family_adjust(diff, nan)[0] == pytest.approx(S.holm(diff), nan_ok=True)
        ours = np.concatenate(S.family_adjust(diff, tost))
        holm = np.asarray(S.holm(np.concatenate([diff, tost])))
        assert np.array_equal(np.isnan(ours), np.isnan(holm))
        assert np.all(ours[np.isfinite(ours)] <= holm[np.isfinite(holm)] + 1e-15)
        order = np.argsort(np.concatenate([diff, tost]))
        finite = ours[order][np.isfinite(ours[order])]
        assert np.all(np.diff(finite) >= 0) and np.all(finite <= 1)  # monotone in p, capped at 1


# (true differences in margins, seeds, s.d. of a per-seed difference in margins, one shared baseline)
CONFIGS = {
    "m=1, all Δ=0": ([0.0], 3, 1.0, False),
    "m=3, all Δ=0": ([0.0] * 3, 4, 0.2, False),
    "m=6, all Δ=0, shared baseline": ([0.0] * 6, 5, 0.3, True),
    "m=1, |Δ| at the margin": ([1.0], 5, 0.2, False),
    "m=3, |Δ| at the margin": ([1.0, -1.0, 1.0], 3, 0.5, False),
    "m=6, |Δ| at the margin": ([1.0, -1.0] * 3, 4, 0.2, False),
    "m=3, mixture": ([0.0, 1.0, 3.0], 4, 0.3, False),
    "m=6, mixture": ([0.0, 0.0, -1.0, 1.0, 0.5, 5.0], 3, 0.5, False),
    "m=6, mixture, shared baseline": ([0.0, -1.0, 0.5, 2.0, -4.0, 1.0], 5, 0.2, True),
}


def family_wise_error(deltas, n, sd, shared, seed=0) -> float:
    """Share of simulated families in which :func:`family_adjust` rejects at least one true null."""
    rng = np.random.default_rng(seed)
    p, tost = p_values(*paired_stats(*family(rng, deltas, n, sd, shared=shared)))
    deltas = np.asarray(deltas)
    true_diff, true_tost = deltas == 0, np.abs(deltas) >= 1
    errors = 0
    for p_f, tost_f in zip(p, tost):
        adj_p, adj_tost = (np.asarray(x) for x in S.family_adjust(p_f, tost_f))
        errors += bool(np.any((adj_p < ALPHA) & true_diff) or np.any((adj_tost < ALPHA) & true_tost))
    return errors / len(p)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_family_wise_error_rate_is_at_most_alpha(name):
    deltas, n, sd, shared = CONFIGS[name]
    assert family_wise_error(deltas, n, sd, shared) <= ALPHA + TOLERANCE


@pytest.mark.parametrize("m, n_a, n_b, test", [(3, 4, 4, "paired"), (6, 3, 3, "paired"),
                                               (3, 3, 5, "Welch"), (6, 4, 3, "Welch")])
def test_simultaneous_intervals_cover_all_m_differences(m, n_a, n_b, test):
    rng = np.random.default_rng(m + n_a)
    deltas = rng.normal(0, 2, m)
    a, b = family(rng, deltas, n_a, 1.0, shared=True)
    if test == "paired":
        est, se, df = paired_stats(a, b)
        df = np.full(est.shape, float(df))
    else:  # a baseline of its own size and twice the spread, shared by the m comparisons
        est, se, df = welch_stats(a, rng.normal(0, 2 * MARGIN, (FAMILIES, 1, n_b)))
    covered = unadjusted = 0
    for f in range(FAMILIES):
        tests = [S.TwoArm(est[f, i], se[f, i], df[f, i], math.nan, math.nan, test, n_a, n_b) for i in range(m)]
        truth = MARGIN * deltas
        covered += all(lo <= d <= hi for t, d in zip(tests, truth) for lo, hi in [S.simultaneous_interval(t, m)])
        unadjusted += all(t.ci95[0] <= d <= t.ci95[1] for t, d in zip(tests, truth))
    assert covered / FAMILIES >= 1 - ALPHA - TOLERANCE
    assert unadjusted < covered
