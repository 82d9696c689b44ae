"""B_crit from steps to targets on synthetic curves whose truth is known: targets, censoring,
log–log interpolation and its uncertainty, measured/bound/not tested, regimes, figures."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from jobs.report import figures as FIG
from jobs.report import scaling as SC

N_TRAIN = 6400
LEVELS = np.linspace(0, 1 - math.exp(-6), 2000)[1:]  # progress ℓ: val BPD 5 − 2ℓ, so 3.005 at the end


def scaling_curves(batches, b_crit, s_min, seeds, rel_sd, rng, points=200, stop=None):
    """Validation curves whose steps to progress ℓ (val BPD 5 − 2ℓ) are −ln(1 − ℓ)·S_min(1 + B_crit/B)
    times per-seed noise exp(N(0, rel_sd²)): at every BPD level, S = S_min(1 + B_crit/B).
    ``b_crit``: images, or a function of ℓ; ``points`` validations evenly spaced in steps;
    ``stop``: {batch: {seed: fraction of the run kept}} (runs cut short, censored)."""
    rng = np.random.default_rng(rng)
    crit = b_crit if callable(b_crit) else (lambda _: b_crit)
    rows, val = [], []
    for b in batches:
        for seed in range(seeds):
            rid = f"b{b}-s{seed}"
            grid = -np.log1p(-LEVELS) * s_min * (1 + crit(LEVELS) / b) * math.exp(rng.normal(0, rel_sd))
            steps = np.linspace(0, grid[-1], points + 1)[1:]
            steps = steps[: max(1, int(len(steps) * (stop or {}).get(b, {}).get(seed, 1.0)))]
            rows.append(dict(run_id=rid, batch_size=b, lr_scaling="none", prior="laplace", seed=seed, context="",
                             state="finished", test_bpd=math.nan))
            val.append(pd.DataFrame(dict(run_id=rid, step=steps, epoch=steps * b / N_TRAIN,
                                         val_bpd=np.interp(steps, np.r_[0, grid], 5 - 2 * np.r_[0, LEVELS]))))
    return pd.DataFrame(rows).set_index("run_id"), pd.concat(val, ignore_index=True)


def at(findings, target):
    hits = [f for f in findings if f.topic == "critical batch" and f.numbers["target_bpd"] == pytest.approx(target)]
    assert len(hits) == 1, [f.text for f in findings]
    return hits[0]


def test_log_log_interpolation_is_exact_on_a_power_law():
    curve = pd.DataFrame(dict(step=[10.0, 100.0, 1000.0], val_bpd=8 * np.array([10.0, 100.0, 1000.0]) ** -0.3))
    c = SC.crossing(curve, 8 * 500.0 ** -0.3)
    assert c.steps == pytest.approx(500, rel=1e-12) and (c.lo, c.hi) == (100, 1000) and not c.censored
    assert SC.steps_to(curve, 8 * 500.0 ** -0.3) == pytest.approx(500, rel=1e-12)
    first = SC.crossing(curve, 9.0)  # already below at the first validation: bracket [FIRST_STEP, 10]
    assert (first.steps, first.lo, first.hi) == (10, SC.FIRST_STEP, 10)
    never = SC.crossing(curve, 1.0)
    assert never.censored and never.last == 1000 and math.isnan(SC.steps_to(curve, 1.0))


def test_default_targets_are_quantiles_from_the_first_to_the_best_value():
    trials, val = scaling_curves([32, 512], b_crit=300.0, s_min=400.0, seeds=3, rel_sd=0.0, rng=0)
    found = SC.critical_batch_findings(trials, val, [])
    first = val.sort_values("step").groupby("run_id")["val_bpd"].first().median()
    best = val["val_bpd"].min()
    expected = [first - q * (first - best) for q in SC.TARGET_QUANTILES]
    assert [f.numbers["target_bpd"] for f in found] == pytest.approx(expected)
    assert all(f.numbers["targets"] == pytest.approx(expected) for f in found)
    assert all(f.numbers["exact_fit"] and "exact fit: 2 batch sizes" in f.text for f in found)
    assert all(f.numbers["b_crit_fit"] == pytest.approx(300, rel=0.02) for f in found)


def test_measured_with_its_interval_inside_the_batch_sizes(monkeypatch):
    monkeypatch.setattr(SC, "BOOTSTRAP", 500)
    trials, val = scaling_curves([32, 64, 128, 256, 512], b_crit=300.0, s_min=400.0, seeds=4, rel_sd=0.03, rng=0)
    for f in SC.critical_batch_findings(trials, val, []):
        lo, hi = f.numbers["ci95"]
        assert f.conclusion == "measured" and 32 <= lo < 300 < hi <= 512 and hi / lo < 2
        assert f.numbers["b_crit"] == pytest.approx(300, rel=0.15) and f.numbers["residual"] < 0.05
        assert f.numbers["e_min"] == pytest.approx(f.numbers["s_min"] * f.numbers["b_crit"])
        assert f"B_crit = {SC.count(f.numbers['b_crit'])} images, 95 % CI" in f.text
        assert "(S/S_min − 1)(E/E_min − 1) = 1 with S_min" in f.text
        assert f.numbers["s_min_ci95"][0] < f.numbers["s_min"] < f.numbers["s_min_ci95"][1]
        assert len(f.numbers["points"]) == 20 and [r["spacing"] for r in f.numbers["per_batch"]][0] > 0
        assert "validations every" in f.text and "RMS relative residual" in f.text
        doc = f.to_json()
        json.dumps(doc, allow_nan=False)
        assert doc["b_crit_lower"] is None and doc["b_crit_upper"] is None


def test_critical_batch_interval_covers_the_truth(monkeypatch):
    monkeypatch.setattr(SC, "BOOTSTRAP", 400)
    hits = np.zeros(len(SC.TARGET_QUANTILES))
    for rep in range(40):
        trials, val = scaling_curves([32, 64, 128, 256, 512], b_crit=300.0, s_min=400.0, seeds=4, rel_sd=0.03,
                                     rng=rep, points=60)
        hits += [lo < 300 < hi for lo, hi in (f.numbers["ci95"] for f in SC.critical_batch_findings(trials, val, []))]
    assert all(hits >= 33)  # nominal 95 % of 40 = 38; resampling the 4 seeds themselves gave 28


def test_regimes_far_below_and_far_above_b_crit(monkeypatch):
    monkeypatch.setattr(SC, "BOOTSTRAP", 500)
    trials, val = scaling_curves([16, 32, 256, 2048, 4096], b_crit=256.0, s_min=400.0, seeds=5, rel_sd=0.02, rng=1)
    for f in SC.critical_batch_findings(trials, val, []):
        assert f.conclusion == "measured"
        assert f.numbers["regime"] == {"16": "perfect_scaling", "32": "perfect_scaling", "256": "diminishing_returns",
                                       "2048": "maximal_parallelism", "4096": "maximal_parallelism"}
        rows = {r["batch_size"]: r for r in f.numbers["per_batch"]}
        assert rows[16]["regime"] == "perfect_scaling" and rows[16]["b_over_b_crit"][1] <= SC.PERFECT_SCALING_MAX
        assert rows[16]["examples_mean"] == pytest.approx(16 * rows[16]["steps_mean"])
        assert "batch 32: perfect scaling (B/B_crit" in f.text and "batch 4096: maximal data parallelism" in f.text
        assert "batch 256: diminishing returns" in f.text


def test_b_crit_below_the_smallest_batch_is_a_bound(monkeypatch):
    monkeypatch.setattr(SC, "BOOTSTRAP", 500)
    trials, val = scaling_curves([64, 128, 256, 512], b_crit=2.0, s_min=400.0, seeds=4, rel_sd=0.01, rng=2)
    for f in SC.critical_batch_findings(trials, val, []):
        upper = f.numbers["b_crit_upper"]
        assert f.conclusion == "bound" and math.isnan(f.numbers["b_crit"]) and upper < 64
        assert f"B_crit < 64 images (below the batch sizes trained; one-sided 95 % upper bound ≈ {SC.count(upper)})" \
            in f.text
        assert "images, 95 % CI" not in f.text and set(f.numbers["regime"].values()) == {"maximal_parallelism"}


def test_b_crit_beyond_the_largest_batch_is_a_bound(monkeypatch):
    monkeypatch.setattr(SC, "BOOTSTRAP", 500)
    trials, val = scaling_curves([16, 32, 64, 128], b_crit=20000.0, s_min=40.0, seeds=4, rel_sd=0.01, rng=3)
    for f in SC.critical_batch_findings(trials, val, []):
        lower = f.numbers["b_crit_lower"]
        assert f.conclusion == "bound" and math.isnan(f.numbers["b_crit"]) and lower > 128
        assert f"B_crit > 128 images (beyond the batch sizes trained; one-sided 95 % lower bound ≈ {SC.count(lower)})" \
            in f.text
        assert f.numbers["regime"]["16"] == "perfect_scaling"


def test_an_edge_learning_rate_leaves_b_crit_not_tested():
    trials, val = scaling_curves([32, 64, 128, 256, 512], b_crit=300.0, s_min=400.0, seeds=3, rel_sd=0.02, rng=4)
    trials["lr_at_edge"] = trials["batch_size"] == 512
    for f in SC.critical_batch_findings(trials, val, []):
        assert f.conclusion == "not_tested" and math.isnan(f.numbers["b_crit"])
        assert "batch 512 was at the edge of its search range" in f.numbers["reason"] and f.numbers["reason"] in f.text
        assert set(f.numbers["regime"].values()) == {"not_determined"}
        assert "perfect scaling" not in f.text and "diminishing returns" not in f.text


def test_censored_runs_are_shown_and_left_out_of_the_fit(monkeypatch):
    monkeypatch.setattr(SC, "BOOTSTRAP", 500)
    cut = {32: {0: 0.15, 1: 0.15}}  # 2 of 4 seeds of batch 32 stop at 15 % of their run
    trials, val = scaling_curves([32, 64, 128, 256, 512], b_crit=300.0, s_min=400.0, seeds=4, rel_sd=0.02, rng=5,
                                 stop=cut)
    found = SC.critical_batch_findings(trials, val, [], targets=[4.0, 3.3])
    easy, hard = at(found, 4.0), at(found, 3.3)
    assert easy.numbers["fit_batches"] == [32, 64, 128, 256, 512] and not easy.numbers["left_out"]
    assert hard.numbers["fit_batches"] == [64, 128, 256, 512] and list(hard.numbers["left_out"]) == ["32"]
    censored = [p for p in hard.numbers["points"] if p["censored"]]
    assert [(p["batch_size"], p["seed"]) for p in censored] == [(32, 0), (32, 1)]
    assert all(math.isnan(p["steps"]) and p["censored_at"] > 0 for p in censored)
    last = min(p["censored_at"] for p in censored)
    assert f"batch 32: 2 of 4 seeds never reached 3.300 bits/dim by step {SC.count(last)} (censored" in hard.text
    assert "left out: batch 32 (censored seeds: no mean steps)" in hard.text
    row = next(r for r in hard.numbers["per_batch"] if r["batch_size"] == 32)
    assert row["censored"] == 2 and math.isnan(row["steps_mean"]) and row["consistent"]
    assert "At batch 32 the fit predicts" in hard.text and ": consistent" in hard.text
    assert hard.conclusion == "measured" and hard.numbers["b_crit"] == pytest.approx(300, rel=0.2)
    json.dumps(hard.to_json(), allow_nan=False)


def test_too_few_fully_observed_batch_sizes_is_not_tested():
    cut = {32: {0: 0.1}, 64: {2: 0.1}}
    trials, val = scaling_curves([32, 64, 128], b_crit=300.0, s_min=400.0, seeds=3, rel_sd=0.02, rng=6, stop=cut)
    f = at(SC.critical_batch_findings(trials, val, [], targets=[3.3]), 3.3)
    assert f.conclusion == "not_tested" and f.numbers["reason"] == "only batch 128 fully observed (a fit needs 2)"
    assert "batch 32: 1 of 3 seeds never reached" in f.text and "batch 64: 1 of 3 seeds never reached" in f.text
    assert set(f.numbers["regime"].values()) == {"not_determined"}


def test_each_target_has_its_own_b_crit(monkeypatch):
    monkeypatch.setattr(SC, "BOOTSTRAP", 500)
    trials, val = scaling_curves([32, 64, 128, 256, 512, 1024], b_crit=lambda level: 100 * (1 + 3 * level),
                                 s_min=400.0, seeds=4, rel_sd=0.01, rng=7, points=400)
    found = SC.critical_batch_findings(trials, val, [], targets=[3.5, 4.0])  # progress 0.75 and 0.5
    assert [f.numbers["target_bpd"] for f in found] == [4.0, 3.5]
    assert all(f.numbers["targets"] == [4.0, 3.5] and f.numbers["target_rule"] == "given" for f in found)
    assert at(found, 4.0).numbers["b_crit"] == pytest.approx(250, rel=0.1)
    assert at(found, 3.5).numbers["b_crit"] == pytest.approx(325, rel=0.1)
    assert "target 1 of 2, given" in at(found, 4.0).text


def test_figures_draw_censored_points_and_the_hyperbola(tmp_path, monkeypatch):
    monkeypatch.setattr(SC, "BOOTSTRAP", 200)
    trials, val = scaling_curves([32, 64, 128, 256, 512], b_crit=300.0, s_min=400.0, seeds=3, rel_sd=0.02, rng=8,
                                 stop={32: {0: 0.15}})
    found = SC.critical_batch_findings(trials, val, [])
    assert any(p["censored"] for f in found for p in f.numbers["points"])
    for draw in (FIG.steps_vs_examples_figure, FIG.steps_to_target_figure):
        path = draw(found, "title", tmp_path / f"{draw.__name__}.png")
        assert path.is_file() and path.stat().st_size > 0
        assert draw([], "title", tmp_path / "none.png") is None
