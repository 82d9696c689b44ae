"""The critical batch size from learning curves (McCandlish et al. 2018; Shallue et al. 2019):
steps to a target validation BPD per batch size, the fit S = S_min·(1 + B_crit/B) and its interval.

Units: steps are optimizer steps, batch sizes and B_crit images, BPD bits/dim.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from jobs.report.findings import EMPTY, Finding, by_run, count, finished, label, note, xy

BOOTSTRAP = 2000  # bootstrap draws of the B_crit interval


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





__all__ = ["ScalingFit", "fit_scaling", "bootstrap_b_crit", "critical_batch_findings", "steps_to", "target_bpd"]
