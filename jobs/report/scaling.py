"""The critical batch size from learning curves (McCandlish et al. 2018; Shallue et al. 2019): steps
to several target validation BPDs per batch size (censored where a run never got there), the fit
S = S_min·(1 + B_crit/B), its bootstrap interval, and the training regime of each batch size.

Units: steps are optimizer steps; batch sizes, B_crit and examples E = B·S are images; BPD bits/dim.
"""
from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from jobs.report import stats as S
from jobs.report.findings import EMPTY, Finding, by_run, count, finished, label, note, xy

BOOTSTRAP = 2000  # bootstrap draws of the B_crit interval
TARGET_QUANTILES = (0.5, 0.75, 0.9)  # default targets: fractions of the way from the median first to the best val BPD
FIRST_STEP = 1.0  # steps: lower end of the bracket of a crossing at a run's first validation
PERFECT_SCALING_MAX = 0.25  # B/B_crit: elasticity −dlogS/dlogB = 1/(1 + B/B_crit) ≥ 0.8
MAXIMAL_PARALLELISM_MIN = 4.0  # B/B_crit: elasticity ≤ 0.2
REGIME_WORDS = {"perfect_scaling": "perfect scaling", "diminishing_returns": "diminishing returns",
                "maximal_parallelism": "maximal data parallelism", "not_determined": "regime not determined"}


def target_bpd(curves: dict[str, pd.DataFrame], ids) -> float:
    """The lowest validation BPD every trial of ``ids`` reached: the largest of their minima."""
    mins = [float(np.nanmin(curves[i]["val_bpd"])) for i in ids if i in curves and curves[i]["val_bpd"].notna().any()]
    return max(mins) if mins and len(mins) == len(list(ids)) else math.nan


@dataclass(frozen=True)
class Crossing:
    """Where a curve first reaches a target: ``steps`` (NaN: never, censored), the validation steps
    ``[lo, hi]`` that bracket it, and ``last``, the curve's last validation step."""

    steps: float
    lo: float
    hi: float
    last: float

    @property
    def censored(self) -> bool:
        return math.isnan(self.steps)


def crossing(curve: pd.DataFrame, target: float) -> Crossing:
    """The first crossing of ``target`` (bits/dim): log step linear in log ``val_bpd`` between the two
    bracketing validations (linear when the earlier one is at step 0); at the first validation, its
    step, bracketed by [:data:`FIRST_STEP`, that step]."""
    steps, bpd = xy(curve, "step", "val_bpd")
    last = float(steps[-1]) if steps.size else 0.0
    hit = np.flatnonzero(bpd <= target + 1e-12)
    if hit.size == 0:
        return Crossing(math.nan, math.nan, math.nan, last)
    k = int(hit[0])
    hi = float(steps[k])
    if k == 0:
        return Crossing(hi, min(FIRST_STEP, hi), hi, last)
    s0, b0, b1 = float(steps[k - 1]), float(bpd[k - 1]), float(bpd[k])
    if s0 > 0 and b1 > 0:
        return Crossing(s0 * (hi / s0) ** (math.log(b0 / target) / math.log(b0 / b1)), s0, hi, last)
    return Crossing(s0 + (b0 - target) / (b0 - b1) * (hi - s0), min(FIRST_STEP, hi), hi, last)


def steps_to(curve: pd.DataFrame, target: float) -> float:
    """Optimizer steps at which ``val_bpd`` first reaches ``target`` (:func:`crossing`; NaN: never)."""
    return crossing(curve, target).steps


def default_targets(first: float, best: float) -> list[float]:
    """:data:`TARGET_QUANTILES` of the way from ``first`` to ``best`` (bits/dim), easiest first."""
    return [first - q * (first - best) for q in TARGET_QUANTILES] if first > best else []


def first_and_best(curves: dict[str, pd.DataFrame], ids) -> tuple[float, float]:
    """(median over ``ids`` of their first validation BPD, lowest validation BPD of any of them)."""
    pairs = [xy(curves.get(i, EMPTY), "step", "val_bpd")[1] for i in ids]
    pairs = [bpd for bpd in pairs if bpd.size]
    if not pairs:
        return math.nan, math.nan
    return float(np.median([bpd[0] for bpd in pairs])), float(min(bpd.min() for bpd in pairs))


@dataclass(frozen=True)
class ScalingFit:
    """S(B) = S_min·(1 + B_crit/B) = S_min + E_min/B, fitted by least squares of S against 1/B on the
    per-batch mean steps. ``b_crit`` in images (inf: intercept ≤ 0, no saturation in range; may be
    ≤ 0: steps do not fall with B); ``e_min`` = S_min·B_crit (images), the slope."""

    s_min: float
    b_crit: float
    residual: float  # RMS relative residual of the means (NaN with 2 batch sizes: the fit is exact)
    e_min: float = math.nan

    def steps(self, batch: float) -> float:
        return self.s_min + self.e_min / batch


def lines(inv: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares (slope, intercept) of each row of ``steps`` against ``inv`` (1/B)."""
    centred = inv - inv.mean()
    slope = (steps - steps.mean(axis=-1, keepdims=True)) @ centred / (centred @ centred)
    return slope, steps.mean(axis=-1) - slope * inv.mean()


def fit_scaling(batches: np.ndarray, steps: np.ndarray) -> ScalingFit:
    inv = 1.0 / np.asarray(batches, dtype=float)
    steps = np.asarray(steps, dtype=float)
    slope, intercept = (float(v) for v in lines(inv, steps))
    b_crit = slope / intercept if intercept > 0 else math.inf
    fitted = intercept + slope * inv
    residual = float(np.sqrt(np.mean(((steps - fitted) / steps) ** 2))) if len(steps) > 2 else math.nan
    return ScalingFit(intercept, b_crit, residual, slope)


@dataclass(frozen=True)
class Interval:
    """The bootstrap of a fit: 95 % percentile intervals of ``b_crit`` (images; 0: at or below 0,
    inf: no saturation), ``s_min`` (steps) and ``e_min`` (images), and B_crit's one-sided 95 %
    bounds ``lower`` (5th percentile) and ``upper`` (95th)."""

    b_crit: tuple[float, float]
    s_min: tuple[float, float]
    e_min: tuple[float, float]
    lower: float
    upper: float


def bootstrap_fit(batches: np.ndarray, brackets: list[np.ndarray], rng_seed: int) -> Interval:
    """Parametric bootstrap over seeds: per draw, each seed's crossing is drawn log-uniformly within
    its bracket (``brackets[i]``: ``(n, 2)`` steps [lo, hi] per seed of ``batches[i]``), then the
    batch's mean steps is redrawn as mean + s.e.·T(n − 1) and the fit repeated (the t draw keeps the
    interval honest with 2–5 seeds, where resampling the seeds covers far less than 95 %)."""
    rng = np.random.default_rng(rng_seed)
    columns = []
    for pair in brackets:
        lo, hi = pair[:, 0], pair[:, 1]
        ratio = np.divide(hi, lo, out=np.ones_like(hi), where=lo > 0)
        seeds = np.where(lo > 0, lo, hi) * ratio ** rng.random((BOOTSTRAP, lo.size))
        se = seeds.std(axis=1, ddof=1) / math.sqrt(lo.size)
        columns.append(seeds.mean(axis=1) + se * rng.standard_t(lo.size - 1, BOOTSTRAP))
    slope, intercept = lines(1.0 / np.asarray(batches, dtype=float), np.stack(columns, axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        b_crit = np.where(intercept > 0, np.maximum(slope / intercept, 0.0), math.inf)
    lo, hi, lower, upper = np.percentile(b_crit, [2.5, 97.5, 5, 95], method="inverted_cdf")  # no interpolation to ∞
    return Interval((float(lo), float(hi)), tuple(float(v) for v in np.percentile(intercept, [2.5, 97.5])),
                    tuple(float(v) for v in np.percentile(slope, [2.5, 97.5])), float(lower), float(upper))


def regime(batch: float, lo: float, hi: float) -> tuple[str, float, float]:
    """(label, r_lo, r_hi): r = B/B_crit over B_crit's interval [lo, hi] (lo ≤ 0 → r_hi = ∞);
    ``perfect_scaling`` when r_hi ≤ :data:`PERFECT_SCALING_MAX`, ``maximal_parallelism`` when r_lo ≥
    :data:`MAXIMAL_PARALLELISM_MIN`, ``diminishing_returns`` when both lie between, else ``not_determined``."""
    r_lo = batch / hi if hi > 0 else math.inf
    r_hi = batch / lo if lo > 0 else math.inf
    if r_hi <= PERFECT_SCALING_MAX:
        return "perfect_scaling", r_lo, r_hi
    if r_lo >= MAXIMAL_PARALLELISM_MIN:
        return "maximal_parallelism", r_lo, r_hi
    if PERFECT_SCALING_MAX < r_lo and r_hi < MAXIMAL_PARALLELISM_MIN:
        return "diminishing_returns", r_lo, r_hi
    return "not_determined", r_lo, r_hi


def ratio(value: float) -> str:
    """B/B_crit as words: ``"0.0532"``, ``"130"``, ``"∞"``."""
    return "∞" if math.isinf(value) else count(value)


def bound(value: float) -> str:
    """A B_crit interval end: ``"1,234"``, ``"∞"`` or ``"≤ 0"``."""
    return "∞" if math.isinf(value) and value > 0 else ("≤ 0" if value <= 0 else count(value))


@dataclass
class Batch:
    """One batch size at one target: its seeds' crossings and median validation spacing (steps)."""

    size: int
    seeds: list[tuple[int, Crossing]]
    spacing: float

    @property
    def censored(self) -> list[Crossing]:
        return [c for _, c in self.seeds if c.censored]

    @property
    def steps(self) -> np.ndarray:
        return np.array([c.steps for _, c in self.seeds])

    def row(self) -> dict:
        ci = S.mean_ci([] if self.censored else self.steps)  # no mean with a censored seed
        return {"batch_size": self.size, "n": len(self.seeds), "censored": len(self.censored),
                "steps_mean": ci.mean, "steps_lo": ci.lo, "steps_hi": ci.hi, "examples_mean": self.size * ci.mean,
                "examples_lo": self.size * ci.lo, "examples_hi": self.size * ci.hi, "spacing": self.spacing}

    def censoring_bound(self) -> float:
        """Mean steps with censored seeds at their last validation: a lower bound on the mean."""
        return float(np.mean([c.last if c.censored else c.steps for _, c in self.seeds]))

    def words(self, target: float) -> str:
        if not self.censored:
            ci = S.mean_ci(self.steps)
            value = f"{count(ci.mean)} [{count(ci.lo)}, {count(ci.hi)}]" if ci.known else f"{count(ci.mean)} (1 seed)"
            return f"batch {self.size}: {value} steps (validations every {count(self.spacing)} steps)"
        by = min(c.last for c in self.censored)
        return (f"batch {self.size}: {len(self.censored)} of {len(self.seeds)} seeds never reached {target:.3f} "
                f"bits/dim by step {count(by)} (censored; validations every {count(self.spacing)} steps)")


def observe(group: pd.DataFrame, curves: dict[str, pd.DataFrame], target: float) -> list[Batch]:
    """The crossings of ``target`` (bits/dim) by the runs of ``group``, per batch size, smallest first."""
    out = []
    for size, runs in group.groupby("batch_size", sort=True):
        seeds = [(int(r.seed), crossing(curves.get(rid, EMPTY), target)) for rid, r in runs.sort_values("seed").iterrows()]
        gaps = [np.diff(xy(curves.get(rid, EMPTY), "step", "val_bpd")[0]) for rid in runs.index]
        gaps = np.concatenate(gaps) if gaps else np.array([])
        out.append(Batch(int(size), seeds, float(np.median(gaps)) if gaps.size else math.nan))
    return out


def b_crit_state(fit: ScalingFit, interval: Interval, sizes: list[int]) -> tuple[str, str, dict]:
    """(conclusion, words, numbers) for B_crit: ``measured`` when the fit and its 95 % interval lie
    within the batch sizes trained, else ``bound`` (one-sided 95 % bounds) or ``inconclusive``."""
    small, large = sizes[0], sizes[-1]
    lo, hi = interval.b_crit
    if small <= lo and hi <= large and small <= fit.b_crit <= large:
        return "measured", f"B_crit = {count(fit.b_crit)} images, 95 % CI [{count(lo)}, {count(hi)}]", \
            {"b_crit": fit.b_crit}
    lower = interval.lower if interval.lower > 0 else math.nan
    upper = interval.upper if math.isfinite(interval.upper) else math.nan
    numbers = {"b_crit": math.nan, "b_crit_lower": lower, "b_crit_upper": upper}
    if upper <= small:
        return "bound", (f"B_crit < {small} images (below the batch sizes trained; one-sided 95 % upper bound ≈ "
                         f"{count(upper)})"), numbers
    if lower >= large:
        return "bound", (f"B_crit > {large} images (beyond the batch sizes trained; one-sided 95 % lower bound ≈ "
                         f"{count(lower)})"), numbers
    sides = [f"> {count(lower)}" if math.isfinite(lower) else "", f"< {count(upper)}" if math.isfinite(upper) else ""]
    where = f"not pinned within the batch sizes trained ({small}–{large} images; 95 % interval [{bound(lo)}, {bound(hi)}])"
    if not any(sides):
        return "inconclusive", f"B_crit {where}: no bound on either side", numbers
    return "bound", f"B_crit {where}: one-sided 95 % bound{'s' if all(sides) else ''} B_crit " + \
        " and ".join(s for s in sides if s) + " images, no point estimate", numbers


def untestable(used: list[Batch], edge_batches: Collection[int]) -> str:
    """Why B_crit cannot be estimated from the fully observed batches ``used`` ("" when it can)."""
    if len(used) < 2:
        return f"only {', '.join(f'batch {b.size}' for b in used) or 'no batch size'} fully observed (a fit needs 2)"
    edge = [str(b.size) for b in used if b.size in edge_batches]
    if edge:
        return (f"the learning rate chosen for batch {', '.join(edge)} was at the edge of its search range (its steps "
                "may be limited by the learning rate, not the batch size)")
    one = [str(b.size) for b in used if len(b.seeds) < 2]
    return f"1 seed at batch {', '.join(one)} (an interval over seeds needs 2)" if one else ""


def target_finding(where: str, context: str, prior, scaling, group: pd.DataFrame, curves: dict[str, pd.DataFrame],
                   target: float, targets: list[float], rule: str, edge_batches: Collection[int], beside: str,
                   rng_seed: int) -> Finding:
    """One ``critical batch`` finding: B_crit and the regimes at one ``target`` (bits/dim)."""
    batches = observe(group, curves, target)
    sizes = [b.size for b in batches]
    used = [b for b in batches if not b.censored]
    rows = {b.size: b.row() for b in batches}
    numbers = {"prior": prior, "lr_scaling": scaling, "other_settings": context, "target_bpd": target,
               "targets": targets, "target_rule": rule, "batch_sizes": sizes, "fit_batches": [b.size for b in used],
               "left_out": {str(b.size): "censored seeds: no mean steps" for b in batches if b.censored},
               "b_crit": math.nan, "ci95": [math.nan, math.nan], "b_crit_lower": math.nan, "b_crit_upper": math.nan,
               "b_crit_fit": math.nan, "s_min": math.nan, "s_min_ci95": [math.nan, math.nan], "e_min": math.nan,
               "e_min_ci95": [math.nan, math.nan], "residual": math.nan, "exact_fit": len(used) == 2,
               "test": f"parametric t bootstrap over seeds, crossings drawn log-uniformly within their validation "
                       f"brackets ({BOOTSTRAP} draws)", "units": "images"}
    sentences = ["; ".join(b.words(target) for b in batches)]
    fit = fit_scaling([b.size for b in used], [b.steps.mean() for b in used]) if len(used) >= 2 else None
    reason = untestable(used, edge_batches)
    interval = None
    if fit is not None:
        left = [b for b in batches if b.censored]
        fit_words = ("exact fit: 2 batch sizes for 2 parameters, no residual to judge it by" if len(used) == 2 else
                     f"{len(used)} batch sizes, RMS relative residual {fit.residual:.1%}")
        if left:
            fit_words += "; left out: " + ", ".join(f"batch {b.size} (censored seeds: no mean steps)" for b in left)
        sentences.append(f"Fit S = S_min·(1 + B_crit/B) to the mean steps against 1/B ({fit_words})")
        numbers.update(b_crit_fit=fit.b_crit, s_min=fit.s_min, e_min=fit.e_min, residual=fit.residual)
        for b in left:
            predicted, floor = fit.steps(b.size), b.censoring_bound()
            consistent = bool(predicted >= floor)
            rows[b.size].update(fit_steps=predicted, censoring_bound=floor, consistent=consistent)
            sentences.append(f"At batch {b.size} the fit predicts {count(predicted)} steps, "
                             + ("at or above" if consistent else "below") + f" its censoring bound {count(floor)} "
                             "(mean steps with censored seeds at their last validation): "
                             + ("consistent" if consistent else "inconsistent, the fit understates the steps there"))
        if not reason:
            interval = bootstrap_fit(np.array([b.size for b in used], dtype=float),
                                     [np.array([[c.lo, c.hi] for _, c in b.seeds]) for b in used], rng_seed)
    if interval is None:
        conclusion = "not_tested"
        sentences.append(f"B_crit not tested at this target: {reason}; regimes not determined")
        numbers["reason"] = reason
        regimes = {b: ("not_determined", math.nan, math.nan) for b in sizes}
    else:
        conclusion, words, state = b_crit_state(fit, interval, sizes)
        numbers.update(state, ci95=list(interval.b_crit), s_min_ci95=list(interval.s_min),
                       e_min_ci95=list(interval.e_min))
        sentences.append(words)
        if fit.s_min > 0 and fit.e_min > 0:
            (s_lo, s_hi), (e_lo, e_hi) = interval.s_min, interval.e_min
            sentences.append(f"Hyperbola (S/S_min − 1)(E/E_min − 1) = 1 with S_min = {count(fit.s_min)} steps "
                             f"[{count(s_lo)}, {count(s_hi)}], E_min = S_min·B_crit = {count(fit.e_min)} images "
                             f"[{count(e_lo)}, {count(e_hi)}] (95 % bootstrap intervals)")
        regimes = {b: regime(b, *interval.b_crit) for b in sizes}
        sentences.append("Regime by B/B_crit over its 95 % interval (step elasticity −dlogS/dlogB = "
                         "1/(1 + B/B_crit)): " + "; ".join(f"batch {b}: {REGIME_WORDS[g]} (B/B_crit {ratio(lo)}–"
                                                           f"{ratio(hi)})" for b, (g, lo, hi) in regimes.items()))
    for b, (g, lo, hi) in regimes.items():
        rows[b].update(regime=g, b_over_b_crit=[lo, hi])
    numbers.update(regime={str(b): g for b, (g, _, _) in regimes.items()}, per_batch=list(rows.values()),
                   points=[{"batch_size": b.size, "seed": seed, "steps": c.steps, "censored": c.censored,
                            "censored_at": c.last if c.censored else math.nan, "bracket": [c.lo, c.hi]}
                           for b in batches for seed, c in b.seeds])
    text = (f"[{where}] Steps to validation BPD {target:.3f} (target {targets.index(target) + 1} of {len(targets)}, "
            f"{rule}; log–log interpolation between validations): " + ". ".join(sentences)
            + f". Measured B_simple {beside}.")
    return Finding("critical batch", where, "critical batch size", text, conclusion, numbers)


def simple_words(noise_findings: list[Finding], context: str, prior, scaling) -> str:
    """The measured B_simple of a (context, prior, LR scaling) per batch size, as words."""
    simple = [f for f in noise_findings if f.topic == "noise scale" and f.conclusion == "measured"
              and f.numbers.get("prior") == prior and f.numbers.get("lr_scaling") == scaling
              and f.numbers.get("other_settings") == context]
    if not simple:
        return "not logged"
    return (f"at validation BPD {simple[0].numbers['target_bpd']:.3f} (reached by every trial; plain-SGD "
            "approximation of B_noise): " + "; ".join(f"batch {f.numbers['batch_size']}: {count(f.numbers['b_simple'])}"
                                                      for f in simple))


def critical_batch_findings(trials: pd.DataFrame, val: pd.DataFrame, noise_findings: list[Finding],
                            targets: Sequence[float] | None = None, rng_seed: int = 0) -> list[Finding]:
    """B_crit per (context, prior, LR scaling) with ≥ 2 batch sizes, one finding per target
    (bits/dim; default: :data:`TARGET_QUANTILES` of the way from the context's median first to its
    best validation BPD), with its bootstrap interval (:func:`bootstrap_fit`), the regime of each
    batch size, and the measured B_simple beside it. A batch size with a trial whose ``lr_at_edge``
    (column of ``trials``, when present) is true had its learning rate chosen at the edge of its
    search: a fit that uses it is not tested."""
    curves = by_run(val)
    findings = []
    for context, runs in finished(trials).groupby("context", sort=True):
        first, best = first_and_best(curves, runs.index)
        if targets:
            chosen, rule = sorted((float(t) for t in targets), reverse=True), "given"
        else:
            chosen = default_targets(first, best)
            rule = (f"{'/'.join(f'{q:g}' for q in TARGET_QUANTILES)} of the way from the median first validation "
                    f"BPD {first:.3f} to the best {best:.3f}")
        for (prior, scaling), group in runs.groupby(["prior", "lr_scaling"], sort=True):
            if group["batch_size"].nunique() < 2:
                continue
            where = label(context, prior=prior, lr_scaling=scaling)
            if not chosen:
                findings.append(note("critical batch", where, "critical batch size", "No validation BPD fell below "
                                     "the first one: no target, B_crit not estimated.", prior=prior,
                                     lr_scaling=scaling, other_settings=context))
                continue
            beside = simple_words(noise_findings, context, prior, scaling)
            edge_batches = set(group.loc[group["lr_at_edge"], "batch_size"]) if "lr_at_edge" in group else set()
            findings += [target_finding(where, context, prior, scaling, group, curves, t, chosen, rule, edge_batches,
                                        beside, rng_seed) for t in chosen]
    return findings


__all__ = ["ScalingFit", "Interval", "Crossing", "fit_scaling", "bootstrap_fit", "crossing", "regime",
           "critical_batch_findings", "steps_to", "target_bpd", "default_targets", "BOOTSTRAP", "TARGET_QUANTILES",
           "PERFECT_SCALING_MAX", "MAXIMAL_PARALLELISM_MIN"]
