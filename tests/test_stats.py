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
    assert S.slope_test([1e-6, -2e-6, 0.5e-6], 6.0, 1e-3).state == "converged"
    assert S.slope_test([0.004, 0.0041, 0.0039], 6.0, 1e-3).state == "worsening"
    assert S.slope_test([-0.004, 0.004], 6.0, 1e-3).state == "inconclusive"
    one = S.slope_test([-0.004], 6.0, 1e-3)
    assert one.state == "not_tested" and one.gain == pytest.approx(0.024)
    assert math.isnan(one.gain_upper) and math.isnan(one.p_converged)
    cases = ([-0.004, -0.0041], [1e-6, 0.0], [0.004, 0.0041], [-0.004, 0.004], [1.0])
    assert {S.slope_test(v, 6.0, 1e-3).state for v in cases} == set(S.SLOPE_STATES)


def test_slope_gain_upper_is_the_one_sided_t_bound():
    slopes = [-1e-4, 2e-5, -6e-5, 1e-5]
    t = S.slope_test(slopes, 5.0, 1e-3)
    se = np.std(slopes, ddof=1) / 2
    assert t.gain == pytest.approx(-np.mean(slopes) * 5)
    assert t.gain_upper == pytest.approx(-(np.mean(slopes) - sps.t.ppf(0.95, 3) * se) * 5)
    assert t.p == pytest.approx(sps.ttest_1samp(slopes, 0).pvalue)
    assert t.p_converged == pytest.approx(sps.ttest_1samp(slopes, -1e-3 / 5, alternative="greater").pvalue)
    assert t.state == ("converged" if t.gain_upper < 1e-3 else "inconclusive")
    rng = np.random.default_rng(8)
    for s in rng.normal(-1e-4, 2e-4, (300, 3)):  # the gate and its p agree
        t = S.slope_test(s, 5.0, 1e-3)
        assert (t.gain_upper < 1e-3) == (t.p_converged < 0.05)


def test_slope_state_from_adjusted_p_values():
    t = S.slope_test([1e-6, -2e-6, 0.5e-6], 6.0, 1e-3)
    assert t.state == "converged" and S.slope_state(t, t.p, 0.2, 1e-3) == "inconclusive"
    down = S.slope_test([-0.004, -0.0041, -0.0039], 6.0, 1e-3)
    assert S.slope_state(down, 0.2, down.p_converged, 1e-3) == "inconclusive"
    assert S.slope_state(S.slope_test([0.1], 6.0, 1e-3), 0.0, 0.0, 1e-3) == "not_tested"


def test_a_curve_still_falling_by_min_gain_is_called_converged_at_most_alpha_of_the_time():
    rng = np.random.default_rng(4)
    horizon, min_gain = 6.0, 1e-3
    for gain, n, spread in [(1.0, 2, 0.5), (1.0, 3, 1.0), (1.0, 5, 0.3), (1.5, 3, 0.3), (4.0, 4, 2.0)]:
        slopes = rng.normal(-gain * min_gain / horizon, spread * min_gain / horizon, (2000, n))
        converged = sum(S.slope_test(s, horizon, min_gain).state == "converged" for s in slopes) / 2000
        assert converged <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 2000)  # exactly α at gain = min_gain


def test_a_flat_curve_is_converged_only_when_its_spread_bounds_the_gain():
    rng = np.random.default_rng(5)
    flat = rng.normal(0, 0.1 * 1e-3 / 6, (500, 5))  # 5 seeds, per-seed slopes tightly around 0
    assert np.mean([S.slope_test(s, 6.0, 1e-3).state == "converged" for s in flat]) > 0.95
    wide = S.slope_test([-0.004, 0.0041, 0.0002, -0.0003, 0.0001], 6.0, 1e-3)  # mean ≈ 0, huge spread
    assert wide.p > 0.5 and wide.gain_upper > 1e-3 and wide.state == "inconclusive"


def test_divergence_test_is_fishers_exact_test():
    assert S.divergence_test(0, 3, 3, 3) == pytest.approx(0.1)
    assert S.divergence_test(0, 3, 0, 3) == 1.0
    assert S.divergence_test(3, 3, 3, 3) == 1.0
    rng = np.random.default_rng(6)
    for _ in range(50):
        n_a, n_b = rng.integers(1, 12, 2)
        k_a, k_b = rng.integers(0, n_a + 1), rng.integers(0, n_b + 1)
        ref = sps.fisher_exact([[k_a, n_a - k_a], [k_b, n_b - k_b]]).pvalue
        assert S.divergence_test(int(k_a), int(n_a), int(k_b), int(n_b)) == pytest.approx(ref)
    assert math.isnan(S.divergence_test(0, 0, 0, 0)) and math.isnan(S.divergence_test(0, 0, 1, 3))
    with pytest.raises(ValueError):
        S.divergence_test(4, 3, 0, 3)


def test_one_sample_against_a_published_value():
    t = S.one_sample([1.90, 1.91, 1.89], 1.8562)
    ref = sps.ttest_1samp([1.90, 1.91, 1.89], 1.8562)
    assert t.p == pytest.approx(ref.pvalue) and t.estimate == pytest.approx(1.90 - 1.8562)
    assert not S.one_sample([1.9], 1.8562).testable
