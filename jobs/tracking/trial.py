"""The MLflow run of one trial: open or reopen it, log without blocking training, end it truly.

Design (see also ``spool.py`` and ``record.py``):

* The training thread never talks to the store. ``log_metrics`` appends to the run folder's spool
  (≈20 µs median for 10 metrics: ``bench/tracking_bench.py``); ``set_tags``/``log_artifact``/
  ``log_text``/``log_params`` update ``tracking.json``. A daemon thread pushes the spool in ``log_batch`` calls of ≤ 1000 metrics every ``flush_interval_s`` (2 s), then
  tags, params, artifacts and — after ``end`` — the final status. ``flush``/``end`` push synchronously.
* The store unreachable (connection refused, timeouts, 5xx, locked sqlite): nothing is lost — the
  spool and ``tracking.json`` keep everything; the flusher retries with backoff (≤ 10 s apart), and
  ``flush``/``end``/the next attempt/``python -m jobs.tracking replay RUN_DIR`` replay the rest.
* Unreachable at ``open``: retried with backoff for ``connect_timeout_s``; then the trial goes on
  **offline** (``run_id`` is None) and the run is created — with every spooled metric — as soon as
  the store answers. A permanent refusal (missing experiment or run, permissions) raises
  :class:`TrackingError` at once: that is a configuration error, not an outage.
* ``end(state)`` is idempotent. If the store is still unreachable at the end, the end state waits
  in ``tracking.json`` and the run stays RUNNING in the store until a replay delivers it: the
  warning says the command.
* The parent run is always set as the explicit ``mlflow.parentRunId`` tag: ``MLFLOW_RUN_ID`` in the
  environment plays no part (``MlflowClient`` only, never ``mlflow.start_run``).
* Reopening (``existing_run_id``, or the run recorded in ``run_dir/tracking.json``) sets the run
  back to RUNNING, bumps ``rgflow.attempt`` and clears the previous ``rgflow.failure_reason``.
  Steps a resumed trainer repeats (at or below a key's highest spooled step) are dropped.
* System metrics (``open_trial_run(system_metrics_interval_s=…)``): MLflow's own monitor
  (:class:`SystemMetrics`) samples in a third daemon thread into the same spool, so an outage costs
  it nothing either; ``end`` stops it before the final push, so an ended run receives no more.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from .env import environment_tags
from .pyfunc_io import MLMODEL_FILE, log_logged_model, logged_model_name
from .record import TrackingRecord
from .spool import MetricSpool
from .tags import FAILURES_TAG, RUN_NAME_TAG, USER_TAG
from .store import (
    ATTEMPT_TAG, END_STATES, MAX_METRICS_PER_BATCH, PARENT_TAG, REASON_TAG, ROLE_TAG, RUN_DIR_TAG, STATE_TAG,
    TRIAL_ID_TAG, TrackingError, filter_literal, flatten_params, get_client, is_transient, log_missing_params, log_tags,
    resolve_tracking_uri, retry_transient,
)

log = logging.getLogger(__name__)
_MAX_RETRY_DELAY_S = 10.0
_TEXT_DIR = ".tracking-artifacts"
_SYSTEM_PREFIX = "system/"
_SYSTEM_JOIN_S = 2.0  # how long end() waits for a sample being taken (psutil/NVML calls) to finish
_FIRST_SAMPLE_S = 1.0  # the first system metrics sample, after at most this long (then every interval)


def _now_ms() -> int:
    return int(time.time() * 1000)


class _FirstOfEach(logging.Filter):
    """Lets each distinct message through once."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self._seen:
            return False
        self._seen.add(message)
        return True


@functools.cache
def _quiet_system_metrics_logs() -> None:
    """MLflow's monitor logs INFO lines on stderr when it starts and when it finds no GPU, and its
    GPU samplers warn at every sample whose reading fails (e.g. one not supported on the device):
    keep the INFO lines off the trainer's console and let each distinct warning through once."""
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    for name in ("mlflow.system_metrics.metrics.gpu_monitor", "mlflow.system_metrics.metrics.rocm_monitor"):
        logging.getLogger(name).addFilter(_FirstOfEach())


class SystemMetrics(SystemMetricsMonitor):
    """MLflow's system-metrics monitor — its samplers (CPU %, system memory MB and %, disk MB and %,
    network MB since the start; GPU utilisation %, memory MB and %, power W and % per GPU through
    ``pynvml`` when present), its ``system/<name>`` keys and its step counter — writing each sample
    into the trial's spool instead of calling the store itself.

    One sample ``min(interval_s, 1 s)`` after the start, then every ``interval_s`` seconds, and one
    more when :meth:`finish` stops it (CPU %: the mean since the previous sample; the rest: the
    value at the sample), so that a trial shorter than the interval has its start and end, at steps 0, 1, 2, … — continuing after the highest ``system/…`` step already in
    the spool, so a resumed attempt goes on where the last one stopped (MLflow's own monitor starts
    again at 0 unless asked to read the run from the store). ``interval_s`` overrides
    ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``; ``MLFLOW_SYSTEM_METRICS_NODE_ID`` still names the
    node (``system/<node>/<name>``). A sampler that raises stops the monitor with one warning.
    """

    def __init__(self, spool: MetricSpool, interval_s: float, uri: str, trial_id: str):
        _quiet_system_metrics_logs()
        super().__init__(None, sampling_interval=interval_s, tracking_uri=uri)
        self.sampling_interval = interval_s
        self._spool, self._trial_id = spool, trial_id
        self._publish_lock = threading.Lock()  # finish() waits for a sample being spooled
        steps = [step for key, step in spool.high_water.items() if key.startswith(_SYSTEM_PREFIX)]
        self._logging_step = max(steps, default=-1) + 1

    def monitor(self) -> None:
        try:
            with self._publish_lock:
                self.collect_metrics()  # primes psutil's CPU counters: the first sample covers its wait
                for sampler in self.monitors:
                    sampler.clear_metrics()
            wait = min(self.sampling_interval, _FIRST_SAMPLE_S)  # a trial shorter than the interval has one too
            while not self._shutdown_event.wait(wait):
                self._sample()
                wait = self.sampling_interval
        except Exception as exc:  # noqa: BLE001 - system metrics never stop the training
            log.warning("trial %s: system metrics stopped: %s: %s", self._trial_id, type(exc).__name__, exc)

    def _sample(self) -> None:
        """Take one sample and spool it (unless stopped), holding the lock that :meth:`finish` takes."""
        with self._publish_lock:
            if not self._shutdown_event.is_set():
                self.collect_metrics()
                self.publish_metrics(self.aggregate_metrics())

    def publish_metrics(self, metrics: Mapping[str, float]) -> None:
        prefix = self._metrics_prefix + (f"{self.node_id}/" if self.node_id else "")
        self._spool.append({prefix + k: v for k, v in metrics.items()}, self._logging_step, _now_ms())
        self._logging_step += 1
        for sampler in self.monitors:
            sampler.clear_metrics()

    def finish(self, timeout_s: float = _SYSTEM_JOIN_S) -> None:
        """Take a last sample (the end of the trial), then stop sampling: once this returns nothing
        more is spooled. Waits ≤ ``timeout_s`` for the thread (it only ends late if a sampler hangs;
        it is a daemon and exits after that sample)."""
        if self._process is not None:
            try:
                self._sample()
            except Exception as exc:  # noqa: BLE001 - system metrics never stop the training
                log.warning("trial %s: no last system metrics sample: %s: %s", self._trial_id, type(exc).__name__, exc)
        with self._publish_lock:
            self._shutdown_event.set()
        if self._process is not None:
            self._process.join(timeout_s)
            self._process = None


class TrialRun:
    """One trial's MLflow run. Create with :func:`open_trial_run`; always finish with :meth:`end`.

    Thread-safety: ``log_metrics``/``set_tags``/``log_params``/``log_artifact``/``log_text`` are for the training
    thread and never block on the network; ``flush``/``end`` may be called from any thread.
    """

    def __init__(self, uri: str, run_dir: Path, record: TrackingRecord, spool: MetricSpool, mode: str,
                 flush_interval_s: float = 2.0):
        self.uri, self.run_dir, self._record, self._spool = uri, run_dir, record, spool
        self._mode = mode  # "create" | "reopen" | "sync": what connecting to the store does
        self._client = get_client(uri)
        self._interval = flush_interval_s
        self._store_lock = threading.RLock()  # serialises all traffic with the store
        self._record_lock = threading.RLock()  # guards the record (mutated by both threads)
        self._dirty_tags = dict(record.tags)
        self._dirty_params: dict[str, str] = {}
        self._connected = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._system: SystemMetrics | None = None
        self._ended = False
        self._end_ok: bool | None = None
        self.error: BaseException | None = None  #: the last failure talking to the store

    # ---- properties ------------------------------------------------------------------------
    @property
    def run_id(self) -> str | None:
        """The MLflow run id, or None while the run could not be created yet (offline)."""
        return self._record.run_id

    @property
    def attempt(self) -> int:
        return self._record.attempt

    @property
    def online(self) -> bool:
        """True when the last exchange with the store succeeded."""
        return self._connected and self.error is None

    @property
    def dropped(self) -> int:
        """How many (key, step) values were refused as repeats of already spooled steps."""
        return self._spool.dropped

    def pending_metrics(self) -> int:
        """Spooled metric values not yet acknowledged by the store."""
        return self._spool.pending_count()

    # ---- training-thread API ---------------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue ``metrics`` at optimizer ``step`` (spooled at once, sent by the flusher)."""
        if self._ended:
            raise RuntimeError(f"run {self.run_id}: log_metrics after end()")
        self._spool.append(metrics, step, _now_ms())

    def sync(self) -> None:
        """fsync the metric spool: every metric logged so far survives a crash or power loss
        (the trainer calls it before each checkpoint, so no checkpoint is newer than the spool)."""
        self._spool.sync()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Queue tags (values ``str()``-ed); sent by the flusher."""
        with self._record_lock:
            for key, value in tags.items():
                self._record.tags[key] = self._dirty_tags[key] = str(value)
            self._record.save(self.run_dir)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Queue params known only once training has started (e.g. ``model.num_params``; nested
        mappings are flattened with dotted keys); sent by the flusher. MLflow keeps a param's first
        value: a key the run already has with another value is kept and reported, as at open."""
        flat = flatten_params(params)
        with self._record_lock:
            self._record.params.update(flat)
            self._dirty_params.update(flat)
            self._record.save(self.run_dir)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Queue the upload of file ``path`` into the run's ``artifact_path`` folder.

        The file must still exist when the flusher uploads it (keep it in the run folder). An MLflow
        model's ``MLmodel`` (queue it after the model's other files) also makes its local folder the
        run's LoggedModel ``rgflow-<run name>`` (:func:`jobs.tracking.pyfunc_io.log_logged_model`),
        before it is uploaded itself: ``runs:/<run id>/<artifact_path>`` and ``models:/<model id>``
        then load it.
        """
        local = Path(path).resolve()
        if not local.exists():
            raise FileNotFoundError(f"artifact {local} does not exist")
        with self._record_lock:
            self._record.pending_artifacts.append([str(local), artifact_path])
            self._record.save(self.run_dir)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Queue ``text`` as artifact ``artifact_file`` (a run-relative posix path, e.g. ``config.yaml``);
        the text is first written under ``run_dir/.tracking-artifacts/``."""
        relative = Path(artifact_file)
        if relative.is_absolute() or ".." in relative.parts or not relative.name:
            raise ValueError(f"artifact_file={artifact_file!r}: must be a relative path inside the run, e.g. 'eval/x.txt'")
        local = self.run_dir / _TEXT_DIR / relative
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(text)
        folder = str(Path(artifact_file).parent)
        self.log_artifact(local, None if folder == "." else folder)

    # ---- delivery ----------------------------------------------------------------------------
    def flush(self, timeout_s: float = 30.0) -> bool:
        """Push everything queued now; True when the store has all of it. Retries for ``timeout_s``."""
        return self._drain(time.monotonic() + timeout_s)

    def end(self, state: str, reason: str | None = None, timeout_s: float = 60.0) -> bool:
        """End the run: ``state`` ∈ finished|failed|preempted|killed → MLflow FINISHED/FAILED/
        KILLED/KILLED, tags ``rgflow.state`` and (with ``reason``) ``rgflow.failure_reason``.

        Delivers every pending metric first. Safe to call twice (the second call returns the first
        call's result). Returns False when the store could not be reached within ``timeout_s``:
        then the end state waits in ``tracking.json`` for a replay.
        """
        if state not in END_STATES:
            raise ValueError(f"state={state!r}: must be one of {', '.join(END_STATES)}")
        if self._ended:
            return bool(self._end_ok)
        self._ended = True
        started = time.monotonic()
        self._stop.set()
        if self._system is not None:
            self._system.finish(min(_SYSTEM_JOIN_S, timeout_s))
        tags = {STATE_TAG: state} | ({REASON_TAG: reason} if reason else {})
        with self._record_lock:
            self.set_tags(tags)
            self._record.pending_end = {"state": state, "end_time": _now_ms()}
            self._record.save(self.run_dir)
        if not self._connected:  # offline the whole attempt: do not hold the trial's exit for long
            timeout_s = min(timeout_s, 10.0)
        deadline = started + timeout_s
        ok = self._drain(deadline)
        if self._thread is not None:
            self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._spool.close()
        if not ok:
            log.warning("trial %s: could not end run %s in %s (%s); metrics and end state are kept in %s — "
                        "deliver them with: python -m jobs.tracking replay %s", self._record.trial_id, self.run_id,
                        self.uri, self.error, self.run_dir, self.run_dir)
        self._end_ok = ok
        return ok

    def _drain(self, deadline: float) -> bool:
        delay = 0.5
        while True:
            if self._sync(deadline):
                return True
            if not is_transient(self.error) or time.monotonic() + delay > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, _MAX_RETRY_DELAY_S)

    def _start_system_metrics(self, interval_s: float) -> None:
        """Start :class:`SystemMetrics` (a failure to start is one warning: training goes on)."""
        try:
            self._system = SystemMetrics(self._spool, interval_s, self.uri, self._record.trial_id)
            self._system.start()
        except Exception as exc:  # noqa: BLE001 - system metrics never stop the training
            log.warning("trial %s: no system metrics: %s: %s", self._record.trial_id, type(exc).__name__, exc)

    def _start_flusher(self) -> None:
        self._thread = threading.Thread(target=self._flusher, name=f"tracking-{self._record.trial_id}", daemon=True)
        self._thread.start()

    def _flusher(self) -> None:
        delay = self._interval
        while not self._stop.wait(delay):
            ok = self._sync(None)
            delay = self._interval if ok else min(max(delay * 2, self._interval), _MAX_RETRY_DELAY_S)

    def _sync(self, deadline: float | None) -> bool:
        """Bring the store in line with the record and the spool. False on failure (kept in ``error``).

        With a ``deadline``, gives up if another thread's exchange (e.g. the flusher stuck on a hung
        server) holds the store past it.
        """
        wait = -1 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._store_lock.acquire(timeout=wait):
            self.error = self.error or TimeoutError("the tracking store did not answer in time")
            return False
        try:
            try:
                if not self._connected:
                    self._connect()
                self._push_tags()
                self._push_params()
                if not self._push_metrics(deadline):
                    return False
                self._push_artifacts()
                self._push_end()
            except Exception as exc:  # noqa: BLE001 - every failure is kept and retried or reported
                self._note_failure(exc)
                return False
            if self.error is not None:
                log.warning("trial %s: tracking store %s reachable again", self._record.trial_id, self.uri)
            self.error = None
            return True
        finally:
            self._store_lock.release()

    def _note_failure(self, exc: BaseException) -> None:
        first = self.error is None
        self.error = exc
        if not is_transient(exc):
            log.error("trial %s: tracking store %s refused an update (%s); data kept in %s",
                      self._record.trial_id, self.uri, exc, self.run_dir)
        elif first:
            log.warning("trial %s: tracking store %s unreachable (%s); spooling to %s",
                        self._record.trial_id, self.uri, str(exc).splitlines()[0][:200], self.run_dir)

    def _connect(self) -> None:
        """Create or reopen the run (per ``_mode``); log missing params and every tag."""
        rec, client = self._record, self._client
        self._resolve_place()
        if rec.run_id is None:
            rec.run_id = self._find_orphan()
        if rec.run_id is None:
            # mlflow.user at creation: the store fills its user column from it (else "unknown")
            essentials = {k: rec.tags[k] for k in (ROLE_TAG, TRIAL_ID_TAG, RUN_DIR_TAG, PARENT_TAG, USER_TAG)
                          if k in rec.tags}
            run = client.create_run(rec.experiment_id, tags=essentials, run_name=rec.run_name)
            with self._record_lock:
                rec.run_id = run.info.run_id
                rec.save(self.run_dir)
        else:
            run = client.get_run(rec.run_id)
            if run.info.lifecycle_stage == "deleted":
                raise TrackingError(f"run {rec.run_id} was deleted from {self.uri}; restore it or remove "
                                    f"{self.run_dir}/tracking.json to start a new run")
            if self._mode == "reopen":
                with self._record_lock:
                    rec.attempt = max(rec.attempt, int(run.data.tags.get(ATTEMPT_TAG, "0") or 0) + 1)
                    rec.tags[ATTEMPT_TAG] = self._dirty_tags[ATTEMPT_TAG] = str(rec.attempt)
                    rec.save(self.run_dir)
                if run.info.status != "RUNNING":
                    client.update_run(rec.run_id, status="RUNNING")
                if REASON_TAG in run.data.tags and REASON_TAG not in rec.tags:
                    client.delete_tag(rec.run_id, REASON_TAG)
        self._mode = "sync"
        with self._record_lock:
            params = dict(rec.params)
        log_missing_params(client, rec.run_id, params, run.data.params)
        with self._record_lock:
            self._dirty_tags = dict(rec.tags)
            for key, value in params.items():
                if self._dirty_params.get(key) == value:
                    del self._dirty_params[key]
        self._push_tags()
        self._connected = True

    def _resolve_place(self) -> None:
        """Find or create the experiment and parent run of a run that started offline."""
        from .store import ensure_experiment, ensure_sweep_run

        rec = self._record
        changed = False
        if not rec.experiment_id:
            rec.experiment_id = ensure_experiment(self.uri, rec.experiment_name, timeout_s=0.0)
            changed = True
        if rec.deferred_parent and not rec.parent_run_id:
            spec = rec.deferred_parent
            rec.parent_run_id = ensure_sweep_run(self.uri, rec.experiment_id, spec["name"], spec["sweep_id"],
                                                 spec["params"], timeout_s=0.0, description=spec.get("description"))
            with self._record_lock:
                rec.tags[PARENT_TAG] = self._dirty_tags[PARENT_TAG] = rec.parent_run_id
            changed = True
        if changed:
            with self._record_lock:
                rec.save(self.run_dir)

    def _find_orphan(self) -> str | None:
        """A run of this trial and run folder created by a process killed before it saved the id."""
        rec = self._record
        query = f"tags.`{TRIAL_ID_TAG}` = '{filter_literal(rec.trial_id)}'"
        for run in self._client.search_runs([rec.experiment_id], query, max_results=100):
            if run.data.tags.get(RUN_DIR_TAG) == str(self.run_dir):
                self._mode = "reopen"
                return run.info.run_id
        return None

    def _push_tags(self) -> None:
        with self._record_lock:
            tags = dict(self._dirty_tags)
        if tags:
            log_tags(self._client, self.run_id, tags)
        with self._record_lock:
            for key, value in tags.items():
                if self._dirty_tags.get(key) == value:
                    del self._dirty_tags[key]

    def _push_params(self) -> None:
        """Params queued by :meth:`log_params` since the run was connected: one ``get_run`` to
        see what the run has, then the missing ones (a differing value is kept and reported)."""
        with self._record_lock:
            params = dict(self._dirty_params)
        if not params:
            return
        existing = self._client.get_run(self.run_id).data.params
        log_missing_params(self._client, self.run_id, params, existing)
        with self._record_lock:
            for key, value in params.items():
                if self._dirty_params.get(key) == value:
                    del self._dirty_params[key]

    def _push_metrics(self, deadline: float | None) -> bool:
        while True:
            items, end = self._spool.pending(MAX_METRICS_PER_BATCH)
            if not items:
                return True
            metrics = [Metric(m.key, m.value, m.timestamp, m.step) for m in items]
            self._client.log_batch(self.run_id, metrics=metrics, synchronous=True)
            self._spool.acknowledge(end)
            if deadline is not None and time.monotonic() > deadline:
                return self._spool.pending_count() == 0

    def _push_artifacts(self) -> None:
        while True:
            with self._record_lock:
                if not self._record.pending_artifacts:
                    return
                local, folder = self._record.pending_artifacts[0]
            if Path(local).exists():
                if Path(local).name == MLMODEL_FILE and folder:  # an MLflow model's folder, complete
                    try:
                        log_logged_model(self._client, self._record.experiment_id, self.run_id, Path(local).parent,
                                         logged_model_name(self._record.run_name), self._record.params,
                                         {TRIAL_ID_TAG: self._record.trial_id})
                    except Exception as exc:  # noqa: BLE001 - an outage is retried; a refusal never blocks the run
                        if is_transient(exc):
                            raise
                        log.error("trial %s: the store refused the LoggedModel (%s); the model stays in the run's "
                                  "%s/ artifacts", self._record.trial_id, exc, folder)
                self._client.log_artifact(self.run_id, local, folder)
            else:
                log.error("trial %s: artifact %s vanished before upload; skipped", self._record.trial_id, local)
            with self._record_lock:
                self._record.pending_artifacts.pop(0)
                self._record.save(self.run_dir)

    def _push_end(self) -> None:
        with self._record_lock:
            pending = self._record.pending_end
        if pending:
            self._client.set_terminated(self.run_id, END_STATES[pending["state"]], pending["end_time"])
            with self._record_lock:
                self._record.pending_end = None
                self._record.save(self.run_dir)


def open_trial_run(
    uri: str | None,
    experiment_id: str | None,
    trial_id: str,
    run_name: str,
    parent_run_id: str | None,
    params: Mapping[str, Any],
    tags: Mapping[str, Any],
    run_dir: str | Path,
    existing_run_id: str | None = None,
    *,
    device: str | None = None,
    connect_timeout_s: float = 30.0,
    flush_interval_s: float = 2.0,
    experiment_name: str | None = None,
    deferred_parent: Mapping[str, Any] | None = None,
    system_metrics_interval_s: float | None = None,
) -> TrialRun:
    """Open the run of trial ``trial_id`` whose files live in ``run_dir`` and start its flusher.

    Reopens ``existing_run_id`` (e.g. from the checkpoint) or else the run recorded in
    ``run_dir/tracking.json`` for the same store, experiment and trial; otherwise creates a run
    (child of ``parent_run_id`` when given). ``params`` (nested config or flat) are flattened
    with dotted keys; tags are ``rgflow.role=trial``, ``rgflow.trial_id``, ``rgflow.run_dir``,
    ``rgflow.state=running``, ``rgflow.attempt``, ``mlflow.runName`` (``run_name``, also on a reopened
    run), :func:`environment_tags` (for ``device``; with MLflow's ``mlflow.source.*`` and
    ``mlflow.user``), then ``tags`` (which win). A spool left by a different run is moved aside
    (``metrics-spool.<old run id>.jsonl``), never replayed into this one.

    ``experiment_id`` None (the store was down when the trial started): the run folder's recorded
    experiment, or else experiment ``experiment_name``, found or created when the store answers;
    ``deferred_parent`` (``{"name", "sweep_id", "params"}``, optionally ``"description"``) likewise names the sweep's parent run
    when ``parent_run_id`` is None.

    ``system_metrics_interval_s``: sample MLflow's system metrics (:class:`SystemMetrics`) every so
    many seconds until :meth:`TrialRun.end`, online or offline alike; None: none.

    Raises :class:`TrackingError` when the store refuses (e.g. unknown experiment or run); an
    unreachable store is not an error (see the module docstring).
    """
    uri = resolve_tracking_uri(uri)
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    flat = flatten_params(params)
    previous = TrackingRecord.load(run_dir)
    if previous is not None and previous.tracking_uri == uri and previous.trial_id == trial_id:
        if experiment_id is None or not previous.experiment_id:  # one side started offline
            experiment_id = previous.experiment_id or experiment_id
            previous.experiment_id = experiment_id or ""
        parent_run_id = parent_run_id or previous.parent_run_id
    same = previous is not None and (previous.tracking_uri, previous.experiment_id, previous.trial_id) == (
        uri, experiment_id or "", trial_id)
    if existing_run_id and same and previous.run_id not in (None, existing_run_id):
        same = False
    spool = MetricSpool(run_dir)
    if not same and (previous is not None or spool.size() > 0):
        label = (previous.run_id if previous else None) or f"orphan-{_now_ms()}"
        log.warning("trial %s: %s holds tracking files of another run (%s); moved aside", trial_id, run_dir, label)
        spool.rotate(label)
        previous = None
    run_id = existing_run_id or (previous.run_id if previous else None)
    attempt = previous.attempt + 1 if previous else 1
    all_tags = {ROLE_TAG: "trial", TRIAL_ID_TAG: trial_id, RUN_DIR_TAG: str(run_dir), STATE_TAG: "running",
                ATTEMPT_TAG: str(attempt), RUN_NAME_TAG: run_name, **environment_tags(device)}
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    all_tags.update({k: str(v) for k, v in tags.items()})
    record = TrackingRecord(uri, experiment_id or "", trial_id, run_name, parent_run_id, run_id, attempt, flat,
                            all_tags, pending_artifacts=previous.pending_artifacts if previous else [],
                            experiment_name=experiment_name,
                            deferred_parent=None if parent_run_id else dict(deferred_parent or {}) or None)
    record.save(run_dir)
    reopen = run_id is not None or previous is not None
    trial = TrialRun(uri, run_dir, record, spool, "reopen" if reopen else "create", flush_interval_s)

    def connect() -> None:
        with trial._store_lock:
            trial._connect()

    try:
        retry_transient(connect, timeout_s=connect_timeout_s, what=f"open run of trial {trial_id}")
    except Exception as exc:
        if not is_transient(exc):
            spool.close()
            raise TrackingError(f"trial {trial_id}: tracking store {uri} refused the run: {exc}") from exc
        trial._note_failure(exc)
    trial._start_flusher()
    if system_metrics_interval_s is not None:
        trial._start_system_metrics(system_metrics_interval_s)
    return trial


def replay_run_dir(run_dir: str | Path, timeout_s: float = 60.0) -> bool:
    """Deliver what ``run_dir`` still holds for its run (spooled metrics, tags, artifacts, an end
    state) without changing the run's attempt or status otherwise. True when all is delivered."""
    run_dir = Path(run_dir).resolve()
    record = TrackingRecord.load(run_dir)
    if record is None:
        raise FileNotFoundError(f"{run_dir}/tracking.json not found: not a trial run folder")
    spool = MetricSpool(run_dir)
    trial = TrialRun(record.tracking_uri, run_dir, record, spool, "sync")
    try:
        return trial._drain(time.monotonic() + timeout_s)
    finally:
        spool.close()


def end_recorded_run(run_dir: str | Path, state: str, reason: str, failures: int, timeout_s: float = 15.0) -> bool:
    """End the run recorded in ``run_dir`` for an attempt that died without ending it: the end
    state, reason and failure count go into ``tracking.json`` first (so nothing is lost while the
    store is down), then are delivered. True when the store has them; False without a record."""
    run_dir = Path(run_dir).resolve()
    record = TrackingRecord.load(run_dir)
    if record is None:
        return False
    record.tags.update({STATE_TAG: state, REASON_TAG: reason, FAILURES_TAG: str(failures)})
    record.pending_end = {"state": state, "end_time": _now_ms()}
    record.save(run_dir)
    return replay_run_dir(run_dir, timeout_s=timeout_s)
