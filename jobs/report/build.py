"""Assemble a sweep report: query MLflow, tables, figures, verdict, documents, and log it.

The folder (default ``reports/<sweep>/``) is built under a temporary name next to it and renamed
into place when complete, so an interrupted run never leaves a half-written report. It holds
``report.md``, ``report.html`` (self-contained), ``trials.csv``, ``verdict.json`` and the PNG
figures, and is logged under ``report/`` of the sweep's parent run (tag ``rgflow.role=sweep``).
"""
from __future__ import annotations

import json
import logging
import math
import re
import tempfile
import time
from pathlib import Path

import pandas as pd

from jobs.report import figures
from jobs.report.query import ReportInputError, SweepRuns, load_sweep_runs
from jobs.report.render import Report, write_atomic, write_documents
from jobs.report.tables import csv_columns, curves, parse_param, trial_table, varying_params
from jobs.report.verdict import verdict
from jobs.staging import staged_dir
from jobs.tracking import get_client

log = logging.getLogger(__name__)

MAX_SAMPLE_PANELS = 12
SAMPLE_NAME = re.compile(r"samples_T(\d+(?:\.\d+)?)\.png$")


def sweep_target(path: str | Path, overrides: list[str] = ()) -> dict:
    """Experiment, tracking URI, sweep id, trial ids and resources of a sweep file."""
    from jobs.sweep_spec import load_sweep

    sweep = load_sweep(path, list(overrides))
    return {"experiment": sweep.name, "uri": sweep.trials[0].config.tracking.uri if sweep.trials else None,
            "sweep_id": sweep.sweep_id, "trial_ids": [t.trial_id for t in sweep.trials],
            "resources": {"gpus": float(sweep.resources.gpus), "cpus": float(sweep.resources.cpus)}}


def resources_from_parent(params: dict[str, str]) -> dict[str, float]:
    out = {}
    for key in ("gpus", "cpus"):
        value = parse_param(params.get(f"resources.{key}"))
        if isinstance(value, (int, float)):
            out[key] = float(value)
    return out


def sample_panels(data: SweepRuns, table: pd.DataFrame, work: Path) -> list[tuple[str, dict[float, Path]]]:
    """One trial per (context, prior, batch, LR scaling), lowest seed first: its ``eval/samples_T*.png``
    artifacts, else the newest per-temperature PNGs in its run folder's ``samples/``."""
    client = get_client(data.uri)
    reps = table.sort_values("seed").groupby(["context", "prior", "batch_size", "lr_scaling"], sort=True).head(1)
    tags = {r.run_id: r.tags for r in data.runs}
    panels = []
    for rid, row in reps.head(MAX_SAMPLE_PANELS).iterrows():
        grids: dict[float, Path] = {}
        try:
            names = [a.path for a in client.list_artifacts(rid, "eval") if SAMPLE_NAME.search(a.path)]
        except Exception as exc:  # noqa: BLE001 - an unreadable artifact store only loses this panel
            log.warning("run %s: cannot list eval artifacts (%s)", rid, exc)
            names = []
        for name in names:
            dst = work / rid
            dst.mkdir(parents=True, exist_ok=True)
            grids[float(SAMPLE_NAME.search(name).group(1))] = Path(client.download_artifacts(rid, name, str(dst)))
        run_dir = tags[rid].get("rgflow.run_dir")
        if not grids and run_dir and (Path(run_dir) / "samples").is_dir():
            for png in sorted((Path(run_dir) / "samples").rglob("*.png")):
                found = re.search(r"T(\d+(?:\.\d+)?)", png.stem)
                if found:
                    grids[float(found.group(1))] = png  # sorted: the newest name wins
        label = ", ".join(p for p in (row["context"], f"{row['prior']}", f"B={row['batch_size']}",
                                      f"lr {row['lr_scaling']}", f"seed {row['seed']}") if p)
        panels.append((label, grids))
    return panels


def make_figures(data: SweepRuns, table: pd.DataFrame, val: pd.DataFrame, noise: pd.DataFrame,
                 out: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    made, notes = [], []
    for axis, words in figures.AXES.items():
        path = figures.val_bpd_figure(table, val, axis, out / f"val_bpd_vs_{axis}.png")
        if path:
            made.append((f"Validation BPD vs {words} (mean over seeds, band ±1 s.e.)", path))
    if not made:
        notes.append("No validation history: no learning-curve figures.")
    path = figures.fid_figure(table, out / "fid_vs_temperature.png")
    if path:
        made.append(("FID vs sampling temperature (mean ± s.e. over seeds)", path))
    else:
        notes.append("No FID values (jobs.evaluate not run, or the Inception weights were absent): no FID figure.")
    path = figures.noise_scale_figure(table, noise, out / "noise_scale.png")
    if path:
        made.append(("Gradient noise scale B_simple over training; dotted lines: the batch sizes", path))
    else:
        notes.append("No gradient noise scale history: no noise-scale figure.")
    with tempfile.TemporaryDirectory(dir=out) as work:
        path = figures.sample_grid_figure(sample_panels(data, table, Path(work)), out / "samples.png")
    if path:
        made.append(("Samples per temperature, one trial per setting", path))
    else:
        notes.append("No sample grids found (eval/ artifacts or run-folder samples/).")
    return made, notes


def meta_lines(data: SweepRuns, table: pd.DataFrame) -> list[str]:
    states = table["state"].value_counts().to_dict()
    gpu_h, cpu_h = table["gpu_hours"].sum(min_count=1), table["cpu_hours"].sum(min_count=1)
    cost = []
    if not math.isnan(gpu_h):
        cost.append(f"{gpu_h:.2f} GPU-hours")
    if not math.isnan(cpu_h):
        cost.append(f"{cpu_h:.2f} CPU-hours (trials on CPU)")
    return [f"experiment `{data.experiment_name}` at `{data.uri}`, parent run `{data.parent_run_id or 'none'}`",
            f"{len(table)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())),
            f"varying: {', '.join(varying_params(data.runs)) or 'nothing'}",
            "compute: " + (", ".join(cost) or "unknown (no wall-clock or device count)"),
            f"generated {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}"]


def build_report(target: str | None = None, *, experiment: str | None = None, out_dir: str | Path | None = None,
                 tracking_uri: str | None = None, overrides: list[str] = (), log_to_parent: bool = True) -> Path:
    """Write the report of a sweep file (``target``) or an experiment; returns the folder.

    Raises :class:`ReportInputError` (or ``jobs.config.ConfigError`` for a bad sweep file).
    """
    if target is not None and Path(target).is_file():
        spec = sweep_target(target, overrides)
    elif target is not None and str(target).endswith((".yaml", ".yml")):
        raise ReportInputError(f"sweep file {target} does not exist; pass an existing SWEEP.yaml or an experiment name")
    else:
        name = experiment or target
        if not name:
            raise ReportInputError("nothing to report on: pass SWEEP.yaml or --experiment NAME")
        spec = {"experiment": name, "uri": None, "sweep_id": None, "trial_ids": None, "resources": None}
    data = load_sweep_runs(tracking_uri or spec["uri"], spec["experiment"], spec["sweep_id"], spec["trial_ids"])
    resources = spec["resources"] or resources_from_parent(data.parent_params)
    table = trial_table(data, resources)
    val, noise = curves(data, table)

    finished = table[table["state"] == "finished"]
    notes = []
    if len(finished) < len(table):
        notes.append(f"The verdict uses the {len(finished)} finished trials; {len(table) - len(finished)} others "
                     "are in the table and figures only.")
    findings = verdict(finished, val[val["run_id"].isin(finished.index)], noise[noise["run_id"].isin(finished.index)])

    final = Path(out_dir) if out_dir else Path("reports") / spec["experiment"]
    with staged_dir(final) as out:
        made, fig_notes = make_figures(data, table, val, noise, out)
        varying = varying_params(data.runs)
        table.reset_index()[csv_columns(table, varying)].to_csv(out / "trials.csv", index=False)
        write_atomic(out / "verdict.json", json.dumps(
            [{"topic": f.topic, "text": f.text, "numbers": f.numbers} for f in findings], indent=1, default=str))
        shown = table.reset_index()[["trial_id", "state"] + [c for c in varying if c in table] +
                                    ["final_val_bpd", "best_val_bpd", "test_bpd", "test_bpd_se"] +
                                    [c for c in table.columns if c.startswith("fid_T")] + ["steps", "epochs"]]
        report = Report(f"Sweep report: {spec['experiment']}", meta_lines(data, table), findings, shown, made,
                        notes + fig_notes)
        write_documents(report, out)
    if log_to_parent:
        if data.parent_run_id:
            get_client(data.uri).log_artifacts(data.parent_run_id, str(final), artifact_path="report")
        else:
            log.warning("experiment %s has no sweep parent run (tag rgflow.role=sweep): report not logged to MLflow",
                        spec["experiment"])
    return final


__all__ = ["build_report", "sweep_target"]
