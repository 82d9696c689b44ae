"""B_noise from the best LR per batch size (McCandlish et al. 2018: ε_opt(B) = ε_max / (1 + B_noise/B)),
on synthetic data with known truth: exact recovery, honest "not tested", Fieller's interval, and its
coverage when the chosen LRs come from a log-spaced search grid."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from jobs.report.study import fieller, lr_search_frame, noise_scale_fit

B_NOISE, LR_MAX = 300.0, 4e-3
BATCHES = np.array([32, 64, 128, 256, 512, 1024], dtype=float)


def best_lr(batch):
    return LR_MAX / (1 + B_NOISE / np.asarray(batch, dtype=float))


def test_exact_points_give_the_truth_with_a_zero_width_interval():
    fit = noise_scale_fit(BATCHES, best_lr(BATCHES))
    assert fit.state == "fitted" and fit.n == 6
    assert fit.b_noise == pytest.approx(B_NOISE, rel=1e-9) and fit.lr_max == pytest.approx(LR_MAX, rel=1e-9)
    assert fit.b_noise_hi - fit.b_noise_lo == pytest.approx(0, abs=1e-6)


def test_the_95_percent_interval_covers_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = 0
    trials = 400
    for _ in range(trials):
        lrs = best_lr(BATCHES) * np.exp(rng.normal(0, 0.03, len(BATCHES)))  # 3 % scatter of the found LRs
        fit = noise_scale_fit(BATCHES, lrs)
        hits += fit.b_noise_lo <= B_NOISE <= fit.b_noise_hi
    assert 0.90 <= hits / trials <= 0.99


def quantised_study(rng, batches=np.array([8, 16, 32, 64, 128, 256], dtype=float)):
    """(true B_noise, chosen LR per batch size) of a simulated study: B_noise log-uniform in [8, 256]
    images, the search's optimum ε_max/(1 + B_noise/B) times a lognormal scatter (s.d. 5–30 %), then
    the nearest point of a log-spaced grid of 4–6 points per decade at a random offset."""
    b_noise, lr_max = math.exp(rng.uniform(math.log(8), math.log(256))), 10 ** rng.uniform(-3, -2)
    per_decade, offset = rng.integers(4, 7), rng.uniform()
    best = lr_max / (1 + b_noise / batches) * np.exp(rng.normal(0, rng.uniform(0.05, 0.3), batches.size))
    return b_noise, batches, 10 ** ((np.round(per_decade * np.log10(best) - offset) + offset) / per_decade)


def test_fieller_interval_covers_the_truth_with_grid_quantised_lrs():
    rng = np.random.default_rng(7)
    fits = [(b_noise, noise_scale_fit(batches, lrs)) for b_noise, batches, lrs in
            (quantised_study(rng) for _ in range(500))]
    fitted = [(b_noise, f) for b_noise, f in fits if f.state == "fitted"]
    assert len(fitted) >= 400
    coverage = np.mean([f.b_noise_lo <= b_noise <= f.b_noise_hi for b_noise, f in fitted])
    assert coverage >= 0.92  # measured 0.97; the unweighted delta method: 0.88 on the same design
    assert all(f.b_noise_lo <= f.b_noise <= f.b_noise_hi and f.lr_max_lo <= f.lr_max <= f.lr_max_hi
               and math.isinf(f.b_noise_hi) == math.isinf(f.lr_max_hi) == bool(f.why) for _, f in fitted)


@pytest.mark.parametrize("a, b, cov", [
    (2.0, 300.0, [[0.04, 1.0], [1.0, 900.0]]),     # a well determined: a bounded interval
    (1.0, 250.0, [[0.3, 20.0], [20.0, 5000.0]]),   # a not significant: unbounded above
    (1.0, 100.0, [[0.3, 24.0], [24.0, 2000.0]]),   # b not significant either: θ ≤ 57 or θ ≥ 72, hull from 0
    (1.0, 50.0, [[0.5, -5.0], [-5.0, 5000.0]]),    # neither: every B_noise ≥ 0
])
def test_fieller_is_the_set_of_ratios_the_t_test_does_not_reject(a, b, cov):
    cov, t = np.asarray(cov), sps.t.ppf(0.975, 4)
    lo, hi = fieller(a, b, cov, t)
    grid = np.linspace(0, 5000, 200001)
    accepted = grid[(b - grid * a) ** 2 <= t**2 * (cov[1, 1] - 2 * grid * cov[0, 1] + grid**2 * cov[0, 0])]
    assert lo == pytest.approx(accepted.min(), abs=0.05)
    if math.isfinite(hi):
        assert hi == pytest.approx(accepted.max(), abs=0.05) and a**2 > t**2 * cov[0, 0]
    else:
        assert accepted.max() == grid.max() and a**2 <= t**2 * cov[0, 0]


def test_an_unidentified_intercept_is_reported_unbounded():
    batches = np.array([64, 128, 256, 512], dtype=float)
    fit = noise_scale_fit(batches, best_lr(batches) * [1, 1, 1.2, 0.9])
    assert fit.state == "fitted" and fit.b_noise_hi == math.inf and fit.lr_max_hi == math.inf
    assert 0 < fit.b_noise_lo < fit.b_noise and "not significantly above 0" in fit.why


@pytest.mark.parametrize("b_noise, batches, side", [
    (3.0, [32, 64, 128, 256], "below the smallest batch size trained (32)"),
    (5000.0, [8, 16, 32, 64], "above the largest batch size trained (64)"),
])
def test_not_tested_when_b_noise_lies_outside_the_batch_sizes(b_noise, batches, side):
    batches = np.asarray(batches, dtype=float)
    fit = noise_scale_fit(batches, LR_MAX / (1 + b_noise / batches))
    assert fit.state == "not_tested" and side in fit.why and "an extrapolation" in fit.why
    assert f"B_noise {b_noise:.3g} images" in fit.why and np.isnan(fit.b_noise)


@pytest.mark.parametrize("batches, lrs, why", [
    ([64, 512], best_lr([64, 512]), "2 batch size(s)"),
    ([64, 64, 64], [1e-3, 1e-3, 1e-3], "1 batch size(s)"),
    ([32, 64, 128], [3e-3, 2e-3, 1e-3], "does not rise and level off"),  # falling LR: slope < 0
    ([32, 64, 128], [4.9e-3, 4.9e-3, 4.9e-3], "the same LR is best at every batch size"),
])
def test_not_tested_when_the_relation_cannot_be_fitted(batches, lrs, why):
    fit = noise_scale_fit(batches, lrs)
    assert fit.state == "not_tested" and why in fit.why and np.isnan(fit.b_noise)


def test_not_tested_when_a_best_lr_is_the_edge_of_its_search():
    fit = noise_scale_fit(BATCHES, best_lr(BATCHES), at_edge=[False, False, True, False, False, False])
    assert fit.state == "not_tested" and "batch 128 is the edge of the LRs searched" in fit.why


def test_the_winner_of_each_batch_size_ran_to_the_end():
    table = pd.DataFrame({
        "batch_size": [32, 32, 32, 64, 64], "effective_lr": [1e-3, 3e-3, 1e-2, 1e-3, 3e-3],
        "train.warmup_steps": ["0", "0", "40", "0", "40"],
        "best_val_bpd": [3.2, 3.1, 2.9, 3.4, 3.3], "state": ["finished", "finished", "pruned", "finished", "finished"]},
        index=[f"r{i}" for i in range(5)])
    frame = lr_search_frame(table)
    assert list(frame[frame["winner"]].index) == ["r1", "r4"]  # r2 is lower but was pruned: never a winner
