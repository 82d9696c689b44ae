"""One trial, end to end: ``python -m jobs.train CONFIG.yaml [overrides…]`` or
``python -m jobs.train SWEEP.yaml --trial N [--device D] [--cfg] [overrides…]``.

Creates or resumes the trial's run folder and MLflow run, trains, and ends the run in a true state
(exit codes: :class:`jobs.attempt.ExitCode` — ``0`` finished, ``1`` failed, ``2`` bad input, ``3`` run
folder held by another attempt, ``75`` preempted, ``130`` interrupted). Full
reference (run folder contents, resume, signals): docs/CLI.md. In-process API for the sweep
backends: :func:`run_trial` (never installs signal handlers outside the main thread; pass
``stop_flag`` instead).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shutil
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.attempt import CODE_OF, DONE_STATES, ExitCode, StopRequest, TrialOutcome
from jobs.config import ID_UNLESS_DEFAULT, TrialConfig, flatten, format_value, resolved_dict, to_yaml, trial_id
from jobs.run_folder import LOG_FILE, SINGLE, adopt_run_id, read_state, run_dir_for, write_state  # noqa: F401 - run_dir_for re-exported
from jobs.run_lock import RunFolderLock, RunFolderLocked
from jobs.tracking.record import UnreadableRecord, has_pending
from jobs.tracking.tags import (
    BACKEND_TAG, BEST_CHECKPOINT_TAG, CHECKPOINT_TAG, FAILURES_TAG, MODEL_ARTIFACT_TAG, SWEEP_ID_TAG, SWEEP_TAG,
    TRIAL_INDEX_TAG,
)
from rgflow.atomic import write_atomic
from rgflow.config import ConfigError as LibraryConfigError  # the base of jobs.config.ConfigError too

log = logging.getLogger("jobs.train")

#: Params logged beside the flattened config that are not settings (not valid overrides): derived from
#: the config (``train.effective_lr``: ``train.lr`` after the batch-size rule, before warm-up) or
#: from the built model (``model.num_params``: its parameter count). Readers that treat every param
#: as a setting (varying-setting columns, context labels) should skip them.
DERIVED_PARAMS = ("train.effective_lr", "model.num_params")

#: Dequantisation noise seed of validation, the same for every trial (and not a setting, so that it
#: cannot differ between trials of one id): validation curves of any two trials are paired image by image.
VALIDATION_NOISE_SEED = 0


class BadInput(Exception):
    """The trial cannot start (nothing is created); ``str()`` is one line. ``exit_code`` 2 for what
    the user must fix (config, device, data), 1 for an unreachable tracking store."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.BAD_INPUT):
        super().__init__(message)
        self.exit_code = exit_code


# ----------------------------------------------------------------------------------------------
# Run folder
# ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _file_log(path: Path) -> Iterator[None]:
    """Send INFO+ records of this process (jobs.*, rgflow.*, warnings) to ``path`` for the block."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("jobs", "rgflow")}
    for name in levels:
        logging.getLogger(name).setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, (BadInput, LibraryConfigError)) else f"{type(exc).__name__}: {text}"[:500]


# ----------------------------------------------------------------------------------------------
# Stop requests: signals (main thread only) and the backends' stop_flag
# ----------------------------------------------------------------------------------------------

class _StopRequests:
    """The first stop request wins: ``(state, reason)`` with state preempted, killed or pruned."""

    SIGNAL_STATES = {signal.SIGTERM: "preempted", signal.SIGUSR2: "preempted", signal.SIGINT: "killed"}

    def __init__(self, stop_flag: Callable[[], StopRequest | None] | None):
        self.stop_flag = stop_flag
        self.request: tuple[str, str] | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.SIGNAL_STATES:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.request is not None and self.request[0] == "killed":
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        if self.request is None:
            self.request = (self.SIGNAL_STATES[signum], f"received {signal.Signals(signum).name}")

    def poll(self) -> str | None:
        if self.request is None and self.stop_flag is not None:
            asked = self.stop_flag()
            if asked is not None:
                self.request = (asked.state, asked.reason)
        return self.request[1] if self.request else None


# ----------------------------------------------------------------------------------------------
# The trial
# ----------------------------------------------------------------------------------------------

def _say(trial: str, message: str) -> None:
    print(f"[{trial}] {message}", flush=True)
    log.info(message)


def _make_hooks(trial: str, tracked, stops: _StopRequests,
                on_validation: Callable[[int, dict[str, float]], None] | None = None):
    from rgflow.train import TrainHooks

    class Hooks(TrainHooks):
        def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
            if tracked is not None:
                tracked.log_metrics(metrics, step)
            if "train_bpd" in metrics:
                _say(trial, f"step {step} · epoch {metrics['epoch']:.2f} · train {metrics['train_bpd']:.4f} bpd · "
                            f"{metrics['images_per_s']:.0f} img/s")
            if "val_bpd" in metrics:
                se = f" ± {metrics['val_bpd_se']:.1e}" if "val_bpd_se" in metrics else ""
                _say(trial, f"step {step} · epoch {metrics['val_epoch']:.2f} · val {metrics['val_bpd']:.4f}{se} bpd")
                if on_validation is not None:
                    on_validation(step, metrics)

        def on_artifact(self, path: Path, artifact_path: str) -> None:
            if tracked is not None:
                tracked.log_artifact(path, artifact_path)

        def before_checkpoint(self, step: int) -> None:
            if tracked is not None:
                tracked.sync()

        def on_checkpoint(self, path: Path, step: int) -> None:
            log.info("checkpoint %s (step %d)", path, step)

        def should_stop(self) -> str | None:
            return stops.poll()

    return Hooks()


@dataclass
class _Prepared:
    """What :func:`_prepare` resolved before anything is written."""

    device: Any
    train_set: Any
    valid_set: Any
    resume: tuple[Path, dict[str, Any]] | None


def _prepare(config: TrialConfig, run_dir: Path, trial: str, tid: str) -> _Prepared:
    """Device, data and the newest valid checkpoint of trial ``tid`` (one written for another
    trial is skipped with a warning); BadInput for what the user must fix."""
    from rgflow.checkpoint import load_latest
    from rgflow.data import CelebAMissing, load_split
    from rgflow.device import DeviceUnavailable, choose_device

    try:
        device = choose_device(config.run.device)
    except DeviceUnavailable as err:
        raise BadInput(str(err)) from None
    try:
        train_set = load_split(config.data, "train")
        valid_set = load_split(config.data, "valid")
    except (CelebAMissing, LibraryConfigError) as err:
        raise BadInput(str(err)) from None
    except ValueError as err:  # CelebA's list_eval_partition.txt does not parse (rgflow.data.celeba.read_partition)
        if config.data.name != "celeba":
            raise
        raise BadInput(f"CelebA's partition file is malformed ({err}); fix that line, or replace the file") from None
    if len(train_set) < config.train.batch_size:
        raise BadInput(f"train.batch_size={config.train.batch_size}: more than the {len(train_set)} training images "
                       f"(lower train.batch_size or raise data.train_size)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resume = load_latest(run_dir / "checkpoints", expect={"trial_id": tid})
    for w in caught:
        print(f"[{trial}] warning: {w.message}", file=sys.stderr, flush=True)
    return _Prepared(device, train_set, valid_set, resume)


def run_trial(
    config: TrialConfig,
    *,
    sweep: str | None = None,
    sweep_id: str | None = None,
    trial_index: int | None = None,
    parent_run_id: str | None = None,
    tracking_uri: str | None = None,
    experiment_id: str | None = None,
    backend: str = SINGLE,
    stop_flag: Callable[[], StopRequest | None] | None = None,
    sweep_params: dict[str, Any] | None = None,
    run_name: str | None = None,
    on_validation: Callable[[int, dict[str, float]], None] | None = None,
    tags: dict[str, str] | None = None,
) -> TrialOutcome:
    """Run (or resume, or skip if finished) one trial in this process; never raises for a trial
    failure — the :class:`TrialOutcome` says how it ended.

    ``sweep``: the sweep name (run folder ``<out_dir>/<sweep>/<id>``, tag ``rgflow.sweep``), None for a
    single trial; ``sweep_id``/``trial_index``: tags. ``parent_run_id``: the sweep's MLflow parent
    run (``mlflow.parentRunId``). ``tracking_uri``: overrides ``config.tracking`` (resolved with
    :func:`jobs.tracking.resolve_tracking_uri`). ``experiment_id``: the MLflow experiment; None →
    the experiment named ``sweep`` or else ``config.tracking.experiment`` (created if missing).
    ``backend``: the ``rgflow.backend`` tag; ``tags``: more tags for the run. ``stop_flag``: polled
    before every step (and during validation); a :class:`jobs.attempt.StopRequest` stops the trial
    in its state after a checkpoint (preempted: exit 75, killed: 130, pruned: 0, done for good).
    ``on_validation(step, metrics)``: called after every validation (``val_bpd`` bits/dim, ``val_epoch``).
    Signal handlers (SIGTERM/SIGUSR2/SIGINT) are installed only when called from the main thread.
    ``sweep_params``: the parent run's params, used when the store was down and the parent run is
    created later. ``run_name``: the MLflow run name (:func:`trial_run_name` for a sweep's trial);
    None → the trial id, or ``trial-NNNN-<id>`` with a ``trial_index``. The attempt holds the run folder's lock (:mod:`jobs.run_lock`) throughout; a
    second attempt at the same folder returns at once with ``ExitCode.LOCKED``.
    """
    tid = trial_id(config)
    run_dir = run_dir_for(config, sweep)
    label = tid if trial_index is None else f"{trial_index}:{tid}"
    created = [p for p in (run_dir, run_dir.parent, run_dir.parent.parent) if not p.exists()]  # removed on bad input
    lock = RunFolderLock(run_dir)
    try:
        lock.acquire()
    except RunFolderLocked as err:
        print(f"[{label}] error: {err}", file=sys.stderr, flush=True)
        return TrialOutcome("running", ExitCode.LOCKED, tid, run_dir, reason=str(err))
    try:
        previous = read_state(run_dir)
        if previous and previous.get("state") in DONE_STATES:
            _deliver_pending(run_dir, label)
            _say(label, f"already {previous['state']} ({run_dir}); nothing to do")
            return TrialOutcome(previous["state"], ExitCode.FINISHED, tid, run_dir, adopt_run_id(run_dir),
                                previous.get("attempt"), best_val_bpd=previous.get("best_val_bpd"),
                                val_bpd=previous.get("val_bpd"), step=previous.get("step"),
                                failures=int(previous.get("failures", 0)))
        stops = _StopRequests(stop_flag)
        stops.install()
        try:
            try:
                prepared = _prepare(config, run_dir, label, tid)
                where = _Where(sweep, sweep_id, trial_index, parent_run_id, tracking_uri, experiment_id, backend,
                               dict(sweep_params or {}), run_name, dict(tags or {}))
                tracked = _open_tracking(config, run_dir, tid, where, prepared)
            except (BadInput, LibraryConfigError) as err:
                if created:
                    shutil.rmtree(created[-1], ignore_errors=True)
                print(f"error: {_one_line(err)}", file=sys.stderr, flush=True)
                return TrialOutcome("failed", getattr(err, "exit_code", ExitCode.BAD_INPUT), tid, run_dir,
                                    reason=_one_line(err))
            except Exception as err:  # noqa: BLE001 - e.g. a file of the run folder that no longer parses
                return _failed_before_training(run_dir, tid, label, previous, err)
            with _file_log(run_dir / LOG_FILE):
                return _train_tracked(config, run_dir, tid, label, tracked, prepared, stops, previous, on_validation)
        finally:
            stops.restore()
    finally:
        lock.release()


def _failed_before_training(run_dir: Path, tid: str, label: str, previous: dict | None,
                            err: Exception) -> TrialOutcome:
    """An attempt that failed before training (reading its own files, opening its run): one more
    failure in ``state.json``, so ``max_failures`` bounds the retries, and one line saying why."""
    reason = _one_line(err)
    log.error("attempt failed before training:\n%s", traceback.format_exc())
    failures = int((previous or {}).get("failures", 0)) + 1
    write_state(run_dir, state="failed", reason=reason, failures=failures)
    print(f"[{label}] failed before training: {reason}", file=sys.stderr, flush=True)
    return TrialOutcome("failed", ExitCode.FAILED, tid, run_dir, reason=reason, failures=failures)


def _deliver_pending(run_dir: Path, label: str) -> None:
    """Deliver what a finished trial's run folder still holds for the store (an end state or
    metrics its last attempt could not send); a store still down leaves them for the next try."""
    from jobs.tracking.trial import replay_run_dir

    try:
        pending = has_pending(run_dir)
    except UnreadableRecord as err:
        _say(label, f"warning: {err}")
        return
    if pending:
        ok = replay_run_dir(run_dir, timeout_s=30.0)
        _say(label, "delivered the run's pending end state and metrics" if ok else
             "tracking store unreachable: the run's end state is still pending (python -m jobs.tracking replay)")


@dataclass(frozen=True)
class _Where:
    """Where a trial's run belongs: sweep name, id and index, parent run, store, experiment, the
    ``rgflow.backend`` tag, the parent run's params (to create it if the store was down), the run
    name and the backend's own tags."""

    sweep: str | None
    sweep_id: str | None
    trial_index: int | None
    parent_run_id: str | None
    tracking_uri: str | None
    experiment_id: str | None
    backend: str
    sweep_params: dict[str, Any]
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


def trial_params(config: TrialConfig, experiment: str) -> dict[str, str]:
    """The params of a trial's run: the flattened config (:func:`jobs.config.flatten`) with
    ``tracking.experiment`` set to the ``experiment`` the run really is in (a sweep's trial sits in
    the experiment named after the sweep, whatever its config says), plus ``train.effective_lr``
    (the learning rate after ``train.lr_scaling``, before warm-up). ``model.num_params`` is logged
    once the model is built (:func:`_train_tracked`)."""
    params = flatten(config)
    params["tracking.experiment"] = experiment
    params["train.effective_lr"] = format_value(config.train.effective_lr)
    return params


#: Short names of well-known axis keys in run names (:func:`trial_run_names`); ``""``: the value alone.
RUN_NAME_KEYS = {"train.batch_size": "bs", "train.lr": "lr", "train.lr_scaling": "", "prior.kind": "", "run.seed": "s"}
_RUN_NAME_MAX = 200


def _name_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "x".join(_name_value(v) for v in value)
    return "null" if value is None else str(value)


def _name_part(key: str, value: Any) -> str:
    prefix = RUN_NAME_KEYS.get(key, key.rsplit(".", 1)[-1])
    return re.sub(r"[^A-Za-z0-9._]+", "_", f"{prefix}{_name_value(value)}").strip("_")


def trial_run_names(sweep) -> list[str]:
    """The MLflow run name of each trial of ``sweep`` (any object with ``trials`` whose items have
    ``index`` and ``varying``: axis key → value), in trial order: the axis values joined with ``-``,
    well-known keys abbreviated (:data:`RUN_NAME_KEYS`: ``bs512-sqrt-laplace-s0``), other keys as
    their last part and value (``epochs10``; a key of :data:`jobs.config.ID_UNLESS_DEFAULT` at its default is
    left out: the tuned arms beside a control arm), characters other than letters, digits, ``.`` and ``_``
    as ``_``. Names shared by several trials get ``-t<index>`` appended; a trial without axis values
    is ``trial-<index>``. Unique within the sweep."""
    names = []
    for trial in sweep.trials:
        parts = [p for p in (_name_part(k, v) for k, v in trial.varying.items()
                             if not (k in ID_UNLESS_DEFAULT and v == ID_UNLESS_DEFAULT[k])) if p]
        names.append("-".join(parts)[:_RUN_NAME_MAX] or f"trial-{trial.index:04d}")
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return [f"{name}-t{trial.index}" if counts[name] > 1 else name for name, trial in zip(names, sweep.trials)]


def trial_run_name(sweep, index: int) -> str:
    """The MLflow run name of trial ``index`` of ``sweep`` (:func:`trial_run_names`)."""
    return trial_run_names(sweep)[index]


def _open_tracking(config: TrialConfig, run_dir: Path, tid: str, where: _Where, prepared: _Prepared):
    """The trial's :class:`jobs.tracking.TrialRun` (reopened when resuming), or None when tracking
    is disabled. A refusing store is BadInput; an unreachable one starts the run offline (the
    experiment and parent run are then found or created when the store answers)."""
    if not config.tracking.enabled and where.tracking_uri is None:
        return None
    from jobs.tracking import TrackingError, ensure_experiment, open_trial_run, resolve_tracking_uri
    from jobs.tracking.store import is_transient

    uri = resolve_tracking_uri(where.tracking_uri or config.tracking.resolved_uri)
    existing = None
    if prepared.resume is not None:  # the checkpoint's run, if it lives in this store
        meta = prepared.resume[1].get("meta", {})
        existing = meta.get("run_id") if meta.get("tracking_uri") == uri else None
    tags = {SWEEP_TAG: where.sweep or SINGLE, BACKEND_TAG: where.backend, **where.tags}
    if where.trial_index is not None:
        tags[TRIAL_INDEX_TAG] = where.trial_index
    if where.sweep_id:
        tags[SWEEP_ID_TAG] = where.sweep_id
    run_name = where.run_name or (tid if where.trial_index is None else f"trial-{where.trial_index:04d}-{tid}")
    name = where.sweep or config.tracking.experiment
    experiment, connect_s = where.experiment_id, 30.0
    parent = where.parent_run_id
    deferred_parent = None
    if parent is None and where.sweep and where.sweep_id:
        deferred_parent = {"name": where.sweep, "sweep_id": where.sweep_id, "params": where.sweep_params}
    try:
        if experiment is not None:  # given by the launcher: log the name it really has
            from jobs.tracking.store import experiment_name

            try:
                name = experiment_name(uri, experiment)
            except Exception as err:  # noqa: BLE001 - unreachable: the sweep's name, as the launcher made it
                if not is_transient(err):
                    raise
        if experiment is None:
            try:
                experiment = ensure_experiment(uri, name, timeout_s=10.0)
            except Exception as err:  # noqa: BLE001 - an outage starts the run offline
                if not is_transient(err):
                    raise
                print(f"warning: tracking store {uri} unreachable ({_one_line(err)}): training offline; the run "
                      "appears with all its metrics when the store answers", file=sys.stderr, flush=True)
                experiment, connect_s = None, 0.0
        return open_trial_run(uri, experiment, tid, run_name, parent, trial_params(config, name), tags, run_dir,
                              existing, device=str(prepared.device), connect_timeout_s=connect_s,
                              experiment_name=name, deferred_parent=deferred_parent,
                              system_metrics_interval_s=config.tracking.system_metrics_interval_s
                              if config.tracking.system_metrics else None)
    except Exception as err:  # noqa: BLE001 - a refusal is bad input; anything else is a bug
        if isinstance(err, UnreadableRecord):  # the run folder's own file: a failure of this attempt
            raise
        if isinstance(err, (TrackingError, ValueError)) or type(err).__name__ == "MlflowException":
            raise BadInput(f"tracking store {uri}: {_one_line(err)}") from None
        raise


def _train_tracked(config: TrialConfig, run_dir: Path, tid: str, label: str, tracked, prepared: _Prepared,
                   stops: _StopRequests, previous: dict[str, Any] | None,
                   on_validation: Callable[[int, dict[str, float]], None] | None = None) -> TrialOutcome:
    """Build the model and train; end the run in its true state."""
    import torch

    from rgflow.data import EpochBatcher
    from rgflow.device import configure_runtime, seed_everything
    from rgflow.model import RGFlowModel
    from rgflow.train import Interrupted, NonFiniteError, train

    run_id = tracked.run_id if tracked is not None else None
    attempt = tracked.attempt if tracked is not None else int((previous or {}).get("attempt", 0)) + 1
    failures = _count_previous_death(label, tracked, previous)
    state, reason, result, step, stopped_at = "failed", None, None, None, None
    try:
        write_state(run_dir, trial_id=tid, run_id=run_id, state="running", attempt=attempt, reason=None,
                    failures=failures)
        write_atomic(run_dir / "config.yaml", to_yaml(config))
        if tracked is not None:
            tracked.log_artifact(run_dir / "config.yaml", None)
        resume = prepared.resume
        where = f"resuming from {resume[0].name} (step {resume[1]['loop']['step']})" if resume else "starting"
        _say(label, f"{where} · attempt {attempt} · {prepared.device} · run {run_id or '-'} · {run_dir}")
        cfg, device = config.train, prepared.device
        configure_runtime(deterministic=config.run.deterministic, threads=config.run.threads)
        seed_everything(config.run.seed)
        model = RGFlowModel(config.model, config.prior).to(device)
        if tracked is not None:
            tracked.log_params({"model.num_params": sum(p.numel() for p in model.parameters())})
        batcher = EpochBatcher(prepared.train_set.images, cfg.batch_size, config.run.seed, device,
                               flip=config.data.flip_train)
        valid = EpochBatcher(prepared.valid_set.images, cfg.batch_size, VALIDATION_NOISE_SEED, device,
                             drop_last=False)
        meta = {"run_id": run_id, "tracking_uri": tracked.uri if tracked is not None else None, "trial_id": tid,
                "config": resolved_dict(config)}
        hooks = _make_hooks(label, tracked, stops, on_validation)
        result = train(model, batcher, valid, cfg, run_dir, hooks, seed=config.run.seed, resume=resume, meta=meta)
        state = "finished"
        _say(label, f"finished at step {result.step} · val {result.val_bpd} bpd · best {result.best_val_bpd} bpd")
    except Interrupted as stop:
        step, stopped_at = stop.step, stop.checkpoint
        state, reason = stops.request[0] if stops.request else "preempted", stop.reason
        _say(label, f"{state}: {stop.reason}; checkpoint {stop.checkpoint.name} at step {stop.step}")
    except NonFiniteError as err:
        step = err.step - 1  # the last good step
        reason = f"non-finite values at step {err.step}: {err.reason}"
        log.error("%s", reason)
        print(f"[{label}] failed: {reason}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        state, reason = "killed", "interrupted twice (SIGINT); no checkpoint of the last steps"
        _say(label, reason)
    except Exception as exc:  # noqa: BLE001 - every failure ends the run as FAILED with its reason
        reason = _one_line(exc)
        log.error("trial failed:\n%s", traceback.format_exc())
        print(f"[{label}] failed: {reason} (traceback in {run_dir / LOG_FILE})", file=sys.stderr, flush=True)
    finally:
        torch.use_deterministic_algorithms(False)

    best = result.best_val_bpd if result else None
    if state == "failed":
        failures += 1
        if tracked is not None:
            tracked.set_tags({FAILURES_TAG: failures})
    fields = dict(state=state, reason=reason, attempt=attempt, run_id=run_id, failures=failures)
    if result is not None:
        fields.update(step=result.step, best_val_bpd=best, val_bpd=result.val_bpd,
                      checkpoint=str(result.checkpoint), best_checkpoint=str(result.best_checkpoint or ""))
    elif stopped_at is not None:
        fields.update(step=step, checkpoint=str(stopped_at))
    if tracked is not None:
        if result is not None:
            tracked.set_tags({CHECKPOINT_TAG: result.checkpoint, BEST_CHECKPOINT_TAG: result.best_checkpoint or ""})
        elif stopped_at is not None:
            tracked.set_tags({CHECKPOINT_TAG: stopped_at})
        if state == "finished" and result is not None:
            _log_model(config, run_dir, tid, label, tracked, result, sum(p.numel() for p in model.parameters()))
        _log_train_log(run_dir, tracked)
        tracked.end(state, reason)
        fields["run_id"] = tracked.run_id
    write_state(run_dir, **fields)
    return TrialOutcome(state, CODE_OF[state], tid, run_dir, fields["run_id"], attempt, reason,
                        best_val_bpd=best, val_bpd=result.val_bpd if result else None,
                        step=result.step if result else step, failures=failures)


def _log_model(config: TrialConfig, run_dir: Path, tid: str, label: str, tracked, result, num_params: int) -> None:
    """Write ``run_dir/model/`` from the checkpoint ``tracking.log_model`` names (best, else last;
    none: nothing) and queue its files as the run's ``model/`` artifacts, tagged
    ``rgflow.model_artifact`` (best | last). A failure here is reported and the trial still finishes."""
    from jobs.model_io import MODEL_DIR, MODEL_FILES, choose_checkpoint, write_model_folder

    chosen = choose_checkpoint(config.tracking.log_model, result.checkpoint, result.best_checkpoint)
    if chosen is None:
        return
    which, path = chosen
    try:
        folder = write_model_folder(run_dir, config, which, path, tid, tracked.run_id, num_params)
        for name in MODEL_FILES:
            tracked.log_artifact(folder / name, MODEL_DIR)
        tracked.set_tags({MODEL_ARTIFACT_TAG: which})
    except Exception as exc:  # noqa: BLE001 - the weights stay in the checkpoints; the run still finishes
        log.error("could not log the model: %s", traceback.format_exc())
        print(f"[{label}] warning: could not log the model ({_one_line(exc)})", file=sys.stderr, flush=True)


def _log_train_log(run_dir: Path, tracked) -> None:
    """Queue ``train.log`` (every attempt's log so far; it stays in the run folder) as an artifact of
    the run at the root, uploaded by ``end`` — whatever the end state."""
    path = run_dir / LOG_FILE  # logging.FileHandler flushes every record: the file is complete so far
    if path.exists():
        tracked.log_artifact(path, None)


def _count_previous_death(label: str, tracked, previous: dict[str, Any] | None) -> int:
    """Failed attempts so far (``state.json``), counting the previous attempt as failed when it
    died without ending (its state still says running: SIGKILL, out of memory, node failure)."""
    failures = int((previous or {}).get("failures", 0))
    if previous and previous.get("state") == "running":
        failures += 1
        _say(label, f"attempt {previous.get('attempt', '?')} died without ending its run (killed, out of memory or "
                    f"node failure?): counted as failure {failures}")
        if tracked is not None:
            tracked.set_tags({FAILURES_TAG: failures})
    return failures


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="a trial config file, or a sweep file with --trial N")
    parser.add_argument("overrides", nargs="*", help="Hydra-style overrides, e.g. train.epochs=5")
    parser.add_argument("--trial", type=int, default=None, help="index of the trial in the sweep's expansion")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (same as run.device=…)")
    parser.add_argument("--backend", default=None, help="rgflow.backend tag (default: single, or slurm/local for a sweep)")
    parser.add_argument("--cfg", action="store_true", help="print the resolved config (YAML) and exit; creates nothing")
    parser.add_argument("--evaluate", action="store_true",
                        help="with --trial: run the sweep's evaluations after the trial finished (jobs.evaluate)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    if not logging.getLogger().handlers:
        console = logging.StreamHandler(sys.stderr)
        console.setLevel(logging.WARNING)
        console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(console)
    from jobs.sweep_spec import load_trial

    overrides = list(args.overrides) + ([f"run.device={args.device}"] if args.device else [])
    try:
        sweep, config = load_trial(args.path, overrides, args.trial)
        if args.cfg:
            print(to_yaml(config), end="", flush=True)
            return ExitCode.FINISHED
        if sweep is not None:
            parent, experiment = _sweep_parent(config, sweep)
    except (BadInput, LibraryConfigError) as err:  # jobs.config.ConfigError is a LibraryConfigError
        print(f"error: {_one_line(err)}", file=sys.stderr, flush=True)
        return getattr(err, "exit_code", ExitCode.BAD_INPUT)
    if sweep is None:
        return run_trial(config, backend=args.backend or SINGLE).exit_code
    backend = args.backend or ("slurm" if os.environ.get("SLURM_JOB_ID") else "local")
    outcome = run_trial(config, sweep=sweep.name, sweep_id=sweep.sweep_id, trial_index=args.trial,
                        parent_run_id=parent, experiment_id=experiment, backend=backend,
                        sweep_params=sweep_parent_params(sweep), run_name=trial_run_name(sweep, args.trial))
    if args.evaluate and outcome.exit_code is ExitCode.FINISHED and sweep.evaluation.selected:
        from jobs.attempt import evaluate_trial
        from jobs.tracking import resolve_tracking_uri

        uri = resolve_tracking_uri(config.tracking.resolved_uri) if config.tracking.enabled else None
        error = evaluate_trial(config, outcome.run_dir, uri, tuple(sweep.evaluation.selected))
        if error:
            print(f"[{args.trial}:{outcome.trial_id}] evaluation failed: {error}", flush=True)
    if parent is not None and outcome.exit_code is not ExitCode.LOCKED:
        _close_bare_sweep(config, sweep, parent, experiment)
    return outcome.exit_code


def sweep_parent_params(sweep) -> dict[str, Any]:
    """The params of a sweep's parent run (``jobs.sweep`` adds the resources); ``sweep.trials``: the
    trials it will have (a searcher sweep's budget)."""
    trials = sweep.search.budget if getattr(sweep, "search", None) else len(sweep.trials)
    return {"sweep": {"path": str(Path(sweep.path).resolve()), "trials": trials,
                      "varying": ",".join(sweep.varying_keys) or "-"}}


def _sweep_parent(config: TrialConfig, sweep) -> tuple[str | None, str | None]:
    """The sweep's experiment and parent run (created if this trial runs before any launcher did);
    ``(None, None)`` without tracking or while the store is unreachable (the trial then starts
    offline and its run finds them later)."""
    if not config.tracking.enabled:
        return None, None
    from jobs.tracking import ensure_experiment, ensure_sweep_run, resolve_tracking_uri
    from jobs.tracking.store import is_transient

    uri = resolve_tracking_uri(config.tracking.resolved_uri)
    try:
        experiment = ensure_experiment(uri, sweep.name, timeout_s=10.0)
        parent = ensure_sweep_run(uri, experiment, sweep.name, sweep.sweep_id, sweep_parent_params(sweep),
                                  timeout_s=10.0, description=sweep.description)
    except Exception as err:  # noqa: BLE001 - one line instead of a traceback
        if is_transient(err):
            return None, None
        raise BadInput(f"tracking store {uri}: {_one_line(err)}") from None
    return parent, experiment


def _close_bare_sweep(config: TrialConfig, sweep, parent: str, experiment: str) -> None:
    """End the parent run of a sweep launched without ``jobs.sweep`` (``sbatch --array
    slurm/train.sh``: no sweep state, no driver) once its last trial has ended, with the sweep's
    aggregates as its metrics (:func:`jobs.tracking.store.close_sweep_run`)."""
    from jobs.attempt import sweep_end_state
    from jobs.sweep_state import state_path
    from jobs.tracking import find_trial_runs, resolve_tracking_uri
    from jobs.tracking.store import close_sweep_run, is_transient

    if state_path(Path(config.run.out_dir).resolve() / sweep.name).exists():
        return  # launched by jobs.sweep: its driver or status closes the parent run
    uri = resolve_tracking_uri(config.tracking.resolved_uri)
    try:
        runs = find_trial_runs(uri, experiment, trial_ids=[t.trial_id for t in sweep.trials])
        if len(runs) == len(sweep.trials) and all(r.status != "RUNNING" for r in runs.values()):
            end_state, reason = sweep_end_state(sweep.trials, runs)
            close_sweep_run(uri, parent, len(sweep.trials), runs, end_state, reason)
    except Exception as err:  # noqa: BLE001 - the trial's own outcome stands; status closes it later
        if not is_transient(err):
            raise


if __name__ == "__main__":
    sys.exit(main())
