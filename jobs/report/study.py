"""The report of a study in stages (:mod:`jobs.study`): its comparisons come from the last stage;
this module adds what the earlier stage found — the learning-rate search per batch size — and the
gradient noise scale it implies.

McCandlish et al. (2018), eq. 2.6: the best learning rate at batch ``B`` is
``ε_opt(B) = ε_max / (1 + B_noise / B)``, so ``1/ε_opt = 1/ε_max + (B_noise/ε_max) · (1/B)`` is a
line in ``1/B``. :func:`noise_scale_fit` fits it by least squares to the best LR found per batch
size: ``B_noise = slope / intercept`` (images), ``ε_max = 1 / intercept``, with a delta-method 95 %
t interval (n − 2 degrees of freedom). The interval covers the scatter of the best LRs around the
line only: each LR comes from one search, whose own resolution is not in it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from jobs.report.figures import plain_ticks
from jobs.report.render import Table


@dataclass(frozen=True)
class NoiseFit:
    """``b_noise`` (images) and ``lr_max`` with 95 % t intervals, from ``n`` batch sizes; ``state``:
    ``fitted``, or ``not_tested`` with ``why`` (fewer than 3 batch sizes, a chosen LR at the edge of
    the LRs searched, the same LR at every batch size, or a line that does not have the relation's
    shape: intercept or slope ≤ 0)."""

    state: str
    n: int
    b_noise: float = math.nan
    b_noise_lo: float = math.nan
    b_noise_hi: float = math.nan
    lr_max: float = math.nan
    lr_max_lo: float = math.nan
    lr_max_hi: float = math.nan
    why: str = ""


def noise_scale_fit(batch_sizes, lrs, at_edge=None, level: float = 0.95) -> NoiseFit:
    """Fit ``1/lr = a + b/B`` to the best learning rate ``lrs`` at each of ``batch_sizes`` (images).
    ``at_edge``: per batch size, whether its best LR is the lowest or highest LR searched there (the
    optimum may then lie outside the search: not fitted)."""
    x = 1.0 / np.asarray(batch_sizes, dtype=float)
    y = 1.0 / np.asarray(lrs, dtype=float)
    n = len(x)
    if n < 3 or len(set(x)) < 3:
        return NoiseFit("not_tested", n, why=f"{len(set(x))} batch size(s): a line through 2 points has no uncertainty")
    edge = [int(b) for b, e in zip(batch_sizes, at_edge if at_edge is not None else [False] * n) if e]
    if edge:
        return NoiseFit("not_tested", n, why=f"the best LR at batch {', '.join(map(str, edge))} is the edge of the LRs "
                                             "searched there: the optimum may lie beyond it; widen the search")
    if np.ptp(y) <= 1e-9 * np.abs(y).max():
        return NoiseFit("not_tested", n, why="the same LR is best at every batch size: the search cannot resolve how "
                                             "the optimum moves with the batch size")
    design = np.column_stack([np.ones(n), x])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    a, b = coef
    resid = y - design @ coef
    sigma2 = float(resid @ resid) / (n - 2)
    cov = sigma2 * np.linalg.inv(design.T @ design)
    if a <= 0 or b <= 0:
        return NoiseFit("not_tested", n, why=f"the best LR does not rise and level off with the batch size (fit "
                                             f"1/lr = {a:.4g} + {b:.4g}/B): the relation does not describe these points")
    t = sps.t.ppf(0.5 + level / 2, n - 2)
    ratio = b / a
    grad = np.array([-b / a**2, 1.0 / a])  # d(b/a)/d(a, b)
    se_ratio = math.sqrt(max(float(grad @ cov @ grad), 0.0))
    se_lr_max = math.sqrt(max(float(cov[0, 0]), 0.0)) / a**2  # d(1/a)/da = -1/a²
    return NoiseFit("fitted", n, ratio, ratio - t * se_ratio, ratio + t * se_ratio,
                    1 / a, 1 / a - t * se_lr_max, 1 / a + t * se_lr_max)


def lr_search_frame(table: pd.DataFrame, by: str = "batch_size") -> pd.DataFrame:
    """One row per trial of the search stage: ``by`` value, effective LR, warm-up steps, best
    validation BPD (bits/dim), state, and whether it is its setting's winner (the lowest best
    val BPD among trials that ran to the end)."""
    frame = pd.DataFrame({
        by: table[by], "lr": table["effective_lr"].astype(float),
        "warmup_steps": table.get("train.warmup_steps", pd.Series("0", index=table.index)).fillna("0").astype(str),
        "best_val_bpd": table["best_val_bpd"].astype(float), "state": table["state"]})
    frame["winner"] = False
    done = frame[(frame["state"] == "finished") & frame["best_val_bpd"].notna()]
    for _, group in done.groupby(by):
        frame.loc[group["best_val_bpd"].idxmin(), "winner"] = True
    return frame.sort_values([by, "lr"])


def lr_search_figure(frame: pd.DataFrame, path: Path, by: str = "batch_size") -> Path:
    """Best validation BPD against LR (log axis), one colour per ``by`` value; hollow markers for
    pruned trials, a star on each winner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (value, group) in enumerate(frame.groupby(by, sort=True)):
        color = plt.cm.viridis(i / max(frame[by].nunique() - 1, 1))
        for warmup, marker in zip(sorted(group["warmup_steps"].unique()), "osD^v"):
            part = group[group["warmup_steps"] == warmup]
            done = part[part["state"] == "finished"]
            cut = part[part["state"] != "finished"]
            ax.scatter(done["lr"], done["best_val_bpd"], color=color, marker=marker,
                       label=f"batch {value}, warm-up {warmup}")
            ax.scatter(cut["lr"], cut["best_val_bpd"], facecolors="none", edgecolors=color, marker=marker)
        win = group[group["winner"]]
        ax.scatter(win["lr"], win["best_val_bpd"], color=color, marker="*", s=220, edgecolors="black", zorder=3)
    ax.set_xscale("log")
    plain_ticks(ax)
    ax.set_xlabel("learning rate (effective, AdamW)")
    ax.set_ylabel("best validation BPD (bits/dim)")
    ax.set_title("LR search per batch size (hollow: pruned early; star: chosen)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def study_sections(stage: str, table: pd.DataFrame, out: Path) -> tuple[list[Table], list[tuple[str, Path]], NoiseFit]:
    """The search stage's table (with the B_noise fit in its notes), figure and fit for the study
    report (``table``: its trial table, :func:`jobs.report.tables.trial_table`)."""
    frame = lr_search_frame(table)
    (out / "lr_search.csv").write_text(frame.to_csv(index=False))
    figure = lr_search_figure(frame, out / "lr_search.png")
    winners = frame[frame["winner"]].sort_values("batch_size")
    tried = frame.groupby("batch_size")["lr"].agg(["min", "max"])
    at_edge = [lr in (tried.at[b, "min"], tried.at[b, "max"]) for b, lr in zip(winners["batch_size"], winners["lr"])]
    fit = noise_scale_fit(winners["batch_size"].astype(float), winners["lr"], at_edge)
    shown = pd.DataFrame({
        "batch (images)": winners["batch_size"].astype(int).astype(str),
        "chosen LR": winners["lr"].map(lambda v: f"{v:.3g}"),
        "warm-up steps": winners["warmup_steps"],
        "best val BPD (bits/dim)": winners["best_val_bpd"].map(lambda v: f"{v:.4f}"),
        "trials (pruned)": [f"{(frame['batch_size'] == b).sum()} ({((frame['batch_size'] == b) & (frame['state'] == 'pruned')).sum()})"
                            for b in winners["batch_size"]],
    })
    if fit.state == "fitted":
        line = (f"Gradient noise scale from the chosen LRs (McCandlish et al. 2018, ε_opt(B) = ε_max / (1 + B_noise/B), "
                f"least squares of 1/ε against 1/B over {fit.n} batch sizes): B_noise = {fit.b_noise:.3g} images "
                f"(95 % t CI {fit.b_noise_lo:.3g} to {fit.b_noise_hi:.3g}), ε_max = {fit.lr_max:.3g} "
                f"({fit.lr_max_lo:.3g} to {fit.lr_max_hi:.3g}). The interval covers the chosen LRs' scatter around "
                "the line, not the search's own resolution (one search per batch size).")
    else:
        line = f"Gradient noise scale from the chosen LRs: not tested ({fit.why})."
    notes = [f"Chosen per batch size: the trial of stage {stage} with the lowest best validation BPD among those "
             "that ran to the end (pruned ones never win); it sets the LR and warm-up of every later trial of that "
             "batch size.", line]
    return [Table(f"Stage {stage}: the learning rate chosen per batch size", shown, csv="lr_search.csv", notes=notes)], \
        [(f"Stage {stage}: best validation BPD (bits/dim) against learning rate, per batch size; a pruned trial "
          "(hollow) shows its best before it was stopped, after fewer epochs than those that ran to the end", figure)], fit


__all__ = ["NoiseFit", "noise_scale_fit", "lr_search_frame", "lr_search_figure", "study_sections"]
