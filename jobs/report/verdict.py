"""The sweep's verdict: findings with numbers, tests and conclusions, computed from the data.

Pure functions over pandas tables (no MLflow):

* ``trials``: one row per trial (every state), indexed by run id, with columns ``batch_size``
  (int), ``lr_scaling`` (``none|linear|sqrt``), ``prior``, ``seed`` (int), ``context`` (a label
  for every other varying setting, ``""`` when none), ``state`` (``finished``, ``failed``, …;
  absent: all finished), optionally ``failure_reason``, ``effective_lr``, ``test_bpd``.
* ``val``: validation history: ``run_id``, ``step`` (optimizer step), ``epoch``, ``val_bpd`` (bits/dim).
* ``noise``: gradient-noise history: ``run_id``, ``step``, ``noise_scale`` and, when logged, the raw
  per-measurement estimates ``noise_grad_sq``, ``noise_trace`` (and ``*_adam``).

The unit of replication is the seed (:mod:`jobs.report.stats`). Every comparison of two arms is a
:class:`Finding` with a t test (paired by seed when both arms ran the same seeds, else Welch), a
95 % CI, a Holm–Bonferroni adjusted p over all comparisons of the report, a TOST against the
equivalence margin, and one conclusion of :data:`jobs.report.stats.CONCLUSIONS`; an arm with fewer
than 2 seeds is ``not_tested`` and its sentence states no direction. Trials that did not finish
stay in their arm's finding ("1 of 3 seeds diverged at lr 2.8e-03"). The JSON form of a finding
(:meth:`Finding.to_json`) is documented in docs/ARCHITECTURE.md.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from jobs.report import stats as S
from jobs.report.findings import (EMPTY, Arm, Finding, arm_at, by_run, ci_words, common_horizon,
                                   count, finished, fmt_p, label, lost_trials, note, value_at, xy)
from jobs.report.scaling import critical_batch_findings, steps_to, target_bpd

BASELINE_SCALING = "none"
DEFAULT_MARGIN = 0.01  # bits/dim: equivalence margin of BPD comparisons (sweep file: report.equivalence_margin)
LATE_FRACTION = 0.1  # slope window: the last 10 % of training (in epochs)
NOISE_WINDOW = 0.2  # B_simple window: the last 20 % of the steps up to the matched validation BPD
MIN_NOISE_POINTS = 3
MIN_GAIN = 1e-3  # bits/dim: a projected gain per further 10 % of training below this is "flat"


# ----------------------------------------------------------------------------------------------
# Findings
# ----------------------------------------------------------------------------------------------

def comparison_text(f: Finding, worse: str, better: str, equal: str) -> str:
    """The generic sentence of a comparison: both arms, the estimate with its CI and test, the
    conclusion. ``worse``/``better``: what a positive/negative difference means (a − b, lower BPD
    is better); ``equal``: the subject of an equivalence ("batches 512 and 64")."""
    a, b = f.arms
    t = f.test
    head = f"[{f.context}] {f.question}: {a.describe()} vs {b.describe()} bits/dim"
    if f.conclusion == "not_tested":
        why = f.numbers.get("deferred") or "fewer than 2 seeds in an arm"
        return f"{head}; not tested ({why}): no direction is stated."
    lo, hi = t.ci95
    stats = (f"difference {t.estimate:+.3f} bits/dim, 95 % CI [{lo:+.3f}, {hi:+.3f}] ({t.test}, df {t.df:.1f}, "
             f"p {fmt_p(t.p)}, Holm p {fmt_p(f.p_holm)})")
    if f.conclusion == "different":
        verdict = worse if t.estimate > 0 else better
        within = (f", though within the ±{f.margin:g} bits/dim equivalence margin"
                  if f.p_tost_holm < S.ALPHA else "")
        return f"{head}; {stats}: {verdict}{within}."
    if f.conclusion == "equivalent":
        return (f"{head}; {stats}: {equal} are equivalent within ±{f.margin:g} bits/dim "
                f"(TOST Holm p {fmt_p(f.p_tost_holm)}).")
    return (f"{head}; {stats}: inconclusive — neither a difference nor equivalence within ±{f.margin:g} bits/dim "
            f"is established (TOST Holm p {fmt_p(f.p_tost_holm)}).")


def adjust(findings: list[Finding]) -> list[Finding]:
    """Holm–Bonferroni over every testable comparison (differences and TOSTs as two families),
    then the conclusion and the sentence of every finding that has a ``render``."""
    tested = [f for f in findings if f.is_comparison and f.test.testable and not f.numbers.get("deferred")]
    for f in tested:
        f.p_tost = f.test.tost_p(f.margin)
    for f, p in zip(tested, S.holm([f.test.p for f in tested])):
        f.p_holm = p
    for f, p in zip(tested, S.holm([f.p_tost for f in tested])):
        f.p_tost_holm = p
    for f in findings:
        if f.is_comparison:
            f.conclusion = "not_tested" if f.numbers.get("deferred") else S.conclude(f.test, f.p_holm, f.p_tost_holm)
        if f.render is not None:
            f.text = f.render(f)
    return findings


# ----------------------------------------------------------------------------------------------
# Curves and arms
# ----------------------------------------------------------------------------------------------

def compare_finding(topic: str, context: str, question: str, a: Arm, b: Arm, margin: float, worse: str,
                    better: str, equal: str, **numbers) -> Finding:
    test = S.by_seed(a.values, b.values)
    return Finding(topic, context, question, numbers=numbers, arms=(a, b), test=test, margin=margin,
                   render=lambda f: comparison_text(f, worse, better, equal))



AXIS_WORDS = {"epoch": ("equal epochs", "epoch {x:.3g}"), "step": ("equal optimizer steps", "step {x:.0f}")}


# ----------------------------------------------------------------------------------------------
# The questions
# ----------------------------------------------------------------------------------------------

def batch_gap_findings(trials: pd.DataFrame, val: pd.DataFrame, margin: float = DEFAULT_MARGIN) -> list[Finding]:
    """Validation BPD of each larger batch size against the smallest, at equal epochs and at equal
    optimizer steps (the unscaled LR arms when there are any)."""
    curves = by_run(val)
    findings = []
    for (context, prior), group in trials.groupby(["context", "prior"], sort=True):
        scaling = BASELINE_SCALING if (group["lr_scaling"] == BASELINE_SCALING).any() else \
            sorted(group["lr_scaling"].unique())[0]
        base = group[group["lr_scaling"] == scaling]
        sizes = sorted(base["batch_size"].unique())
        where = label(context, prior=prior, lr_scaling=scaling)
        if len(sizes) < 2:
            findings.append(note("batch gap", where, "batch-size gap",
                                 f"Only one batch size ({sizes[0]}): no batch-size gap can be measured."))
            continue
        small = base[base["batch_size"] == sizes[0]]
        for big_size in sizes[1:]:
            big = base[base["batch_size"] == big_size]
            ids = list(finished(big).index) + list(finished(small).index)
            for axis, (words, at) in AXIS_WORDS.items():
                question = f"batch {big_size} vs {sizes[0]} at {words}"
                x = common_horizon(curves, ids, axis)
                if not np.isfinite(x):
                    findings.append(note("batch gap", where, question, f"Batch {big_size} vs {sizes[0]} at {words}: "
                                         "not compared (a finished trial has no validation history).", axis=axis))
                    continue
                a = arm_at(curves, big, axis, x, f"batch {big_size}")
                b = arm_at(curves, small, axis, x, f"batch {sizes[0]}")
                empty = [arm.label for arm in (a, b) if not arm.ci.n]
                if empty:
                    findings.append(note("batch gap", where, question, f"Batch {big_size} vs {sizes[0]} at {words}: "
                                         f"not compared ({' and '.join(empty)} has no validation at or before "
                                         f"{at.format(x=x)}, the furthest point every trial reached).", axis=axis))
                    continue
                findings.append(compare_finding(
                    "batch gap", where, f"Batch {big_size} vs {sizes[0]} at {words} ({at.format(x=x)})", a, b, margin,
                    f"batch {big_size} is worse", f"batch {big_size} is better", f"batches {big_size} and {sizes[0]}",
                    axis=axis, at=x, small=int(sizes[0]), large=int(big_size), prior=prior, lr_scaling=scaling))
    return findings


LR_OUTCOMES = {"equivalent": "closes_gap", "inconclusive": "inconclusive", "not_tested": "not_tested"}


def lr_outcome(f: Finding) -> str:
    """``closes_gap`` (equivalent to the small batch), ``overshoots`` (significantly better),
    ``gap_remains`` (significantly worse), ``inconclusive`` or ``not_tested``."""
    if f.conclusion == "different":
        return "overshoots" if f.test.estimate < 0 else "gap_remains"
    return LR_OUTCOMES[f.conclusion]


OUTCOME_WORDS = {"closes_gap": "LR scaling closes the gap", "overshoots": "LR scaling overshoots (better than the "
                 "small batch)", "gap_remains": "the gap remains", "inconclusive": "whether it closes the gap is "
                 "inconclusive", "not_tested": "whether it closes the gap is not tested"}


def lr_scaling_findings(trials: pd.DataFrame, val: pd.DataFrame, margin: float = DEFAULT_MARGIN) -> list[Finding]:
    """Does scaling the LR with the batch size close the gap at equal epochs? Two comparisons per
    scaled arm: scaled large batch vs unscaled small batch (outcome ``closes_gap | overshoots |
    gap_remains``), and scaled vs unscaled at the same large batch."""
    curves = by_run(val)
    findings = []
    for (context, prior), group in trials.groupby(["context", "prior"], sort=True):
        sizes = sorted(group["batch_size"].unique())
        where = label(context, prior=prior)
        if len(sizes) < 2:
            continue
        base = group[group["lr_scaling"] == BASELINE_SCALING]
        kinds = sorted(set(group[group["batch_size"] > sizes[0]]["lr_scaling"]) - {BASELINE_SCALING})
        small = base[base["batch_size"] == sizes[0]]
        if not kinds or small.empty:
            missing = ("no trials with LR scaling (linear/sqrt) above the smallest batch" if not kinds
                       else f"no unscaled (lr_scaling=none) batch-{sizes[0]} trials to compare with")
            findings.append(note("lr scaling", where, "does LR scaling close the gap",
                                 f"Whether LR scaling closes the gap is not tested: {missing}."))
            continue
        for kind in kinds:
            for big_size in sizes[1:]:
                scaled = group[(group["batch_size"] == big_size) & (group["lr_scaling"] == kind)]
                if scaled.empty:
                    continue
                plain = base[base["batch_size"] == big_size]
                ids = [i for g in (small, scaled, plain) for i in finished(g).index]
                x = common_horizon(curves, ids, "epoch")
                if not np.isfinite(x):
                    continue
                s = arm_at(curves, scaled, "epoch", x, f"batch {big_size} with {kind} LR scaling")
                f = compare_finding("lr scaling", where, f"Batch {big_size} with {kind} LR scaling vs batch {sizes[0]} "
                                    f"at epoch {x:.3g}", s, arm_at(curves, small, "epoch", x, f"batch {sizes[0]}"),
                                    margin, "worse", "better", f"batch {big_size} ({kind}) and batch {sizes[0]}",
                                    kind=kind, large=int(big_size), small=int(sizes[0]), at=x, axis="epoch",
                                    prior=prior)
                f.render = _lr_render(f.render)
                findings.append(f)
                if not plain.empty:
                    findings.append(compare_finding(
                        "lr scaling", where, f"Batch {big_size}: {kind} LR scaling vs no scaling at epoch {x:.3g}", s,
                        arm_at(curves, plain, "epoch", x, f"batch {big_size} unscaled"), margin,
                        f"{kind} scaling is worse", f"{kind} scaling is better", f"{kind} and no scaling",
                        kind=kind, large=int(big_size), at=x, axis="epoch", prior=prior, versus="unscaled"))
    return findings


def _lr_render(generic: Callable[[Finding], str]) -> Callable[[Finding], str]:
    def render(f: Finding) -> str:
        f.numbers["outcome"] = lr_outcome(f)
        return f"{generic(f)[:-1]} — {OUTCOME_WORDS[f.numbers['outcome']]}."
    return render


def late_slope(curve: pd.DataFrame, fraction: float = LATE_FRACTION) -> tuple[float, float, float]:
    """(slope, from_epoch, to_epoch) of a least-squares line through ``val_bpd`` vs ``epoch`` over
    the last ``fraction`` of training (at least the last 3 validations). Units: bits/dim per
    epoch; NaN with fewer than 3 validations."""
    xs, ys = xy(curve, "epoch", "val_bpd")
    if xs.size < 3:
        return math.nan, math.nan, math.nan
    start = min(int(np.searchsorted(xs, xs[-1] * (1 - fraction))), xs.size - 3)
    x, y = xs[start:], ys[start:]
    slope = float(np.polyfit(x, y, 1)[0])
    return slope, float(x[0]), float(x[-1])


def slope_tests(trials: pd.DataFrame, val: pd.DataFrame) -> dict[tuple, tuple[S.SlopeTest, float, float]]:
    """``{(context, prior, lr_scaling, batch_size): (test, from_epoch, to_epoch)}`` for every group."""
    curves = by_run(val)
    out = {}
    for key, group in finished(trials).groupby(["context", "prior", "lr_scaling", "batch_size"], sort=True):
        fits = [late_slope(curves.get(rid, EMPTY)) for rid in group.index]
        fits = [f for f in fits if np.isfinite(f[0])]
        end = max((f[2] for f in fits), default=math.nan)
        test = S.slope_test([f[0] for f in fits], LATE_FRACTION * end if fits else 1.0, MIN_GAIN)
        out[key] = (test, min((f[1] for f in fits), default=math.nan), end)
    return out


SLOPE_WORDS = {
    "improving": "still improving at the end (≈{gain:.3f} bits/dim more per further 10 % of training if the trend held)",
    "worsening": "getting worse at the end (overfitting or instability)",
    "flat": "flat at the end (projected change within ±{min_gain} bits/dim per further 10 % of training, TOST)",
    "inconclusive": "neither still improving nor shown to be flat",
    "not_tested": "its trend is not tested (fewer than 2 seeds with 3 or more validations)",
}


def still_improving_findings(trials: pd.DataFrame, val: pd.DataFrame,
                             tests: dict | None = None) -> list[Finding]:
    """For every group: is validation BPD still falling at the end of training? The per-seed late
    slopes are tested across seeds (t, n − 1 df); see :class:`jobs.report.stats.SlopeTest`."""
    tests = slope_tests(trials, val) if tests is None else tests
    findings = []
    for (context, prior, scaling, size), (test, start, end) in tests.items():
        where = label(context, prior=prior, lr_scaling=scaling, batch=size)
        ci = test.slope
        if ci.n == 0:
            findings.append(note("still improving", where, "still improving at the end",
                                 f"Batch {size}: too few validations (< 3) to fit a final slope.", batch_size=int(size),
                                 prior=prior, lr_scaling=scaling))
            continue
        rate = (f"{ci.mean:+.2e} bits/dim per epoch, 95 % CI [{ci.lo:+.2e}, {ci.hi:+.2e}] over {ci.n} seeds "
                f"(t, p {fmt_p(test.p)})" if ci.known else f"{ci.mean:+.2e} bits/dim per epoch (1 seed)")
        state = SLOPE_WORDS[test.state].format(gain=test.gain, min_gain=MIN_GAIN)
        text = (f"[{where}] Batch {size}: validation BPD slope over the last 10 % of training (epochs {start:.3g}–"
                f"{end:.3g}) is {rate}: {state}.")
        findings.append(Finding("still improving", where, "still improving at the end", text, test.state, {
            "batch_size": int(size), "prior": prior, "lr_scaling": scaling, "n": ci.n, "estimate": ci.mean,
            "ci95": [ci.lo, ci.hi], "test": "t over seeds of per-seed OLS slopes" if ci.known else None,
            "df": ci.n - 1 if ci.known else None, "p": test.p, "p_flat": test.p_flat, "projected_gain": test.gain,
            "units": "bits/dim per epoch", "window_epochs": [start, end]}))
    return findings


def final_value(trials: pd.DataFrame, curves: dict[str, pd.DataFrame], group: pd.DataFrame) -> tuple[str, Callable]:
    """What the priors are compared on: test BPD when every finished trial of ``group`` has it,
    else validation BPD at the common final epoch. Returns (words, value of a run id)."""
    done = finished(group)
    if "test_bpd" in group and done["test_bpd"].notna().all() and len(done):
        return "test BPD", lambda rid: float(trials.at[rid, "test_bpd"])
    x = common_horizon(curves, done.index, "epoch")
    return f"validation BPD at epoch {x:.3g}", lambda rid: value_at(curves.get(rid, EMPTY), "epoch", x)


def prior_arm(group: pd.DataFrame, prior: str, value: Callable[[str], float]) -> Arm:
    """The arm of ``prior`` in ``group``: ``value(run_id)`` per finished seed, the others as lost."""
    sel = group[group["prior"] == prior]
    return Arm(prior, {int(r.seed): value(rid) for rid, r in finished(sel).iterrows()}, lost_trials(sel))


def prior_findings(trials: pd.DataFrame, val: pd.DataFrame, margin: float = DEFAULT_MARGIN,
                   tests: dict | None = None) -> list[Finding]:
    """Do the priors differ, at each batch size and LR scaling? Deferred (``not_tested``, reason
    ``not converged``) when either arm is still improving: priors compared mid-training confound
    the prior with the speed of convergence."""
    curves = by_run(val)
    tests = slope_tests(trials, val) if tests is None else tests
    findings = []
    for (context, size, scaling), group in trials.groupby(["context", "batch_size", "lr_scaling"], sort=True):
        priors = sorted(group["prior"].unique())
        where = label(context, batch=size, lr_scaling=scaling)
        if len(priors) < 2:
            findings.append(note("priors", where, "do the priors differ",
                                 f"Only one prior ({priors[0]}): priors not compared."))
            continue
        what, value = final_value(trials, curves, group)
        base = priors[0]
        for other in priors[1:]:
            improving = [p for p in (other, base) if (context, p, scaling, size) in tests
                         and tests[(context, p, scaling, size)][0].state == "improving"]
            numbers = {"batch_size": int(size), "lr_scaling": scaling, "compared_on": what}
            if improving:
                numbers["deferred"] = f"deferred: not converged — {' and '.join(improving)} still improving"
            findings.append(compare_finding("priors", where, f"{what}, {other} vs {base}", prior_arm(group, other, value),
                                            prior_arm(group, base, value), margin,
                                            f"{other} is worse than {base}", f"{other} is better than {base}",
                                            f"{other} and {base}", **numbers))
    return findings


# ----------------------------------------------------------------------------------------------
# Gradient noise scale and critical batch size
# ----------------------------------------------------------------------------------------------

def b_simple_window(series: pd.DataFrame, until: float, adam: bool = False) -> float:
    """Σ tr(Σ) / Σ |G|² of the raw estimates over the last :data:`NOISE_WINDOW` of steps up to
    ``until`` (at least the last :data:`MIN_NOISE_POINTS` measurements); NaN when not logged or
    when Σ |G|² ≤ 0. Units: images."""
    suffix = "_adam" if adam else ""
    steps, trace = xy(series, "step", f"noise_trace{suffix}")
    _, grad_sq = xy(series, "step", f"noise_grad_sq{suffix}")
    if steps.size == 0 or steps.size != grad_sq.size or not math.isfinite(until):
        return math.nan
    upto = steps <= until + 1e-9
    keep = upto & (steps >= until * (1 - NOISE_WINDOW))
    if keep.sum() < MIN_NOISE_POINTS:
        keep = np.zeros_like(upto)
        keep[np.flatnonzero(upto)[-MIN_NOISE_POINTS:]] = True
    g = grad_sq[keep].sum()
    return float(trace[keep].sum() / g) if keep.any() and g > 0 else math.nan


def noise_scale_findings(trials: pd.DataFrame, val: pd.DataFrame, noise: pd.DataFrame) -> list[Finding]:
    """B_simple per group (context, prior, LR scaling, batch size) at a validation BPD every
    finished trial of its (context, prior, LR scaling) reached — the target the critical batch size
    is measured at, so the two stand side by side — never pooled across groups."""
    curves, series = by_run(val), by_run(noise)
    findings = []
    done = finished(trials)
    for (context, prior, scaling), sizes in done.groupby(["context", "prior", "lr_scaling"], sort=True):
        target = target_bpd(curves, sizes.index)
        for size, group in sizes.groupby("batch_size", sort=True):
            where = label(context, prior=prior, lr_scaling=scaling, batch=size)
            values, adam = {}, {}
            for rid, row in group.iterrows():
                until = steps_to(curves.get(rid, EMPTY), target)
                values[int(row.seed)] = b_simple_window(series.get(rid, EMPTY), until)
                adam[int(row.seed)] = b_simple_window(series.get(rid, EMPTY), until, adam=True)
            plain, pre = S.mean_ci(list(values.values())), S.mean_ci(list(adam.values()))
            question = "gradient noise scale at matched validation BPD"
            if plain.n == 0:
                findings.append(note("noise scale", where, question, "No raw gradient-noise estimates (noise_trace, "
                                     "noise_grad_sq) were logged up to the matched validation BPD: B_simple not "
                                     "estimated.", batch_size=int(size), prior=prior, lr_scaling=scaling))
                continue
            text = (f"[{where}] At validation BPD {target:.3f} (reached by every trial of this prior and LR rule), "
                    f"B_simple = {ci_words(plain)} images; batch {size} is {count(size / plain.mean)}× B_simple")
            if pre.n:
                text += f"; Adam-preconditioned B_simple = {ci_words(pre)} images"
            text += (". B_simple = Σ tr(Σ)/Σ |G|² over the last 20 % of steps up to that point; it approximates the "
                     "critical batch size B_noise only under plain-SGD assumptions (McCandlish et al. 2018).")
            findings.append(Finding("noise scale", where, question, text, "measured", {
                "batch_size": int(size), "prior": prior, "lr_scaling": scaling, "target_bpd": target, "n": plain.n,
                "b_simple": plain.mean, "ci95": [plain.lo, plain.hi], "b_simple_adam": pre.mean,
                "ci95_adam": [pre.lo, pre.hi], "units": "images", "other_settings": context}))
    return findings


def verdict(trials: pd.DataFrame, val: pd.DataFrame, noise: pd.DataFrame,
            margin: float = DEFAULT_MARGIN) -> list[Finding]:
    """All findings in reading order (batch gap, LR scaling, still improving, noise scale, critical
    batch, priors), Holm-adjusted over every comparison of the report."""
    if finished(trials).empty:
        return [Finding("data", "", "is there data", "No finished trials with validation history: no verdict.",
                        "not_tested")]
    tests = slope_tests(trials, val)
    noise_found = noise_scale_findings(trials, val, noise)
    return adjust(batch_gap_findings(trials, val, margin) + lr_scaling_findings(trials, val, margin)
                  + still_improving_findings(trials, val, tests) + noise_found
                  + critical_batch_findings(trials, val, noise_found) + prior_findings(trials, val, margin, tests))


__all__ = ["verdict", "batch_gap_findings", "lr_scaling_findings", "still_improving_findings", "noise_scale_findings",
           "prior_findings", "late_slope", "b_simple_window", "adjust", "DEFAULT_MARGIN"]
