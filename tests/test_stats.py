"""The verdict's statistics against scipy and against simulations with known truth."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from jobs.report import stats as S


def test_mean_ci_is_the_t_interval():
    ci = S.mean_ci([1.0, 2.0, 3.0, float("nan")])
    half = sps.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)
    assert (ci.n, ci.mean, ci.sd) == (3, 2.0, 1.0)
    assert (ci.lo, ci.hi) == pytest.approx((2 - half, 2 + half))
    one = S.mean_ci([5.0])
    assert one.n == 1 and one.mean == 5.0 and not one.known and math.isnan(one.lo)


def test_mean_ci_covers_the_truth_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    draws = rng.normal(3.0, 0.2, (4000, 3))
    hits = sum(ci.lo <= 3.0 <= ci.hi for ci in map(S.mean_ci, draws))
    assert 0.935 < hits / len(draws) < 0.965  # binomial s.e. 0.0034 around 0.95


def test_welch_and_paired_agree_with_scipy():
    a, b = [3.1, 3.2, 3.05, 3.3], [3.0, 3.02, 2.98]
    w, ref = S.welch(a, b), sps.ttest_ind(a, b, equal_var=False)
    assert w.test == "Welch t" and w.p == pytest.approx(ref.pvalue) and w.df == pytest.approx(ref.df)
    assert w.estimate == pytest.approx(np.mean(a) - np.mean(b))
    x, y = [1.0, 2.0, 3.5], [0.5, 1.8, 3.0]
    p, ref = S.paired(x, y), sps.ttest_rel(x, y)
    assert p.test == "paired t" and p.p == pytest.approx(ref.pvalue) and p.df == 2
    lo, hi = p.ci95
    assert (lo, hi) == pytest.approx(tuple(ref.confidence_interval(0.95)))


def test_by_seed_pairs_only_identical_seed_sets():
    a = {0: 3.0, 1: 3.1, 2: 3.3}
    assert S.by_seed(a, {0: 2.9, 1: 3.0, 2: 3.15}).test == "paired t"
    assert S.by_seed(a, {0: 2.9, 1: 3.0, 3: 3.15}).test == "Welch t"
    diverged = S.by_seed(a, {0: 2.9, 1: 3.0, 2: float("nan")})
    assert diverged.test == "Welch t" and diverged.n_b == 2
    assert not S.by_seed({0: 3.0}, {0: 2.9, 1: 3.0}).testable


def test_welch_type_one_error_is_alpha():
    rng = np.random.default_rng(1)
    rejections = sum(S.welch(rng.normal(0, 1, 3), rng.normal(0, 3, 4)).p < 0.05 for _ in range(3000))
    assert 0.035 < rejections / 3000 < 0.065


def test_holm_step_down():
    assert S.holm([0.01, 0.04, 0.03, float("nan"), 0.005]) == pytest.approx([0.03, 0.06, 0.06, math.nan, 0.02],
                                                                             nan_ok=True)
    assert S.holm([]) == []


def test_adjusted_interval_excludes_zero_exactly_when_holm_rejects():
    rng = np.random.default_rng(2)
    tests = [S.welch(rng.normal(d, 0.05, 3), rng.normal(0, 0.05, 3)) for d in np.linspace(0, 0.15, 12)]
    adjusted = S.holm([t.p for t in tests])
    for t, p_holm in zip(tests, adjusted):
        lo, hi = S.adjusted_interval(t, p_holm)
        assert (lo > 0 or hi < 0) == (p_holm < 0.05)
        assert hi - lo >= t.ci95[1] - t.ci95[0] - 1e-12


def test_tost_equivalence_and_the_four_conclusions():
    rng = np.random.default_rng(3)
    close = S.welch(3.0 + rng.normal(0, 0.002, 6), 3.001 + rng.normal(0, 0.002, 6))
    assert close.tost_p(0.01) < 0.05 and S.conclude(close, close.p, close.tost_p(0.01)) == "equivalent"
    far = S.welch(3.1 + rng.normal(0, 0.002, 6), 3.0 + rng.normal(0, 0.002, 6))
    assert S.conclude(far, far.p, far.tost_p(0.01)) == "different"
    vague = S.welch([3.0, 3.2], [3.05, 2.9])
    assert S.conclude(vague, vague.p, vague.tost_p(0.01)) == "inconclusive"
    single = S.welch([3.0], [3.1, 3.2])
    assert S.conclude(single, math.nan, math.nan) == "not_tested"


def test_slope_test_states():
    assert S.slope_test([-0.004, -0.0041, -0.0039], 6.0, 1e-3).state == "improving"
    assert S.slope_test([1e-6, -2e-6, 0.5e-6], 6.0, 1e-3).state == "flat"
    assert S.slope_test([0.004, 0.0041, 0.0039], 6.0, 1e-3).state == "worsening"
    assert S.slope_test([-0.004, 0.004], 6.0, 1e-3).state == "inconclusive"
    one = S.slope_test([-0.004], 6.0, 1e-3)
    assert one.state == "not_tested" and one.gain == pytest.approx(0.024)


def test_one_sample_against_a_published_value():
    t = S.one_sample([1.90, 1.91, 1.89], 1.8562)
    ref = sps.ttest_1samp([1.90, 1.91, 1.89], 1.8562)
    assert t.p == pytest.approx(ref.pvalue) and t.estimate == pytest.approx(1.90 - 1.8562)
    assert not S.one_sample([1.9], 1.8562).testable
