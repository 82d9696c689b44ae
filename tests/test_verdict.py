"""The verdict on synthetic sweeps whose truth is known."""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from jobs.report import verdict as V

N_TRAIN = 6400
SEED_OFFSETS = (-0.01, 0.0, 0.01)  # per-seed shift: s.e. of a 3-seed mean = 0.01/√3


def bpd_curve(epochs: np.ndarray, offset: float, tail_slope: float = 0.0) -> np.ndarray:
    return 3.0 + 2.0 * np.exp(-epochs / 5.0) + offset + tail_slope * epochs


def synthetic(groups, seeds=SEED_OFFSETS, epochs=60, noise_scale=None):
    """groups: list of dicts (batch_size, lr_scaling, prior, offset[, tail_slope, context])."""
    rows, val, noise = [], [], []
    for g in groups:
        for seed, shift in enumerate(seeds):
            rid = f"{g.get('context', '')}-{g['prior']}-{g['batch_size']}-{g['lr_scaling']}-{seed}"
            rows.append(dict(run_id=rid, batch_size=g["batch_size"], lr_scaling=g["lr_scaling"], prior=g["prior"],
                             seed=seed, context=g.get("context", ""), test_bpd=g.get("test_bpd", math.nan)))
            ep = np.arange(1, epochs + 1, dtype=float)
            steps = ep * N_TRAIN / g["batch_size"]
            bpd = bpd_curve(ep, g["offset"] + shift, g.get("tail_slope", 0.0))
            val.append(pd.DataFrame(dict(run_id=rid, step=steps, epoch=ep, val_bpd=bpd)))
            if noise_scale is not None:
                noise.append(pd.DataFrame(dict(run_id=rid, step=steps, noise_scale=noise_scale * (1 + 0.01 * seed))))
    trials = pd.DataFrame(rows).set_index("run_id")
    noise_df = pd.concat(noise) if noise else pd.DataFrame(columns=["run_id", "step", "noise_scale"])
    return trials, pd.concat(val), noise_df


def only(findings, **numbers):
    hits = [f for f in findings if all(f.numbers.get(k) == v for k, v in numbers.items())]
    assert len(hits) == 1, [f.text for f in findings]
    return hits[0]


def test_known_gap_at_equal_epochs_and_steps():
    trials, val, noise = synthetic([
        dict(batch_size=64, lr_scaling="none", prior="laplace", offset=0.0),
        dict(batch_size=512, lr_scaling="none", prior="laplace", offset=0.1),
    ])
    findings = V.batch_gap_findings(trials, val)
    epochs = only(findings, axis="epoch")
    se = math.hypot(0.01, 0.01) / math.sqrt(3)
    assert epochs.numbers["gap"] == pytest.approx(0.1, abs=1e-9)
    assert epochs.numbers["gap_se"] == pytest.approx(se, rel=1e-6)
    assert "equal epochs (epoch 60)" in epochs.text
    assert "batch 512 is worse by 0.100 ± 0.008 bits/dim" in epochs.text
    assert "3 seeds per group" in epochs.text

    steps = only(findings, axis="step")
    horizon = 60 * N_TRAIN / 512  # the large batch's last step
    ep = np.arange(1, 61, dtype=float)  # the small batch between its validations: linear interpolation
    small_there = np.interp(horizon * 64 / N_TRAIN, ep, bpd_curve(ep, 0.0))
    expected = bpd_curve(np.array([60.0]), 0.1)[0] - small_there
    assert steps.numbers["at"] == pytest.approx(horizon)
    assert steps.numbers["gap"] == pytest.approx(expected, abs=1e-9) and expected < 0
    assert f"batch 512 is better by {abs(expected):.3f}" in steps.text


def test_one_seed_says_uncertainty_unknown():
    trials, val, _ = synthetic([
        dict(batch_size=64, lr_scaling="none", prior="laplace", offset=0.0),
        dict(batch_size=512, lr_scaling="none", prior="laplace", offset=0.05),
    ], seeds=(0.0,))
    epochs = only(V.batch_gap_findings(trials, val), axis="epoch")
    assert "uncertainty unknown" in epochs.text
    assert "±" not in epochs.text and "worse by 0.050 bits/dim" in epochs.text
    assert math.isnan(epochs.numbers["gap_se"])


def test_small_gap_is_indistinguishable():
    trials, val, _ = synthetic([
        dict(batch_size=64, lr_scaling="none", prior="laplace", offset=0.0),
        dict(batch_size=512, lr_scaling="none", prior="laplace", offset=0.004),
    ])
    text = only(V.batch_gap_findings(trials, val), axis="epoch").text
    assert "batches 512 and 64 are indistinguishable (difference +0.004 ± 0.008 bits/dim" in text


def test_missing_comparisons_are_not_invented():
    trials, val, noise = synthetic([dict(batch_size=64, lr_scaling="none", prior="laplace", offset=0.0)])
    texts = " ".join(f.text for f in V.verdict(trials, val, noise))
    assert "Only one batch size (64): no batch-size gap can be measured" in texts
    assert "Only one prior (laplace): priors not compared" in texts
    assert "No gradient noise scale was logged" in texts
    assert not re.search(r"worse by|better by", texts)

    trials, val, _ = synthetic([
        dict(batch_size=64, lr_scaling="none", prior="laplace", offset=0.0),
        dict(batch_size=512, lr_scaling="none", prior="laplace", offset=0.1),
    ])
    lr = V.lr_scaling_findings(trials, val)
    assert len(lr) == 1 and "not tested: no trials with LR scaling" in lr[0].text


def test_lr_scaling_closes_or_not():
    trials, val, _ = synthetic([
        dict(batch_size=64, lr_scaling="none", prior="laplace", offset=0.0),
        dict(batch_size=512, lr_scaling="none", prior="laplace", offset=0.1),
        dict(batch_size=512, lr_scaling="sqrt", prior="laplace", offset=0.003),
        dict(batch_size=512, lr_scaling="linear", prior="laplace", offset=0.06),
    ])
    findings = V.lr_scaling_findings(trials, val)
    sqrt, linear = only(findings, kind="sqrt"), only(findings, kind="linear")
    assert sqrt.numbers["closes"] is True and sqrt.numbers["gap_scaled"] == pytest.approx(0.003)
    assert sqrt.numbers["gap_plain"] == pytest.approx(0.1)
    assert "With sqrt LR scaling, batch 512 at epoch 60 is +0.003 ± 0.008 bits/dim" in sqrt.text
    assert "(without scaling: +0.100 ± 0.008)" in sqrt.text and "closes the gap" in sqrt.text
    assert linear.numbers["closes"] is False and "does not close the gap" in linear.text


def test_still_improving_flagged_flat_not():
    trials, val, _ = synthetic([
        dict(batch_size=64, lr_scaling="none", prior="laplace", offset=0.0),
        dict(batch_size=512, lr_scaling="none", prior="laplace", offset=0.1, tail_slope=-0.004),
        dict(batch_size=64, lr_scaling="none", prior="gaussian", offset=0.0),
        dict(batch_size=512, lr_scaling="none", prior="gaussian", offset=0.1),
    ])
    findings = V.still_improving_findings(trials, val)
    improving, flat = only(findings, prior="laplace"), only(findings, prior="gaussian")
    assert improving.numbers["batch_size"] == 512 and improving.numbers["improving"] is True
    # d/dε of 2·exp(-ε/5) at ε≈57 is ≈ -4e-6: the slope is the tail's -0.004
    assert improving.numbers["slope"] == pytest.approx(-0.004, abs=1e-4)
    assert "still improving at the end" in improving.text and "bits/dim per epoch" in improving.text
    assert flat.numbers["improving"] is False and "still improving" not in flat.text
    assert "flat at the end" in flat.text


def test_noisy_flat_tail_is_not_improving():
    trials, val, _ = synthetic([dict(batch_size=512, lr_scaling="none", prior="laplace", offset=0.0)], epochs=100)
    rng = np.random.default_rng(1)
    val["val_bpd"] += rng.normal(0, 0.002, len(val))
    f = only(V.still_improving_findings(trials, val), measured=True)
    assert f.numbers["improving"] is False and abs(f.numbers["slope"]) < 3 * f.numbers["slope_se"]


def test_late_slope_of_one_line_has_fit_standard_error():
    ep = np.arange(1, 101, dtype=float)
    rng = np.random.default_rng(0)
    curve = pd.DataFrame(dict(epoch=ep, val_bpd=4 - 0.01 * ep + rng.normal(0, 0.001, ep.size)))
    slope, se, start, end = V.late_slope(curve)
    assert (start, end) == (90.0, 100.0)
    assert slope == pytest.approx(-0.01, abs=4 * se) and 0 < se < 1e-3


def test_noise_scale_against_batch_sizes():
    groups = [dict(batch_size=64, lr_scaling="none", prior="laplace", offset=0.0),
              dict(batch_size=512, lr_scaling="none", prior="laplace", offset=0.1)]
    trials, val, noise = synthetic(groups, noise_scale=100.0)
    f = only(V.noise_scale_findings(trials, noise), measured=True)
    assert f.numbers["b_simple"] == pytest.approx(101.0, rel=1e-6)  # mean of 100, 101, 102
    assert "batch 64 is comparable to it" in f.text and "batch 512 is beyond it" in f.text
    trials, val, noise = synthetic(groups, noise_scale=5000.0)
    f = only(V.noise_scale_findings(trials, noise), measured=True)
    assert "batch 64 is well below it" in f.text and "batch 512 is well below it" in f.text


def test_priors_indistinguishable_or_different():
    trials, val, _ = synthetic([
        dict(batch_size=64, lr_scaling="none", prior="laplace", offset=0.0),
        dict(batch_size=64, lr_scaling="none", prior="gaussian", offset=0.002),
        dict(batch_size=512, lr_scaling="none", prior="laplace", offset=0.1),
        dict(batch_size=512, lr_scaling="none", prior="gaussian", offset=0.3),
    ])
    findings = V.prior_findings(trials, val)
    same, differ = only(findings, batch_size=64), only(findings, batch_size=512)
    assert same.numbers["indistinguishable"] is True and "laplace and gaussian are indistinguishable" in same.text
    assert differ.numbers["diff"] == pytest.approx(-0.2) and "laplace is better than gaussian by 0.200 ± 0.008 bits/dim" in differ.text


def test_contexts_are_compared_separately():
    trials, val, _ = synthetic([
        dict(batch_size=64, lr_scaling="none", prior="laplace", offset=0.0, context="data.name=msds1"),
        dict(batch_size=512, lr_scaling="none", prior="laplace", offset=0.1, context="data.name=msds1"),
        dict(batch_size=64, lr_scaling="none", prior="laplace", offset=0.0, context="data.name=celeba"),
        dict(batch_size=512, lr_scaling="none", prior="laplace", offset=0.3, context="data.name=celeba"),
    ])
    findings = V.batch_gap_findings(trials, val)
    assert only(findings, axis="epoch", context="data.name=msds1").numbers["gap"] == pytest.approx(0.1)
    celeba = only(findings, axis="epoch", context="data.name=celeba")
    assert celeba.numbers["gap"] == pytest.approx(0.3) and celeba.text.startswith("[data.name=celeba, prior=laplace")
