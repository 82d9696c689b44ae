"""The trained model as an MLflow artifact: written by ``jobs.train``, loaded back from anywhere.

A finished trial logs, under its run's ``model/`` artifacts (``tracking.log_model``: ``best`` —
the lowest-validation-BPD checkpoint, else the last —, ``last`` or ``none``), an MLflow model
(pyfunc flavor, MLflow's "models from code": ``jobs/tracking/rgflow_pyfunc.py``) that is also the
run's LoggedModel ``model`` (``mlflow.search_logged_models``, ``models:/<model id>``):

* ``weights.pt`` — ``torch.save`` of the model's ``state_dict`` only (no optimizer, RNG or loop
  state), loadable with ``torch.load(weights_only=True)``;
* ``config.yaml`` — the resolved trial config (:func:`jobs.config.to_yaml`);
* ``model.json`` — ``which`` (best | last), ``checkpoint`` (its file name), ``checkpoint_sha256``
  (of that file: ``jobs.evaluate``'s protocol, the same with or without the run folder), ``step``,
  ``val_bpd`` (bits/dim at that checkpoint; ``null`` if none), ``trial_id``, ``run_id``,
  ``weights_sha256``, ``num_params``, ``format``;
* ``MLmodel`` (signature: uint8 images ``(-1, C, L, L)`` → float64 bits/dim ``(-1,)``, params
  ``draws``, ``noise_seed``, ``batch_size``), ``rgflow_pyfunc.py``, ``requirements.txt``,
  ``python_env.yaml``, ``conda.yaml`` — so that ``mlflow.pyfunc.load_model("runs:/<run id>/model")``
  (or ``models:/…``) loads it where this package is installed; ``predict`` gives per-image test
  BPD by ``jobs.evaluate``'s protocol (docs/ARCHITECTURE.md, "Using a trained model from MLflow").

:func:`load_model` builds the :class:`rgflow.model.RGFlowModel` back from a run id,
``runs:/<run_id>/model``, ``models:/<name>/<version or alias>`` (the Model Registry) or a local
``model/`` folder, with no access to the training node, checking the weights' SHA-256.
:func:`register_sweep_models` (``python -m jobs.report SWEEP.yaml --register``) registers the best
trial of each setting of a sweep.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from jobs.config import TrialConfig, build_trial_config, to_yaml
from jobs.tracking.pyfunc_io import PYFUNC_FILES
from rgflow.data.cache import sha256_file

if TYPE_CHECKING:
    from rgflow.model import RGFlowModel

MODEL_DIR = "model"  # the run folder's and the run's artifact folder
WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.yaml"
INFO_FILE = "model.json"
#: What :func:`load_model_folder` reads (model folders logged before the MLflow files have only these).
CORE_FILES = (WEIGHTS_FILE, CONFIG_FILE, INFO_FILE)
#: Every file of a model folder, in upload order: the MLflow model's ``MLmodel`` last, once the rest is there.
MODEL_FILES = (*CORE_FILES, *PYFUNC_FILES)
FORMAT = 1


class ModelLoadError(ValueError):
    """The model cannot be loaded: unknown reference, missing or corrupt files (one-line message)."""


def choose_checkpoint(log_model: str, checkpoint: Path | None, best_checkpoint: Path | None) -> tuple[str, Path] | None:
    """``(which, path)`` of the checkpoint whose weights a finished trial logs for ``log_model``
    (best | last | none): ``best`` falls back to the last checkpoint when there is no best; None for
    ``none`` or when there is no checkpoint at all."""
    if log_model == "none":
        return None
    if log_model == "best" and best_checkpoint is not None and Path(best_checkpoint).is_file():
        return "best", Path(best_checkpoint)
    if checkpoint is not None and Path(checkpoint).is_file():
        return "last", Path(checkpoint)
    return None


def write_model_folder(run_dir: str | os.PathLike, config: TrialConfig, which: str, checkpoint: str | os.PathLike,
                       trial_id: str, run_id: str | None, num_params: int | None = None) -> Path:
    """Write ``run_dir/model/`` (:data:`MODEL_FILES`) from checkpoint file ``checkpoint`` (verified
    by :func:`rgflow.checkpoint.load_checkpoint`); each file atomically, ``MLmodel`` last (a folder
    with an ``MLmodel`` is complete). Returns the folder. ``num_params``: the model's parameter
    count (None: the elements of the floating tensors)."""
    import torch

    from jobs.tracking.pyfunc_io import save_pyfunc_files
    from rgflow.atomic import fsync_dir, write_atomic, write_json_atomic
    from rgflow.checkpoint import checkpoint_sha256, load_checkpoint
    from rgflow.config import to_dict

    folder = Path(run_dir) / MODEL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PYFUNC_FILES[-1]).unlink(missing_ok=True)  # incomplete until the new MLmodel is in
    state = load_checkpoint(checkpoint, map_location="cpu")
    weights = {k: v.detach().cpu() for k, v in state["model"].items()}
    buffer = io.BytesIO()
    torch.save(weights, buffer)
    data = buffer.getvalue()
    write_atomic(folder / WEIGHTS_FILE, data)
    write_atomic(folder / CONFIG_FILE, to_yaml(config))
    loop = state.get("loop", {})
    val = loop.get("val_bpd")
    info = {
        "format": FORMAT, "which": which, "checkpoint": Path(checkpoint).name,
        "checkpoint_sha256": checkpoint_sha256(checkpoint), "step": int(loop.get("step", -1)),
        "val_bpd": float(val) if isinstance(val, (int, float)) and math.isfinite(val) else None,
        "trial_id": trial_id, "run_id": run_id, "weights_sha256": hashlib.sha256(data).hexdigest(),
        "num_params": int(num_params if num_params is not None else
                          sum(v.numel() for v in weights.values() if v.is_floating_point())),
    }
    write_json_atomic(folder / INFO_FILE, info)
    pyfunc_config = {"model": to_dict(config.model), "prior": to_dict(config.prior), "draws": config.eval.test_draws,
                     "noise_seed": config.eval.noise_seed, "batch_size": config.train.batch_size}
    with tempfile.TemporaryDirectory(prefix=".model-", dir=run_dir) as tmp:  # same file system: os.replace
        shape = (config.model.channels, config.model.size, config.model.size)
        for path in save_pyfunc_files(Path(tmp) / MODEL_DIR, pyfunc_config, shape, run_id):
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            os.replace(path, folder / path.name)
    fsync_dir(folder)
    return folder


def load_model_folder(folder: str | os.PathLike, device: str = "cpu") -> tuple[RGFlowModel, TrialConfig, dict]:
    """``(model, config, info)`` from a local ``model/`` folder: the model built from
    ``config.yaml`` with ``weights.pt`` loaded (strict), in eval mode on ``device``. A weights file
    whose SHA-256 differs from ``model.json``'s is a :class:`ModelLoadError`."""
    import torch

    from rgflow.model import RGFlowModel

    folder = Path(folder)
    missing = [name for name in CORE_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelLoadError(f"model folder {folder}: missing {', '.join(missing)}")
    info = json.loads((folder / INFO_FILE).read_text())
    digest = sha256_file(folder / WEIGHTS_FILE)
    if info.get("weights_sha256") and digest != info["weights_sha256"]:
        raise ModelLoadError(f"model folder {folder}: {WEIGHTS_FILE} has SHA-256 {digest[:12]}…, model.json says "
                             f"{str(info['weights_sha256'])[:12]}… (corrupt or partial download)")
    config = build_trial_config(yaml.safe_load((folder / CONFIG_FILE).read_text()), str(folder / CONFIG_FILE))
    weights = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model = RGFlowModel(config.model, config.prior)
    model.load_state_dict(weights, strict=True)
    return model.to(device).eval(), config, info


def load_model(ref: str, tracking_uri: str | None = None, device: str = "cpu") -> tuple[RGFlowModel, TrialConfig]:
    """``(model, config)`` of a trained trial from ``ref``: an MLflow run id, ``runs:/<run_id>/model``,
    ``models:/<name>/<version>`` / ``models:/<name>@<alias>`` / ``models:/<name>/latest``, or a local
    ``model/`` folder. The ``model/`` artifacts are downloaded from ``tracking_uri`` (None:
    ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``) into a temporary folder; nothing of the
    training node (run folder, checkpoints) is needed. Raises :class:`ModelLoadError` (one line)."""
    model, config, _ = load_model_with_info(ref, tracking_uri, device)
    return model, config


def load_model_with_info(ref: str, tracking_uri: str | None = None,
                         device: str = "cpu") -> tuple[RGFlowModel, TrialConfig, dict]:
    """:func:`load_model` plus the ``model.json`` of the model."""
    local = Path(ref)
    if (local / WEIGHTS_FILE).is_file():
        return load_model_folder(local, device)
    from jobs.tracking import TrackingError, download_model, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="rgflow-model-") as tmp:
        try:
            folder = download_model(uri, ref, tmp)
        except TrackingError as exc:
            raise ModelLoadError(str(exc)) from None
        return load_model_folder(folder, device)


def is_model_uri(text: str) -> bool:
    """``text`` is a ``runs:/…`` or ``models:/…`` reference."""
    return text.startswith(("runs:/", "models:/"))


# ----------------------------------------------------------------------------------------------
# The Model Registry: the best trial of each setting of a sweep (jobs.report --register)
# ----------------------------------------------------------------------------------------------

#: Params that never make a setting: seeds (a setting's replicates) and where or how a trial ran.
NOT_SETTINGS = ("run.seed", "run.out_dir", "run.device", "run.threads", "data.root", "data.celeba_dir",
                "tracking.uri", "tracking.experiment", "tracking.enabled", "tracking.log_model")


@dataclass(frozen=True)
class Registered:
    """One registered model version: the setting's label, model name, version, run and its score."""

    setting: str
    name: str
    version: str
    run_id: str
    metric: str
    value: float


def model_name(sweep: str, label: str) -> str:
    """``<sweep>-<label>`` with characters other than letters, digits, ``.``, ``_`` and ``-`` as ``_``."""
    text = f"{sweep}-{label}" if label else sweep
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:200] or "model"


def _label(setting: dict[str, str]) -> str:
    from jobs.train import RUN_NAME_KEYS

    parts = []
    for key, value in sorted(setting.items()):
        prefix = RUN_NAME_KEYS.get(key, key.rsplit(".", 1)[-1])
        shown = value.strip('"')
        if value.startswith("["):
            try:
                shown = "x".join(str(v) for v in json.loads(value))
            except ValueError:
                pass
        parts.append(f"{prefix}{shown}")
    return "-".join(parts)


def best_per_setting(runs, best_val: dict[str, float] | None = None) -> list[tuple[str, Any, str, float]]:
    """``(label, run, metric, value)`` per setting — a distinct combination of the params that vary
    between ``runs`` (:class:`jobs.tracking.RunSummary`), seeds and placement left out — for the
    FINISHED run with the lowest ``test_bpd``, else the lowest ``best_val_bpd`` (``best_val``: run id
    → the lowest ``val_bpd`` of its history; else a ``best_val_bpd`` metric), else ``val_bpd``, when
    none of the setting's runs has a test BPD. Settings without a finished, scored run are left out."""
    from jobs.report.tables import varying_params

    runs = [r for r in runs if r.status == "FINISHED"]
    best_val = best_val or {}

    def score(run, metric: str) -> float:
        if metric == "best_val_bpd" and run.run_id in best_val:
            return best_val[run.run_id]
        return run.metrics.get(metric, math.nan)

    keys = [k for k in varying_params(runs) if k not in NOT_SETTINGS]
    groups: dict[tuple, list] = {}
    for run in runs:
        groups.setdefault(tuple(run.params.get(k, "") for k in keys), []).append(run)
    out = []
    for values, members in sorted(groups.items()):
        for metric in ("test_bpd", "best_val_bpd", "val_bpd"):
            scored = [(score(r, metric), r.run_id, r) for r in members if math.isfinite(score(r, metric))]
            if scored:
                value, _, run = min(scored, key=lambda s: (s[0], s[1]))
                out.append((_label(dict(zip(keys, values))), run, metric, float(value)))
                break
    return out


def register_sweep_models(uri: str | None, experiment: str, trial_ids: list[str] | None = None,
                          sweep_name: str | None = None) -> list[Registered]:
    """Register, for each setting of the sweep whose experiment is ``experiment``
    (:func:`best_per_setting`), the best trial's ``model/`` as a version of registered model
    ``<sweep>-<setting label>`` (:func:`model_name`). A setting whose best run has no ``model/``
    artifact (``tracking.log_model=none``) is left out. Returns what was registered, in setting order."""
    from jobs.report.query import load_sweep_runs
    from jobs.tracking import list_artifacts, read_metric_history, register_model

    data = load_sweep_runs(uri, experiment, None, trial_ids, with_histories=False)
    best_val = {}
    for run in data.runs:
        if run.status == "FINISHED" and not math.isfinite(run.metrics.get("test_bpd", math.nan)):
            history = [v for _, _, v in read_metric_history(data.uri, run.run_id, "val_bpd") if math.isfinite(v)]
            if history:
                best_val[run.run_id] = min(history)
    out = []
    for label, run, metric, value in best_per_setting(data.runs, best_val):
        if MODEL_DIR not in list_artifacts(data.uri, run.run_id):
            continue
        name = model_name(sweep_name or experiment, label)
        version = register_model(data.uri, name, run.run_id, MODEL_DIR,
                                 description=f"best trial of setting {label or '(all)'} by {metric} = {value:.6g}")
        out.append(Registered(label, name, version, run.run_id, metric, value))
    return out


__all__ = ["CORE_FILES", "MODEL_DIR", "MODEL_FILES", "ModelLoadError", "Registered", "best_per_setting", "choose_checkpoint",
           "is_model_uri", "load_model", "load_model_folder", "load_model_with_info", "model_name",
           "register_sweep_models", "write_model_folder"]
