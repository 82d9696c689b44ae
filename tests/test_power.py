"""``jobs.report.power``: the paired t test's and the TOST's power against Monte Carlo simulations
of the tests themselves, a published value, the inverses, and the edge cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from jobs.report.power import min_detectable_difference, seeds_for_tost, t_power, tost_power

DRAWS = 40_000


def _simulated(n: int, sd: float, true_diff: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``DRAWS`` simulated comparisons over ``n`` paired seeds: (mean, s.e.) of the per-seed differences."""
    d = np.random.default_rng(seed).normal(true_diff, sd, size=(DRAWS, n))
    return d.mean(axis=1), d.std(axis=1, ddof=1) / math.sqrt(n)


def _close(exact: float, simulated: float) -> bool:
    """Within 4 Monte Carlo standard errors (and a floor for probabilities near 0 or 1)."""
    return abs(exact - simulated) <= 4 * math.sqrt(max(exact * (1 - exact), 1e-4) / DRAWS)


@pytest.mark.parametrize("n, sd, diff", [(2, 0.01, 0.05), (3, 0.037, 0.1), (5, 0.01, 0.012), (12, 0.02, 0.01),
                                         (4, 0.01, -0.015)])
def test_t_power_matches_simulated_t_tests(n, sd, diff):
    mean, se = _simulated(n, sd, diff, seed=n)
    rejected = np.abs(mean / se) > sps.t.ppf(0.975, n - 1)
    assert _close(t_power(n, sd, diff), rejected.mean())


@pytest.mark.parametrize("n, sd, margin, true_diff", [(2, 0.01, 0.01, 0.0), (3, 0.01, 0.01, 0.0), (5, 0.01, 0.01, 0.004),
                                                      (10, 0.01, 0.01, 0.0), (30, 0.02, 0.01, -0.002),
                                                      (3, 0.037, 0.01, 0.0)])
def test_tost_power_matches_simulated_tosts(n, sd, margin, true_diff):
    mean, se = _simulated(n, sd, true_diff, seed=100 + n)
    crit = sps.t.ppf(0.95, n - 1)
    shown = ((mean + margin) / se > crit) & ((mean - margin) / se < -crit)
    assert _close(tost_power(n, sd, margin, true_diff=true_diff), shown.mean())


def test_t_power_reproduces_the_textbook_sample_size():
    # One-sample (paired) t, effect 0.5 s.d., two-sided α 0.05: 34 pairs give power 0.808 (G*Power).
    assert t_power(34, 1.0, 0.5) == pytest.approx(0.8078, abs=1e-4)
    assert t_power(33, 1.0, 0.5) < 0.8
    assert min_detectable_difference(34, 1.0) < 0.5 < min_detectable_difference(33, 1.0)


@pytest.mark.parametrize("n", [2, 3, 8, 50])
def test_the_minimum_detectable_difference_has_the_asked_power(n):
    mdd = min_detectable_difference(n, 0.037)
    assert t_power(n, 0.037, mdd) == pytest.approx(0.8, abs=1e-6)
    assert min_detectable_difference(n, 0.074) == pytest.approx(2 * mdd)  # in units of the s.d.
    assert min_detectable_difference(n, 0.037, power=0.9) > mdd


def test_seeds_for_tost_is_the_first_n_with_the_power():
    for sd, margin in ((1.0, 0.5), (0.037, 0.01), (0.005, 0.01)):
        n = seeds_for_tost(sd, margin)
        assert tost_power(n, sd, margin) >= 0.8
        assert n == 2 or tost_power(n - 1, sd, margin) < 0.8
    # Many seeds: the normal approximation (z_0.95 + z_0.90)² (sd/margin)² = 34.3, the t a little more.
    assert seeds_for_tost(1.0, 0.5) == 36
    assert seeds_for_tost(0.037, 0.01) > seeds_for_tost(0.037, 0.01, true_diff=0.0, power=0.5)
    assert seeds_for_tost(1.0, 0.01) is None  # beyond max_n
    assert seeds_for_tost(0.01, 0.01, true_diff=0.01) is None  # a true difference at the margin is never shown equal


def test_tost_power_is_symmetric_and_holds_its_level_at_the_margin():
    assert tost_power(6, 0.01, 0.01, true_diff=0.004) == pytest.approx(tost_power(6, 0.01, 0.01, true_diff=-0.004))
    for n in (2, 5, 40):
        assert tost_power(n, 0.01, 0.01, true_diff=0.01) <= 0.05 + 1e-9


def test_fewer_than_two_seeds_test_nothing():
    for n in (0, 1):
        assert t_power(n, 0.01, 1.0) == 0.0
        assert tost_power(n, 0.01, 0.01) == 0.0
        assert min_detectable_difference(n, 0.01) == math.inf


@pytest.mark.parametrize("call", [
    lambda: t_power(3, 0.0, 0.01), lambda: tost_power(3, -0.01, 0.01), lambda: tost_power(3, 0.01, 0.0),
    lambda: t_power(3, 0.01, 0.01, alpha=0.7), lambda: min_detectable_difference(3, 0.01, power=0.01),
    lambda: seeds_for_tost(0.01, 0.01, power=1.0),
])
def test_bad_arguments_are_refused(call):
    with pytest.raises(ValueError):
        call()
