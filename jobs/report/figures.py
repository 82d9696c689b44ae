"""The report's figures (matplotlib, Agg backend), each written as a PNG; functions return the path
or ``None`` when the data for that figure is absent.

Curves: one line per (batch size, LR scaling), the mean over seeds on a common grid with a band
of ±1 standard error across seeds (no band with one seed); facets: rows = context (other varying
settings), columns = prior.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from jobs.report.tables import temperature_of  # noqa: E402
from jobs.report.verdict import xy  # noqa: E402

AXES = {"epoch": "epoch", "step": "optimizer step", "samples_seen": "samples seen (images)",
        "wall_s": "wall-clock (hours)"}
LINESTYLES = {"none": "-", "sqrt": "--", "linear": ":"}
GRID_POINTS = 100


def _facets(trials: pd.DataFrame):
    """(figure, [(axes, trials of that facet)]): rows = context, columns = prior."""
    contexts = sorted(trials["context"].unique())
    priors = sorted(trials["prior"].unique())
    fig, axes = plt.subplots(len(contexts), len(priors), figsize=(5 * len(priors), 3.6 * len(contexts)),
                             squeeze=False, sharey="row")
    cells = []
    for i, context in enumerate(contexts):
        for j, prior in enumerate(priors):
            ax = axes[i][j]
            ax.set_title(", ".join(p for p in (context, f"prior={prior}") if p), fontsize=9)
            cells.append((ax, trials[(trials["context"] == context) & (trials["prior"] == prior)]))
    return fig, cells


def _colors(trials: pd.DataFrame) -> dict[int, tuple]:
    sizes = sorted(trials["batch_size"].unique())
    cmap = plt.get_cmap("viridis")
    return {b: cmap(0.85 * k / max(1, len(sizes) - 1)) for k, b in enumerate(sizes)}


def mean_band(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Mean over seeds on a common grid and its ±1 s.e. (None with one seed). Each curve is (x, y)."""
    curves = [(x, y) for x, y in curves if len(x)]
    if len(curves) == 1:
        return curves[0][0], curves[0][1], None
    lo, hi = max(x.min() for x, _ in curves), min(x.max() for x, _ in curves)
    grid = np.linspace(lo, hi, GRID_POINTS)
    ys = np.stack([np.interp(grid, x, y) for x, y in curves])
    return grid, ys.mean(axis=0), ys.std(axis=0, ddof=1) / np.sqrt(len(curves))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_band(ax, histories: list[pd.DataFrame], x_key: str, y_key: str, style: str, color, label: str,
               x_scale: float = 1.0) -> None:
    """One line: the mean of ``y_key`` over the trials' ``histories`` against ``x_key`` (times
    ``x_scale``), with a ±1 s.e. band when there are several; nothing when no history has points."""
    pieces = [(x * x_scale, y) for x, y in (xy(h, x_key, y_key) for h in histories)]
    if not any(len(x) for x, _ in pieces):
        return
    grid, mean, se = mean_band(pieces)
    ax.plot(grid, mean, style, color=color, label=label)
    if se is not None:
        ax.fill_between(grid, mean - se, mean + se, color=color, alpha=0.25, linewidth=0)


def val_bpd_figure(trials: pd.DataFrame, val: pd.DataFrame, axis: str, path: Path) -> Path | None:
    """Validation BPD (bits/dim) against ``axis`` (``epoch|step|samples_seen|wall_s``)."""
    if val.empty or val[axis].isna().all():
        return None
    colors = _colors(trials)
    curves = dict(tuple(val.groupby("run_id", sort=False)))
    fig, cells = _facets(trials)
    for ax, sel in cells:
        for (batch, scaling), group in sel.groupby(["batch_size", "lr_scaling"]):
            _plot_band(ax, [curves[rid] for rid in group.index if rid in curves], axis, "val_bpd",
                       LINESTYLES.get(scaling, "-."), colors[batch], f"B={batch}, lr {scaling} (n={len(group)})",
                       x_scale=1 / 3600.0 if axis == "wall_s" else 1.0)
        ax.set_xlabel(AXES[axis])
        ax.set_ylabel("validation BPD (bits/dim)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if axis in ("step", "samples_seen"):
            ax.set_xscale("log")
    return _save(fig, path)


def _mean_se(values: pd.Series) -> tuple[float, float]:
    v = values.dropna().to_numpy(float)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def fid_figure(trials: pd.DataFrame, path: Path) -> Path | None:
    """FID against sampling temperature, mean ± s.e. over seeds."""
    fids = [c for c in trials.columns if c.startswith("fid_T")]
    if not fids or trials[fids].isna().all().all():
        return None
    temps = np.array([temperature_of(c) for c in fids])
    colors = _colors(trials)
    fig, cells = _facets(trials)
    for ax, sel in cells:
        for (batch, scaling), group in sel.groupby(["batch_size", "lr_scaling"]):
            stats = [(t, _mean_se(group[c])) for t, c in zip(temps, fids) if group[c].notna().any()]
            if not stats:
                continue
            x = np.array([t for t, _ in stats])
            mean = np.array([m for _, (m, _) in stats])
            se = np.array([e for _, (_, e) in stats])
            ax.errorbar(x, mean, yerr=se, fmt="o" + LINESTYLES.get(scaling, "-."), color=colors[batch],
                        capsize=3, label=f"B={batch}, lr {scaling}")
        ax.set_xlabel("sampling temperature")
        ax.set_ylabel("FID")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def noise_scale_figure(trials: pd.DataFrame, noise: pd.DataFrame, path: Path) -> Path | None:
    """Gradient noise scale B_simple (images) against samples seen, with the batch sizes as lines."""
    if noise.empty:
        return None
    colors = _colors(trials)
    series = dict(tuple(noise.groupby("run_id", sort=False)))
    fig, cells = _facets(trials)
    for ax, sel in cells:
        for (batch, scaling), group in sel.groupby(["batch_size", "lr_scaling"]):
            _plot_band(ax, [series[rid] for rid in group.index if rid in series], "samples_seen", "noise_scale",
                       LINESTYLES.get(scaling, "-."), colors[batch], f"B_simple, B={batch}, lr {scaling}")
        for batch, color in colors.items():
            ax.axhline(batch, color=color, linewidth=1, linestyle=(0, (1, 2)), label=f"batch size {batch}")
        ax.set_yscale("log")
        ax.set_xlabel("samples seen (images)")
        ax.set_ylabel("gradient noise scale B_simple (images)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def sample_grid_figure(panels: list[tuple[str, dict[float, Path]]], path: Path) -> Path | None:
    """Sample grids side by side: one row per trial (``label``), one column per temperature."""
    panels = [(label, grids) for label, grids in panels if grids]
    if not panels:
        return None
    temps = sorted({t for _, grids in panels for t in grids})
    fig, axes = plt.subplots(len(panels), len(temps), figsize=(2.6 * len(temps), 2.8 * len(panels)), squeeze=False)
    for i, (label, grids) in enumerate(panels):
        for j, t in enumerate(temps):
            ax = axes[i][j]
            ax.axis("off")
            if t in grids:
                ax.imshow(plt.imread(grids[t]))
            ax.set_title(f"{label}\nT={t:g}" if j == 0 else f"T={t:g}", fontsize=7)
    return _save(fig, path)


__all__ = ["val_bpd_figure", "fid_figure", "noise_scale_figure", "sample_grid_figure", "mean_band", "AXES"]
