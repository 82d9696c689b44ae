"""From MLflow runs to tables: one row per trial (``trials.csv``), one per setting
(``settings.csv``), the comparison with the 2025 reproduction, and long validation/noise curves.

Units: BPD in bits/dim, ``wall_s`` in seconds, GPU-/CPU-hours = wall-clock × devices / 3600,
FID in squared Inception-feature units.
A trial's devices come from its ``rgflow.gpus`` / ``rgflow.cpus`` tags when present, else from
the sweep's ``resources`` (sweep file or the parent run's ``resources.*`` params; CPUs also from
``run.threads``); a trial whose ``run.device`` is ``cpu`` used 0 GPUs and is counted in
CPU-hours instead. Unknown counts stay empty rather than guessed.
"""
from __future__ import annotations

import json
import math
from collections.abc import Collection
from typing import Any

import numpy as np
import pandas as pd

from jobs.config import DEFAULT_PRESET, ID_EXCLUDED, ID_UNLESS_DEFAULT, format_value
from jobs.report import stats
from jobs.report.query import NOISE_KEYS, SweepRuns
from jobs.report.reference_values import BATCH_2025, EPOCHS_2025, LR_2025, PRESET_2025, REPRODUCTION_2025_TABLE_1
from jobs.report.verdict import DEFAULT_MARGIN
from jobs.tracking.tags import CPUS_TAG, GPUS_TAG, REASON_TAG, TRIAL_INDEX_TAG
from rgflow.config import DataConfig, TrainConfig

FACTOR_PARAMS = {"train.batch_size": "batch_size", "train.lr_scaling": "lr_scaling", "prior.kind": "prior",
                 "run.seed": "seed"}
FACTOR_DEFAULTS = {"batch_size": 64, "lr_scaling": "none", "prior": "laplace", "seed": 0}
NOT_CONTEXT_PREFIXES = tuple(ID_EXCLUDED)  # where/how a trial ran, not what was trained
#: What makes a *setting*: the seeds of one setting are its replicates.
SETTING_KEYS = ["context", "batch_size", "lr_scaling", "prior"]
#: The param of a study's control arm (``run.arm: control``, ``jobs.study``): its own context, ``arm=control``.
ARM_PARAM = "run.arm"
#: The columns of the ``noise`` frame besides ``noise_scale`` (units: :data:`jobs.report.query.NOISE_KEYS`).
NOISE_EXTRAS = tuple(k for k in NOISE_KEYS if k != "noise_scale")


def parse_param(text: str | None) -> Any:
    """An MLflow param string back to a value: JSON (``64``, ``1e-3``, ``[0.9, 0.999]``, ``null``),
    Python's ``True``/``False``/``None``, else the string itself; a missing param (None, or the NaN
    pandas puts in a column where a run lacks it) is None."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return tuple(value) if isinstance(value, list) else value


def varying_params(runs) -> list[str]:
    """Param keys whose value differs between trials (sorted), without the params derived from
    others (``jobs.train.DERIVED_PARAMS``: effective LR, parameter count), which are not settings."""
    from jobs.train import DERIVED_PARAMS

    keys = sorted({k for r in runs for k in r.params} - set(DERIVED_PARAMS))
    return [k for k in keys if len({param_of(r, k) for r in runs}) > 1]


#: A run logged before a key of :data:`jobs.config.ID_UNLESS_DEFAULT` existed trained at its default.
DEFAULT_PARAMS = {key: format_value(value) for key, value in ID_UNLESS_DEFAULT.items()}


def param_of(run, key: str) -> str | None:
    """The run's param ``key`` as logged; for a key added later at an unchanged default
    (:data:`DEFAULT_PARAMS`), that default when the run predates it (so old and new runs of one
    setting stay one setting)."""
    return run.params.get(key, DEFAULT_PARAMS.get(key))


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
    gpus = _number(run.tags.get(GPUS_TAG, resources.get("gpus")))
    cpus = _number(run.tags.get(CPUS_TAG, resources.get("cpus", parse_param(run.params.get("run.threads")))))
    if parse_param(run.params.get("run.device")) == "cpu":
        gpus = 0.0
    return gpus, cpus


def effective_lr(params: dict[str, str]) -> float:
    """The trial's learning rate after the batch-size rule, before warm-up
    (:attr:`rgflow.config.TrainConfig.effective_lr` of its ``train.lr``, ``train.lr_scaling``,
    ``train.batch_size``, ``train.reference_batch`` params; absent ones at their defaults); NaN when
    those params are not a valid config."""
    keys = ("lr", "lr_scaling", "batch_size", "reference_batch")
    values = {k: parse_param(params[f"train.{k}"]) for k in keys if f"train.{k}" in params}
    try:
        return TrainConfig(**values).effective_lr
    except (ValueError, TypeError):
        return math.nan


def last_and_best(frame: pd.DataFrame | None) -> tuple[float, float]:
    if frame is None or frame.empty:
        return math.nan, math.nan
    return float(frame["value"].iloc[-1]), float(frame["value"].min())


def trial_table(data: SweepRuns, resources: dict[str, float] | None = None, chosen: Collection[str] = ()) -> pd.DataFrame:
    """One row per trial, indexed by MLflow run id; the columns of ``trials.csv``.

    Columns: ``trial_id, trial_index, state, status, failure_reason`` (tag ``rgflow.failure_reason``,
    ``""`` when absent), every varying param (dotted key), the factors ``batch_size, lr_scaling,
    prior, seed``, ``dataset`` (``data.name``), ``preset`` (``model.preset``), ``effective_lr`` (the
    config's, :func:`effective_lr`) and ``final_lr`` (the last logged ``lr``), ``final_val_bpd,
    best_val_bpd, test_bpd, test_bpd_se`` (over test images), ``test_bpd_se_draws`` (over
    dequantisation draws only), ``fid_T<t>`` per temperature, ``steps, epochs, wall_s, gpus,
    gpu_hours, cpus, cpu_hours``.
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
        row = {"run_id": run.run_id, "trial_id": run.trial_id, "trial_index": run.tags.get(TRIAL_INDEX_TAG, ""),
               "state": run.state or run.status.lower(), "status": run.status,
               "failure_reason": run.tags.get(REASON_TAG, "")}
        row.update({k: param_of(run, k) for k in varying})
        for key, column in FACTOR_PARAMS.items():
            value = parse_param(run.params.get(key))
            row[column] = FACTOR_DEFAULTS[column] if value is None else value
        row.update(dataset=parse_param(run.params.get("data.name")) or DataConfig.name,
                   preset=parse_param(run.params.get("model.preset")) or DEFAULT_PRESET,
                   lr_schedule=parse_param(param_of(run, "train.lr_schedule")),
                   effective_lr=effective_lr(run.params), final_lr=last_and_best(hist.get("lr"))[0])
        row.update(final_val_bpd=final, best_val_bpd=best,
                   **{k: run.metrics.get(k, math.nan) for k in ("test_bpd", "test_bpd_se", "test_bpd_se_draws")})
        row.update({k: run.metrics.get(k, math.nan) for k in fids})
        row.update(steps=steps, epochs=epochs, wall_s=wall, gpus=gpus,
                   gpu_hours=wall * gpus / 3600 if gpus == gpus else math.nan, cpus=cpus,
                   cpu_hours=wall * cpus / 3600 if gpus == 0 else math.nan)
        rows.append(row)
    table = pd.DataFrame(rows).set_index("run_id")
    table["batch_size"] = table["batch_size"].astype(int)
    table["seed"] = table["seed"].astype(int)
    table["context"] = context_labels(table, varying, chosen)
    return table


def context_labels(table: pd.DataFrame, varying: list[str], chosen: Collection[str] = ()) -> pd.Series:
    """A label per trial for the varying settings that are not the verdict's factors: trials with
    one label are compared with each other (e.g. ``data.name=msds1``).

    Left out: the factors, where/how a trial ran (:data:`jobs.config.ID_EXCLUDED`), the ``chosen``
    keys (values an earlier stage of a study chose per arm, ``best_of.take``: different per arm by
    design), settings that co-vary with the batch size within the label (e.g. an LR tuned per data
    set and batch size), and settings determined by ones already in the label (e.g. ``model.preset``
    zipped with ``data.name``). Keys with fewer values are considered first, so a data set is kept
    and the LR tuned within it is not. A control arm (:data:`ARM_PARAM` ``control``) adds
    ``arm=control`` to its label: it is never merged with the tuned arm of its batch size.
    """
    candidates = sorted((k for k in varying if k not in FACTOR_PARAMS and k not in chosen and k != ARM_PARAM
                         and not k.startswith(NOT_CONTEXT_PREFIXES)),
                        key=lambda k: (table[k].nunique(dropna=False), k))
    several_batches = table["batch_size"].nunique() > 1
    kept: list[str] = []
    for key in candidates:
        if kept and _determined(table, kept, key):
            continue
        if several_batches and _determined(table, [*kept, "batch_size"], key):
            continue
        kept.append(key)
    labels = (table[kept].apply(lambda row: ", ".join(f"{k}={row[k]}" for k in kept), axis=1) if kept
              else pd.Series("", index=table.index))
    if ARM_PARAM in varying:
        control = table[ARM_PARAM].map(parse_param) == "control"
        labels[control] = [f"{label}, arm=control" if label else "arm=control" for label in labels[control]]
    return labels


def _determined(table: pd.DataFrame, keys: list[str], key: str) -> bool:
    """Whether ``key`` takes one value within every group of ``keys``."""
    return bool((table.groupby(keys, dropna=False)[key].nunique(dropna=False) <= 1).all())


def _at_steps(hist: dict[str, pd.DataFrame], key: str, steps: np.ndarray) -> np.ndarray:
    frame = hist.get(key)
    if frame is None or frame.empty:
        return np.full(len(steps), np.nan)
    return np.interp(steps, frame["step"].to_numpy(float), frame["value"].to_numpy(float))


def curves(data: SweepRuns, table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long frames ``val`` (run_id, step, epoch, samples_seen, wall_s, val_bpd) and ``noise``
    (run_id, step, samples_seen, noise_scale and the :data:`NOISE_EXTRAS`). Per-step axes are
    interpolated at the validation steps; without a ``samples_seen`` history it is
    ``step × batch_size``. A trial's noise rows are the steps at which any noise metric was logged,
    each metric NaN at the steps it was not."""
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
        logged = {k: hist[k] for k in NOISE_KEYS if hist.get(k) is not None and not hist[k].empty}
        if logged:
            steps = np.unique(np.concatenate([f["step"].to_numpy(float) for f in logged.values()]))
            part = pd.DataFrame({"run_id": rid, "step": steps, "samples_seen": _samples(hist, steps, batch)})
            for key in NOISE_KEYS:
                part[key] = (pd.Series(logged[key]["value"].to_numpy(float), index=logged[key]["step"].to_numpy(float))
                             .reindex(steps).to_numpy(float) if key in logged else np.nan)
            noise_parts.append(part)
    val = pd.concat(val_parts, ignore_index=True) if val_parts else pd.DataFrame(
        columns=["run_id", "step", "val_bpd", "epoch", "samples_seen", "wall_s"])
    noise = pd.concat(noise_parts, ignore_index=True) if noise_parts else pd.DataFrame(
        columns=["run_id", "step", "samples_seen", *NOISE_KEYS])
    return val, noise


def _samples(hist: dict[str, pd.DataFrame], steps: np.ndarray, batch: int) -> np.ndarray:
    frame = hist.get("samples_seen")
    if frame is None or frame.empty:
        return steps * batch
    return _at_steps(hist, "samples_seen", steps)


CSV_FIRST = ["trial_id", "trial_index", "state", "status", "failure_reason"]
CSV_RESULTS = ["final_val_bpd", "best_val_bpd", "test_bpd", "test_bpd_se", "test_bpd_se_draws"]
CSV_COST = ["steps", "epochs", "wall_s", "gpus", "gpu_hours", "cpus", "cpu_hours"]


def csv_columns(table: pd.DataFrame, varying: list[str]) -> list[str]:
    fids = [c for c in table.columns if c.startswith("fid_T")]
    return ["run_id"] + CSV_FIRST + varying + ["effective_lr", "final_lr"] + CSV_RESULTS + fids + CSV_COST


# ----------------------------------------------------------------------------------------------
# Per setting
# ----------------------------------------------------------------------------------------------

LABELS = {"trial_id": "trial", "state": "state", "failure_reason": "failure reason",
          "effective_lr": "effective LR", "final_lr": "last logged LR",
          "final_val_bpd": "final val BPD (bits/dim)", "best_val_bpd": "best val BPD (bits/dim)",
          "test_bpd": "test BPD (bits/dim)", "test_bpd_se": "test BPD s.e. over images (bits/dim)",
          "test_bpd_se_draws": "test BPD s.e. over draws (bits/dim)", "steps": "optimizer steps",
          "epochs": "epochs", "gpu_hours": "GPU-h", "cpu_hours": "CPU-h", "batch_size": "batch (images)",
          "lr_scaling": "LR scaling", "prior": "prior", "context": "setting"}
BPD_METRICS = ["final_val_bpd", "best_val_bpd", "test_bpd"]
DIGITS = {"bpd": 4, "fid": 2}


def label_of(column: str) -> str:
    """The column's name in the documents, with its unit: ``test BPD (bits/dim)``, ``FID T=0.5``."""
    if column.startswith("fid_T"):
        return f"FID T={temperature_of(column):g}"
    return LABELS.get(column, column)


def result_metrics(table: pd.DataFrame) -> list[str]:
    """The per-trial results summarised per setting: BPDs (bits/dim), then FID per temperature."""
    return BPD_METRICS + [c for c in table.columns if c.startswith("fid_T")]


def digits_of(metric: str) -> int:
    return DIGITS["fid" if metric.startswith("fid_T") else "bpd"]


def finite_hours(values: pd.Series) -> float:
    """Sum of the known GPU-/CPU-hours (NaN when none is known)."""
    return float(values.sum(min_count=1))


def failure_text(group: pd.DataFrame) -> str:
    """``"1 of 3 failed: non-finite values at step 812"`` per state other than finished; ``""`` when all finished."""
    parts = []
    for state, rows in group[group["state"] != "finished"].groupby("state", sort=True):
        reasons = sorted({r for r in rows["failure_reason"] if isinstance(r, str) and r})
        parts.append(f"{len(rows)} of {len(group)} {state}" + (f": {'; '.join(reasons)}" if reasons else ""))
    return "; ".join(parts)


def settings_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per setting (:data:`SETTING_KEYS`): the rows of ``settings.csv``.

    Columns: the setting keys, ``dataset``, ``preset``, ``trials`` and ``finished`` (counts),
    ``seeds`` (the seeds run, space-separated); per result ``m`` of :func:`result_metrics`
    (bits/dim for BPD): ``m_mean``, ``m_lo``, ``m_hi`` (95 % t interval over the *finished* seeds,
    :func:`jobs.report.stats.mean_ci`; NaN with fewer than 2) and ``m_n`` (finished seeds with a
    value); ``gpu_hours``, ``cpu_hours`` (sums over all the setting's trials, unfinished ones
    included: they used the devices too; NaN when unknown for all); ``failures``
    (:func:`failure_text`).
    """
    metrics = result_metrics(table)
    rows = []
    for keys, group in table.groupby(SETTING_KEYS, sort=True):
        done = group[group["state"] == "finished"]
        row = dict(zip(SETTING_KEYS, keys))
        row.update(dataset=", ".join(sorted(set(group["dataset"]))), preset=", ".join(sorted(set(group["preset"]))),
                   trials=len(group), finished=len(done), seeds=" ".join(str(s) for s in sorted(group["seed"])))
        for m in metrics:
            est = stats.mean_ci(done[m])
            row.update({f"{m}_mean": est.mean, f"{m}_lo": est.lo, f"{m}_hi": est.hi, f"{m}_n": est.n})
        row.update(gpu_hours=finite_hours(group["gpu_hours"]), cpu_hours=finite_hours(group["cpu_hours"]),
                   failures=failure_text(group))
        rows.append(row)
    return pd.DataFrame(rows)


def ci_text(mean: float, lo: float, hi: float, n: int, digits: int, seeds: int | None = None) -> str:
    """``"3.0135 ± 0.0127"`` (half-width of the 95 % t interval), ``"3.0135, n=1 (no CI)"`` with one
    value, ``""`` with none; ``" (n=2)"`` is added when ``n`` differs from the row's ``seeds``."""
    if n == 0:
        return ""
    if n == 1:
        return f"{mean:.{digits}f}, n=1 (no CI)"
    text = f"{mean:.{digits}f} ± {(hi - lo) / 2:.{digits}f}"
    return text if seeds is None or n == seeds else f"{text} (n={n})"


def setting_label(context: str, batch: int, scaling: str, prior: str | None = None) -> str:
    """``"data.name=msds1, batch 512, LR scaling sqrt, laplace"`` (context first when there is one)."""
    parts = [context] if context else []
    parts += [f"batch {batch}", f"LR scaling {scaling}"] + ([prior] if prior else [])
    return ", ".join(parts)


def settings_shown(settings: pd.DataFrame) -> pd.DataFrame:
    """:func:`settings_table` for the documents: strings, units in the headers, each result as
    mean ± 95 % t CI over the finished seeds; results no setting has are left out."""
    out = pd.DataFrame(index=settings.index)
    if (settings["context"] != "").any():
        out["setting"] = settings["context"]
    for key in ("batch_size", "lr_scaling", "prior"):
        out[label_of(key)] = settings[key].astype(str)
    out["seeds (finished/run)"] = [f"{f}/{t}: {s}" for f, t, s in
                                   zip(settings["finished"], settings["trials"], settings["seeds"])]
    metrics = [c[:-len("_mean")] for c in settings.columns if c.endswith("_mean")]
    for m in metrics:
        if not (settings[f"{m}_n"] > 0).any():
            continue
        out[f"{label_of(m)}, mean ± 95% t CI"] = [
            ci_text(r[f"{m}_mean"], r[f"{m}_lo"], r[f"{m}_hi"], int(r[f"{m}_n"]), digits_of(m), int(r["finished"]))
            for _, r in settings.iterrows()]
    for key in ("gpu_hours", "cpu_hours"):
        if settings[key].notna().any():
            out[f"{label_of(key)} (sum)"] = [f"{v:.3g}" if v == v else "" for v in settings[key]]
    out["failures"] = settings["failures"]
    return out.reset_index(drop=True)


def trials_shown(table: pd.DataFrame, varying: list[str]) -> pd.DataFrame:
    """The per-trial table of the documents: identity, varying params, LR, results and cost with
    units in the headers; result columns no trial has are left out (``trials.csv`` keeps them)."""
    fids = [c for c in table.columns if c.startswith("fid_T")]
    columns = (["trial_id", "state", "failure_reason"] + [c for c in varying if c in table] + ["effective_lr"]
               + CSV_RESULTS + fids + ["steps", "epochs", "gpu_hours", "cpu_hours"])
    shown = table.reset_index()[columns]
    optional = set(CSV_RESULTS + fids + ["gpu_hours", "cpu_hours"])
    shown = shown[[c for c in columns if c not in optional or shown[c].notna().any()]]
    return shown.rename(columns=label_of)


# ----------------------------------------------------------------------------------------------
# Against the 2025 reproduction
# ----------------------------------------------------------------------------------------------

def fid_column_near_one(group: pd.DataFrame) -> str | None:
    """``fid_T1`` when the group has values there, else the FID temperature closest to 1 that has."""
    have = [c for c in group.columns if c.startswith("fid_T") and group[c].notna().any()]
    return min(have, key=lambda c: (abs(temperature_of(c) - 1.0), temperature_of(c))) if have else None


def reproduction_conclusion(test: stats.TwoArm, margin: float | None) -> str:
    """``different`` (two-sided p < 0.05), ``equivalent`` (TOST p against ±``margin`` < 0.05),
    ``inconclusive``; without a margin (FID) ``not different; not tested for equivalence``;
    ``not tested (< 2 seeds)`` when the one-sample test cannot be made."""
    p_tost = test.tost_p(margin) if margin else math.nan
    conclusion = stats.conclude(test, test.p, p_tost)
    if conclusion == "not_tested":
        return "not tested (< 2 seeds)"
    if conclusion == "inconclusive" and not margin:
        return "not different; not tested for equivalence"
    return conclusion


def reproduction_table(table: pd.DataFrame, margin: float = DEFAULT_MARGIN) -> pd.DataFrame:
    """Each setting whose dataset and prior are in :data:`REPRODUCTION_2025_TABLE_1` against it,
    one row per (setting, metric), over the setting's finished seeds.

    BPD: our test BPD when every finished seed has one, else the final validation BPD (``ours``
    says which); FID: at T=1, else the temperature closest to 1 (the 2025 report states none).
    ``diff`` = ours − theirs with its 95 % t interval and two-sided ``p`` from the one-sample t test
    over our seeds (their value has no stated uncertainty; p is not adjusted for the number of
    rows); ``p_tost`` the TOST p against ±``margin`` bits/dim (BPD only). ``like_for_like``: batch
    :data:`BATCH_2025` and the 2025 model preset of that dataset; other rows say why not in
    ``unlike`` and get no ``conclusion`` beyond "not like for like".

    Columns: ``dataset, prior, context, batch_size, lr_scaling, preset, like_for_like, unlike,
    metric`` (``BPD``/``FID``), ``ours, n, mean, lo, hi, theirs, diff, diff_lo, diff_hi, p, p_tost,
    conclusion``.
    """
    rows = []
    done = table[table["state"] == "finished"]
    for keys, group in done.groupby(SETTING_KEYS, sort=True):
        setting = dict(zip(SETTING_KEYS, keys))
        datasets = set(group["dataset"])
        dataset = datasets.pop() if len(datasets) == 1 else None
        reference = REPRODUCTION_2025_TABLE_1.get(dataset, {}).get(setting["prior"])
        if reference is None:
            continue
        preset = ", ".join(sorted(set(group["preset"])))
        lrs = sorted({float(v) for v in group["effective_lr"] if v == v})
        epochs = float(group["epochs"].min())
        unlike = "; ".join(why for why, bad in (
            (f"batch {setting['batch_size']} (theirs {BATCH_2025})", setting["batch_size"] != BATCH_2025),
            (f"model {preset} (theirs {PRESET_2025[dataset]})", preset != PRESET_2025[dataset]),
            (f"effective LR {', '.join(f'{v:.3g}' for v in lrs) or '?'} (theirs {LR_2025:g})",
             lrs != [LR_2025]),
            (f"{epochs:.3g} epochs (theirs {EPOCHS_2025[dataset]})", not epochs >= EPOCHS_2025[dataset])) if bad)
        bpd_column = "test_bpd" if group["test_bpd"].notna().all() else "final_val_bpd"
        fid_column = fid_column_near_one(group)
        choices = [("BPD", bpd_column, "test BPD" if bpd_column == "test_bpd" else "final validation BPD",
                    reference["bpd"], margin)]
        if fid_column:
            choices.append(("FID", fid_column, f"FID at T={temperature_of(fid_column):g}", reference["fid"], None))
        for metric, column, ours, theirs, tost_margin in choices:
            est = stats.mean_ci(group[column])
            test = stats.one_sample(group[column], theirs)
            lo, hi = test.ci95
            rows.append({**setting, "dataset": dataset, "preset": preset, "like_for_like": not unlike,
                         "unlike": unlike, "metric": metric, "ours": ours, "n": est.n, "mean": est.mean,
                         "lo": est.lo, "hi": est.hi, "theirs": theirs, "diff": test.estimate, "diff_lo": lo,
                         "diff_hi": hi, "p": test.p,
                         "p_tost": test.tost_p(tost_margin) if tost_margin else math.nan,
                         "conclusion": reproduction_conclusion(test, tost_margin) if not unlike
                         else "not like for like"})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return frame.sort_values(["like_for_like", "dataset", "prior", "batch_size", "metric"],
                             ascending=[False, True, True, True, True], kind="stable").reset_index(drop=True)


def reproduction_shown(rows: pd.DataFrame) -> pd.DataFrame:
    """:func:`reproduction_table` for the documents (strings, units in the headers)."""
    def number(value: float, digits: int) -> str:
        return f"{value:.{digits}f}" if value == value else ""

    out = []
    for _, r in rows.iterrows():
        d = DIGITS["bpd" if r["metric"] == "BPD" else "fid"]
        interval = f" [{r['diff_lo']:+.{d}f}, {r['diff_hi']:+.{d}f}]" if r["diff_lo"] == r["diff_lo"] else ""
        out.append({"dataset": r["dataset"], "prior": r["prior"],
                    "our setting": setting_label(r["context"], r["batch_size"], r["lr_scaling"]) + f", {r['preset']}",
                    "like for like (batch 512, their model)": "yes" if r["like_for_like"] else f"no: {r['unlike']}",
                    "measure": r["ours"] + (" (bits/dim)" if r["metric"] == "BPD" else ""),
                    "ours, mean ± 95% t CI": ci_text(r["mean"], r["lo"], r["hi"], int(r["n"]), d),
                    "2025": number(r["theirs"], d),
                    "ours − 2025 [95% CI]": f"{r['diff']:+.{d}f}{interval}" if r["diff"] == r["diff"] else "",
                    "p": f"{r['p']:.2g}" if r["p"] == r["p"] else "",
                    "TOST p (±margin)": f"{r['p_tost']:.2g}" if r["p_tost"] == r["p_tost"] else "",
                    "conclusion": r["conclusion"]})
    return pd.DataFrame(out)


__all__ = ["trial_table", "curves", "varying_params", "parse_param", "context_labels", "csv_columns", "fid_metrics",
           "temperature_of", "FACTOR_PARAMS", "SETTING_KEYS", "NOISE_EXTRAS", "effective_lr", "settings_table",
           "settings_shown", "trials_shown", "reproduction_table", "reproduction_shown", "ci_text", "label_of",
           "setting_label", "failure_text", "finite_hours"]
