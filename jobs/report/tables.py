"""From MLflow runs to tables: one row per trial (``trials.csv``) and long validation/noise curves.

Units: BPD in bits/dim, ``wall_s`` in seconds, GPU-/CPU-hours = wall-clock × devices / 3600.
A trial's devices come from its ``rgflow.gpus`` / ``rgflow.cpus`` tags when present, else from
the sweep's ``resources`` (sweep file or the parent run's ``resources.*`` params; CPUs also from
``run.threads``); a trial whose ``run.device`` is ``cpu`` used 0 GPUs and is counted in
CPU-hours instead. Unknown counts stay empty rather than guessed.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from jobs.config import ID_EXCLUDED
from jobs.report.query import SweepRuns

FACTOR_PARAMS = {"train.batch_size": "batch_size", "train.lr_scaling": "lr_scaling", "prior.kind": "prior",
                 "run.seed": "seed"}
FACTOR_DEFAULTS = {"batch_size": 64, "lr_scaling": "none", "prior": "laplace", "seed": 0}
NOT_CONTEXT_PREFIXES = tuple(ID_EXCLUDED)  # where/how a trial ran, not what was trained


def parse_param(text: str | None) -> Any:
    """An MLflow param string back to a value: JSON (``64``, ``1e-3``, ``[0.9, 0.999]``, ``null``),
    Python's ``True``/``False``/``None``, else the string itself."""
    if text is None:
        return None
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return tuple(value) if isinstance(value, list) else value


def varying_params(runs) -> list[str]:
    """Param keys whose value differs between trials (sorted)."""
    keys = sorted({k for r in runs for k in r.params})
    return [k for k in keys if len({r.params.get(k) for r in runs}) > 1]


def temperature_of(metric: str) -> float:
    return float(metric[len("fid_T"):])


def fid_metrics(runs) -> list[str]:
    names = {k for r in runs for k in r.metrics if k.startswith("fid_T")}
    return sorted(names, key=temperature_of)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def devices(run, resources: dict[str, float]) -> tuple[float, float]:
    """(GPUs, CPUs) of one trial (see the module docstring); NaN where unknown."""
    gpus = _number(run.tags.get("rgflow.gpus", resources.get("gpus")))
    cpus = _number(run.tags.get("rgflow.cpus", resources.get("cpus", parse_param(run.params.get("run.threads")))))
    if parse_param(run.params.get("run.device")) == "cpu":
        gpus = 0.0
    return gpus, cpus


def last_and_best(frame: pd.DataFrame | None) -> tuple[float, float]:
    if frame is None or frame.empty:
        return math.nan, math.nan
    return float(frame["value"].iloc[-1]), float(frame["value"].min())


def trial_table(data: SweepRuns, resources: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per trial, indexed by MLflow run id; the columns of ``trials.csv``.

    Columns: ``trial_id, trial_index, state, status``, every varying param (dotted key), the
    factors ``batch_size, lr_scaling, prior, seed``, ``final_val_bpd, best_val_bpd, test_bpd,
    test_bpd_se``, ``fid_T<t>`` per temperature, ``steps, epochs, wall_s, gpus, gpu_hours, cpus,
    cpu_hours``.
    """
    resources = resources or {}
    varying = varying_params(data.runs)
    fids = fid_metrics(data.runs)
    rows = []
    for run in data.runs:
        hist = data.histories.get(run.run_id, {})
        final, best = last_and_best(hist.get("val_bpd"))
        steps = max((int(f["step"].max()) for f in hist.values() if not f.empty), default=None)
        epoch_hist = hist.get("val_epoch")  # validation runs at the end: its last epoch is the final one
        val_epochs = float(epoch_hist["value"].max()) if epoch_hist is not None and not epoch_hist.empty else math.nan
        epochs = max((v for v in (run.metrics.get("epoch", math.nan), val_epochs) if v == v), default=math.nan)
        wall = run.metrics.get("wall_s", math.nan)
        gpus, cpus = devices(run, resources)
        row = {"run_id": run.run_id, "trial_id": run.trial_id, "trial_index": run.tags.get("rgflow.trial_index", ""),
               "state": run.state or run.status.lower(), "status": run.status}
        row.update({k: run.params.get(k) for k in varying})
        for key, column in FACTOR_PARAMS.items():
            value = parse_param(run.params.get(key))
            row[column] = FACTOR_DEFAULTS[column] if value is None else value
        row.update(final_val_bpd=final, best_val_bpd=best, test_bpd=run.metrics.get("test_bpd", math.nan),
                   test_bpd_se=run.metrics.get("test_bpd_se", math.nan))
        row.update({k: run.metrics.get(k, math.nan) for k in fids})
        row.update(steps=steps, epochs=epochs, wall_s=wall, gpus=gpus,
                   gpu_hours=wall * gpus / 3600 if gpus == gpus else math.nan, cpus=cpus,
                   cpu_hours=wall * cpus / 3600 if gpus == 0 else math.nan)
        rows.append(row)
    table = pd.DataFrame(rows).set_index("run_id")
    table["batch_size"] = table["batch_size"].astype(int)
    table["seed"] = table["seed"].astype(int)
    table["context"] = context_labels(table, varying)
    return table


def context_labels(table: pd.DataFrame, varying: list[str]) -> pd.Series:
    """A label per trial for the varying settings that are not the verdict's factors.

    Left out: the factors, where/how a trial ran (:data:`jobs.config.ID_EXCLUDED`), settings that
    co-vary with the batch size (e.g. a zipped learning rate), and settings determined by ones
    already in the label (e.g. ``model.preset`` zipped with ``data.name``).
    """
    kept: list[str] = []
    for key in varying:
        if key in FACTOR_PARAMS or key.startswith(NOT_CONTEXT_PREFIXES):
            continue
        if table["batch_size"].nunique() > 1 and (table.groupby("batch_size")[key].nunique() <= 1).all():
            continue
        if kept and (table.groupby(kept)[key].nunique() <= 1).all():
            continue
        kept.append(key)
    if not kept:
        return pd.Series("", index=table.index)
    return table[kept].apply(lambda row: ", ".join(f"{k}={row[k]}" for k in kept), axis=1)


def _at_steps(hist: dict[str, pd.DataFrame], key: str, steps: np.ndarray) -> np.ndarray:
    frame = hist.get(key)
    if frame is None or frame.empty:
        return np.full(len(steps), np.nan)
    return np.interp(steps, frame["step"].to_numpy(float), frame["value"].to_numpy(float))


def curves(data: SweepRuns, table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long frames ``val`` (run_id, step, epoch, samples_seen, wall_s, val_bpd) and ``noise``
    (run_id, step, samples_seen, noise_scale). Per-step axes are interpolated at the validation
    steps; without a ``samples_seen`` history it is ``step × batch_size``."""
    val_parts, noise_parts = [], []
    for rid in table.index:
        hist = data.histories.get(rid, {})
        batch = table.at[rid, "batch_size"]
        bpd = hist.get("val_bpd")
        if bpd is not None and not bpd.empty:
            steps = bpd["step"].to_numpy(float)
            epoch = hist.get("val_epoch")
            part = pd.DataFrame({"run_id": rid, "step": steps, "val_bpd": bpd["value"].to_numpy(float)})
            part["epoch"] = (epoch.set_index("step")["value"].reindex(steps).to_numpy(float)
                             if epoch is not None and not epoch.empty else np.nan)
            part["samples_seen"] = _samples(hist, steps, batch)
            part["wall_s"] = _at_steps(hist, "wall_s", steps)
            val_parts.append(part)
        noise = hist.get("noise_scale")
        if noise is not None and not noise.empty:
            steps = noise["step"].to_numpy(float)
            noise_parts.append(pd.DataFrame({"run_id": rid, "step": steps, "samples_seen": _samples(hist, steps, batch),
                                             "noise_scale": noise["value"].to_numpy(float)}))
    val = pd.concat(val_parts, ignore_index=True) if val_parts else pd.DataFrame(
        columns=["run_id", "step", "val_bpd", "epoch", "samples_seen", "wall_s"])
    noise = pd.concat(noise_parts, ignore_index=True) if noise_parts else pd.DataFrame(
        columns=["run_id", "step", "samples_seen", "noise_scale"])
    return val, noise


def _samples(hist: dict[str, pd.DataFrame], steps: np.ndarray, batch: int) -> np.ndarray:
    frame = hist.get("samples_seen")
    if frame is None or frame.empty:
        return steps * batch
    return _at_steps(hist, "samples_seen", steps)


CSV_FIRST = ["trial_id", "trial_index", "state", "status"]
CSV_RESULTS = ["final_val_bpd", "best_val_bpd", "test_bpd", "test_bpd_se"]
CSV_COST = ["steps", "epochs", "wall_s", "gpus", "gpu_hours", "cpus", "cpu_hours"]


def csv_columns(table: pd.DataFrame, varying: list[str]) -> list[str]:
    fids = [c for c in table.columns if c.startswith("fid_T")]
    return ["run_id"] + CSV_FIRST + varying + CSV_RESULTS + fids + CSV_COST


__all__ = ["trial_table", "curves", "varying_params", "parse_param", "context_labels", "csv_columns", "fid_metrics",
           "temperature_of", "FACTOR_PARAMS"]
