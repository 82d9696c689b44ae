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
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from jobs.report import stats as S

BASELINE_SCALING = "none"
DEFAULT_MARGIN = 0.01  # bits/dim: equivalence margin of BPD comparisons (sweep file: report.equivalence_margin)
LATE_FRACTION = 0.1  # slope window: the last 10 % of training (in epochs)
NOISE_WINDOW = 0.2  # B_simple window: the last 20 % of the steps up to the matched validation BPD
MIN_NOISE_POINTS = 3
MIN_GAIN = 1e-3  # bits/dim: a projected gain per further 10 % of training below this is "flat"
BOOTSTRAP = 2000  # bootstrap draws of the B_crit interval
EMPTY = pd.DataFrame({"run_id": [], "step": [], "epoch": [], "val_bpd": []})
DIVERGED_PREFIX = "non-finite"


# ----------------------------------------------------------------------------------------------
# Findings
# ----------------------------------------------------------------------------------------------

@dataclass
class Arm:
    """One side of a comparison: ``values`` per seed of the finished trials, ``lost`` the trials
    of the same setting that did not finish (one phrase each, e.g. "seed 2 diverged at lr 2.8e-03")."""

    label: str
    values: dict[int, float]
    lost: list[str] = field(default_factory=list)

    @property
    def ci(self) -> S.MeanCI:
        return S.mean_ci(list(self.values.values()))

    def describe(self) -> str:
        ci = self.ci
        n = f"{ci.n} seed{'s' if ci.n != 1 else ''}"
        value = f"{ci.mean:.3f} [{ci.lo:.3f}, {ci.hi:.3f}]" if ci.known else (f"{ci.mean:.3f}" if ci.n else "no value")
        lost = f"; {self.lost_phrase()}" if self.lost else ""
        return f"{self.label}: {value} ({n}{lost})"

    def lost_phrase(self) -> str:
        total = len(self.values) + len(self.lost)
        return f"{len(self.lost)} of {total} seeds did not finish: " + ", ".join(self.lost)

    def to_json(self) -> dict:
        ci = self.ci
        return {"label": self.label, "n": ci.n, "seeds": sorted(self.values), "mean": ci.mean,
                "ci95": [ci.lo, ci.hi], "values": [self.values[s] for s in sorted(self.values)], "lost": self.lost}


@dataclass
class Finding:
    """One verdict sentence and the numbers behind it.

    ``topic`` groups sentences; ``context`` names the setting; ``question`` is what was asked;
    ``conclusion`` the answer's keyword. A comparison also has ``arms`` (a, b), ``test`` (the
    :class:`~jobs.report.stats.TwoArm`), and after :func:`adjust` its Holm-adjusted p-values.
    ``numbers``: further values (axis, horizon, outcome, …). ``render`` builds ``text`` once the
    conclusion is known.
    """

    topic: str
    context: str
    question: str
    text: str = ""
    conclusion: str | None = None
    numbers: dict = field(default_factory=dict)
    arms: tuple[Arm, Arm] | None = None
    test: S.TwoArm | None = None
    margin: float | None = None
    p_holm: float = math.nan
    p_tost: float = math.nan
    p_tost_holm: float = math.nan
    render: Callable[["Finding"], str] | None = field(default=None, repr=False)

    @property
    def is_comparison(self) -> bool:
        return self.test is not None

    def to_json(self) -> dict:
        """JSON-ready dict (NaN and ±inf become ``None``); see docs/ARCHITECTURE.md."""
        out = {"topic": self.topic, "context": self.context, "question": self.question,
               "conclusion": self.conclusion, "text": self.text}
        if self.is_comparison:
            t = self.test
            out.update({"arms": [a.to_json() for a in self.arms], "n": [t.n_a, t.n_b], "estimate": t.estimate,
                        "se": t.se, "ci95": list(t.ci95), "ci_adjusted": list(S.adjusted_interval(t, self.p_holm)),
                        "test": t.test, "df": t.df, "p": t.p, "p_holm": self.p_holm, "margin": self.margin,
                        "p_tost": self.p_tost, "p_tost_holm": self.p_tost_holm, "units": "bits/dim"})
            if self.numbers.get("deferred"):  # not tested: no test statistic to read a direction into
                out.update({k: None for k in ("se", "ci95", "ci_adjusted", "df", "p", "p_tost")})
        out.update(self.numbers)
        return clean_json(out)


def clean_json(value):
    """``value`` with every non-finite float replaced by ``None`` and numpy scalars made plain."""
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def label(context: str, **parts) -> str:
    bits = [f"{k}={v}" for k, v in parts.items() if v is not None]
    if context:
        bits.insert(0, context)
    return ", ".join(bits)


def fmt_p(p: float) -> str:
    return "n/a" if not math.isfinite(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


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

def xy(curve: pd.DataFrame, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    """Finite ``(x, y)`` pairs of a curve as float arrays sorted by ``x``."""
    if x not in curve or y not in curve:
        return np.array([]), np.array([])
    xs, ys = curve[x].to_numpy(float), curve[y].to_numpy(float)
    ok = np.isfinite(xs) & np.isfinite(ys)
    order = np.argsort(xs[ok], kind="stable")
    return xs[ok][order], ys[ok][order]


def value_at(curve: pd.DataFrame, axis: str, x: float) -> float:
    """``val_bpd`` linearly interpolated at ``axis = x``; NaN outside the curve's range."""
    xs, ys = xy(curve, axis, "val_bpd")
    if xs.size == 0 or x < xs[0] - 1e-9 or x > xs[-1] + 1e-9:
        return math.nan
    return float(np.interp(x, xs, ys))


def by_run(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``{run_id: rows}``, split once (filtering per trial would be quadratic in the sweep size)."""
    return {rid: rows for rid, rows in frame.groupby("run_id", sort=False)}


def finished(trials: pd.DataFrame) -> pd.DataFrame:
    return trials if "state" not in trials else trials[trials["state"] == "finished"]


def lost_trials(group: pd.DataFrame) -> list[str]:
    """One phrase per trial of ``group`` that did not finish, lowest seed first."""
    if "state" not in group:
        return []
    out = []
    for _, row in group[group["state"] != "finished"].sort_values("seed").iterrows():
        reason = str(row.get("failure_reason") or "")
        lr = row.get("effective_lr")
        at_lr = f" at lr {float(lr):.2e}" if isinstance(lr, (int, float)) and math.isfinite(lr) else ""
        if reason.startswith(DIVERGED_PREFIX):
            out.append(f"seed {row['seed']} diverged{at_lr} ({reason})")
        elif row["state"] == "failed":
            out.append(f"seed {row['seed']} failed{at_lr}" + (f" ({reason})" if reason else ""))
        else:
            out.append(f"seed {row['seed']} {row['state'] or 'unknown'}")
    return out


def common_horizon(curves: dict[str, pd.DataFrame], ids, axis: str) -> float:
    """The largest ``axis`` value every curve of ``ids`` reached (NaN if one is missing)."""
    ends = [curves[i][axis].max() if i in curves else math.nan for i in ids]
    return float(min(ends)) if ends and all(np.isfinite(ends)) else math.nan


def arm_at(curves: dict[str, pd.DataFrame], group: pd.DataFrame, axis: str, x: float, name: str) -> Arm:
    done = finished(group)
    return Arm(name, {int(r.seed): value_at(curves.get(rid, EMPTY), axis, x) for rid, r in done.iterrows()},
               lost_trials(group))


def compare_finding(topic: str, context: str, question: str, a: Arm, b: Arm, margin: float, worse: str,
                    better: str, equal: str, **numbers) -> Finding:
    test = S.by_seed(a.values, b.values)
    return Finding(topic, context, question, numbers=numbers, arms=(a, b), test=test, margin=margin,
                   render=lambda f: comparison_text(f, worse, better, equal))


def note(topic: str, context: str, question: str, text: str, **numbers) -> Finding:
    """A finding that answers nothing (a comparison the sweep cannot make): ``conclusion`` not_tested."""
    return Finding(topic, context, question, f"[{context}] {text}", "not_tested", numbers)


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

def target_bpd(curves: dict[str, pd.DataFrame], ids) -> float:
    """The lowest validation BPD every trial of ``ids`` reached: the largest of their minima."""
    mins = [float(np.nanmin(curves[i]["val_bpd"])) for i in ids if i in curves and curves[i]["val_bpd"].notna().any()]
    return max(mins) if mins and len(mins) == len(list(ids)) else math.nan


def steps_to(curve: pd.DataFrame, target: float) -> float:
    """Optimizer steps at which ``val_bpd`` first reaches ``target`` (linear between validations)."""
    steps, bpd = xy(curve, "step", "val_bpd")
    hit = np.flatnonzero(bpd <= target + 1e-12)
    if hit.size == 0:
        return math.nan
    k = int(hit[0])
    if k == 0 or bpd[k - 1] == bpd[k]:
        return float(steps[k])
    frac = (bpd[k - 1] - target) / (bpd[k - 1] - bpd[k])
    return float(steps[k - 1] + frac * (steps[k] - steps[k - 1]))


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


def count(value: float) -> str:
    """A quantity in images with 3 significant digits and no exponent: ``1,230``, ``45.6``, ``0.0213``."""
    if not math.isfinite(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{float(f'{value:.3g}'):g}"


def ci_words(ci: S.MeanCI) -> str:
    """``"1,230 [980, 1,480] (3 seeds)"``; ``"1,230 (1 seed)"`` without an interval."""
    if ci.known:
        return f"{count(ci.mean)} [{count(ci.lo)}, {count(ci.hi)}] ({ci.n} seeds)"
    return f"{count(ci.mean)} (1 seed)"


@dataclass(frozen=True)
class ScalingFit:
    """S(B) = S_min·(1 + B_crit/B), fitted by least squares of S against 1/B on the per-batch mean
    steps. ``b_crit`` in images (inf: no saturation in range; ≤ 0 is reported as such)."""

    s_min: float
    b_crit: float
    residual: float  # RMS relative residual of the means (NaN with 2 batch sizes: the fit is exact)


def fit_scaling(batches: np.ndarray, steps: np.ndarray) -> ScalingFit:
    inv = 1.0 / np.asarray(batches, dtype=float)
    steps = np.asarray(steps, dtype=float)
    slope, intercept = np.polyfit(inv, steps, 1)
    b_crit = slope / intercept if intercept > 0 else math.inf
    fitted = intercept + slope * inv
    residual = float(np.sqrt(np.mean(((steps - fitted) / steps) ** 2))) if len(steps) > 2 else math.nan
    return ScalingFit(float(intercept), float(b_crit), residual)


def bound(value: float) -> str:
    """A B_crit interval end: ``"1,234"``, ``"∞"`` or ``"≤ 0"``."""
    return "∞" if math.isinf(value) and value > 0 else ("≤ 0" if value <= 0 else count(value))


def bootstrap_b_crit(batches: np.ndarray, steps: dict[int, np.ndarray], rng_seed: int) -> tuple[float, float]:
    """95 % percentile interval of B_crit under a parametric bootstrap over seeds: each batch size's
    mean steps is redrawn as mean + s.e.·T(n − 1) (the t distribution keeps the interval honest
    with 2–5 seeds, where resampling the seeds themselves covers far less than 95 %)."""
    rng = np.random.default_rng(rng_seed)
    draws = []
    for b in batches:
        v = steps[int(b)]
        draws.append(v.mean() + v.std(ddof=1) / math.sqrt(v.size) * rng.standard_t(v.size - 1, BOOTSTRAP))
    boot = np.array([fit_scaling(batches, column).b_crit for column in np.stack(draws, axis=1)])
    boot = np.where(np.isfinite(boot), boot, math.inf)
    lo, hi = np.percentile(boot, [2.5, 97.5], method="inverted_cdf")  # no interpolation across ±inf
    return float(lo), float(hi)


def critical_batch_findings(trials: pd.DataFrame, val: pd.DataFrame, noise_findings: list[Finding],
                            rng_seed: int = 0) -> list[Finding]:
    """B_crit from steps-to-target (McCandlish et al. 2018; Shallue et al. 2019) per (context,
    prior, LR scaling) with ≥ 2 batch sizes, with a bootstrap CI over seeds
    (:func:`bootstrap_b_crit`), beside the measured B_simple."""
    curves = by_run(val)
    findings = []
    done = finished(trials)
    for (context, prior, scaling), group in done.groupby(["context", "prior", "lr_scaling"], sort=True):
        sizes = sorted(group["batch_size"].unique())
        if len(sizes) < 2:
            continue
        where = label(context, prior=prior, lr_scaling=scaling)
        target = target_bpd(curves, group.index)
        per_batch = {int(b): np.array([steps_to(curves.get(rid, EMPTY), target)
                                       for rid in group[group["batch_size"] == b].index]) for b in sizes}
        per_batch = {b: v[np.isfinite(v)] for b, v in per_batch.items()}
        if not np.isfinite(target) or any(v.size == 0 for v in per_batch.values()):
            findings.append(note("critical batch", where, "critical batch size", "Steps to a common validation BPD "
                                 "could not be measured for every batch size: B_crit not estimated."))
            continue
        bs = np.array(sorted(per_batch), dtype=float)
        fit = fit_scaling(bs, [per_batch[int(b)].mean() for b in bs])
        testable = all(v.size >= 2 for v in per_batch.values())
        lo, hi = bootstrap_b_crit(bs, per_batch, rng_seed) if testable else (math.nan, math.nan)
        exact = len(bs) == 2
        fit_words = ("exact fit: 2 batch sizes for 2 parameters, no residual to judge it by" if exact else
                     f"{len(bs)} batch sizes, RMS relative residual {fit.residual:.1%}")
        if math.isinf(fit.b_crit):
            value = "beyond the batch sizes trained (steps fall as 1/B throughout: no saturation measured)"
        elif fit.b_crit <= 0:
            value = "below the smallest batch size (steps do not fall with batch size)"
        else:
            value = f"{count(fit.b_crit)} images" + (f", 95 % CI over seeds [{bound(lo)}, {bound(hi)}] (parametric t "
                                                   "bootstrap; ∞: no saturation within the batch sizes trained)"
                                                   if testable else " (1 seed at some batch size: no CI)")
        simple = [f for f in noise_findings if f.topic == "noise scale" and f.conclusion == "measured"
                  and f.numbers.get("prior") == prior and f.numbers.get("lr_scaling") == scaling
                  and f.numbers.get("other_settings") == context]
        beside = "; ".join(f"batch {f.numbers['batch_size']}: {count(f.numbers['b_simple'])}" for f in simple)
        text = (f"[{where}] Steps to validation BPD {target:.3f} fitted by S = S_min·(1 + B_crit/B) ({fit_words}): "
                f"B_crit = {value}; measured B_simple at matched BPD (plain-SGD approximation of B_noise): "
                f"{beside or 'not logged'}.")
        points = [{"batch_size": int(b), "seed": int(r.seed), "steps": steps_to(curves.get(rid, EMPTY), target)}
                  for b in sizes for rid, r in group[group["batch_size"] == b].iterrows()]
        findings.append(Finding("critical batch", where, "critical batch size", text,
                                "measured" if testable else "not_tested", {
                                    "prior": prior, "lr_scaling": scaling, "target_bpd": target, "b_crit": fit.b_crit,
                                    "ci95": [lo, hi], "s_min": fit.s_min, "e_min": fit.s_min * fit.b_crit,
                                    "residual": fit.residual, "exact_fit": exact, "points": points,
                                    "test": f"parametric t bootstrap over seeds ({BOOTSTRAP} draws)",
                                    "units": "images"}))
    return findings


# ----------------------------------------------------------------------------------------------
# Everything
# ----------------------------------------------------------------------------------------------

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


__all__ = ["Arm", "Finding", "verdict", "batch_gap_findings", "lr_scaling_findings", "still_improving_findings",
           "noise_scale_findings", "critical_batch_findings", "prior_findings", "late_slope", "value_at",
           "steps_to", "fit_scaling", "b_simple_window", "clean_json", "adjust", "xy", "DEFAULT_MARGIN"]
