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
:class:`~jobs.report.findings.Finding` with a t test (paired by seed when both arms ran the same
seeds, else Welch), a 95 % CI, a TOST against the equivalence margin, p-values adjusted within the
family of its question (docs/STATISTICS.md, "Families") with the matching simultaneous interval,
and one conclusion of :data:`jobs.report.stats.CONCLUSIONS`; an arm with fewer than 2 seeds is
``not_tested`` and its sentence states no direction. Trials that did not finish stay in their
arm's finding ("1 of 3 seeds diverged at lr 2.8e-03"); a diverged seed makes the arm unstable, a
caveat of the comparison and a ``stability`` finding. The JSON form of a finding
(:meth:`Finding.to_json`) is documented in docs/ARCHITECTURE.md.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from jobs.report import stats as S
from jobs.report.findings import (EMPTY, Arm, Finding, arm_at, arm_of, by_run, ci_words, common_horizon,
                                   count, finished, fmt_p, label, note, value_at, xy)
from jobs.report.scaling import critical_batch_findings, steps_to, target_bpd

BASELINE_SCALING = "none"
DEFAULT_MARGIN = 0.01  # bits/dim: equivalence margin of BPD comparisons (sweep file: report.equivalence_margin)
LATE_FRACTION = 0.1  # slope window: the last 10 % of training (in epochs)
NOISE_WINDOW = 0.2  # B_simple window: the last 20 % of the steps up to the matched validation BPD
MIN_NOISE_POINTS = 3
DECAYING = ("cosine", "linear")  # train.lr_schedule values that decay to the end of training
MIN_GAIN = 1e-3  # bits/dim: the convergence gate per further 10 % of training (sweep file: report.min_gain)


# ----------------------------------------------------------------------------------------------
# Findings
# ----------------------------------------------------------------------------------------------

def caveat(f: Finding) -> str:
    """What a comparison's BPD statistics leave out: the seeds of an arm that did not finish."""
    parts = [f"{arm.label} is unstable ({arm.diverged} of {arm.total} seeds diverged)" for arm in f.arms
             if arm.diverged]
    parts += [f"{arm.label} lost {len(arm.lost) - arm.diverged} of {arm.total} seeds otherwise" for arm in f.arms
              if len(arm.lost) > arm.diverged]
    if not parts:
        return ""
    return f" Caveat: the BPD statistics use the finished seeds only; {'; '.join(parts)}."


def comparison_text(f: Finding, worse: str, better: str, equal: str) -> str:
    """The generic sentence of a comparison: both arms, the estimate with its CI and test, the
    conclusion, and the caveat of lost seeds. ``worse``/``better``: what a positive/negative
    difference means (a − b, lower BPD is better); ``equal``: the subject of an equivalence."""
    a, b = f.arms
    t = f.test
    head = f"[{f.context}] {f.question}: {a.describe()} vs {b.describe()} bits/dim"
    if f.conclusion == "not_tested":
        why = f.numbers.get("deferred") or "fewer than 2 seeds in an arm"
        return f"{head}; not tested ({why}): no direction is stated.{caveat(f)}"
    lo, hi = t.ci95
    slo, shi = S.simultaneous_interval(t, f.family_size)
    stats = (f"difference {t.estimate:+.3f} bits/dim, 95 % CI [{lo:+.3f}, {hi:+.3f}], simultaneous over the "
             f"{f.family_size} comparison(s) of family '{f.family}' [{slo:+.3f}, {shi:+.3f}] ({t.test}, df "
             f"{t.df:.1f}, p {fmt_p(t.p)}, family-adjusted p {fmt_p(f.p_holm)})")
    if f.conclusion == "different":
        verdict = worse if t.estimate > 0 else better
        within = (f", though within the ±{f.margin:g} bits/dim equivalence margin"
                  if f.p_tost_holm < S.ALPHA else "")
        return f"{head}; {stats}: {verdict}{within}.{caveat(f)}"
    if f.conclusion == "equivalent":
        return (f"{head}; {stats}: {equal} are equivalent within ±{f.margin:g} bits/dim "
                f"(TOST family-adjusted p {fmt_p(f.p_tost_holm)}).{caveat(f)}")
    return (f"{head}; {stats}: inconclusive — neither a difference nor equivalence within ±{f.margin:g} bits/dim "
            f"is established (TOST family-adjusted p {fmt_p(f.p_tost_holm)}).{caveat(f)}")


def adjust(findings: list[Finding]) -> list[Finding]:
    """Per family (one question): the difference and equivalence tests of its testable comparisons
    adjusted together (:func:`jobs.report.stats.family_adjust`, family-wise error ≤ α), then the
    conclusion and the sentence of every finding that has a ``render``."""
    tested = [f for f in findings if f.is_comparison and f.test.testable and not f.numbers.get("deferred")]
    for family in dict.fromkeys(f.family for f in tested):
        members = [f for f in tested if f.family == family]
        for f in members:
            f.p_tost = f.test.tost_p(f.margin)
            f.family_size = len(members)
        p_diff, p_tost = S.family_adjust([f.test.p for f in members], [f.p_tost for f in members])
        for f, pd_, pt in zip(members, p_diff, p_tost):
            f.p_holm, f.p_tost_holm = pd_, pt
    for f in findings:
        if f.is_comparison:
            f.conclusion = "not_tested" if f.numbers.get("deferred") else S.conclude(f.test, f.p_holm, f.p_tost_holm)
        if f.render is not None:
            f.text = f.render(f)
    return findings


def stability_findings(findings: list[Finding]) -> list[Finding]:
    """For every comparison with a diverged seed in an arm: is the divergence rate different? An
    exact test (Fisher) of diverged vs not per arm, Holm within family ``stability``."""
    out, seen = [], set()
    for f in findings:
        if not f.is_comparison or not any(arm.diverged for arm in f.arms):
            continue
        a, b = f.arms
        key = (f.context, a.label, b.label)
        if key in seen:
            continue
        seen.add(key)
        p = S.divergence_test(a.diverged, a.total, b.diverged, b.total)
        floor = S.divergence_test(a.total, a.total, 0, b.total)
        out.append(Finding("stability", f.context, f"divergence rate, {a.label} vs {b.label}", family="stability",
                           numbers={"diverged": [a.diverged, b.diverged], "trials": [a.total, b.total], "p": p,
                                    "test": "Fisher exact, two-sided", "smallest_attainable_p": floor}))
    for f, p in zip(out, S.holm([f.numbers["p"] for f in out])):
        a, b = f.numbers["diverged"], f.numbers["trials"]
        f.numbers["p_holm"] = p
        f.family_size = len(out)
        f.conclusion = "different" if p < S.ALPHA else "inconclusive"
        rates = f"{a[0]} of {b[0]} vs {a[1]} of {b[1]} seeds diverged"
        verdict = ("the divergence rates differ" if f.conclusion == "different" else
                   "a difference in divergence rate is not established" + (
                       f" (with these seed counts no outcome could reach p < 0.05: the smallest attainable p is "
                       f"{f.numbers['smallest_attainable_p']:.2g})" if f.numbers["smallest_attainable_p"] >= S.ALPHA
                       else ""))
        f.text = (f"[{f.context}] {f.question}: {rates} (Fisher exact, p {fmt_p(f.numbers['p'])}, Holm p "
                  f"{fmt_p(p)} over {len(out)} comparison(s)): {verdict}.")
    return out


# ----------------------------------------------------------------------------------------------
# Curves and arms
# ----------------------------------------------------------------------------------------------

def compare_finding(topic: str, family: str, context: str, question: str, a: Arm, b: Arm, margin: float,
                    worse: str, better: str, equal: str, **numbers) -> Finding:
    test = S.by_seed(a.values, b.values)
    return Finding(topic, context, question, numbers=numbers, family=family, arms=(a, b), test=test, margin=margin,
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
                    "batch gap", f"batch gap at {words}", where,
                    f"Batch {big_size} vs {sizes[0]} at {words} ({at.format(x=x)})", a, b, margin,
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
                f = compare_finding("lr scaling", "LR rule", where, f"Batch {big_size} with {kind} LR scaling vs batch {sizes[0]} "
                                    f"at epoch {x:.3g}", s, arm_at(curves, small, "epoch", x, f"batch {sizes[0]}"),
                                    margin, "worse", "better", f"batch {big_size} ({kind}) and batch {sizes[0]}",
                                    kind=kind, large=int(big_size), small=int(sizes[0]), at=x, axis="epoch",
                                    prior=prior)
                f.render = _lr_render(f.render)
                findings.append(f)
                if not plain.empty:
                    findings.append(compare_finding(
                        "lr scaling", "LR rule", where, f"Batch {big_size}: {kind} LR scaling vs no scaling at epoch {x:.3g}", s,
                        arm_at(curves, plain, "epoch", x, f"batch {big_size} unscaled"), margin,
                        f"{kind} scaling is worse", f"{kind} scaling is better", f"{kind} and no scaling",
                        kind=kind, large=int(big_size), at=x, axis="epoch", prior=prior, versus="unscaled"))
    return findings


def _lr_render(generic: Callable[[Finding], str]) -> Callable[[Finding], str]:
    def render(f: Finding) -> str:
        f.numbers["outcome"] = lr_outcome(f)
        return f"{generic(f)[:-1]} — {OUTCOME_WORDS[f.numbers['outcome']]}."
    return render


def late_slope(curve: pd.DataFrame, fraction: float = LATE_FRACTION) -> tuple[float, float, float, int]:
    """(slope, first epoch, last epoch, validations) of a least-squares line through ``val_bpd``
    vs ``epoch`` over the last ``fraction`` of training (at least the last 3 validations). Units:
    bits/dim per epoch; NaN with fewer than 3 validations."""
    xs, ys = xy(curve, "epoch", "val_bpd")
    if xs.size < 3:
        return math.nan, math.nan, math.nan, int(xs.size)
    start = min(int(np.searchsorted(xs, xs[-1] * (1 - fraction))), xs.size - 3)
    x, y = xs[start:], ys[start:]
    slope = float(np.polyfit(x, y, 1)[0])
    return slope, float(x[0]), float(x[-1]), int(x.size)


@dataclass(frozen=True)
class Trend:
    """The late trend of one group (context, prior, LR scaling, batch size): the slope test over
    seeds, each seed's window (first epoch, last epoch, validations), the horizon of the projected
    gain (epochs) and, after :func:`trend_states`, the family-adjusted state."""

    test: S.SlopeTest
    windows: tuple[tuple[float, float, int], ...]
    horizon: float
    state: str = "not_tested"
    p_holm: float = math.nan
    p_converged_holm: float = math.nan
    schedule: str = "constant"  # the group's train.lr_schedule ("mixed" when its trials differ)

    @property
    def end_of_decay(self) -> bool:
        """Every trial ran a decaying LR schedule to its end: the comparison point by design."""
        return self.schedule in DECAYING


def slope_tests(trials: pd.DataFrame, val: pd.DataFrame, min_gain: float = MIN_GAIN) -> dict[tuple, Trend]:
    """``{(context, prior, lr_scaling, batch_size): Trend}`` for every group, its states adjusted
    over the whole family "still improving" (:func:`jobs.report.stats.family_adjust`)."""
    curves = by_run(val)
    out = {}
    for key, group in finished(trials).groupby(["context", "prior", "lr_scaling", "batch_size"], sort=True):
        fits = [late_slope(curves.get(rid, EMPTY)) for rid in group.index]
        fits = [f for f in fits if np.isfinite(f[0])]
        end = max((f[2] for f in fits), default=math.nan)
        horizon = LATE_FRACTION * end if fits else 1.0
        schedules = set(group["lr_schedule"]) if "lr_schedule" in group else {"constant"}
        out[key] = Trend(S.slope_test([f[0] for f in fits], horizon, min_gain), tuple(f[1:] for f in fits), horizon,
                         schedule=schedules.pop() if len(schedules) == 1 else "mixed")
    keys = [k for k, v in out.items() if v.test.slope.known]
    p_slope, p_conv = S.family_adjust([out[k].test.p for k in keys], [out[k].test.p_converged for k in keys])
    for k, ps, pc in zip(keys, p_slope, p_conv):
        out[k] = replace(out[k], state=S.slope_state(out[k].test, ps, pc, min_gain), p_holm=ps, p_converged_holm=pc)
    for k, trend in out.items():  # a finished run of a decaying schedule is at its comparison point
        if trend.end_of_decay and trend.state != "worsening":
            out[k] = replace(trend, state="converged")
    return out


SLOPE_WORDS = {
    "improving": "still improving at the end (≈{gain:.3f} bits/dim more per further 10 % of training if the trend held)",
    "worsening": "getting worse at the end (overfitting or instability)",
    "converged": "converged: its remaining improvement per further 10 % of training is below {min_gain:g} bits/dim "
                 "(one-sided 95 % upper bound {upper:.2g}, family-adjusted p {p:.2g})",
    "inconclusive": "not shown to be converged (the upper bound of its remaining improvement, {upper:.2g} bits/dim per "
                    "further 10 % of training, is not below {min_gain:g}) nor to be still improving",
    "not_tested": "its trend is not tested (fewer than 2 seeds with 3 or more validations)",
}


def window_words(windows: tuple[tuple[float, float, int], ...]) -> str:
    """``"epochs 7.2–8 (3–4 validations per seed)"``: the span of the seeds' late windows."""
    first, last = min(w[0] for w in windows), max(w[1] for w in windows)
    counts = sorted({w[2] for w in windows})
    n = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"epochs {first:.3g}–{last:.3g} ({n} validations per seed)"


def still_improving_findings(trials: pd.DataFrame, val: pd.DataFrame, tests: dict | None = None,
                             min_gain: float = MIN_GAIN) -> list[Finding]:
    """For every group: is validation BPD still falling at the end of training, or converged? The
    per-seed late slopes are tested across seeds (t, n − 1 df), family "still improving"; see
    :func:`jobs.report.stats.slope_test`."""
    tests = slope_tests(trials, val, min_gain) if tests is None else tests
    findings = []
    for (context, prior, scaling, size), trend in tests.items():
        where = label(context, prior=prior, lr_scaling=scaling, batch=size)
        test, ci = trend.test, trend.test.slope
        if ci.n == 0:
            findings.append(note("still improving", where, "still improving at the end",
                                 f"Batch {size}: too few validations (< 3) to fit a final slope.", batch_size=int(size),
                                 prior=prior, lr_scaling=scaling))
            continue
        rate = (f"{ci.mean:+.2e} bits/dim per epoch, 95 % CI [{ci.lo:+.2e}, {ci.hi:+.2e}] over {ci.n} seeds "
                f"(t, p {fmt_p(test.p)})" if ci.known else f"{ci.mean:+.2e} bits/dim per epoch (1 seed)")
        state = SLOPE_WORDS[trend.state].format(gain=test.gain, min_gain=min_gain, upper=test.gain_upper,
                                                p=trend.p_converged_holm)
        if trend.end_of_decay and trend.state == "converged":
            state = (f"converged by design: every seed ran its {trend.schedule} learning-rate decay to the end, the "
                     "comparison point of a decaying schedule (docs/STATISTICS.md)")
        text = (f"[{where}] Batch {size}: validation BPD slope over the last 10 % of training, "
                f"{window_words(trend.windows)}, is {rate}: {state}.")
        findings.append(Finding("still improving", where, "still improving at the end", text, trend.state, {
            "batch_size": int(size), "prior": prior, "lr_scaling": scaling, "n": ci.n, "estimate": ci.mean,
            "ci95": [ci.lo, ci.hi], "test": "t over seeds of per-seed OLS slopes" if ci.known else None,
            "df": ci.n - 1 if ci.known else None, "p": test.p, "p_holm": trend.p_holm,
            "p_converged": test.p_converged, "p_converged_holm": trend.p_converged_holm,
            "projected_gain": test.gain, "gain_upper": test.gain_upper, "min_gain": min_gain,
            "horizon_epochs": trend.horizon, "lr_schedule": trend.schedule, "end_of_decay": trend.end_of_decay,
            "units": "bits/dim per epoch",
            "windows": [{"first_epoch": a, "last_epoch": b, "validations": k} for a, b, k in trend.windows]},
            family="still improving", family_size=sum(t.test.slope.known for t in tests.values())))
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
    return arm_of(group[group["prior"] == prior], prior, value)


NOT_CONVERGED_WORDS = {"improving": "still improving", "inconclusive": "not shown to be converged",
                       "not_tested": "not tested for convergence"}


def prior_findings(trials: pd.DataFrame, val: pd.DataFrame, margin: float = DEFAULT_MARGIN,
                   tests: dict | None = None) -> list[Finding]:
    """Do the priors differ, at each batch size and LR scaling? Deferred (``not_tested``, reason
    ``not converged``) unless both arms are shown converged (or worsening: past their best) by
    :func:`slope_tests`: priors compared mid-training confound the prior with the speed of
    convergence."""
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
            states = {p: tests[(context, p, scaling, size)].state if (context, p, scaling, size) in tests
                      else "not_tested" for p in (other, base)}
            unconverged = [f"{p} {NOT_CONVERGED_WORDS[state]}" for p, state in states.items()
                           if state not in ("converged", "worsening")]
            numbers = {"batch_size": int(size), "lr_scaling": scaling, "compared_on": what}
            if unconverged:
                numbers["deferred"] = f"deferred: not converged — {' and '.join(unconverged)}"
            findings.append(compare_finding("priors", "priors", where, f"{what}, {other} vs {base}",
                                            prior_arm(group, other, value), prior_arm(group, base, value), margin,
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
                text += (f"; Adam-preconditioned B_simple = {ci_words(pre)} images — a property of this run's "
                         "optimizer state, not of the model: Adam's second moment v̂ ≈ G² + σ²/B shrinks with the "
                         "batch size, so this value rises with B at matched BPD and is not compared across batch "
                         "sizes")
            text += (". B_simple = Σ tr(Σ)/Σ |G|² over the last 20 % of steps up to that point; it approximates the "
                     "critical batch size B_noise only under plain-SGD assumptions (McCandlish et al. 2018).")
            findings.append(Finding("noise scale", where, question, text, "measured", {
                "batch_size": int(size), "prior": prior, "lr_scaling": scaling, "target_bpd": target, "n": plain.n,
                "b_simple": plain.mean, "ci95": [plain.lo, plain.hi], "b_simple_adam": pre.mean,
                "ci95_adam": [pre.lo, pre.hi], "units": "images", "other_settings": context}))
    return findings


def verdict(trials: pd.DataFrame, val: pd.DataFrame, noise: pd.DataFrame, margin: float = DEFAULT_MARGIN,
            min_gain: float = MIN_GAIN, targets: Sequence[float] | None = None) -> list[Finding]:
    """All findings in reading order (batch gap, LR scaling, still improving, noise scale, critical
    batch, priors, stability), each family adjusted on its own (docs/STATISTICS.md, "Families").
    ``margin``: the equivalence margin (bits/dim); ``min_gain``: the convergence gate (bits/dim per
    further 10 % of training); ``targets``: steps-to-target BPDs (bits/dim; None: the default
    quantiles)."""
    if finished(trials).empty:
        return [Finding("data", "", "is there data", "No finished trials with validation history: no verdict.",
                        "not_tested")]
    tests = slope_tests(trials, val, min_gain)
    noise_found = noise_scale_findings(trials, val, noise)
    findings = adjust(batch_gap_findings(trials, val, margin) + lr_scaling_findings(trials, val, margin)
                      + still_improving_findings(trials, val, tests, min_gain) + noise_found
                      + critical_batch_findings(trials, val, noise_found, targets=targets)
                      + prior_findings(trials, val, margin, tests))
    return findings + stability_findings(findings)


__all__ = ["verdict", "batch_gap_findings", "lr_scaling_findings", "still_improving_findings", "noise_scale_findings",
           "prior_findings", "late_slope", "b_simple_window", "adjust", "DEFAULT_MARGIN"]
