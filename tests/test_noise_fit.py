"""B_noise from the best LR per batch size (McCandlish et al. 2018: ε_opt(B) = ε_max / (1 + B_noise/B)),
on synthetic data with known truth: exact recovery, honest "not tested", and the interval's coverage."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from jobs.report.study import lr_search_frame, noise_scale_fit

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
    assert 0.90 <= hits / trials <= 0.99  # delta method: close to nominal at this small scatter


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
