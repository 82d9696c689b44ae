"""Evaluate a trained trial into its own MLflow run: test BPD, samples, FID, receptive fields.

``python -m jobs.evaluate RUN_ID | runs:/… | models:/… | TRIAL_ID | CONFIG.yaml | SWEEP.yaml --trial N |
SWEEP.yaml --all [--force] [--device D] [--tracking-uri URI] [overrides…]``: ``test_bpd`` (bits/dim) with its
standard errors over test images (``test_bpd_se``) and over dequantisation draws
(``test_bpd_se_draws``), ``eval/test_bpd_per_image.npy``, sample grids, FID on 8-bit samples
(``fid_T<t>``), receptive fields; logged at the checkpoint's step without changing the run's status,
idempotent per protocol (tags ``rgflow.eval.*``). Without the trial's run folder on this machine
(trained elsewhere), the weights and config come from the run's ``model/`` artifacts
(:mod:`jobs.model_io`), the test data is rebuilt from that config, and the outputs go to the run's
``eval/`` artifacts only. Exit ``0`` done, ``1`` an evaluation failed, ``2`` bad input. Full
reference: docs/CLI.md; the statistics: docs/STATISTICS.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from jobs.config import TrialConfig, load_trial_config
from jobs.fid import FidScorer, FidUnavailable
from jobs.staging import staged_dir
from jobs.tracking.tags import EVAL_PROTOCOL_TAG, EVAL_TAG_PREFIX, RUN_DIR_TAG, TRIAL_ID_TAG
from rgflow.checkpoint import BEST_NAME, InvalidCheckpoint, checkpoint_sha256, load_checkpoint, load_latest

if TYPE_CHECKING:
    from jobs.tracking import RunSummary
    from rgflow.train import HeldOutBpd

log = logging.getLogger("jobs.evaluate")

EVALUATIONS = ("test_bpd", "samples", "fid", "receptive_fields")
PROTOCOL_TAG = EVAL_PROTOCOL_TAG  # the names of jobs.tracking.tags, kept here for older importers
TAG_PREFIX = EVAL_TAG_PREFIX
EVAL_DIR = "eval"
PER_IMAGE_FILE = "test_bpd_per_image.npy"  # in EVAL_DIR: float64 (N,) per-image test BPD, test-set order
_STREAM = 2000  # derive_seed tag of evaluation sampling (distinct from training streams)
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
TRIAL_ID = re.compile(r"^[0-9a-f]{12}$")


class EvalInputError(ValueError):
    """Bad input: unknown run or trial, no checkpoint, no run folder (one-line message)."""


@dataclass
class TrialRef:
    """What to evaluate: the resolved config, the run folder (None: not on this machine; the run's
    ``model/`` artifacts are evaluated), the MLflow run and which evaluations (a sweep's
    ``evaluation`` settings, else all)."""

    config: TrialConfig
    run_dir: Path | None
    run_id: str | None  # None: the trial has no run yet (reported per trial, a batch goes on)
    tracking_uri: str
    label: str
    selected: tuple[str, ...] = EVALUATIONS


@dataclass
class EvalResult:
    """``metrics`` computed (name → value), ``skipped``: already evaluated with this protocol;
    ``eval_dir``: the outputs' folder (None: without a run folder they are only the run's artifacts)."""

    run_id: str
    metrics: dict[str, float]
    protocol: dict[str, Any]
    eval_dir: Path | None
    skipped: bool = False
    warnings: list[str] = field(default_factory=list)


def temperature_key(t: float) -> str:
    """``0.5 → "0.5"``, ``1.0 → "1"`` (as in the training sample names): ``fid_T<key>``."""
    return f"{t:g}"


# ----------------------------------------------------------------------------------------------
# Checkpoint and protocol
# ----------------------------------------------------------------------------------------------

def choose_checkpoint(run_dir: Path, which: str) -> tuple[str, Path, dict[str, Any], list[str]]:
    """(``best`` | ``last``, path, state, warnings). ``best`` falls back to the newest step checkpoint."""
    notes = []
    folder = run_dir / "checkpoints"
    if which == "best":
        try:
            return "best", folder / BEST_NAME, load_checkpoint(folder / BEST_NAME), notes
        except InvalidCheckpoint as err:
            notes.append(f"no usable best checkpoint ({err}); evaluating the last one")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = load_latest(folder)
    notes += [str(w.message) for w in caught]
    if found is None:
        raise EvalInputError(f"no valid checkpoint in {folder}: train the trial first (python -m jobs.train)")
    return "last", found[0], found[1], notes


@dataclass(frozen=True)
class Weights:
    """The weights to evaluate: ``which`` checkpoint (best | last), its optimizer ``step``, the
    SHA-256 of its file and the model's ``state_dict``."""

    which: str
    step: int
    sha256: str
    state: dict[str, torch.Tensor]


def load_weights(config: TrialConfig, run_dir: Path | None, uri: str, run_id: str) -> tuple[Weights, list[str]]:
    """(:class:`Weights`, warnings): from ``run_dir/checkpoints`` (:func:`choose_checkpoint`) when that
    folder is on this machine, else from run ``run_id``'s ``model/`` artifacts
    (:func:`jobs.model_io.load_model_with_info`: the checkpoint ``tracking.log_model`` chose, whatever
    ``eval.checkpoint`` asks, with a warning when they differ)."""
    if run_dir is not None and (run_dir / "checkpoints").is_dir():
        which, path, state, notes = choose_checkpoint(run_dir, config.eval.checkpoint)
        return Weights(which, int(state["loop"]["step"]), checkpoint_sha256(path), state["model"]), notes
    from jobs.model_io import ModelLoadError, load_model_with_info

    try:
        model, _, info = load_model_with_info(run_id, uri)
    except ModelLoadError as err:
        raise EvalInputError(f"{err}; and no run folder with checkpoints here ({run_dir or 'none'})") from None
    notes = [] if info["which"] == config.eval.checkpoint else [
        f"eval.checkpoint={config.eval.checkpoint}, but run {run_id}'s model/ artifact holds its {info['which']} "
        "checkpoint (and its run folder is not here): evaluating that"]
    # checkpoint_sha256: absent from model.json files older than it (the weights' SHA-256 stands in)
    digest = info.get("checkpoint_sha256") or info["weights_sha256"]
    return Weights(info["which"], int(info["step"]), digest, model.state_dict()), notes


def make_protocol(config: TrialConfig, weights: Weights, test_images: int, fid_images: int,
                  scorer: FidScorer | None, selected: tuple[str, ...]) -> dict[str, Any]:
    """What an evaluation's numbers depend on (flat ``str``/number values, logged as tags): a change
    of any value, e.g. of the dequantisation scheme, makes :func:`evaluate_trial` recompute.
    ``seed``: the run seed (sampling latents); ``noise_seed``: the dequantisation noise. The same
    whether the weights come from the run folder or from the run's ``model/`` artifacts."""
    ev = config.eval
    return {
        "checkpoint": weights.which, "checkpoint_step": weights.step, "checkpoint_sha256": weights.sha256,
        "evaluations": ",".join(selected), "seed": config.run.seed, "test_images": test_images,
        "test_draws": ev.test_draws, "noise_seed": ev.noise_seed, "dequantisation": "per-image",
        "temperatures": ",".join(temperature_key(t) for t in ev.temperatures),
        "fid_images": fid_images if scorer else 0, "fid_network": scorer.network if scorer else "none",
        "fid_weights_sha256": (scorer.weights_sha256 or "none") if scorer else "none",
        "fid_reference": f"first {fid_images} images of the {config.data.name} test split" if scorer else "none",
        "fid_samples_quantisation": "8-bit" if scorer else "none",
        "receptive_field_samples": ev.receptive_field_samples, "receptive_field_space": ev.receptive_field_space,
    }


def protocol_hash(protocol: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# The computations (pure torch; write files into ``out``)
# ----------------------------------------------------------------------------------------------

def _generator(device: torch.device, seed: int, *parts: int) -> torch.Generator:
    from rgflow.data.batching import derive_seed

    return torch.Generator(device=device).manual_seed(derive_seed(seed, _STREAM, *parts))


@torch.no_grad()
def measure_test_bpd(model, images: torch.Tensor, draws: int, batch_size: int, noise_seed: int,
                     device: torch.device) -> HeldOutBpd:
    """BPD (bits/dim) of uint8 ``images`` ``(N, C, L, L)`` over ``draws`` dequantisation draws, as
    a :class:`rgflow.train.HeldOutBpd` (mean, standard errors over images and over draws, per-image
    values). Image ``i``'s noise in draw ``d`` depends on ``(noise_seed, d, i)`` only."""
    from rgflow.data.batching import EpochBatcher
    from rgflow.train import validation_bpd

    return validation_bpd(model, EpochBatcher(images, batch_size, noise_seed, device, drop_last=False), draws,
                          batch_size)


@torch.no_grad()
def sample_batches(model, n: int, temperature: float, batch: int, generator: torch.Generator):
    """Yield ``n`` samples ``(b, C, L, L)`` in [0, 1] at ``temperature``, ``batch`` at a time."""
    done = 0
    while done < n:
        b = min(batch, n - done)
        yield model.sample(b, temperature, generator).float()
        done += b


def write_samples(model, config: TrialConfig, device: torch.device, out: Path) -> None:
    from torchvision.utils import save_image

    n = config.train.sample_count
    nrow = math.ceil(math.sqrt(n))
    for t in config.eval.temperatures:
        images = torch.cat(list(sample_batches(model, n, t, n, _generator(device, config.run.seed, 0))))
        save_image(images.cpu(), out / f"samples_T{temperature_key(t)}.png", nrow=nrow)
    temps = sorted(config.eval.temperatures)
    t_low, t_high = temps[0], (temps[-1] if temps[-1] > temps[0] else 1.0)
    rows = [model.sample_mixed(8, t_low, t_high, level, _generator(device, config.run.seed, 1)).float().cpu()
            for level in range(model.cfg.levels)]
    save_image(torch.cat(rows), out / "mixed_temperature.png", nrow=8)
    (out / "mixed_temperature.json").write_text(json.dumps(
        {"t_low": t_low, "t_high": t_high, "rows": "level h = 0 (finest) … H-1: latents of levels ≥ h at t_high"}))


def compute_fid(model, scorer: FidScorer, test_images: torch.Tensor, config: TrialConfig,
                device: torch.device) -> dict[str, float]:
    """``{fid_T<t>: FID}`` between ``len(test_images)`` samples per temperature and those uint8
    images ``(N, C, L, L)``. Both reach the feature network as ``k / 255`` for 8-bit ``k``: the
    samples are quantised as a PNG file would store them (:func:`jobs.fid.to_uint8`), as
    pytorch-fid, which reads image files, sees them.

    A temperature whose FID cannot be computed (pytorch-fid's matrix square root fails, typically
    with fewer images than feature dimensions) is left out with a warning.
    """
    from jobs.fid import frechet_distance, to_uint8

    if test_images.dtype != torch.uint8:
        raise TypeError(f"compute_fid: the reference images must be the uint8 test images, got {test_images.dtype}")
    ref = scorer.features(test_images)
    if len(test_images) <= ref.shape[1]:
        log.warning("FID with %d images per set and %d-dimensional features: the covariances are singular and "
                    "the value is biased upwards; use eval.fid_samples > %d (10000 is standard)",
                    len(test_images), ref.shape[1], ref.shape[1])
    out = {}
    for t in config.eval.temperatures:
        samples = sample_batches(model, len(test_images), t, config.eval.fid_batch,
                                 _generator(device, config.run.seed, 2))
        feats = [scorer.features(to_uint8(x)) for x in samples]
        try:
            out[f"fid_T{temperature_key(t)}"] = frechet_distance(np.concatenate(feats), ref)
        except ValueError as err:
            log.warning("FID at T=%s not computed: %s", temperature_key(t), err)
    return out


def write_receptive_fields(model, config: TrialConfig, device: torch.device, out: Path) -> None:
    """``receptive_fields.npz`` (``level<h>``: ``(L, L)`` float32 map of ``E|∂G(z)/∂z_l|`` at T = 1,
    summed over colour channels, in ``eval.receptive_field_space`` units per unit latent) and
    ``receptive_fields.png`` (one panel per level, each with its own colour bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rgflow.receptive import receptive_fields

    ev, temperature = config.eval, 1.0
    fields = receptive_fields(model, ev.receptive_field_samples, temperature, _generator(device, config.run.seed, 3),
                              space=ev.receptive_field_space)
    np.savez(out / "receptive_fields.npz", **{f"level{h}": m.numpy() for h, m in fields.items()})
    fig, axes = plt.subplots(1, len(fields), figsize=(3.1 * len(fields), 3.0), squeeze=False)
    for ax, (h, m) in zip(axes[0], sorted(fields.items())):
        fig.colorbar(ax.imshow(m.numpy(), cmap="magma"), ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(f"level {h}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"receptive fields E|∂G(z)/∂z_l|, G into {ev.receptive_field_space} space, T = {temperature:g}, "
                 f"{ev.receptive_field_samples} prior samples, one central latent per level", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "receptive_fields.png", dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# MLflow
# ----------------------------------------------------------------------------------------------

def _already_done(run: RunSummary, protocol: dict[str, Any]) -> bool:
    """The protocol tag is written in the same ``log_batch`` as the metrics: it marks a complete evaluation."""
    return run.tags.get(EVAL_PROTOCOL_TAG) == protocol_hash(protocol)


def protocol_tags(protocol: dict[str, Any]) -> dict[str, str]:
    """``rgflow.eval.<key>`` per protocol value, then ``rgflow.eval.protocol`` (its hash)."""
    return {f"{EVAL_TAG_PREFIX}{k}": str(v) for k, v in protocol.items()} | {EVAL_PROTOCOL_TAG: protocol_hash(protocol)}


def log_to_run(uri: str, run_id: str, metrics: dict[str, float], step: int, protocol: dict[str, Any],
               eval_dir: Path) -> None:
    """Metrics at ``step`` (a value already logged at that step is not logged again), protocol
    tags, and ``eval_dir`` as artifacts under ``eval/`` (first: the protocol tag, logged with the
    metrics, marks a complete evaluation). The run's status is not changed."""
    from jobs.tracking import log_evaluation

    log_evaluation(uri, run_id, metrics, step, protocol_tags(protocol), eval_dir, EVAL_DIR)


# ----------------------------------------------------------------------------------------------
# One trial
# ----------------------------------------------------------------------------------------------

def evaluate_trial(config: TrialConfig, run_dir: str | Path | None, run_id: str | None = None, *,
                   tracking_uri: str | None = None, force: bool = False, device: str | None = None,
                   selected: tuple[str, ...] = EVALUATIONS, fid_scorer: FidScorer | None = None) -> EvalResult:
    """Evaluate the trial whose run folder is ``run_dir`` into MLflow run ``run_id`` (``None``: the
    id in the folder's ``state.json``). Without ``run_dir/checkpoints`` on this machine (``run_dir``
    None or elsewhere) the weights are the run's ``model/`` artifacts (:func:`load_weights`), and
    without ``run_dir`` the outputs go to the run's ``eval/`` artifacts only. ``selected``: a subset
    of :data:`EVALUATIONS` (e.g. a sweep's ``evaluation`` settings). ``fid_scorer``: a scorer to use
    instead of Inception (e.g. a small fixed-seed feature network in tests). For the sweep backends
    to chain after training.

    Raises :class:`EvalInputError` for bad input (no checkpoint, no run).
    """
    from jobs.tracking import resolve_tracking_uri
    from rgflow.data import CelebAMissing, load_split
    from rgflow.device import DeviceUnavailable, choose_device
    from rgflow.model import RGFlowModel

    run_dir = Path(run_dir) if run_dir is not None else None
    uri = resolve_tracking_uri(tracking_uri or config.tracking.resolved_uri)
    if run_id is None and run_dir is None:
        raise EvalInputError("evaluate_trial: neither a run folder nor an MLflow run id")
    run_id = run_id or _run_id_from_folder(run_dir)
    run = _get_run(uri, run_id)
    weights, notes = load_weights(config, run_dir, uri, run_id)
    for note in notes:
        log.warning("%s", note)

    ev = config.eval
    test_size = ev.test_size or config.data.test_size
    try:
        test = torch.as_tensor(load_split(dataclasses.replace(config.data, test_size=test_size), "test").images)
        dev = choose_device(device or config.run.device)
    except (CelebAMissing, DeviceUnavailable) as err:
        raise EvalInputError(str(err)) from None
    scorer = None
    if "fid" in selected:
        try:
            scorer = fid_scorer or FidScorer.inception(ev.fid_weights, device=dev, batch_size=ev.fid_batch)
        except FidUnavailable as err:
            notes.append(str(err))
            log.warning("%s", err)
    fid_images = min(ev.fid_samples, len(test))
    if scorer and fid_images < ev.fid_samples:
        notes.append(f"FID uses {fid_images} images per set: the test split has fewer than eval.fid_samples="
                     f"{ev.fid_samples}")
        log.warning("%s", notes[-1])
    protocol = make_protocol(config, weights, len(test), fid_images, scorer, selected)
    expected = (["test_bpd", "test_bpd_se", "test_bpd_se_draws"] if "test_bpd" in selected else []) + (
        [f"fid_T{temperature_key(t)}" for t in ev.temperatures] if scorer else [])
    kept = run_dir is not None and run_dir.is_dir()  # the outputs also stay in the run folder
    if not force and _already_done(run, protocol):
        log.info("run %s: already evaluated with this protocol (%s); --force recomputes", run_id, protocol_hash(protocol))
        done = {k: run.metrics[k] for k in expected if k in run.metrics}
        return EvalResult(run_id, done, protocol, run_dir / EVAL_DIR if kept else None, True, notes)

    model = RGFlowModel(config.model, config.prior)
    model.load_state_dict(weights.state)
    model = model.to(dev).eval()
    metrics: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="rgflow-eval-") as scratch:  # the outputs' folder without a run folder
        eval_dir = run_dir / EVAL_DIR if kept else Path(scratch) / EVAL_DIR
        todo = [e for e in EVALUATIONS if e in selected and (e != "fid" or scorer)]
        with staged_dir(eval_dir) as work, _progress(todo, run_id) as steps:
            for step in steps:
                steps.set_postfix_str(step)
                if step == "test_bpd":
                    bpd = measure_test_bpd(model, test, ev.test_draws, config.train.batch_size, ev.noise_seed, dev)
                    metrics["test_bpd"] = bpd.mean
                    for name, value in (("test_bpd_se", bpd.se_images), ("test_bpd_se_draws", bpd.se_draws)):
                        if math.isfinite(value):
                            metrics[name] = value
                    np.save(work / PER_IMAGE_FILE, bpd.per_image)
                elif step == "samples":
                    write_samples(model, config, dev, work)
                elif step == "fid":
                    metrics.update(compute_fid(model, scorer, test[:fid_images], config, dev))
                else:
                    write_receptive_fields(model, config, dev, work)
            (work / "metrics.json").write_text(json.dumps({"metrics": metrics, "protocol": protocol,
                                                           "warnings": notes}, indent=1))
        log_to_run(uri, run_id, metrics, protocol["checkpoint_step"], protocol, eval_dir)
    return EvalResult(run_id, metrics, protocol, eval_dir if kept else None, False, notes)


def _progress(steps: list[str], run_id: str) -> tqdm:
    """A bar over one trial's evaluations on stderr, drawn only when stderr is a terminal (so that
    logs, sweep backends and tests stay clean)."""
    return tqdm(steps, desc=f"evaluate run {run_id[:8]}", unit="step", disable=None, leave=False)


def _run_id_from_folder(run_dir: Path) -> str:
    try:
        run_id = json.loads((run_dir / "state.json").read_text()).get("run_id")
    except (OSError, ValueError):
        run_id = None
    if not run_id:
        raise EvalInputError(f"{run_dir}/state.json names no MLflow run: train the trial with tracking first, "
                             "or pass its run id")
    return run_id


def _get_run(uri: str, run_id: str) -> RunSummary:
    from jobs.tracking import find_run

    run = find_run(uri, run_id)
    if run is None:
        raise EvalInputError(f"no MLflow run {run_id} at {uri} (pass --tracking-uri or set "
                             "MLFLOW_TRACKING_URI to the store that holds it)")
    return run


# ----------------------------------------------------------------------------------------------
# Naming trials on the command line
# ----------------------------------------------------------------------------------------------

def resolve_targets(target: str, *, trial: int | None = None, all_trials: bool = False,
                    tracking_uri: str | None = None, overrides: list[str] = ()) -> list[TrialRef]:
    """The trials named by a run id, a ``runs:/<run_id>/model`` or ``models:/<name>/<version or alias>``
    URI (the run the model was logged from), a trial id, a trial config file or a sweep file
    (+ index/all). A run whose run folder is not on this machine gets the config of its ``model/``
    artifacts (with ``overrides``, e.g. ``data.root=…`` for this machine's data) and no run folder."""
    from jobs.sweep_spec import is_sweep_file, load_sweep
    from jobs.sweep_state import recorded_uri
    from jobs.overrides import load_yaml_file
    from jobs.tracking import fast_read, resolve_tracking_uri
    from jobs.train import run_dir_for

    path = Path(target)
    if path.is_file():
        if is_sweep_file(load_yaml_file(path)):
            sweep = load_sweep(path, list(overrides))
            if all_trials == (trial is not None):
                raise EvalInputError(f"{path} is a sweep of {len(sweep.trials)} trials: pass --trial N or --all")
            trials = sweep.trials if all_trials else [sweep.trial(trial)]
            recorded = recorded_uri(sweep)
            refs = [_ref_from_folder(t.config, run_dir_for(t.config, sweep.name), tracking_uri,
                                     f"{t.index}:{t.trial_id}", sweep.name, recorded) for t in trials]
            return [dataclasses.replace(r, selected=sweep.evaluation.selected) for r in refs]
        if trial is not None or all_trials:
            raise EvalInputError(f"{path} is a trial config, not a sweep: --trial/--all apply to sweep files")
        config = load_trial_config(path, list(overrides), program="jobs.evaluate")
        return [_ref_from_folder(config, run_dir_for(config), tracking_uri, path.name, None, None)]
    if target.endswith((".yaml", ".yml")):
        raise EvalInputError(f"{target}: no such file")
    if not (target.startswith(("runs:/", "models:/")) or RUN_ID.match(target) or TRIAL_ID.match(target)):
        raise EvalInputError(f"{target!r} is neither a file, an MLflow run id (32 hex digits), a runs:/ or models:/ "
                             "model URI nor a trial id (12 hex digits)")
    uri = resolve_tracking_uri(tracking_uri)
    if fast_read.missing_store(uri):  # before mlflow, which would create an empty store there
        raise EvalInputError(fast_read.missing_store(uri))
    if target.startswith(("runs:/", "models:/")):  # a logged model: evaluate the run it came from
        from jobs.tracking import TrackingError, resolve_model_ref

        try:
            run = _get_run(uri, resolve_model_ref(uri, target)[0])
        except TrackingError as exc:
            raise EvalInputError(str(exc)) from None
    elif RUN_ID.match(target):
        run = _get_run(uri, target)
    else:
        run = _find_trial_run(uri, target)
    folder = Path(run.tags[RUN_DIR_TAG]) if run.tags.get(RUN_DIR_TAG) else None
    if folder is not None and (folder / "config.yaml").is_file():
        config = load_trial_config(folder / "config.yaml", list(overrides), program="jobs.evaluate")
    else:
        folder, config = None, _artifact_config(uri, run, overrides)
    return [TrialRef(config, folder, run.run_id, uri, run.tags.get(TRIAL_ID_TAG, target))]


def _artifact_config(uri: str, run: RunSummary, overrides: list[str]) -> TrialConfig:
    """The config of ``run``'s ``model/config.yaml`` artifact with ``overrides``, for a run whose
    run folder is not on this machine."""
    from jobs.model_io import CONFIG_FILE, MODEL_DIR
    from jobs.tracking import download_artifact, list_artifacts

    path = f"{MODEL_DIR}/{CONFIG_FILE}"
    if path not in list_artifacts(uri, run.run_id, MODEL_DIR):
        raise EvalInputError(f"run {run.run_id}: its run folder {run.tags.get(RUN_DIR_TAG)!r} (tag {RUN_DIR_TAG}) "
                             f"is not on this machine and it has no {path} artifact (trained with "
                             "tracking.log_model=none, or not finished)")
    with tempfile.TemporaryDirectory(prefix="rgflow-eval-") as tmp:
        downloaded = download_artifact(uri, run.run_id, path, tmp)
        return load_trial_config(downloaded, list(overrides), program="jobs.evaluate")


def _ref_from_folder(config: TrialConfig, run_dir: Path, tracking_uri: str | None, label: str,
                     experiment: str | None, recorded: str | None) -> TrialRef:
    """``recorded``: the tracking URI the sweep's launch saved in its run folder (used when neither
    ``tracking_uri``, ``tracking.uri`` nor ``MLFLOW_TRACKING_URI`` names one)."""
    from jobs.tracking import fast_read
    from jobs.tracking.uri import read_uri
    from jobs.config import trial_id

    uri = read_uri(tracking_uri or config.tracking.uri, recorded)
    try:
        run_id = _run_id_from_folder(run_dir)
    except EvalInputError:  # looked up in the store without mlflow; a missing store is not created
        exp = fast_read.experiment_id(uri, experiment or config.tracking.experiment)
        found = fast_read.trial_runs(uri, exp, trial_ids=[trial_id(config)]) if exp is not None else {}
        run_id = next(iter(found.values())).run_id if found else None
    return TrialRef(config, run_dir, run_id, uri, label)


def _find_trial_run(uri: str, trial: str) -> RunSummary:
    from jobs.tracking import find_run_by_trial_id

    run = find_run_by_trial_id(uri, trial)
    if run is None:
        raise EvalInputError(f"no MLflow run with trial id {trial} at {uri}")
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("target", help="MLflow run id, runs:/ or models:/ URI, trial id, trial config file or sweep file")
    parser.add_argument("overrides", nargs="*", help="config/sweep overrides (key=value)")
    parser.add_argument("--trial", type=int, help="the sweep's trial index")
    parser.add_argument("--all", action="store_true", help="every trial of the sweep")
    parser.add_argument("--force", action="store_true", help="recompute even if evaluated with this protocol")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the trial's run.device)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: the trial's, else $MLFLOW_TRACKING_URI)")
    args = parser.parse_intermixed_args(argv)
    handler = logging.StreamHandler(sys.stderr)  # this module's warnings reach the console in any setup
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    log.addHandler(handler)
    try:
        return _run(args)
    finally:
        log.removeHandler(handler)


def _run(args: argparse.Namespace) -> int:
    from jobs.config import ConfigError

    try:
        refs = resolve_targets(args.target, trial=args.trial, all_trials=args.all, tracking_uri=args.tracking_uri,
                               overrides=args.overrides)
    except (EvalInputError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from jobs.tracking.fast_read import store_line

    for uri in dict.fromkeys(ref.tracking_uri for ref in refs):
        print(f"jobs.evaluate: {store_line(uri)}", flush=True)
    code = 0
    for ref in refs:
        if ref.run_id is None:
            print(f"error: [{ref.label}] no run folder state ({ref.run_dir}) and no MLflow run at {ref.tracking_uri}: "
                  "train it first", file=sys.stderr)
            code = max(code, 2)
            continue
        if ref.config.run.threads:  # as jobs.train does: the trial's CPU share
            torch.set_num_threads(ref.config.run.threads)
        try:
            result = evaluate_trial(ref.config, ref.run_dir, ref.run_id, tracking_uri=ref.tracking_uri,
                                    force=args.force, device=args.device, selected=ref.selected)
        except (EvalInputError, ConfigError) as err:
            print(f"error: [{ref.label}] {err}", file=sys.stderr)
            code = max(code, 2)
            continue
        except Exception as err:  # noqa: BLE001 - one trial's failure must not stop a batch
            print(f"error: [{ref.label}] evaluation failed: {type(err).__name__}: {err}", file=sys.stderr)
            code = max(code, 1)
            continue
        shown = ", ".join(f"{k}={v:.5g}" for k, v in result.metrics.items())
        print(f"[{ref.label}] {'already evaluated' if result.skipped else 'evaluated'} run {result.run_id}: "
              f"{shown or 'no metrics'} ({result.eval_dir or f'artifacts {EVAL_DIR}/ of the run'})")
    return code


if __name__ == "__main__":
    sys.exit(main())
