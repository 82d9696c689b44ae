"""The sweep's verdict: plain sentences with numbers and uncertainty, computed from the data.

Pure functions over pandas tables (no MLflow):

* ``trials``: one row per trial, indexed by run id, with columns ``batch_size`` (int),
  ``lr_scaling`` (``none|linear|sqrt``), ``prior`` (``laplace|gaussian``), ``seed`` (int) and
  ``context`` (a label for every other varying setting, e.g. ``data.name=msds1``; ``""`` when none).
* ``val``: validation history, one row per validation: ``run_id``, ``step`` (optimizer step),
  ``epoch``, ``val_bpd`` (bits/dim).
* ``noise``: gradient noise scale history: ``run_id``, ``step``, ``noise_scale`` (B_simple, images).

Uncertainty is the standard error across seeds (sample s.d. / √n); a difference of two means gets
√(se₁² + se₂²). With one seed in a group the uncertainty is unknown and the sentence says so. A
difference is called *indistinguishable* when |diff| < 2 s.e. Comparisons a sweep cannot make
(one batch size, no LR-scaling trials, one prior) are reported as not measured, never invented.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

BASELINE_SCALING = "none"
LATE_FRACTION = 0.1  # slope window: the last 10 % of training (in epochs)
NOISE_LATE_FRACTION = 0.2  # noise scale: mean over the last 20 % of logged steps
EMPTY = pd.DataFrame({"run_id": [], "step": [], "epoch": [], "val_bpd": []})
EMPTY_NOISE = pd.DataFrame({"run_id": [], "step": [], "noise_scale": []})
MIN_GAIN = 1e-3  # bits/dim: a projected gain per further 10 % of training below this is "flat"


@dataclass
class Finding:
    """One verdict sentence. ``topic`` groups sentences; ``numbers`` holds the values behind it."""

    topic: str
    text: str
    numbers: dict = field(default_factory=dict)


@dataclass
class Estimate:
    """Mean over seeds with its standard error (``se`` is NaN when n < 2)."""

    mean: float
    se: float
    n: int

    @classmethod
    def of(cls, values) -> "Estimate":
        v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
        if v.size == 0:
            return cls(math.nan, math.nan, 0)
        se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan
        return cls(float(v.mean()), se, int(v.size))

    def minus(self, other: "Estimate") -> "Estimate":
        return Estimate(self.mean - other.mean, math.hypot(self.se, other.se), min(self.n, other.n))

    @property
    def known(self) -> bool:
        return np.isfinite(self.se)


def pm(est: Estimate, digits: int = 3, signed: bool = False) -> str:
    """``"3.412 ± 0.004"``, or just the value when the uncertainty is unknown."""
    value = f"{est.mean:+.{digits}f}" if signed else f"{est.mean:.{digits}f}"
    return f"{value} ± {est.se:.{digits}f}" if est.known else value


def count(value: float) -> str:
    """A positive quantity with 3 significant digits, without exponent below a million."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def seeds_phrase(*groups: Estimate) -> str:
    ns = sorted({g.n for g in groups})
    seeds = "/".join(str(n) for n in ns)
    return f"{seeds} seed{'s' if ns != [1] else ''} per group"


def seeds_note(*groups: Estimate) -> str:
    """``" (3 seeds per group)"``, or ``" (1 seed per group: uncertainty unknown)"``."""
    unknown = "" if all(g.n >= 2 for g in groups) else ": uncertainty unknown"
    return f" ({seeds_phrase(*groups)}{unknown})"


def xy(curve: pd.DataFrame, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    """Finite ``(x, y)`` pairs of a curve as float arrays sorted by ``x`` (numpy: this runs per trial)."""
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


def curves_of(curves: dict[str, pd.DataFrame], run_ids) -> dict[str, pd.DataFrame]:
    return {rid: curves.get(rid, EMPTY) for rid in run_ids}


def common_horizon(curves: dict[str, pd.DataFrame], axis: str) -> float:
    """The largest ``axis`` value every curve reached (NaN if a curve is empty)."""
    ends = [c[axis].max() for c in curves.values()]
    return float(min(ends)) if ends and all(np.isfinite(ends)) else math.nan


def estimate_at(curves: dict[str, pd.DataFrame], run_ids, axis: str, x: float) -> Estimate:
    return Estimate.of([value_at(c, axis, x) for c in curves_of(curves, run_ids).values()])


def compare(curves: dict[str, pd.DataFrame], a_ids, b_ids, axis: str) -> tuple[float, Estimate, Estimate] | None:
    """(horizon, estimate of A, estimate of B) at the common ``axis`` horizon of both groups."""
    horizon = common_horizon(curves_of(curves, list(a_ids) + list(b_ids)), axis)
    if not np.isfinite(horizon):
        return None
    a, b = estimate_at(curves, a_ids, axis, horizon), estimate_at(curves, b_ids, axis, horizon)
    if a.n == 0 or b.n == 0:
        return None
    return horizon, a, b


def judge(diff: Estimate, worse: str, better: str, what: str, pair: str) -> str:
    """``"<what> worse by 0.111 ± 0.005 bits/dim"``, or ``"<pair> are indistinguishable (...)"``
    when |diff| < 2 s.e.; without an s.e. only the measured difference is stated."""
    size = f"{abs(diff.mean):.3f}" + (f" ± {diff.se:.3f}" if diff.known else "")
    if diff.known and abs(diff.mean) < 2 * diff.se:
        return f"{pair} are indistinguishable (difference {pm(diff, signed=True)} bits/dim, within 2 s.e.)"
    direction = worse if diff.mean > 0 else better
    return f"{what} {direction} by {size} bits/dim"


def label(context: str, **parts) -> str:
    bits = [f"{k}={v}" for k, v in parts.items() if v is not None]
    if context:
        bits.insert(0, context)
    return ", ".join(bits)


AXIS_WORDS = {"epoch": ("equal epochs", "epoch {x:.3g}"), "step": ("equal optimizer steps", "step {x:.0f}")}


def batch_gap_findings(trials: pd.DataFrame, val: pd.DataFrame) -> list[Finding]:
    """BPD gap of each larger batch size against the smallest, at equal epochs and at equal steps."""
    curves = by_run(val)
    findings = []
    for (context, prior), group in trials.groupby(["context", "prior"], sort=True):
        base = group[group["lr_scaling"] == BASELINE_SCALING]
        scaling = BASELINE_SCALING if not base.empty else sorted(group["lr_scaling"].unique())[0]
        base = group[group["lr_scaling"] == scaling]
        sizes = sorted(base["batch_size"].unique())
        where = label(context, prior=prior, lr_scaling=scaling)
        if len(sizes) < 2:
            findings.append(Finding("batch gap", f"[{where}] Only one batch size ({sizes[0]}): "
                                    "no batch-size gap can be measured.", {"measured": False}))
            continue
        small = base[base["batch_size"] == sizes[0]].index
        for big_size in sizes[1:]:
            big = base[base["batch_size"] == big_size].index
            for axis, (words, at) in AXIS_WORDS.items():
                result = compare(curves, big, small, axis)
                if result is None:
                    horizon = common_horizon(curves_of(curves, list(big) + list(small)), axis)
                    why = (f"not every trial has a validation at or before {at.format(x=horizon)}, the furthest "
                           "point all of them reached" if np.isfinite(horizon) else "no validation history")
                    findings.append(Finding("batch gap", f"[{where}] Batch {big_size} vs {sizes[0]} at {words}: not "
                                            f"compared ({why}).", {"measured": False, "axis": axis}))
                    continue
                x, b, s = result
                diff = b.minus(s)
                verdict = judge(diff, "worse", "better", f"batch {big_size} is", f"batches {big_size} and {sizes[0]}")
                text = (f"[{where}] At {words} ({at.format(x=x)}), batch {big_size} reaches validation BPD {pm(b)} "
                        f"vs {pm(s)} at batch {sizes[0]}: {verdict}{seeds_note(b, s)}.")
                findings.append(Finding("batch gap", text, {
                    "measured": True, "context": context, "prior": prior, "axis": axis, "at": x,
                    "small": int(sizes[0]), "large": int(big_size), "gap": diff.mean, "gap_se": diff.se}))
    return findings


def lr_scaling_findings(trials: pd.DataFrame, val: pd.DataFrame) -> list[Finding]:
    """Does scaling the LR with the batch size close the gap at equal epochs?"""
    curves = by_run(val)
    findings = []
    for (context, prior), group in trials.groupby(["context", "prior"], sort=True):
        sizes = sorted(group["batch_size"].unique())
        where = label(context, prior=prior)
        base = group[group["lr_scaling"] == BASELINE_SCALING]
        if len(sizes) < 2:
            continue
        scaled_kinds = sorted(set(group[group["batch_size"] > sizes[0]]["lr_scaling"]) - {BASELINE_SCALING})
        if not scaled_kinds or base.empty:
            missing = "no trials with LR scaling (linear/sqrt) above the smallest batch" if not scaled_kinds \
                else "no unscaled (lr_scaling=none) trials to compare with"
            findings.append(Finding("lr scaling", f"[{where}] Whether LR scaling closes the gap is not tested: "
                                    f"{missing}.", {"measured": False}))
            continue
        small = base[base["batch_size"] == sizes[0]].index
        if small.empty:
            findings.append(Finding("lr scaling", f"[{where}] No unscaled batch-{sizes[0]} trials: LR scaling "
                                    "cannot be judged.", {"measured": False}))
            continue
        for kind in scaled_kinds:
            for big_size in sizes[1:]:
                scaled = group[(group["batch_size"] == big_size) & (group["lr_scaling"] == kind)].index
                plain = base[base["batch_size"] == big_size].index
                if scaled.empty:
                    continue
                ids = list(small) + list(scaled) + list(plain)
                x = common_horizon(curves_of(curves, ids), "epoch")
                if not np.isfinite(x):
                    continue
                s = estimate_at(curves, small, "epoch", x)
                gap_scaled = estimate_at(curves, scaled, "epoch", x).minus(s)
                text = (f"[{where}] With {kind} LR scaling, batch {big_size} at epoch {x:.3g} is "
                        f"{pm(gap_scaled, signed=True)} bits/dim from batch {sizes[0]}")
                numbers = {"measured": True, "context": context, "prior": prior, "kind": kind,
                           "large": int(big_size), "at": x, "gap_scaled": gap_scaled.mean, "gap_scaled_se": gap_scaled.se}
                if not plain.empty:
                    gap_plain = estimate_at(curves, plain, "epoch", x).minus(s)
                    numbers.update(gap_plain=gap_plain.mean, gap_plain_se=gap_plain.se)
                    text += f" (without scaling: {pm(gap_plain, signed=True)})"
                if not (gap_scaled.known):
                    text += ": one seed in a group, uncertainty unknown, so whether it closes the gap is not established."
                    numbers["closes"] = None
                elif abs(gap_scaled.mean) < 2 * gap_scaled.se:
                    text += ": it closes the gap (remaining difference within 2 s.e.)."
                    numbers["closes"] = True
                else:
                    text += ": it does not close the gap."
                    numbers["closes"] = False
                findings.append(Finding("lr scaling", text, numbers))
    return findings


def late_slope(curve: pd.DataFrame, fraction: float = LATE_FRACTION) -> tuple[float, float, float, float]:
    """(slope, s.e., from_epoch, to_epoch) of a least-squares line through ``val_bpd`` vs ``epoch``
    over the last ``fraction`` of training (at least the last 3 validations). Units: bits/dim per
    epoch; s.e. NaN with fewer than 3 points."""
    xs, ys = xy(curve, "epoch", "val_bpd")
    if xs.size < 2:
        return math.nan, math.nan, math.nan, math.nan
    start = int(np.searchsorted(xs, xs[-1] * (1 - fraction)))
    x, y = (xs[start:], ys[start:]) if xs.size - start >= 3 else (xs[-3:], ys[-3:])
    slope, intercept = np.polyfit(x, y, 1)
    se = math.nan
    if len(x) >= 3:
        resid = y - (slope * x + intercept)
        sxx = float(((x - x.mean()) ** 2).sum())
        se = math.sqrt(float((resid**2).sum()) / (len(x) - 2) / sxx) if sxx > 0 else math.nan
    return float(slope), se, float(x[0]), float(x[-1])


def still_improving_findings(trials: pd.DataFrame, val: pd.DataFrame) -> list[Finding]:
    """For the largest batch size of each setting: is validation BPD still falling at the end?

    "Still improving" needs a slope below zero by more than 2 s.e. *and* a projected gain of at
    least :data:`MIN_GAIN` bits/dim over a further 10 % of training; otherwise the curve is flat.
    """
    curves = by_run(val)
    findings = []
    for (context, prior, scaling), group in trials.groupby(["context", "prior", "lr_scaling"], sort=True):
        big_size = group["batch_size"].max()
        where = label(context, prior=prior, lr_scaling=scaling)
        fits = [late_slope(curves.get(rid, EMPTY)) for rid in group[group["batch_size"] == big_size].index]
        fits = [f for f in fits if np.isfinite(f[0])]
        if not fits:
            findings.append(Finding("still improving", f"[{where}] Batch {big_size}: too few validations to fit "
                                    "a final slope.", {"measured": False}))
            continue
        slopes = Estimate.of([f[0] for f in fits])
        # the larger of the spread across seeds and the fits' own error (one seed: the fit's alone)
        fit_se = math.sqrt(np.mean([f[1] ** 2 for f in fits]) / len(fits))
        slopes = Estimate(slopes.mean, fit_se if slopes.n == 1 else max(slopes.se, fit_se), slopes.n)
        span = f"epochs {min(f[2] for f in fits):.3g}–{max(f[3] for f in fits):.3g}"
        rate = f"{slopes.mean:+.2e}" + (f" ± {slopes.se:.1e}" if slopes.known else "")
        gain = -slopes.mean * LATE_FRACTION * max(f[3] for f in fits)  # bits/dim per further 10 % of training
        if not slopes.known:
            state, improving = "its trend is uncertain", None
        elif slopes.mean < -2 * slopes.se and gain >= MIN_GAIN:
            state, improving = (f"still improving at the end (≈{gain:.3f} bits/dim more per further 10 % of "
                                "training if the trend held)"), True
        elif slopes.mean > 2 * slopes.se and -gain >= MIN_GAIN:
            state, improving = "getting worse at the end (overfitting or instability)", False
        else:
            state, improving = (f"flat at the end (slope within 2 s.e. of zero, or under {MIN_GAIN} bits/dim per "
                                "further 10 % of training)"), False
        source = ("s.e. across seeds" if len(fits) > 1 else "s.e. from the linear fit, one seed") if slopes.known \
            else "no s.e.: fewer than 3 validations in the window"
        findings.append(Finding("still improving", (
            f"[{where}] Batch {big_size}: validation BPD slope over the last 10 % of training ({span}) is {rate} "
            f"bits/dim per epoch ({source}): {state}."),
            {"measured": True, "context": context, "prior": prior, "lr_scaling": scaling, "batch_size": int(big_size),
             "slope": slopes.mean, "slope_se": slopes.se, "improving": improving}))
    return findings


def late_mean(curve: pd.DataFrame, fraction: float = NOISE_LATE_FRACTION) -> float:
    """Mean ``noise_scale`` over the last ``fraction`` of the logged steps (NaN without data)."""
    steps, values = xy(curve, "step", "noise_scale")
    if steps.size == 0:
        return math.nan
    start = steps[0] + (steps[-1] - steps[0]) * (1 - fraction)
    return float(values[steps >= start].mean())


def noise_scale_findings(trials: pd.DataFrame, noise: pd.DataFrame) -> list[Finding]:
    """Late-training B_simple of each setting against the batch sizes trained there."""
    series = by_run(noise)
    findings = []
    for context, group in trials.groupby("context", sort=True):
        where = label(context) or "all trials"
        est = Estimate.of([late_mean(series.get(rid, EMPTY_NOISE)) for rid in group.index])
        if est.n == 0:
            findings.append(Finding("noise scale", f"[{where}] No gradient noise scale was logged.", {"measured": False}))
            continue
        parts = []
        for size in sorted(group["batch_size"].unique()):
            ratio = est.mean / size
            low, high = ((est.mean - 2 * est.se) / size, (est.mean + 2 * est.se) / size) if est.known else (ratio, ratio)
            if low >= 2:
                parts.append(f"batch {size} is well below it (B_simple/B = {ratio:.1f}): larger batches would still "
                             "cut the steps needed almost proportionally")
            elif high <= 0.5:
                parts.append(f"batch {size} is beyond it (B/B_simple = {1 / ratio:.1f}): past the critical batch "
                             "size, extra samples per step buy little")
            else:
                parts.append(f"batch {size} is comparable to it (B_simple/B = {ratio:.2f}): near the critical batch size")
        unc = "" if est.known else " (uncertainty unknown: one trial)"
        findings.append(Finding("noise scale", (
            f"[{where}] The measured gradient noise scale B_simple (late-training mean over {est.n} "
            f"trial{'s' if est.n > 1 else ''}) is {count(est.mean)}{f' ± {count(est.se)}' if est.known else ''} "
            f"images{unc}; " + "; ".join(parts) + "."),
            {"measured": True, "context": context, "b_simple": est.mean, "b_simple_se": est.se}))
    return findings


def final_values(trials: pd.DataFrame, curves: dict[str, pd.DataFrame], ids) -> tuple[str, list[float]]:
    """Per trial: test BPD when every trial has one, else validation BPD at the common final epoch."""
    if "test_bpd" in trials and trials.loc[ids, "test_bpd"].notna().all():
        return "test BPD", list(trials.loc[ids, "test_bpd"].astype(float))
    x = common_horizon(curves_of(curves, ids), "epoch")
    return f"validation BPD at epoch {x:.3g}", [value_at(curves.get(rid, EMPTY), "epoch", x) for rid in ids]


def prior_findings(trials: pd.DataFrame, val: pd.DataFrame) -> list[Finding]:
    """Does the prior matter, at each batch size (and LR scaling)?"""
    curves = by_run(val)
    findings = []
    for (context, size, scaling), group in trials.groupby(["context", "batch_size", "lr_scaling"], sort=True):
        priors = sorted(group["prior"].unique())
        where = label(context, batch=size, lr_scaling=scaling)
        if len(priors) < 2:
            findings.append(Finding("priors", f"[{where}] Only one prior ({priors[0]}): priors not compared.",
                                    {"measured": False}))
            continue
        what, values = final_values(trials, curves, list(group.index))
        by_id = dict(zip(group.index, values))
        first = priors[0]
        a = Estimate.of([by_id[i] for i in group[group["prior"] == first].index])
        for other in priors[1:]:
            b = Estimate.of([by_id[i] for i in group[group["prior"] == other].index])
            diff = b.minus(a)
            verdict = judge(diff, f"worse than {first}", f"better than {first}", f"{other} is", f"{other} and {first}")
            findings.append(Finding("priors", (
                f"[{where}] {what}: {other} {pm(b)} vs {first} {pm(a)}; {verdict}{seeds_note(a, b)}."),
                {"measured": True, "context": context, "batch_size": int(size), "lr_scaling": scaling,
                 "diff": diff.mean, "diff_se": diff.se,
                 "indistinguishable": bool(diff.known and abs(diff.mean) < 2 * diff.se)}))
    return findings


def verdict(trials: pd.DataFrame, val: pd.DataFrame, noise: pd.DataFrame) -> list[Finding]:
    """All findings, in reading order: batch gap, LR scaling, still improving, noise scale, priors."""
    if trials.empty:
        return [Finding("data", "No finished trials with validation history: no verdict.", {"measured": False})]
    return (batch_gap_findings(trials, val) + lr_scaling_findings(trials, val) + still_improving_findings(trials, val)
            + noise_scale_findings(trials, noise) + prior_findings(trials, val))


__all__ = ["Finding", "Estimate", "verdict", "batch_gap_findings", "lr_scaling_findings", "still_improving_findings",
           "noise_scale_findings", "prior_findings", "late_slope", "late_mean", "value_at"]
