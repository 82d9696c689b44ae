"""Assemble a sweep report: query MLflow, tables, figures, verdict, documents, and log it.

The folder (default ``reports/<sweep>/``) is built under a temporary name next to it and renamed
into place when complete, so an interrupted run never leaves a half-written report. It holds
``report.md``, ``report.html`` (self-contained), ``trials.csv`` (one row per trial),
``settings.csv`` (one row per setting, mean and 95 % t CI over seeds), ``reproduction.csv`` (each
setting against the 2025 reproduction's Table 1), ``verdict.json`` and the PNG figures, and is
logged under ``report/`` of the sweep's parent run (tag ``rgflow.role=sweep``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from jobs.report import figures
from jobs.report.header import header, made_by
from jobs.report.query import ReportInputError, SweepRuns, load_sweep_runs
from jobs.report.reference_values import RECIPE_2025, SOURCE_2025
from jobs.report.render import Report, Table, write_documents
from jobs.report.findings import clean_json
from jobs.report.study import group_columns, lr_search_frame, study_sections
from jobs.report.tables import (SETTING_KEYS, csv_columns, curves, finite_hours, parse_param, reproduction_shown,
                                reproduction_table, setting_label, settings_shown, settings_table, trial_table,
                                trials_shown, varying_params)
from jobs.report.verdict import verdict
from jobs.staging import staged_dir
from jobs.sweep_spec import ReportSettings
from rgflow.atomic import write_atomic
from jobs import tracking
from jobs.tracking.tags import ROLE_TAG, RUN_DIR_TAG
from jobs.tracking.uri import redact_uri

log = logging.getLogger(__name__)

MAX_SAMPLE_PANELS = 12
SAMPLE_NAME = re.compile(r"samples_T(\d+(?:\.\d+)?)\.png$")
FIELDS_NAME = "receptive_fields.npz"


def sweep_target(path: str | Path, overrides: list[str] = ()) -> dict:
    """Experiment, tracking URI, sweep id, trial ids and resources of a sweep file; for a study
    (:mod:`jobs.study`), of its last stage, with ``search_stages``: (stage name, sweep) of each
    stage a later one took its values from."""
    from jobs.overrides import load_yaml_file
    from jobs.study import is_study_file, load_study
    from jobs.sweep_spec import load_sweep

    if not is_study_file(load_yaml_file(path)):
        return _target_of(load_sweep(path, list(overrides)))
    if any(o.split("=", 1)[0].strip() == "stage" for o in overrides):  # one stage, reported as a sweep
        from jobs.study import load_stage

        stage = next(o.split("=", 1)[1].strip() for o in overrides if o.split("=", 1)[0].strip() == "stage")
        dep = load_study(path, [o for o in overrides if o.split("=", 1)[0].strip() != "stage"]).best_of.get(stage)
        return {**_target_of(load_stage(path, list(overrides))), "chosen": dep.take if dep else ()}
    from jobs.study import stage_sweep

    study = load_study(path, list(overrides))
    last = list(study.stages)[-1]
    sweep, waits = stage_sweep(study, last)
    if waits:
        raise ReportInputError(f"stage {last} of study {study.name} has not run yet ({waits}): run python -m "
                               f"jobs.sweep {path} first")
    dep = study.best_of.get(last)
    searched = [(dep.stage, stage_sweep(study, dep.stage)[0], dep.by)] if dep else []
    return {**_target_of(sweep), "study": study.name, "search_stages": searched, "chosen": dep.take if dep else ()}


def _target_of(sweep) -> dict:
    from jobs.sweep_state import recorded_uri
    from jobs.tracking.uri import read_uri

    return {"experiment": sweep.name, "uri": read_uri(sweep.first_config.tracking.uri, recorded_uri(sweep)),
            "sweep_id": sweep.sweep_id, "trial_ids": [t.trial_id for t in sweep.trials],
            "resources": {"gpus": float(sweep.resources.gpus), "cpus": float(sweep.resources.cpus)},
            "report": sweep.report}


def lr_at_edge(data: SweepRuns, table: pd.DataFrame, searches: list) -> pd.Series:
    """Per trial of ``table``: whether the LR an earlier stage chose for it (its search group and
    batch size in ``searches``: (stage, by, :func:`lr_search_frame`, group columns)) is at the edge
    of what that stage searched. False for trials no search chose for."""
    params = {r.run_id: r.params for r in data.runs}
    edge = pd.Series(False, index=table.index)
    for _, _, frame, keys in searches:
        winners = frame[frame["winner"]]
        at = {(g, int(b)): bool(e) for g, b, e in zip(winners["group"], winners["batch_size"], winners["at_edge"])}
        for rid in table.index:
            group = ", ".join(f"{k}={params[rid].get(k)}" for k in keys)
            edge[rid] = edge[rid] or at.get((group, int(table.at[rid, "batch_size"])), False)
    return edge


def resources_from_parent(params: dict[str, str]) -> dict[str, float]:
    out = {}
    for key in ("gpus", "cpus"):
        value = parse_param(params.get(f"resources.{key}"))
        if isinstance(value, (int, float)):
            out[key] = float(value)
    return out


def representatives(table: pd.DataFrame) -> pd.DataFrame:
    """One trial per setting (:data:`SETTING_KEYS`), its lowest seed, at most :data:`MAX_SAMPLE_PANELS`."""
    return table.sort_values("seed").groupby(SETTING_KEYS, sort=True).head(1).head(MAX_SAMPLE_PANELS)


def eval_files(uri: str, run_id: str, run_dir: str | None, work: Path) -> dict[str, Path]:
    """The trial's evaluation outputs the report shows (``samples_T*.png``, :data:`FIELDS_NAME`) by
    file name: each one from its MLflow ``eval/`` artifacts (downloaded into ``work``), else from its
    run folder's ``eval/``."""
    def shown(name: str) -> bool:
        return bool(SAMPLE_NAME.search(name)) or name == FIELDS_NAME

    try:
        names = [path for path in tracking.list_artifacts(uri, run_id, "eval") if shown(Path(path).name)]
    except Exception as exc:  # noqa: BLE001 - an unreadable artifact store only loses this trial's panels
        log.warning("run %s: cannot list eval artifacts (%s)", run_id, exc)
        names = []
    folder = Path(run_dir) / "eval" if run_dir else None
    found = {f.name: f for f in folder.iterdir() if shown(f.name)} if folder and folder.is_dir() else {}
    dst = work / run_id
    for name in names:  # MLflow's copy wins over the run folder's, file by file
        try:
            dst.mkdir(parents=True, exist_ok=True)
            found[Path(name).name] = tracking.download_artifact(uri, run_id, name, dst)
        except Exception as exc:  # noqa: BLE001 - an unreadable artifact only loses this panel
            log.warning("run %s: cannot download %s (%s)", run_id, name, exc)
    return found


def eval_panels(data: SweepRuns, table: pd.DataFrame, work: Path) -> tuple[list, list]:
    """For :func:`representatives`: (sample panels ``[(label, {T: png})]``, receptive-field panels
    ``[(label, {level: (L, L) array})]``). Sample grids are the ``eval/samples_T*.png`` files, else
    the newest per-temperature PNGs in the run folder's ``samples/``; receptive fields the levels
    ``level<h>`` of ``eval/receptive_fields.npz``."""
    tags = {r.run_id: r.tags for r in data.runs}
    samples, fields = [], []
    for rid, row in representatives(table).iterrows():
        run_dir = tags[rid].get(RUN_DIR_TAG)
        files = eval_files(data.uri, rid, run_dir, work)
        grids = {float(SAMPLE_NAME.search(n).group(1)): f for n, f in files.items() if SAMPLE_NAME.search(n)}
        if not grids and run_dir and (Path(run_dir) / "samples").is_dir():
            for png in sorted((Path(run_dir) / "samples").rglob("*.png")):
                found = re.search(r"T(\d+(?:\.\d+)?)", png.stem)
                if found:
                    grids[float(found.group(1))] = png  # sorted: the newest name wins
        label = (setting_label(row["context"], row["batch_size"], row["lr_scaling"], row["prior"])
                 + f", seed {row['seed']}")
        samples.append((label, grids))
        if FIELDS_NAME in files:
            with np.load(files[FIELDS_NAME]) as npz:
                fields.append((label, {int(k[len("level"):]): npz[k] for k in npz.files if k.startswith("level")}))
    return samples, fields


def make_figures(data: SweepRuns, table: pd.DataFrame, val: pd.DataFrame, noise: pd.DataFrame, findings: list,
                 out: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    made, notes = [], []
    band = "mean over seeds; band: 95 % t CI over seeds (none with one seed)"
    for axis, words in figures.AXES.items():
        path = figures.val_bpd_figure(table, val, axis, out / f"val_bpd_vs_{axis}.png")
        if path:
            made.append((f"Validation BPD (bits/dim) vs {words}: {band}", path))
    if not made:
        notes.append("No validation history: no learning-curve figures.")
    path = figures.fid_figure(table, out / "fid_vs_temperature.png")
    if path:
        made.append(("FID vs sampling temperature: mean over seeds; error bars: 95 % t CI over seeds (none where "
                     "one seed has a value)", path))
    else:
        notes.append("No FID values (jobs.evaluate not run, or the Inception weights were absent): no FID figure.")
    path = figures.noise_scale_figure(table, noise, out / "noise_scale.png")
    if path:
        made.append((f"Gradient noise scale B_simple (images) over training: {band}; dotted lines: the batch sizes",
                     path))
    else:
        notes.append("No gradient noise scale history: no noise-scale figure.")
    trained = figures.what_was_trained(table)
    path = figures.steps_to_target_figure(findings, f"Steps to each target validation BPD vs batch size, {trained}",
                                          out / "steps_to_target.png")
    if path:
        made.append(("Optimizer steps to each target validation BPD against batch size (log–log), one colour per "
                     "target: faint dots one seed each, hollow triangles runs that never reached the target (censored "
                     "at their last validation), squares the mean over seeds with its 95 % t CI, solid line (where "
                     "B_crit was estimated) the fit S = S_min·(1 + B_crit/B) of the fully observed batch sizes, dashed "
                     "line perfect scaling S ∝ 1/B",
                     path))
    path = figures.steps_vs_examples_figure(findings, f"Steps vs examples to each target, {trained}",
                                            out / "steps_vs_examples.png")
    if path:
        made.append(("Steps S against examples E = B·S to each target validation BPD (log–log; Shallue et al. 2019, "
                     "McCandlish et al. 2018): one colour per target, one point per batch size with 95 % t CIs over "
                     "seeds, the fitted hyperbola (S/S_min − 1)(E/E_min − 1) = 1 where B_crit was estimated; perfect "
                     "scaling runs along the E_min line, maximal parallelism along the S_min line", path))
    with tempfile.TemporaryDirectory(dir=out) as work:
        samples, fields = eval_panels(data, table, Path(work))
        path = figures.sample_grid_figure(samples, f"Samples per temperature, {trained}", out / "samples.png")
    if path:
        made.append(("Samples per temperature, one trial per setting (its lowest seed)", path))
    else:
        notes.append("No sample grids found (eval/ artifacts or run-folder samples/).")
    path = figures.receptive_field_figure(fields, f"Receptive fields per RG level (T = 1), {trained}",
                                          out / "receptive_fields.png")
    if path:
        made.append(("Receptive fields E|∂x/∂z_l| per RG level h: mean over prior draws at T = 1 of the absolute "
                     "change of the generator's output (summed over colour channels; image or logit space, see "
                     "'receptive fields' under What was trained) per unit change of one latent of level h near the "
                     "centre; one trial per setting (its lowest seed), each panel with its own colour scale", path))
    else:
        notes.append(f"No receptive fields found (eval/{FIELDS_NAME}: jobs.evaluate not run with receptive_fields).")
    return made, notes


def lr_notes(table: pd.DataFrame) -> list[str]:
    """A note when a trial's last logged ``lr`` is not its config's effective LR (e.g. stopped during warm-up)."""
    logged = table[table["final_lr"].notna() & table["effective_lr"].notna()]
    off = logged[~np.isclose(logged["final_lr"], logged["effective_lr"], rtol=1e-6, atol=0)]
    if off.empty:
        return []
    shown = ", ".join(f"`{r.trial_id}` ({r.final_lr:.3g} vs {r.effective_lr:.3g})" for r in off.head(5).itertuples())
    return [f"{len(off)} trial(s) ended at a logged LR other than the effective LR of their config: {shown}."]


def reproduction_notes(margin: float) -> list[str]:
    return [f"Reference: {SOURCE_2025}: {RECIPE_2025}.",
            "Like for like: our settings at batch 512 with the 2025 model preset of the dataset; other settings are "
            "listed for information, without a conclusion.",
            "Test: one-sample t over our seeds against their value (which has no stated uncertainty), two-sided, "
            "p not adjusted for the number of rows; different: p < 0.05; equivalent: TOST p < 0.05 with margin "
            f"±{margin:g} bits/dim (BPD only; FID is not tested for equivalence); not tested with fewer than 2 "
            "finished seeds. Our BPD is the test BPD where every seed has one, else the final validation BPD."]


def meta_lines(data: SweepRuns, table: pd.DataFrame, command: str | None = None) -> list[str]:
    """The report's first lines: the store, trials, cost, and how it was made (``command``, the
    sweep's overrides, this checkout's git commit: :func:`jobs.report.header.made_by`)."""
    states = table["state"].value_counts().to_dict()
    gpu_h, cpu_h = finite_hours(table["gpu_hours"]), finite_hours(table["cpu_hours"])
    cost = []
    if not math.isnan(gpu_h):
        cost.append(f"{gpu_h:.2f} GPU-hours")
    if not math.isnan(cpu_h):
        cost.append(f"{cpu_h:.2f} CPU-hours (trials on CPU)")
    return [f"experiment `{data.experiment_name}` at `{redact_uri(data.uri)}`, parent run "
            f"`{data.parent_run_id or 'none'}`", *made_by(command, data.parent_tags),
            f"{len(table)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())),
            f"varying: {', '.join(varying_params(data.runs)) or 'nothing'}",
            "compute: " + (", ".join(cost) or "unknown (no wall-clock or device count)"),
            f"generated {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}"]


def build_report(target: str | None = None, *, experiment: str | None = None, out_dir: str | Path | None = None,
                 tracking_uri: str | None = None, overrides: list[str] = (), log_to_parent: bool = True,
                 command: str | None = None) -> Path:
    """Write the report of a sweep file (``target``) or an experiment; returns the folder.
    ``command``: the command line that asked for it, named in the report's header.

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
        spec = {"experiment": name, "uri": None, "sweep_id": None, "trial_ids": None, "resources": None,
                "report": ReportSettings()}
    data = load_sweep_runs(tracking_uri or spec["uri"], spec["experiment"], spec["sweep_id"], spec["trial_ids"])
    resources = spec["resources"] or resources_from_parent(data.parent_params)
    judged: ReportSettings = spec["report"]
    margin = judged.equivalence_margin
    table = trial_table(data, resources, spec.get("chosen", ()))
    val, noise = curves(data, table)
    trained = header(data, table)
    settings = settings_table(table)
    reproduction = reproduction_table(table, margin)

    lost = int((table["state"] != "finished").sum())
    notes = [f"The verdict's statistics use the finished trials; the {lost} others are named in their arm's "
             "finding, the tables and the figures."] if lost else []
    searches = []
    for stage, s, by in spec.get("search_stages", []):
        stage_runs = load_sweep_runs(tracking_uri or spec["uri"], s.name, s.sweep_id, [t.trial_id for t in s.trials])
        stage_table = trial_table(stage_runs, resources)
        searches.append((stage, by, lr_search_frame(stage_table, by), group_columns(stage_table, by)))
    table["lr_at_edge"] = lr_at_edge(data, table, searches)
    stages = tqdm(total=3, desc="report: verdict", unit="stage", disable=None, leave=False)  # drawn on terminals only
    findings = verdict(table, val, noise, margin, judged.min_gain, judged.targets)
    stages.update()

    final = Path(out_dir) if out_dir else Path("reports") / spec["experiment"]
    with staged_dir(final) as out:
        stages.set_description("report: figures")
        made, fig_notes = make_figures(data, table, val, noise, findings, out)
        stages.update()
        stages.set_description("report: tables and documents")
        extra_tables = []
        for stage, by, frame, _ in searches:
            tables_, figures_, fits = study_sections(stage, frame, out, by)
            extra_tables, made = extra_tables + tables_, made + figures_
            write_atomic(out / f"noise_scale_fit_{stage}.json", json.dumps(
                [clean_json({"group": name, **dataclasses.asdict(fit)}) for name, fit in fits.items()], indent=1,
                allow_nan=False))
        varying = varying_params(data.runs)
        table.reset_index()[csv_columns(table, varying)].to_csv(out / "trials.csv", index=False)
        settings.to_csv(out / "settings.csv", index=False)
        reproduction.to_csv(out / "reproduction.csv", index=False)
        write_atomic(out / "verdict.json", json.dumps([f.to_json() for f in findings], indent=1, allow_nan=False))
        tables = [
            Table("Per setting", settings_shown(settings), csv="settings.csv", notes=[
                "Mean ± half-width of the 95 % t interval over the finished seeds (n=1: the value, no CI); GPU-/CPU-"
                "hours are sums over all the setting's trials."]),
            Table(f"Against {SOURCE_2025}", reproduction_shown(reproduction), csv="reproduction.csv",
                  notes=reproduction_notes(margin) if not reproduction.empty else [],
                  empty=f"No finished setting on CelebA, MSDS1 or MSDS2 with a Laplace or Gaussian prior: no "
                        f"comparison with {SOURCE_2025}."),
            Table("Trials", trials_shown(table, varying), csv="trials.csv"), *extra_tables]
        title = (f"Study report: {spec['study']} (comparisons: stage {spec['experiment']})" if "study" in spec
                 else f"Sweep report: {spec['experiment']}")
        report = Report(title, meta_lines(data, table, command), trained.lines, trained.groups,
                        findings, tables, made, notes + lr_notes(table) + fig_notes)
        write_documents(report, out)
    stages.update()
    stages.close()
    if log_to_parent:
        if data.parent_run_id:
            tracking.log_report(data.uri, data.parent_run_id, final, artifact_path="report")
        else:
            log.warning("experiment %s has no sweep parent run (tag %s=sweep): report not logged to MLflow",
                        spec["experiment"], ROLE_TAG)
    return final


__all__ = ["build_report", "sweep_target"]
