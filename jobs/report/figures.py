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
from jobs.report.findings import count, xy  # noqa: E402

AXES = {"epoch": "epoch", "step": "optimizer step", "samples_seen": "samples seen (images)",
        "wall_s": "wall-clock time"}
#: Units of a wall-clock axis: (name, seconds per unit, used while the axis reaches less than this many seconds).
WALL_UNITS = (("seconds", 1.0, 120.0), ("minutes", 60.0, 7200.0), ("hours", 3600.0, math.inf))
LINESTYLES = {"none": "-", "sqrt": "--", "linear": ":"}
GRID_POINTS = 100
MARKER_MAX_POINTS = 20
CRITICAL_DPI = 90  # the critical-batch figures


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


def _save(fig, path: Path, dpi: int = 110) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
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


def wall_unit(seconds: float) -> tuple[str, float]:
    """(unit, seconds per unit) of a wall-clock axis reaching ``seconds``: seconds under 2 minutes,
    minutes under 2 hours, hours beyond (tick labels of a few digits, not ``0.00125`` hours)."""
    return next((name, per) for name, per, below in WALL_UNITS if seconds < below)


def val_bpd_figure(trials: pd.DataFrame, val: pd.DataFrame, axis: str, path: Path) -> Path | None:
    """Validation BPD (bits/dim) against ``axis`` (``epoch|step|samples_seen|wall_s``)."""
    if val.empty or val[axis].isna().all():
        return None
    colors = _colors(trials)
    curves = dict(tuple(val.groupby("run_id", sort=False)))
    label, per = AXES[axis], 1.0
    if axis == "wall_s":
        unit, per = wall_unit(float(val[axis].max()))
        label = f"wall-clock time ({unit})"
    fig, cells = _facets(trials, f"Validation BPD vs {AXES[axis]} (band: 95 % t CI over seeds)")
    for ax, sel in cells:
        for (batch, scaling), group in sel.groupby(["batch_size", "lr_scaling"]):
            _plot_band(ax, [curves[rid] for rid in group.index if rid in curves], axis, "val_bpd",
                       LINESTYLES.get(scaling, "-."), colors[batch], batch, scaling,
                       x_scale=1 / per)
        ax.set_xlabel(label)
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


def _critical_panels(findings: list, title: str, size: tuple[float, float]):
    """``(figure, [(axes, context, its critical batch findings with points, one per target, easiest
    first)])`` with one panel of ``size`` inches per context; ``None`` without such findings."""
    panels: dict[str, list] = {}
    for f in findings:
        if f.topic == "critical batch" and f.numbers.get("points"):
            panels.setdefault(f.context, []).append(f)
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(size[0] * len(panels), size[1]), squeeze=False)
    fig.suptitle(title, fontsize=9)
    return fig, [(ax, context, found) for ax, (context, found) in zip(axes[0], panels.items())]


def _b_crit_words(f) -> str:
    """``"B_crit 318 [284, 384]"``, ``"B_crit > 900"`` (bound) or ``"B_crit not estimated"``."""
    n = f.numbers
    if f.conclusion == "measured":
        return f"B_crit {count(n['b_crit'])} [{count(n['ci95'][0])}, {count(n['ci95'][1])}]"
    sides = [f"{sign} {count(n[key])}" for sign, key in ((">", "b_crit_lower"), ("<", "b_crit_upper"))
             if f.conclusion == "bound" and math.isfinite(n.get(key, math.nan))]
    return "B_crit " + (" and ".join(sides) + " (one-sided 95 %)" if sides else "not estimated")


def _censored_bounds(points: pd.DataFrame) -> pd.Series:
    """Per censored batch size: mean steps with censored seeds at their last validation (a lower bound)."""
    cut = points.groupby("batch_size")["censored"].any()
    steps = points["steps"].where(~points["censored"], points["censored_at"])
    return steps.groupby(points["batch_size"]).mean()[cut]


def _bars(mean: pd.Series, lo: pd.Series, hi: pd.Series) -> np.ndarray:
    """Asymmetric error bars of a 95 % CI for a log axis (none where unknown; clipped above 0)."""
    low = np.nan_to_num((mean - np.maximum(lo, mean * 1e-3)).to_numpy(float))
    return np.vstack([low, np.nan_to_num((hi - mean).to_numpy(float))])


def _fitted(f) -> tuple[float, float] | None:
    """(S_min steps, E_min images) of a finding's fit when B_crit was estimated (measured or a
    bound) and both are positive, else ``None``: a fit the report does not stand behind is not drawn."""
    if f.conclusion not in ("measured", "bound"):
        return None
    s_min, e_min = f.numbers.get("s_min", math.nan), f.numbers.get("e_min", math.nan)
    return (s_min, e_min) if math.isfinite(s_min) and math.isfinite(e_min) and s_min > 0 and e_min > 0 else None


def _log_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "all trials", fontsize=8)
    plain_ticks(ax)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6)


def steps_to_target_figure(findings: list, title: str, path: Path) -> Path | None:
    """Steps to each target validation BPD against batch size (log–log), one panel per (context,
    prior, LR scaling), one colour per target (``critical batch`` findings of
    :func:`jobs.report.scaling.critical_batch_findings`): per-seed points (hollow triangles:
    censored, at the last validation), per-batch means with 95 % t CIs over seeds, the fit
    S = S_min·(1 + B_crit/B), and perfect scaling S ∝ 1/B (dashed) through the smallest batch's mean."""
    made = _critical_panels(findings, title, (5.4, 4.4))
    if made is None:
        return None
    fig, panels = made
    for ax, context, found in panels:
        sizes = sorted({p["batch_size"] for f in found for p in f.numbers["points"]})
        grid = np.geomspace(sizes[0], sizes[-1], GRID_POINTS)
        for k, f in enumerate(found):
            color, target = f"C{k}", f.numbers["target_bpd"]
            points = pd.DataFrame(f.numbers["points"])
            seen, cut = points[~points["censored"]], points[points["censored"]]
            ax.plot(seen["batch_size"], seen["steps"], "o", color=color, alpha=0.35, markersize=3)
            ax.plot(cut["batch_size"], cut["censored_at"], "^", color=color, mfc="none", markersize=6)
            rows = pd.DataFrame(f.numbers["per_batch"]).dropna(subset=["steps_mean"])
            ax.errorbar(rows["batch_size"], rows["steps_mean"], capsize=3, fmt="s", color=color, markersize=4,
                        yerr=_bars(rows["steps_mean"], rows["steps_lo"], rows["steps_hi"]),
                        label=f"{target:.3f} bits/dim: {_b_crit_words(f)}")
            fitted = _fitted(f)
            if fitted:
                ax.plot(grid, fitted[0] + fitted[1] / grid, "-", color=color, linewidth=1)
            if len(rows):
                first = rows.iloc[0]
                ax.plot(grid, first["steps_mean"] * first["batch_size"] / grid, "--", color=color, linewidth=0.8,
                        alpha=0.6)
        _log_axes(ax, "batch size B (images)", "optimizer steps to the target validation BPD", context)
    return _save(fig, path, dpi=CRITICAL_DPI)


def steps_vs_examples_figure(findings: list, title: str, path: Path) -> Path | None:
    """Steps S against examples E = B·S to each target validation BPD (log–log; Shallue et al. 2019,
    McCandlish et al. 2018), one panel per (context, prior, LR scaling), one colour per target:
    per-batch means with 95 % t CIs over seeds, labelled by batch size; censored batch sizes hollow
    at their bound (mean with censored seeds at their last validation) with an arrow: the truth
    lies beyond; the fitted hyperbola (S/S_min − 1)(E/E_min − 1) = 1 and its asymptotes (dotted)."""
    made = _critical_panels(findings, title, (5.6, 4.6))
    if made is None:
        return None
    fig, panels = made
    for ax, context, found in panels:
        for k, f in enumerate(found):
            color, target = f"C{k}", f.numbers["target_bpd"]
            rows = pd.DataFrame(f.numbers["per_batch"]).dropna(subset=["steps_mean"])
            ax.errorbar(rows["examples_mean"], rows["steps_mean"], fmt="o", color=color, markersize=4, capsize=3,
                        xerr=_bars(rows["examples_mean"], rows["examples_lo"], rows["examples_hi"]),
                        yerr=_bars(rows["steps_mean"], rows["steps_lo"], rows["steps_hi"]),
                        label=f"{target:.3f} bits/dim: {_b_crit_words(f)}")
            cut = _censored_bounds(pd.DataFrame(f.numbers["points"]))
            ax.plot(cut.index * cut.to_numpy(), cut.to_numpy(), "o", color=color, mfc="none", markersize=6)
            for batch, steps in cut.items():
                ax.annotate("", xy=(batch * steps * 1.5, steps * 1.5), xytext=(batch * steps, steps),
                            arrowprops={"arrowstyle": "->", "color": color})
            labelled = list(zip(rows["batch_size"], rows["examples_mean"], rows["steps_mean"]))
            for batch, examples, steps in labelled + [(b, b * s, s) for b, s in cut.items()]:
                ax.annotate(f"B={int(batch)}", (examples, steps), textcoords="offset points", xytext=(4, 3),
                            fontsize=6, color=color)
            fitted = _fitted(f)
            if fitted:
                s_min, e_min = fitted
                sizes = [p["batch_size"] for p in f.numbers["points"]]
                grid = np.geomspace(min(sizes) / 4, max(sizes) * 4, GRID_POINTS)
                ax.plot(grid * (s_min + e_min / grid), s_min + e_min / grid, "-", color=color, linewidth=1)
                ax.axhline(s_min, color=color, linewidth=0.7, linestyle=(0, (1, 2)))
                ax.axvline(e_min, color=color, linewidth=0.7, linestyle=(0, (1, 2)))
        _log_axes(ax, "examples to the target E = B·S (images)", "optimizer steps to the target S", context)
    return _save(fig, path, dpi=CRITICAL_DPI)


__all__ = ["val_bpd_figure", "steps_to_target_figure", "steps_vs_examples_figure", "fid_figure", "noise_scale_figure", "sample_grid_figure", "receptive_field_figure",
           "mean_band", "plain_ticks", "tick_label", "spacing_decimals", "line_label", "what_was_trained", "wall_unit", "AXES",
           "MARKER_MAX_POINTS"]
