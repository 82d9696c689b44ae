"""The verdict on synthetic sweeps whose truth is known: each conclusion type, B_crit, B_simple."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from jobs.report import scaling as SC
from jobs.report import stats
from jobs.report import verdict as V

N_TRAIN = 6400
DIRECTION = re.compile(r"\b(worse|better|overshoots)\b")


def bpd_curve(epochs: np.ndarray, offset: float, tail_slope: float = 0.0) -> np.ndarray:
    return 3.0 + 2.0 * np.exp(-epochs / 5.0) + offset + tail_slope * epochs


def synthetic(groups, seeds=3, epochs=60, seed_sd=0.01, rng=0):
    """groups: dicts (batch_size, lr_scaling, prior, offset[, tail_slope, context, seeds, failed]).
    Each trial's curve is shifted by N(0, seed_sd²); ``failed``: {seed: reason} of trials that did
    not finish (their curve stops half-way)."""
    rng = np.random.default_rng(rng)
    rows, val = [], []
    for g in groups:
        for seed in range(g.get("seeds", seeds)):
            rid = f"{g.get('context', '')}-{g['prior']}-{g['batch_size']}-{g['lr_scaling']}-{seed}"
            reason = g.get("failed", {}).get(seed)
            rows.append(dict(run_id=rid, batch_size=g["batch_size"], lr_scaling=g["lr_scaling"], prior=g["prior"],
                             seed=seed, context=g.get("context", ""), state="failed" if reason else "finished",
                             failure_reason=reason, effective_lr=g.get("lr", 1e-3), test_bpd=math.nan))
            ep = np.arange(1, (epochs // 2 if reason else epochs) + 1, dtype=float)
            bpd = bpd_curve(ep, g["offset"] + rng.normal(0, seed_sd), g.get("tail_slope", 0.0))
            val.append(pd.DataFrame(dict(run_id=rid, step=ep * N_TRAIN / g["batch_size"], epoch=ep, val_bpd=bpd)))
    return pd.DataFrame(rows).set_index("run_id"), pd.concat(val, ignore_index=True)


NO_NOISE = pd.DataFrame(columns=["run_id", "step", "noise_scale"])


def only(findings, topic=None, **numbers):
    hits = [f for f in findings if (topic is None or f.topic == topic)
            and all(f.numbers.get(k) == v for k, v in numbers.items())]
    assert len(hits) == 1, [f.text for f in findings]
    return hits[0]


def base(batch_size=64, prior="laplace", scaling="none", **kw):
    return dict(batch_size=batch_size, lr_scaling=scaling, prior=prior, **kw)


def test_a_real_difference_is_different_with_a_t_interval():
    trials, val = synthetic([base(offset=0.0), base(512, offset=0.1)])
    findings = V.verdict(trials, val, NO_NOISE)
    f = only(findings, "batch gap", axis="epoch")
    a, b = f.arms
    assert f.conclusion == "different" and f.test.test == "paired t" and f.test.df == 2
    assert f.test.estimate == pytest.approx(np.mean(list(a.values.values())) - np.mean(list(b.values.values())))
    assert f.test.estimate == pytest.approx(0.1, abs=0.04)
    lo, hi = f.test.ci95
    assert lo > 0 and lo < f.test.estimate < hi
    assert "batch 512 is worse" in f.text and f"[{lo:+.3f}, {hi:+.3f}]" in f.text
    steps = only(findings, "batch gap", axis="step")
    assert steps.numbers["at"] == pytest.approx(60 * N_TRAIN / 512)
    assert steps.conclusion == "different" and "batch 512 is better" in steps.text  # the small batch is still early


def test_more_than_two_standard_errors_but_not_significant_with_two_seeds():
    trials, val = synthetic([base(offset=0.0), base(512, offset=0.05)], seeds=2, seed_sd=0.02, rng=5)
    f = only(V.verdict(trials, val, NO_NOISE), "batch gap", axis="epoch")
    assert abs(f.test.estimate) > 2 * f.test.se  # the old "2 s.e." rule would have called a direction
    assert f.test.p > 0.05 and f.conclusion == "inconclusive"
    assert not DIRECTION.search(f.text.split(":", 1)[1].split("bits/dim;")[1])


def test_equivalence_inside_the_margin():
    trials, val = synthetic([base(offset=0.0), base(512, offset=0.001)], seeds=6, seed_sd=0.001)
    f = only(V.verdict(trials, val, NO_NOISE), "batch gap", axis="epoch")
    assert f.conclusion == "equivalent" and f.p_tost_holm < 0.05
    assert "equivalent within ±0.01 bits/dim" in f.text
    loose = only(V.verdict(trials, val, NO_NOISE, margin=1e-4), "batch gap", axis="epoch")
    assert loose.conclusion == "inconclusive"


def test_one_seed_shows_values_and_states_no_direction():
    trials, val = synthetic([base(offset=0.0), base(512, offset=0.3)], seeds=1)
    findings = V.verdict(trials, val, NO_NOISE)
    f = only(findings, "batch gap", axis="epoch")
    doc = f.to_json()
    assert f.conclusion == "not_tested" and doc["p"] is None and doc["ci95"] == [None, None]
    assert "not tested (fewer than 2 seeds in an arm)" in f.text and "(1 seed)" in f.text
    assert not DIRECTION.search(" ".join(x.text for x in findings))


def test_diverged_seed_stays_in_its_arm():
    reason = "non-finite values at step 812: training loss is nan (nats/dim)"
    trials, val = synthetic([base(offset=0.0), base(512, offset=0.1, lr=2.83e-3, failed={2: reason})])
    f = only(V.verdict(trials, val, NO_NOISE), "batch gap", axis="epoch")
    big = f.arms[0]
    assert sorted(big.values) == [0, 1] and f.test.test == "Welch t" and f.test.n_a == 2
    assert f"1 of 3 seeds did not finish: seed 2 diverged at lr 2.83e-03 ({reason})" in f.text
    assert f.to_json()["arms"][0]["lost"] == [f"seed 2 diverged at lr 2.83e-03 ({reason})"]


def test_a_decaying_schedule_run_to_its_end_is_converged_by_design():
    groups = [base(offset=0.0, tail_slope=-0.004), base(prior="gaussian", offset=0.05, tail_slope=-0.004)]
    trials, val = synthetic(groups)
    constant = V.verdict(trials, val, NO_NOISE)
    assert only(constant, "still improving", prior="laplace").conclusion == "improving"
    assert only(constant, "priors").conclusion == "not_tested"  # deferred: not converged
    trials["lr_schedule"] = "cosine"
    decayed = V.verdict(trials, val, NO_NOISE)
    f = only(decayed, "still improving", prior="laplace")
    assert f.conclusion == "converged" and f.numbers["end_of_decay"] and f.numbers["lr_schedule"] == "cosine"
    assert "ran its cosine learning-rate decay to the end" in f.text
    priors = only(decayed, "priors")
    assert priors.conclusion == "different" and priors.test.estimate == pytest.approx(-0.05, abs=0.03)  # laplace − gaussian


def test_divergence_is_an_outcome_with_an_exact_test_and_a_caveat():
    reason = "non-finite values at step 812: training loss is nan (nats/dim)"
    failed = {s: reason for s in range(6)}
    trials, val = synthetic([base(offset=0.0, seeds=8), base(512, offset=0.1, seeds=8, failed=failed)])
    findings = V.verdict(trials, val, NO_NOISE)
    gap = only(findings, "batch gap", axis="epoch")
    assert gap.arms[0].diverged == 6 and gap.arms[0].total == 8 and gap.arms[1].diverged == 0
    assert "batch 512 is unstable (6 of 8 seeds diverged)" in gap.text and "finished seeds only" in gap.text
    assert gap.to_json()["arms"][0]["diverged"] == 6
    stability = [f for f in findings if f.topic == "stability"]
    # one exact test per pair of arms with a divergence, not per axis: the step comparison has the same arms
    assert len(stability) == 1 and stability[0].family == "stability"
    s = stability[0]
    assert s.numbers["diverged"] == [6, 0] and s.numbers["trials"] == [8, 8]
    assert s.numbers["p"] == pytest.approx(stats.divergence_test(6, 8, 0, 8)) and s.conclusion == "different"
    assert "6 of 8 vs 0 of 8 seeds diverged" in s.text


def test_a_divergence_with_too_few_seeds_says_no_outcome_could_reach_significance():
    reason = "non-finite values at step 5: training loss is nan (nats/dim)"
    trials, val = synthetic([base(offset=0.0), base(512, offset=0.1, failed={2: reason})])
    s = only(V.verdict(trials, val, NO_NOISE), "stability")
    assert s.conclusion == "inconclusive" and s.numbers["smallest_attainable_p"] == pytest.approx(0.1)
    assert "no outcome could reach p < 0.05" in s.text and not DIRECTION.search(s.text)


def test_still_improving_arm_defers_the_prior_comparison():
    trials, val = synthetic([base(offset=0.0, tail_slope=-0.004), base(prior="gaussian", offset=0.05),
                             base(512, offset=0.1), base(512, prior="gaussian", offset=0.1)])
    findings = V.verdict(trials, val, NO_NOISE)
    improving = only(findings, "still improving", batch_size=64, prior="laplace")
    assert improving.conclusion == "improving" and improving.numbers["estimate"] == pytest.approx(-0.004, abs=2e-4)
    assert only(findings, "still improving", batch_size=512, prior="laplace").conclusion == "converged"
    deferred = only(findings, "priors", batch_size=64)
    assert deferred.conclusion == "not_tested" and "deferred: not converged" in deferred.text
    assert math.isnan(deferred.p_holm) and not DIRECTION.search(deferred.text)
    assert only(findings, "priors", batch_size=512).conclusion in ("equivalent", "inconclusive")


def test_autocorrelated_flat_curves_are_not_called_improving():
    calls = []
    for rep in range(40):
        rng = np.random.default_rng(100 + rep)
        trials, val = synthetic([base(512, offset=0.0)], epochs=100, rng=rep)
        for rid, rows in val.groupby("run_id"):
            ar = np.zeros(len(rows))
            for k in range(1, len(ar)):  # AR(1), ρ = 0.9: neighbouring validations share their error
                ar[k] = 0.9 * ar[k - 1] + rng.normal(0, 0.002)
            val.loc[rows.index, "val_bpd"] += ar
        calls.append(only(V.still_improving_findings(trials, val)).conclusion)
    assert calls.count("improving") + calls.count("worsening") <= 5  # α = 5 % two-sided, 40 repeats


def test_lr_scaling_outcomes():
    trials, val = synthetic([base(offset=0.0), base(512, offset=0.1), base(512, "laplace", "sqrt", offset=0.0005),
                             base(512, "laplace", "linear", offset=-0.08)], seeds=5, seed_sd=0.002)
    findings = V.verdict(trials, val, NO_NOISE)
    sqrt = only(findings, "lr scaling", kind="sqrt", small=64)
    linear = only(findings, "lr scaling", kind="linear", small=64)
    assert sqrt.numbers["outcome"] == "closes_gap" and "LR scaling closes the gap" in sqrt.text
    assert linear.numbers["outcome"] == "overshoots" and linear.test.estimate == pytest.approx(-0.08, abs=0.01)
    direct = only(findings, "lr scaling", kind="sqrt", versus="unscaled")
    assert direct.conclusion == "different" and "sqrt scaling is better" in direct.text
    trials, val = synthetic([base(offset=0.0), base(512, "laplace", "sqrt", offset=0.05)], seeds=5, seed_sd=0.002)
    remains = only(V.verdict(trials, val, NO_NOISE), "lr scaling", kind="sqrt")
    assert remains.numbers["outcome"] == "gap_remains" and "the gap remains" in remains.text


def test_holm_corrects_the_family():
    contexts = [dict(g, context=f"data.name=d{k}") for k in range(8)
                for g in (base(offset=0.0), base(512, offset=0.03))]
    trials, val = synthetic(contexts, seeds=3, seed_sd=0.01, rng=11)
    family = [f for f in V.verdict(trials, val, NO_NOISE) if f.is_comparison and f.test.testable]
    assert len(family) == 16 and all(f.p_holm >= f.test.p for f in family)
    # one family per question: the 8 comparisons at equal epochs, the 8 at equal steps
    assert {f.family: f.family_size for f in family} == {"batch gap at equal epochs": 8,
                                                          "batch gap at equal optimizer steps": 8}
    for name in ("batch gap at equal epochs", "batch gap at equal optimizer steps"):
        members = [f for f in family if f.family == name]
        p_diff, p_tost = stats.family_adjust([f.test.p for f in members], [f.p_tost for f in members])
        assert [f.p_holm for f in members] == pytest.approx(p_diff)
        assert [f.p_tost_holm for f in members] == pytest.approx(p_tost)
    assert all((f.conclusion == "different") == (f.p_holm < 0.05) for f in family)
    # significant alone, not after the correction: the family, not each test, controls the error rate
    demoted = [f for f in family if f.test.p < 0.05 <= f.p_holm]
    assert demoted and all(f.conclusion == "inconclusive" for f in demoted)


def test_verdict_json_is_valid_and_complete():
    trials, val = synthetic([base(offset=0.0), base(512, offset=0.1), base(prior="gaussian", offset=0.0)], seeds=1)
    docs = [f.to_json() for f in V.verdict(trials, val, NO_NOISE)]
    text = json.dumps(docs, allow_nan=False)
    assert "NaN" not in text
    for doc in docs:
        assert {"topic", "context", "question", "conclusion", "text"} <= set(doc)
        if "arms" in doc:
            assert {"n", "estimate", "ci95", "test", "df", "p", "p_holm"} <= set(doc)
            assert doc["conclusion"] in ("different", "equivalent", "inconclusive", "not_tested")


def test_fit_scaling_on_exact_points():
    b = np.array([32.0, 128.0, 512.0])
    fit = SC.fit_scaling(b, 1000 * (1 + 200 / b))
    assert (fit.s_min, fit.b_crit) == pytest.approx((1000, 200)) and fit.residual == pytest.approx(0, abs=1e-12)
    assert math.isinf(SC.fit_scaling(b, 1e5 / b).b_crit)  # perfect scaling: no intercept, no saturation


def test_b_simple_per_group_at_matched_bpd():
    trials, val = synthetic([base(offset=0.0), base(512, offset=0.0)], seed_sd=0.0)
    rng = np.random.default_rng(4)
    parts = []
    for rid, row in trials.iterrows():
        truth = 100.0 if row.batch_size == 64 else 900.0
        steps = np.arange(10, 60 * N_TRAIN / row.batch_size + 1, 10.0)
        grad_sq = 1.0 + rng.normal(0, 0.5, steps.size)  # single estimates: noisy, sometimes negative
        trace = truth * (1.0 + rng.normal(0, 0.5, steps.size))
        parts.append(pd.DataFrame(dict(run_id=rid, step=steps, noise_scale=np.nan, noise_grad_sq=grad_sq,
                                       noise_trace=trace, noise_grad_sq_adam=2 * grad_sq, noise_trace_adam=trace)))
    noise = pd.concat(parts, ignore_index=True)
    findings = V.verdict(trials, val, noise)
    small, big = only(findings, "noise scale", batch_size=64), only(findings, "noise scale", batch_size=512)
    assert small.numbers["b_simple"] == pytest.approx(100, rel=0.25) and big.numbers["b_simple"] == pytest.approx(900, rel=0.25)
    assert small.numbers["b_simple_adam"] == pytest.approx(small.numbers["b_simple"] / 2, rel=1e-9)
    assert "plain-SGD assumptions" in small.text and "Adam-preconditioned" in small.text
    assert "rises with B at matched BPD and is not compared across batch sizes" in small.text
    assert small.numbers["target_bpd"] == big.numbers["target_bpd"]
    beside = f"Measured B_simple at validation BPD {small.numbers['target_bpd']:.3f}"
    crit = [f for f in findings if f.topic == "critical batch"]
    assert crit and all(beside in f.text and "batch 64: " in f.text and "batch 512: " in f.text for f in crit)


def test_b_simple_window_is_a_ratio_of_sums():
    series = pd.DataFrame(dict(step=[10, 20, 30, 40, 50.0], noise_trace=[1, 2, 3, 4, 100.0],
                               noise_grad_sq=[1, -1, 1, 1, 1.0]))
    assert V.b_simple_window(series, until=40) == pytest.approx((2 + 3 + 4) / (-1 + 1 + 1))
    assert math.isnan(V.b_simple_window(series.assign(noise_grad_sq=-1.0), until=40))
    assert math.isnan(V.b_simple_window(series.drop(columns="noise_trace"), until=40))


def test_missing_comparisons_are_not_invented():
    trials, val = synthetic([base(offset=0.0)])
    texts = " ".join(f.text for f in V.verdict(trials, val, NO_NOISE))
    assert "Only one batch size (64): no batch-size gap can be measured" in texts
    assert "Only one prior (laplace): priors not compared" in texts
    assert "B_simple not estimated" in texts
    assert not DIRECTION.search(texts)
    trials, val = synthetic([base(offset=0.0), base(512, offset=0.1)])
    lr = V.lr_scaling_findings(trials, val)
    assert len(lr) == 1 and "not tested: no trials with LR scaling" in lr[0].text


def test_contexts_are_compared_separately():
    trials, val = synthetic([base(offset=0.0, context="data.name=msds1"), base(512, offset=0.1, context="data.name=msds1"),
                             base(offset=0.0, context="data.name=celeba"), base(512, offset=0.3, context="data.name=celeba")],
                            seed_sd=0.002)
    findings = V.batch_gap_findings(trials, val)
    msds = [f for f in findings if f.numbers.get("axis") == "epoch" and f.context.startswith("data.name=msds1")]
    celeba = [f for f in findings if f.numbers.get("axis") == "epoch" and f.context.startswith("data.name=celeba")]
    assert msds[0].test.estimate == pytest.approx(0.1, abs=0.01)
    assert celeba[0].test.estimate == pytest.approx(0.3, abs=0.01)


def test_late_slope_window():
    ep = np.arange(1, 101, dtype=float)
    slope, start, end, count = V.late_slope(pd.DataFrame(dict(epoch=ep, val_bpd=4 - 0.01 * ep)))
    assert (start, end, count) == (90.0, 100.0, 11) and slope == pytest.approx(-0.01)
    assert math.isnan(V.late_slope(pd.DataFrame(dict(epoch=[1.0, 2.0], val_bpd=[3.0, 2.9])))[0])


def test_an_arm_without_a_validation_at_the_horizon_is_not_compared():
    trials, val = synthetic([base(offset=0.0), base(512, offset=0.1)], epochs=2)  # batch 512 ends at step 25
    f = only(V.batch_gap_findings(trials, val), axis="step")
    assert f.conclusion == "not_tested" and not f.is_comparison
    assert "batch 64 has no validation at or before step 25" in f.text
