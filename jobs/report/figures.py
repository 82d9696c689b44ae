"""The report's figures (matplotlib, Agg backend), each written as a PNG; functions return the path
or ``None`` when the data for that figure is absent.

Curves: one line per (batch size, LR scaling), the mean over seeds with a band of the 95 % t
interval over seeds (:func:`jobs.report.stats.mean_ci`; no band with one seed, and the legend
says ``n=1``); facets: rows = context (other varying settings), columns = prior. Every figure's
title names the dataset(s) and model preset(s); lines of at most :data:`MARKER_MAX_POINTS`
points carry markers; tick labels are plain numbers (no offset; on log axes 100, 1,000, …; six
significant digits, so values below 10⁻⁴ still print with an exponent).
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from jobs.report.stats import mean_ci  # noqa: E402
from jobs.report.tables import temperature_of  # noqa: E402
from jobs.report.findings import xy  # noqa: E402

AXES = {"epoch": "epoch", "step": "optimizer step", "samples_seen": "samples seen (images)",
        "wall_s": "wall-clock (hours)"}
LINESTYLES = {"none": "-", "sqrt": "--", "linear": ":"}
GRID_POINTS = 100
MARKER_MAX_POINTS = 20


def tick_label(value: float) -> str:
    """A plain tick label: ``1,000``, ``100``, ``0.5``."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    return f"{value:,.0f}" if abs(value) >= 1 and float(value).is_integer() else f"{value:,.6g}"


def plain_ticks(ax) -> None:
    """Plain numbers on both axes (no offset, no exponent, thousands separated by commas): on linear
    axes with as many decimals as the tick spacing needs; on log axes major ticks as
    :func:`tick_label`, and 2 and 5 × 10^k labelled too when the axis spans under two decades."""
    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":
            axis.set_major_formatter(FuncFormatter(lambda v, _: tick_label(v)))
            axis.set_minor_formatter(FuncFormatter(lambda v, _, axis=axis: _minor_label(axis, v)))
        else:
            axis.set_major_formatter(FuncFormatter(lambda v, _, axis=axis: _linear_label(axis, v)))


def spacing_decimals(step: float) -> int:
    """Decimals that show a tick spacing exactly: 10 → 0, 0.2 → 1, 0.25 → 2."""
    for decimals in range(10):
        scaled = step * 10**decimals
        if abs(scaled - round(scaled)) <= 1e-6 * scaled:
            return decimals
    return 10


def _linear_label(axis, value: float) -> str:
    locs = np.asarray(axis.get_majorticklocs(), dtype=float)
    step = float(np.min(np.diff(locs))) if locs.size > 1 else abs(value)
    if not step > 0:
        return f"{value:g}"
    return f"{0.0 if abs(value) < step * 1e-9 else value:,.{spacing_decimals(step)}f}"


def _minor_label(axis, value: float) -> str:
    lo, hi = sorted(axis.get_view_interval())
    if lo <= 0 or math.log10(hi / lo) >= 2:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value))
    return tick_label(value) if min(abs(mantissa - 2), abs(mantissa - 5)) < 1e-6 else ""


def what_was_trained(trials: pd.DataFrame) -> str:
    """``"dataset msds1, model preset tiny"`` (several values joined)."""
    datasets, presets = sorted(set(trials["dataset"])), sorted(set(trials["preset"]))
    return (f"dataset{'s' if len(datasets) > 1 else ''} {', '.join(datasets)}, "
            f"model preset{'s' if len(presets) > 1 else ''} {', '.join(presets)}")


def line_label(batch: int, scaling: str, n: int, prefix: str = "") -> str:
    """``"batch 512, LR scaling: sqrt, n=3 seeds"`` (``n=1 seed`` with one)."""
    return f"{prefix}batch {batch}, LR scaling: {scaling}, n={n} seed{'s' if n != 1 else ''}"


def _facets(trials: pd.DataFrame, title: str):
    """(figure, [(axes, trials of that facet)]): rows = context, columns = prior; the figure's title
    is ``title`` and :func:`what_was_trained`."""
    contexts = sorted(trials["context"].unique())
    priors = sorted(trials["prior"].unique())
    fig, axes = plt.subplots(len(contexts), len(priors), figsize=(5.4 * len(priors), 3.9 * len(contexts) + 0.5),
                             squeeze=False, sharey="row")
    fig.suptitle(f"{title}\n{what_was_trained(trials)}", fontsize=10)
    cells = []
    for i, context in enumerate(contexts):
        for j, prior in enumerate(priors):
            ax = axes[i][j]
            ax.set_title(", ".join(p for p in (context, f"prior: {prior}") if p), fontsize=9)
            cells.append((ax, trials[(trials["context"] == context) & (trials["prior"] == prior)]))
    return fig, cells


def _colors(trials: pd.DataFrame) -> dict[int, tuple]:
    sizes = sorted(trials["batch_size"].unique())
    cmap = plt.get_cmap("viridis")
    return {b: cmap(0.85 * k / max(1, len(sizes) - 1)) for k, b in enumerate(sizes)}


def _grid(curves: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The x values all curves are averaged at: their own x values inside the range every curve
    covers, or :data:`GRID_POINTS` evenly spaced points when there are more."""
    lo, hi = max(x.min() for x, _ in curves), min(x.max() for x, _ in curves)
    xs = np.unique(np.concatenate([x[(x >= lo) & (x <= hi)] for x, _ in curves]))
    return xs if 0 < len(xs) <= GRID_POINTS else np.linspace(lo, hi, GRID_POINTS)


def mean_band(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Mean over seeds on a common grid and the half-width of its 95 % t interval over seeds
    (``None`` with one seed). Each curve is (x, y)."""
    curves = [(x, y) for x, y in curves if len(x)]
    if len(curves) == 1:
        return curves[0][0], curves[0][1], None
    grid = _grid(curves)
    ys = np.stack([np.interp(grid, x, y) for x, y in curves])
    cis = [mean_ci(column) for column in ys.T]
    return grid, np.array([c.mean for c in cis]), np.array([c.half_width for c in cis])


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_band(ax, histories: list[pd.DataFrame], x_key: str, y_key: str, style: str, color, batch: int,
               scaling: str, prefix: str = "", x_scale: float = 1.0) -> None:
    """One line: the mean of ``y_key`` over the trials' ``histories`` against ``x_key`` (times
    ``x_scale``), with its 95 % t band when there are several; nothing when no history has points."""
    pieces = [(x * x_scale, y) for x, y in (xy(h, x_key, y_key) for h in histories)]
    pieces = [(x, y) for x, y in pieces if len(x)]
    if not pieces:
        return
    grid, mean, half = mean_band(pieces)
    marker = "o" if len(grid) <= MARKER_MAX_POINTS else None
    ax.plot(grid, mean, style, color=color, marker=marker, markersize=3.5,
            label=line_label(batch, scaling, len(pieces), prefix))
    if half is not None:
        low = mean - half
        if ax.get_yscale() == "log":  # a t band of few seeds can reach below 0: show it down to the axis
            low = np.maximum(low, np.nanmin(mean) * 1e-3)
        ax.fill_between(grid, low, mean + half, color=color, alpha=0.25, linewidth=0)


def val_bpd_figure(trials: pd.DataFrame, val: pd.DataFrame, axis: str, path: Path) -> Path | None:
    """Validation BPD (bits/dim) against ``axis`` (``epoch|step|samples_seen|wall_s``)."""
    if val.empty or val[axis].isna().all():
        return None
    colors = _colors(trials)
    curves = dict(tuple(val.groupby("run_id", sort=False)))
    fig, cells = _facets(trials, f"Validation BPD vs {AXES[axis]} (band: 95 % t CI over seeds)")
    for ax, sel in cells:
        for (batch, scaling), group in sel.groupby(["batch_size", "lr_scaling"]):
            _plot_band(ax, [curves[rid] for rid in group.index if rid in curves], axis, "val_bpd",
                       LINESTYLES.get(scaling, "-."), colors[batch], batch, scaling,
                       x_scale=1 / 3600.0 if axis == "wall_s" else 1.0)
        ax.set_xlabel(AXES[axis])
        ax.set_ylabel("validation BPD (bits/dim)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if axis in ("step", "samples_seen"):
            ax.set_xscale("log")
        plain_ticks(ax)
    return _save(fig, path)


def fid_figure(trials: pd.DataFrame, path: Path) -> Path | None:
    """FID against sampling temperature: mean over seeds with the 95 % t CI as error bars (no error
    bar at a temperature where one seed has a value)."""
    fids = [c for c in trials.columns if c.startswith("fid_T")]
    if not fids or trials[fids].isna().all().all():
        return None
    colors = _colors(trials)
    fig, cells = _facets(trials, "FID vs sampling temperature (error bars: 95 % t CI over seeds)")
    for ax, sel in cells:
        for (batch, scaling), group in sel.groupby(["batch_size", "lr_scaling"]):
            points = [(temperature_of(c), mean_ci(group[c])) for c in fids if group[c].notna().any()]
            if not points:
                continue
            x = np.array([t for t, _ in points])
            mean = np.array([ci.mean for _, ci in points])
            half = np.array([ci.half_width for _, ci in points])
            n = max(ci.n for _, ci in points)
            ax.plot(x, mean, "o" + LINESTYLES.get(scaling, "-."), color=colors[batch],
                    label=line_label(batch, scaling, n))
            known = np.isfinite(half)
            if known.any():
                ax.errorbar(x[known], mean[known], yerr=half[known], fmt="none", color=colors[batch], capsize=3)
        ax.set_xlabel("sampling temperature T")
        ax.set_ylabel("FID")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        plain_ticks(ax)
    return _save(fig, path)


def noise_scale_figure(trials: pd.DataFrame, noise: pd.DataFrame, path: Path) -> Path | None:
    """Gradient noise scale B_simple (images) against samples seen, with the batch sizes as lines."""
    if noise.empty or noise["noise_scale"].isna().all():
        return None
    colors = _colors(trials)
    series = dict(tuple(noise.groupby("run_id", sort=False)))
    fig, cells = _facets(trials, "Gradient noise scale B_simple (band: 95 % t CI over seeds)")
    for ax, sel in cells:
        ax.set_yscale("log")
        for (batch, scaling), group in sel.groupby(["batch_size", "lr_scaling"]):
            _plot_band(ax, [series[rid] for rid in group.index if rid in series], "samples_seen", "noise_scale",
                       LINESTYLES.get(scaling, "-."), colors[batch], batch, scaling, prefix="B_simple at ")
        for batch, color in colors.items():
            ax.axhline(batch, color=color, linewidth=1, linestyle=(0, (1, 2)), label=f"batch size {batch} (dotted)")
        ax.set_xlabel("samples seen (images)")
        ax.set_ylabel("gradient noise scale B_simple (images)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        plain_ticks(ax)
    return _save(fig, path)


def _panel_grid(panels: list[tuple[str, dict]], title: str, size: tuple[float, float, float]):
    """(figure, axes, non-empty panels, sorted column keys) for one row per ``(label, {key: item})``
    panel and one column per key; ``size``: inches per column, per row, and for the title. ``None``
    when every panel is empty."""
    panels = [(label, items) for label, items in panels if items]
    if not panels:
        return None
    columns = sorted({k for _, items in panels for k in items})
    width, height, title_height = size
    fig, axes = plt.subplots(len(panels), len(columns), figsize=(width * len(columns), height * len(panels) + title_height),
                             squeeze=False)
    fig.suptitle(title, fontsize=9)
    return fig, axes, panels, columns


def sample_grid_figure(panels: list[tuple[str, dict[float, Path]]], title: str, path: Path) -> Path | None:
    """Sample grids side by side: one row per trial (``label``), one column per temperature."""
    grid = _panel_grid(panels, title, (2.6, 2.8, 0.5))
    if grid is None:
        return None
    fig, axes, panels, temps = grid
    for i, (label, grids) in enumerate(panels):
        for j, t in enumerate(temps):
            ax = axes[i][j]
            ax.axis("off")
            if t in grids:
                ax.imshow(plt.imread(grids[t]))
            ax.set_title(f"{label}\nT={t:g}" if j == 0 else f"T={t:g}", fontsize=7)
    return _save(fig, path)


def receptive_field_figure(panels: list[tuple[str, dict[int, np.ndarray]]], title: str,
                           path: Path) -> Path | None:
    """Receptive-field maps E|∂G(z)/∂z_l| (``(L, L)`` arrays: mean absolute change of the
    generator's output per unit change of one latent, summed over colour channels, in the space of
    ``eval.receptive_field_space``) per RG level: one row per trial (``label``), one panel per level, each with its
    own colour bar."""
    grid = _panel_grid(panels, title, (3.2, 3.0, 0.6))
    if grid is None:
        return None
    fig, axes, panels, levels = grid
    for i, (label, maps) in enumerate(panels):
        for j, h in enumerate(levels):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=7)
            if h not in maps:
                ax.set_frame_on(False)
                continue
            image = ax.imshow(maps[h], cmap="magma")
            bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
            bar.ax.tick_params(labelsize=6)
            ax.set_title(f"receptive field E|∂x/∂z_l|, level {h}", fontsize=7)
    return _save(fig, path)


def steps_to_target_figure(findings: list, title: str, path: Path) -> Path | None:
    """Steps to the target validation BPD against batch size (log–log), one panel per
    ``critical batch`` finding (``jobs.report.verdict.critical_batch_findings``): the per-seed
    points, the per-batch means, the fit S = S_min·(1 + B_crit/B) and the perfect-scaling line
    S ∝ 1/B through the smallest batch's mean."""
    found = [f for f in findings if f.topic == "critical batch" and f.numbers.get("points")]
    if not found:
        return None
    fig, axes = plt.subplots(1, len(found), figsize=(4.8 * len(found), 3.8), squeeze=False)
    fig.suptitle(title, fontsize=9)
    for ax, f in zip(axes[0], found):
        points = pd.DataFrame(f.numbers["points"]).dropna()
        means = points.groupby("batch_size")["steps"].mean()
        ax.plot(points["batch_size"], points["steps"], "o", color="0.6", markersize=4, label="one seed")
        ax.plot(means.index, means.to_numpy(), "s", color="C0", label="mean over seeds")
        grid = np.geomspace(means.index.min(), means.index.max(), GRID_POINTS)
        s_min, b_crit = f.numbers["s_min"], f.numbers["b_crit"]
        if math.isfinite(b_crit) and b_crit > 0:
            ax.plot(grid, s_min * (1 + b_crit / grid), "-", color="C0",
                    label=f"fit S_min(1 + B_crit/B), B_crit = {b_crit:,.0f}")
            ax.axvline(b_crit, color="C0", linewidth=0.8, linestyle=(0, (1, 2)))
        ax.plot(grid, means.iloc[0] * means.index[0] / grid, "--", color="C3", label="perfect scaling S ∝ 1/B")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size B (images)")
        ax.set_ylabel(f"optimizer steps to validation BPD {f.numbers['target_bpd']:.3f}")
        ax.set_title(f.context or "all trials", fontsize=8)
        plain_ticks(ax)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return _save(fig, path)


__all__ = ["val_bpd_figure", "steps_to_target_figure", "fid_figure", "noise_scale_figure", "sample_grid_figure", "receptive_field_figure",
           "mean_band", "plain_ticks", "tick_label", "spacing_decimals", "line_label", "what_was_trained", "AXES",
           "MARKER_MAX_POINTS"]
