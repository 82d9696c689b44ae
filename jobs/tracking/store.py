"""Talking to the MLflow tracking store: experiments, the sweep's parent run, trial lookup.

Everything here uses :class:`mlflow.MlflowClient` directly — never the fluent ``mlflow.start_run``
global state, whose atexit hook closes a crashed run as FINISHED and whose ``MLFLOW_RUN_ID``
environment variable silently overrides the parent run.

The layout written and read here is the contract of ``docs/ARCHITECTURE.md`` ("MLflow layout");
its tag names live in ``tags.py``, :class:`RunSummary` in ``layout.py``, tracking URIs in ``uri.py``.

Code outside ``jobs/tracking/`` talks to MLflow only through the named operations here (find an
experiment, a run, a trial's run, the sweep's run; read a metric history or artifacts; log an
evaluation, a report, parent tags; count a failure; end or kill runs; close a sweep's run with its
summary; find reusable runs of other sweeps, link or delete a link run): it imports neither mlflow
nor :func:`get_client` (``tests/test_tracking_boundary.py``).
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException

from .layout import (
    END_STATES, SEARCH_PAGE, TERMINAL_STATUSES, RunSummary, filter_literal, keep_trial, run_summary, sweep_filter,
    trial_filter, wanted_ids,
)
# Re-exported: the layout and URI names were defined here before they moved to light modules.
from .layout import TrackingError  # noqa: F401
from .tags import (  # noqa: F401 - the tag names are re-exported for trial.py and older importers
    ATTEMPT_TAG, EVAL_PROTOCOL_TAG, EXPERIMENT_KIND_TAG, FAILURES_TAG, NOTE_TAG, PARENT_TAG, REASON_TAG,
    REUSED_FROM_EXPERIMENT_TAG, REUSED_FROM_TAG, ROLE_TAG, RUN_DIR_TAG, RUN_NAME_TAG, SOURCE_GIT_COMMIT_TAG,
    SOURCE_NAME_TAG, SOURCE_TYPE_TAG, STATE_TAG, SWEEP_ID_TAG, SWEEP_TAG, TRIAL_ID_TAG, USER_TAG,
)
from .env import user_name
from .uri import resolve_tracking_uri, sqlite_path  # noqa: F401

log = logging.getLogger(__name__)

MAX_PARAMS_TAGS_PER_BATCH = 100  # MLflow's log_batch limits
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE_CHARS = 6000
MAX_TAG_VALUE_CHARS = 8000

# Bounded HTTP retries for this process unless the user chose otherwise: MLflow's defaults retry a
# dead server for minutes inside one call, while our own loops retry with backoff and keep a spool.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",  # > the ≈16 s first-request warm-up of a fresh server
}


_SETTLE_S = 1.0


@functools.lru_cache(maxsize=16)
def get_client(uri: str) -> MlflowClient:
    """A cached client for ``uri`` (opening a sqlite store costs ≈1 s: do it once per process)."""
    for name, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    return MlflowClient(tracking_uri=uri)


def is_transient(exc: BaseException) -> bool:
    """True for failures that a later retry may fix: unreachable server, timeouts, 5xx, 429, locks.

    MLflow wraps connection errors and exhausted HTTP retries into ``MlflowException`` with
    ``INTERNAL_ERROR`` (HTTP 500); a locked sqlite database is ``TEMPORARILY_UNAVAILABLE`` (503).
    Client errors (4xx: bad value, missing run, permission) are permanent.
    """
    if isinstance(exc, MlflowException):
        code = exc.get_http_status_code()
        return code >= 500 or code == 429
    return isinstance(exc, OSError)  # includes requests' errors, ConnectionError and TimeoutError


def retry_transient(fn, *, timeout_s: float, what: str, first_delay_s: float = 1.0):
    """Call ``fn()`` until it succeeds, retrying transient errors with exponential backoff.

    Raises the last transient error once ``timeout_s`` has passed, or a permanent error at once.
    """
    deadline = time.monotonic() + timeout_s
    delay = first_delay_s
    while True:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified just below
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("%s: tracking store unreachable (%s); retrying in %.0f s", what, _short(exc), delay)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested config mapping into MLflow params with dotted keys.

    ``{"train": {"batch_size": 64}, "model": {"nlayers": (8, 6)}}`` →
    ``{"train.batch_size": "64", "model.nlayers": "[8, 6]"}``. Lists and tuples become JSON,
    other leaves ``str(value)``. A value longer than MLflow's 6000-character limit is an error.
    """
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
            continue
        text = json.dumps(list(value)) if isinstance(value, (list, tuple)) else str(value)
        if len(text) > MAX_PARAM_VALUE_CHARS:
            raise ValueError(f"param {name!r} is {len(text)} characters long; MLflow allows {MAX_PARAM_VALUE_CHARS}")
        flat[name] = text
    return flat


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def log_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    """Set ``tags`` on a run in batches of 100 (values cut to MLflow's 8000 characters)."""
    entries = [RunTag(k, str(v)[:MAX_TAG_VALUE_CHARS]) for k, v in tags.items()]
    for chunk in _chunks(entries, MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, tags=chunk, synchronous=True)


def log_missing_params(client: MlflowClient, run_id: str, params: Mapping[str, str], existing: Mapping[str, str]) -> None:
    """Log the params the run does not have yet; MLflow forbids changing a logged param's value,
    so a differing value (e.g. ``run.device`` after a resume elsewhere) is kept and reported."""
    for key in sorted(k for k in params if k in existing and existing[k] != params[k]):
        log.warning("run %s: param %s stays %r (this attempt has %r)", run_id, key, existing[key], params[key])
    entries = [Param(k, v) for k, v in params.items() if k not in existing]
    for chunk in _chunks(entries, MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=chunk, synchronous=True)


def ensure_experiment(uri: str, name: str, *, timeout_s: float = 60.0) -> str:
    """The id of experiment ``name``, created if missing (restored if deleted). Transient errors are
    retried for ``timeout_s`` seconds (0: one try).

    Race-safe: when two processes create it at once, the loser sees ``RESOURCE_ALREADY_EXISTS``
    and reads the winner's id. New experiments are tagged as model training
    (``mlflow.experimentKind``). MLflow 3.17's UI does not read that tag yet: its sidebar switch
    "GenAI | Model training" decides, defaulting to GenAI; open an experiment on its runs with
    ``#/experiments/<id>?workflowType=machine_learning`` (mlflow/README.md).

    In a sqlite store a new experiment keeps its artifacts beside the database file, in
    ``<db folder>/mlartifacts/<name>/``: MLflow's default would be ``./mlruns`` of whichever
    process created the experiment. Other stores (a server, PostgreSQL) use their own root.
    """
    client = get_client(uri)
    location = None
    db = sqlite_path(uri)
    if db is not None:
        folder = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).lstrip(".") or "_"
        location = str(db.resolve().parent / "mlartifacts" / folder)

    def attempt() -> str:
        found = client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                client.restore_experiment(found.experiment_id)
            return found.experiment_id
        try:
            return client.create_experiment(name, artifact_location=location,
                                            tags={EXPERIMENT_KIND_TAG: "custom_model_development"})
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return client.get_experiment_by_name(name).experiment_id

    return retry_transient(attempt, timeout_s=timeout_s, what=f"experiment {name!r}")


def ensure_sweep_run(uri: str, experiment_id: str, sweep_name: str, sweep_id: str, params: Mapping[str, Any], *,
                     timeout_s: float = 60.0, description: str | None = None) -> str:
    """The run id of the sweep's parent run (tags ``rgflow.role=sweep``, ``rgflow.sweep_id``),
    created if missing, and set to RUNNING (the sweep launcher ends it with :func:`end_run`).

    ``params`` (nested or flat) are logged where missing. A non-empty ``description`` (the sweep
    file's) becomes the parent run's note and the experiment's description (MLflow's
    ``mlflow.note.content``, run tag and experiment tag), set on every call so that an edited
    description shows on the next launch. If launchers create it at once, each
    waits ``_SETTLE_S`` after creating, then all keep the oldest run (start time, then id) and the
    others delete their own: race-safe when the concurrent creations commit within that second.
    Transient errors are retried for ``timeout_s`` seconds (0: one try).
    """
    client = get_client(uri)
    flat = flatten_params(params)
    query = f"tags.`{ROLE_TAG}` = 'sweep' and tags.`{SWEEP_ID_TAG}` = '{filter_literal(sweep_id)}'"

    def search() -> list:
        runs = client.search_runs([experiment_id], query, ViewType.ACTIVE_ONLY, max_results=100)
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    def attempt() -> str:
        runs = search()
        if not runs:
            tags = {ROLE_TAG: "sweep", SWEEP_TAG: sweep_name, SWEEP_ID_TAG: sweep_id, STATE_TAG: "running",
                    USER_TAG: user_name()}
            mine = client.create_run(experiment_id, tags=tags, run_name=sweep_name).info.run_id
            time.sleep(_SETTLE_S)  # let a concurrent creator's run become visible before choosing
            runs = search()
            if runs and runs[0].info.run_id != mine:
                client.delete_run(mine)
        run = runs[0]
        if run.info.status != "RUNNING":
            client.update_run(run.info.run_id, status="RUNNING")
            log_tags(client, run.info.run_id, {STATE_TAG: "running"})
        log_missing_params(client, run.info.run_id, flat, run.data.params)
        if description:
            if run.data.tags.get(NOTE_TAG) != description:
                log_tags(client, run.info.run_id, {NOTE_TAG: description})
            client.set_experiment_tag(experiment_id, NOTE_TAG, description[:MAX_TAG_VALUE_CHARS])
        return run.info.run_id

    return retry_transient(attempt, timeout_s=timeout_s, what=f"sweep run {sweep_name!r}")


def experiment_name(uri: str, experiment_id: str) -> str:
    """The name of experiment ``experiment_id`` (one ``get_experiment``, transient errors retried for
    30 s; a missing experiment raises ``MlflowException``)."""
    client = get_client(uri)
    return retry_transient(lambda: client.get_experiment(experiment_id).name, timeout_s=30.0,
                           what=f"experiment {experiment_id}")


#: The metrics :func:`log_sweep_summary` logs on a sweep's parent run (step 0, one value per close),
#: besides ``best_test_bpd/<setting>`` per setting.
SWEEP_SUMMARY_METRICS = ("trials", "trials_finished", "trials_pruned", "trials_failed", "best_val_bpd", "best_test_bpd")


def setting_label(run: RunSummary) -> str:
    """The setting a trial run belongs to: its run name without the seed part (``bs64-laplace-s2``
    → ``bs64-laplace``; see ``jobs.train.trial_run_names``), or its trial id when unnamed."""
    name = run.tags.get(RUN_NAME_TAG) or run.trial_id
    return re.sub(r"(^|-)s\d+(?=-t\d+$|$)", "", name) or name


def sweep_summary(uri: str, trials: int, runs: Mapping[str, RunSummary]) -> dict[str, float]:
    """The aggregates of a sweep from its trial runs (``runs``: trial id → :class:`RunSummary`) and
    its number of ``trials``: ``trials``, ``trials_finished``, ``trials_pruned`` and ``trials_failed``
    (runs FINISHED, FINISHED with ``rgflow.state=pruned``, FAILED), ``best_val_bpd`` (bits/dim: the
    lowest validation BPD any trial logged, over each run's whole ``val_bpd`` history — one
    ``get_metric_history`` per run), ``best_test_bpd`` (bits/dim: the lowest latest ``test_bpd`` of
    the evaluated trials) and ``best_test_bpd/<setting>`` (the same per :func:`setting_label`, i.e.
    over the seeds of one setting). A BPD without any value is left out."""
    pruned = [r for r in runs.values() if r.status == "FINISHED" and r.state == "pruned"]
    summary: dict[str, float] = {
        "trials": float(trials),
        "trials_finished": float(sum(r.status == "FINISHED" for r in runs.values()) - len(pruned)),
        "trials_pruned": float(len(pruned)),
        "trials_failed": float(sum(r.status == "FAILED" for r in runs.values())),
    }
    vals = []
    for run in runs.values():
        if "val_bpd" not in run.metrics:
            continue
        history = [v for _, _, v in read_metric_history(uri, run.run_id, "val_bpd") if math.isfinite(v)]
        vals += history or ([run.metrics["val_bpd"]] if math.isfinite(run.metrics["val_bpd"]) else [])
    tests = [r.metrics["test_bpd"] for r in runs.values() if math.isfinite(r.metrics.get("test_bpd", math.nan))]
    if vals:
        summary["best_val_bpd"] = float(min(vals))
    if tests:
        summary["best_test_bpd"] = float(min(tests))
    for run in runs.values():
        value = run.metrics.get("test_bpd", math.nan)
        key = f"best_test_bpd/{setting_label(run)}"
        if math.isfinite(value) and run.state != "pruned" and value < summary.get(key, math.inf):
            summary[key] = float(value)
    return summary


def log_sweep_summary(uri: str, parent_run_id: str, trials: int, runs: Mapping[str, RunSummary]) -> dict[str, float]:
    """Log :func:`sweep_summary` as metrics of the sweep's parent run (step 0, now; the latest
    close wins in MLflow's view) in one ``log_batch``; returns them. Transient errors retried for 60 s."""
    summary = sweep_summary(uri, trials, runs)
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in summary.items()]
    retry_transient(lambda: get_client(uri).log_batch(parent_run_id, metrics=metrics, synchronous=True),
                    timeout_s=60.0, what=f"summary of sweep run {parent_run_id}")
    return summary


def close_sweep_run(uri: str, parent_run_id: str, trials: int, runs: Mapping[str, RunSummary], state: str,
                    reason: str | None = None) -> dict[str, float]:
    """Close a sweep's parent run: :func:`log_sweep_summary` of its ``trials`` and trial ``runs``,
    then :func:`end_run` in ``state`` with ``reason``; returns the summary. Whoever closes the parent
    (the launcher, ``jobs.sweep status``, the last task of a bare ``sbatch --array`` sweep) calls this."""
    summary = log_sweep_summary(uri, parent_run_id, trials, runs)
    end_run(uri, parent_run_id, state, reason)
    return summary


def find_trial_runs(
    uri: str, experiment_id: str, parent_run_id: str | None = None, trial_ids: Iterable[str] | None = None
) -> dict[str, RunSummary]:
    """Trial runs of an experiment (optionally of one parent run), keyed by ``rgflow.trial_id``.

    One search query, paged by 1000. If a trial has several runs, the most recently started wins.
    ``trial_ids`` restricts the result (filtered client-side).
    """
    client = get_client(uri)
    query = trial_filter(parent_run_id)
    wanted = wanted_ids(trial_ids)
    found: dict[str, RunSummary] = {}
    token = None
    while True:
        page = retry_transient(
            lambda: client.search_runs(
                [experiment_id], query, ViewType.ACTIVE_ONLY, max_results=SEARCH_PAGE,
                order_by=["attributes.start_time DESC"], page_token=token,
            ),
            timeout_s=60.0, what="search trial runs",
        )
        for run in page:
            trial_id = run.data.tags.get(TRIAL_ID_TAG, "")
            if keep_trial(found, trial_id, wanted):
                found[trial_id] = _summary(run)
        token = page.token
        if not token:
            return found


def end_run(uri: str, run_id: str, state: str, reason: str | None = None) -> None:
    """Terminate a run in its true state: ``state`` ∈ finished|failed|preempted|killed sets the
    MLflow status (FINISHED/FAILED/KILLED/KILLED), ``rgflow.state`` and, with a reason,
    ``rgflow.failure_reason`` (one line). The one way to close or reap a run from outside its
    process: the sweep launcher ends its parent run, ``jobs.sweep cancel`` and the backends a trial's.
    Any current status is overwritten; transient errors retried for 60 s."""
    if state not in END_STATES:
        raise ValueError(f"state={state!r}: must be one of {', '.join(END_STATES)}")
    client = get_client(uri)
    tags = {STATE_TAG: state} | ({REASON_TAG: reason} if reason else {})

    def attempt() -> None:
        log_tags(client, run_id, tags)
        client.set_terminated(run_id, END_STATES[state])

    retry_transient(attempt, timeout_s=60.0, what=f"end run {run_id}")


def mark_killed(uri: str, run_ids: Iterable[str], reason: str) -> list[str]:
    """For ``jobs.sweep cancel``: mark every run that is not already terminal as KILLED with
    ``rgflow.state=killed`` and ``rgflow.failure_reason=reason``. Returns the ids changed."""
    client = get_client(uri)
    changed = []
    for run_id in run_ids:
        status = retry_transient(lambda: client.get_run(run_id).info.status, timeout_s=60.0, what=f"run {run_id}")
        if status in TERMINAL_STATUSES:
            continue
        end_run(uri, run_id, "killed", reason)
        changed.append(run_id)
    return changed



# ----------------------------------------------------------------------------------------------
# Named operations for the code outside jobs/tracking/ (sweep launcher, backends, evaluate, report)
# ----------------------------------------------------------------------------------------------

def _summary(run) -> RunSummary:
    """A :class:`RunSummary` of an ``mlflow.entities.Run``."""
    return run_summary(run.info.run_id, run.info.status, run.info.start_time, run.info.end_time, run.data.tags,
                       run.data.params, run.data.metrics)


def _is_missing(exc: MlflowException) -> bool:
    return exc.get_http_status_code() == 404 or "not found" in str(exc).lower()


def find_experiment(uri: str, name: str) -> str | None:
    """The id of experiment ``name`` at ``uri``, or None if there is none (nothing is created).

    One ``get_experiment_by_name`` call, not retried. A deleted experiment still answers its id, as
    MLflow returns it (:func:`jobs.tracking.fast_read.experiment_id` treats it as missing).
    """
    found = get_client(uri).get_experiment_by_name(name)
    return found.experiment_id if found is not None else None


def find_run(uri: str, run_id: str) -> RunSummary | None:
    """Run ``run_id`` (any experiment, any status) as a :class:`RunSummary` — tags, params, the
    latest value of each metric — or None if the store has no such run. One ``get_run``, not retried;
    other errors (store unreachable, permissions) are raised."""
    try:
        run = get_client(uri).get_run(run_id)
    except MlflowException as exc:
        if _is_missing(exc):
            return None
        raise
    return _summary(run)


def _experiment_ids(client: MlflowClient) -> list[str]:
    """The ids of every active experiment (the pages of ``search_experiments``)."""
    ids, token = [], None
    while True:
        page = client.search_experiments(page_token=token)
        ids += [e.experiment_id for e in page]
        token = page.token
        if not token:
            return ids


def find_run_by_trial_id(uri: str, trial_id: str) -> RunSummary | None:
    """The most recently started active run tagged ``rgflow.trial_id = trial_id`` in any active
    experiment at ``uri``; None if there is none. Cost: the pages of ``search_experiments`` plus one
    ``search_runs`` (``max_results=1``), not retried."""
    client = get_client(uri)
    ids = _experiment_ids(client)
    if not ids:
        return None
    runs = client.search_runs(ids, f"tags.`{TRIAL_ID_TAG}` = '{filter_literal(trial_id)}'", ViewType.ACTIVE_ONLY,
                              max_results=1, order_by=["attributes.start_time DESC"])
    return _summary(runs[0]) if runs else None


# ----------------------------------------------------------------------------------------------
# Reuse across sweeps (jobs.reuse): finished trial runs of other experiments, and link runs
# ----------------------------------------------------------------------------------------------

#: MLflow's standard tags a link run copies from its original (the code and user that trained it).
_STANDARD_TAGS = (SOURCE_GIT_COMMIT_TAG, SOURCE_NAME_TAG, SOURCE_TYPE_TAG, USER_TAG)
#: Metrics a link run does not copy: system metrics describe the machine of the original's attempts.
_NOT_COPIED_METRICS = "system/"


def find_reusable_runs(uri: str, experiment_id: str, trial_ids: Iterable[str], *,
                       evaluated: bool) -> dict[str, RunSummary]:
    """Trial id → the run another sweep may link instead of training that trial again: the most
    recently started active trial run of that ``rgflow.trial_id`` that is FINISHED with
    ``rgflow.state=finished`` (not pruned), in an active experiment other than ``experiment_id``,
    not itself a link (no ``rgflow.reused_from``) and, when ``evaluated``, evaluated (tag
    ``rgflow.eval.protocol``). Trials without one are left out. Cost: the pages of
    ``search_experiments`` plus one ``search_runs`` (``max_results=1``) per trial id; transient
    errors retried for 60 s."""
    client = get_client(uri)
    ids = [e for e in retry_transient(lambda: _experiment_ids(client), timeout_s=60.0, what="search experiments")
           if e != experiment_id]
    query = (f"tags.`{ROLE_TAG}` = 'trial' and attributes.status = 'FINISHED' and tags.`{STATE_TAG}` = 'finished' "
             f"and tags.`{REUSED_FROM_TAG}` IS NULL")
    if evaluated:
        query += f" and tags.`{EVAL_PROTOCOL_TAG}` IS NOT NULL"
    found: dict[str, RunSummary] = {}
    for trial_id in dict.fromkeys(trial_ids) if ids else ():
        one = f"{query} and tags.`{TRIAL_ID_TAG}` = '{filter_literal(trial_id)}'"
        runs = retry_transient(lambda: client.search_runs(ids, one, ViewType.ACTIVE_ONLY, max_results=1,
                                                          order_by=["attributes.start_time DESC"]),
                               timeout_s=60.0, what=f"search reusable runs of trial {trial_id}")
        if runs:
            found[trial_id] = _summary(runs[0])
    return found


def link_trial_run(uri: str, experiment_id: str, original_run_id: str, tags: Mapping[str, str],
                   params: Mapping[str, str]) -> RunSummary:
    """Create in ``experiment_id`` a *link* to trial run ``original_run_id`` of another experiment,
    and return it: a FINISHED run (started and ended now) holding a copy of the original's params
    (``params`` replace some), the whole history of each of its metrics (``system/…`` left out: they
    describe the original's machine), its ``rgflow.*`` tags and MLflow's standard source and user
    tags, then ``tags`` (this sweep's: parent run, run name, sweep, trial index), then
    ``rgflow.reused_from`` / ``rgflow.reused_from_experiment`` (the original run id and its
    experiment's name), and a copy of all its artifacts (``model/``, ``eval/``, ``train.log``), so
    that the link loads, evaluates and reports like a trained run. ``rgflow.role=trial`` is set
    last: a link that fails half-way is deleted (or, when the store is gone too, by the next launch:
    :func:`delete_incomplete_links`), and one never completed is not a trial run. Not retried;
    errors are raised."""
    import tempfile

    client = get_client(uri)
    original = client.get_run(original_run_id)
    source = client.get_experiment(original.info.experiment_id).name
    copied = {k: v for k, v in original.data.tags.items() if k.startswith("rgflow.") or k in _STANDARD_TAGS}
    all_tags = {**copied, **tags, REUSED_FROM_TAG: original_run_id, REUSED_FROM_EXPERIMENT_TAG: source}
    role = all_tags.pop(ROLE_TAG, "trial")
    link = client.create_run(experiment_id, tags=all_tags, run_name=all_tags.get(RUN_NAME_TAG)).info.run_id
    try:
        entries = [Param(k, v) for k, v in {**original.data.params, **params}.items()]
        for chunk in _chunks(entries, MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(link, params=chunk, synchronous=True)
        metrics = [Metric(m.key, m.value, m.timestamp, m.step) for key in sorted(original.data.metrics)
                   if not key.startswith(_NOT_COPIED_METRICS) for m in client.get_metric_history(original_run_id, key)]
        for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
            client.log_batch(link, metrics=chunk, synchronous=True)
        if client.list_artifacts(original_run_id):
            with tempfile.TemporaryDirectory(prefix="rgflow-link-") as tmp:
                client.log_artifacts(link, client.download_artifacts(original_run_id, "", tmp))
        client.set_terminated(link, "FINISHED")
        log_tags(client, link, {ROLE_TAG: role})
    except BaseException:
        try:
            client.delete_run(link)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            log.warning("could not delete the incomplete link run %s", link)
        raise
    return _summary(client.get_run(link))


def delete_incomplete_links(uri: str, experiment_id: str) -> list[str]:
    """Delete the link runs of ``experiment_id`` that :func:`link_trial_run` left half-made (the
    store failed mid-way and the clean-up too): RUNNING, with ``rgflow.reused_from`` and without
    ``rgflow.role``. Returns their ids. Transient errors retried for 60 s."""
    client = get_client(uri)
    found = retry_transient(lambda: client.search_runs(
        [experiment_id], f"attributes.status = 'RUNNING' and tags.`{REUSED_FROM_TAG}` LIKE '%'", ViewType.ACTIVE_ONLY,
        max_results=SEARCH_PAGE), timeout_s=60.0, what=f"incomplete links of experiment {experiment_id}")
    stale = [r.info.run_id for r in found if ROLE_TAG not in r.data.tags]
    for run_id in stale:
        retry_transient(lambda run_id=run_id: client.delete_run(run_id), timeout_s=60.0, what=f"delete run {run_id}")
    return stale


def delete_link_run(uri: str, run_id: str) -> None:
    """Delete link run ``run_id`` (MLflow's soft delete: restorable from the UI's trash), for a trial
    trained again with ``reuse: false``. A run that is not a link (no ``rgflow.reused_from``) is a
    :class:`TrackingError`. Transient errors retried for 60 s."""
    client = get_client(uri)
    if REUSED_FROM_TAG not in retry_transient(lambda: client.get_run(run_id).data.tags, timeout_s=60.0,
                                              what=f"run {run_id}"):
        raise TrackingError(f"run {run_id} is not a link run (no tag {REUSED_FROM_TAG}): not deleted")
    retry_transient(lambda: client.delete_run(run_id), timeout_s=60.0, what=f"delete run {run_id}")


def find_sweep_run(uri: str, experiment_id: str, sweep_id: str | None = None) -> RunSummary | None:
    """The most recently started active sweep parent run (``rgflow.role = sweep``) of the experiment,
    of ``rgflow.sweep_id = sweep_id`` when given; None if there is none. Its ``trial_id`` is ``""``.
    One ``search_runs`` (``max_results=1``), transient errors retried for 60 s."""
    client = get_client(uri)
    runs = retry_transient(
        lambda: client.search_runs([experiment_id], sweep_filter(sweep_id), ViewType.ACTIVE_ONLY, max_results=1,
                                   order_by=["attributes.start_time DESC"]),
        timeout_s=60.0, what="search sweep run")
    return _summary(runs[0]) if runs else None


def read_metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, int, float]]:
    """Every value logged for metric ``key`` of a run, as ``(step, timestamp, value)`` in the store's
    order: ``step`` as logged (the optimizer step for this project's metrics), ``timestamp`` in ms
    since the epoch, ``value`` in the metric's own unit (e.g. bits/dim). Empty for an unknown key.
    One ``get_metric_history``, transient errors retried for 60 s; safe to call from several threads."""
    client = get_client(uri)
    metrics = retry_transient(lambda: client.get_metric_history(run_id, key), timeout_s=60.0,
                              what=f"history {key} of {run_id}")
    return [(m.step, m.timestamp, m.value) for m in metrics]


def list_artifacts(uri: str, run_id: str, path: str | None = None) -> list[str]:
    """The artifact paths (relative to the run's artifact root, e.g. ``eval/samples_T1.png``) directly
    under ``path`` of a run (None: the root), folders included. Not retried; errors are raised."""
    return [a.path for a in get_client(uri).list_artifacts(run_id, path)]


def download_artifact(uri: str, run_id: str, path: str, dst_dir: str | os.PathLike) -> Path:
    """Download artifact ``path`` (a file or a folder) of a run into the existing folder ``dst_dir``;
    returns the local path. Not retried; errors are raised."""
    return Path(get_client(uri).download_artifacts(run_id, path, str(dst_dir)))


def log_evaluation(uri: str, run_id: str, metrics: Mapping[str, float], step: int, tags: Mapping[str, str],
                   artifacts_dir: str | os.PathLike | None = None, artifact_path: str | None = None) -> list[str]:
    """Log an evaluation into an existing run without changing its status; returns the metric keys logged.

    ``metrics`` (name → value, in each metric's unit, e.g. ``test_bpd`` in bits/dim) are logged at
    ``step`` (the evaluated checkpoint's optimizer step) with the current time; a key that already has
    a value at ``step`` equal to within a relative 1e-12 is not logged again (one
    ``get_metric_history`` per key). ``artifacts_dir``'s files go first, under ``artifact_path``;
    then the new metrics and ``tags`` in a single ``log_batch``, so that a tag written with them (e.g.
    ``rgflow.eval.protocol``) marks a complete evaluation. Hence at most 100 tags and 1000 metrics.
    Not retried; errors are raised.
    """
    if len(tags) > MAX_PARAMS_TAGS_PER_BATCH or len(metrics) > MAX_METRICS_PER_BATCH:
        raise ValueError(f"log_evaluation: {len(tags)} tags and {len(metrics)} metrics; one log_batch takes at most "
                         f"{MAX_PARAMS_TAGS_PER_BATCH} tags and {MAX_METRICS_PER_BATCH} metrics")
    client = get_client(uri)
    now = int(time.time() * 1000)
    new = []
    for key, value in metrics.items():
        history = client.get_metric_history(run_id, key)
        if not any(m.step == step and math.isclose(m.value, value, rel_tol=1e-12, abs_tol=0) for m in history):
            new.append(Metric(key, float(value), now, step))
    if artifacts_dir is not None:
        client.log_artifacts(run_id, str(artifacts_dir), artifact_path)
    client.log_batch(run_id, metrics=new, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)
    return [m.key for m in new]


def log_report(uri: str, run_id: str, folder: str | os.PathLike, artifact_path: str = "report") -> None:
    """Upload the files of report ``folder`` under ``artifact_path`` of a run (the sweep's parent
    run). Not retried; errors are raised."""
    get_client(uri).log_artifacts(run_id, str(folder), artifact_path=artifact_path)


def log_parent_tags(uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    """Set ``tags`` (name → value, values cut to MLflow's 8000 characters) on a run — meant for the
    sweep's parent run, e.g. ``{BACKEND_TAG: "ray"}``. Transient errors retried for 60 s."""
    retry_transient(lambda: log_tags(get_client(uri), run_id, tags), timeout_s=60.0, what=f"tags of run {run_id}")


# ----------------------------------------------------------------------------------------------
# The trained model as an artifact (``model/`` of a trial run) and the Model Registry
# ----------------------------------------------------------------------------------------------

#: The artifact folder of a trial run that holds its model (``weights.pt``, ``config.yaml``, ``model.json``).
MODEL_ARTIFACT_PATH = "model"


def resolve_model_ref(uri: str, ref: str) -> tuple[str, str]:
    """``(run_id, artifact_path)`` of a model reference: a run id (its ``model/`` folder),
    ``runs:/<run_id>/<path>`` or ``models:/<name>/<version>`` / ``models:/<name>@<alias>`` /
    ``models:/<name>/<alias>`` / ``models:/<name>/latest`` (a Model Registry version: its run and
    the path of its ``source``). Raises :class:`TrackingError` (one line) for a reference that is not
    one of these or names nothing in the store; other errors (store unreachable) are raised."""
    ref = ref.strip()
    if ref.startswith("runs:/"):
        run_id, _, path = ref[len("runs:/"):].strip("/").partition("/")
        if not run_id:
            raise TrackingError(f"model reference {ref!r}: expected runs:/<run_id>/model")
        return run_id, path.strip("/") or MODEL_ARTIFACT_PATH
    if ref.startswith("models:/"):
        version = _model_version(uri, ref)
        source = version.source or ""
        if source.startswith("runs:/"):
            run_id, path = resolve_model_ref(uri, source)
            return run_id, path
        if version.run_id:
            return version.run_id, MODEL_ARTIFACT_PATH
        raise TrackingError(f"model {ref!r}: version {version.version} has no run (source {source!r})")
    if ":" in ref or "/" in ref or not ref:
        raise TrackingError(f"model reference {ref!r}: expected a run id, runs:/<run_id>/model or "
                            "models:/<name>/<version or alias>")
    return ref, MODEL_ARTIFACT_PATH


def _model_version(uri: str, ref: str):
    """The ``ModelVersion`` that ``models:/…`` names (see :func:`resolve_model_ref`)."""
    body = ref[len("models:/"):].strip("/")
    if "@" in body and "/" not in body:
        name, _, alias = body.partition("@")
        version = None
    else:
        name, _, rest = body.partition("/")
        version, alias = (rest, None) if rest.isdigit() else (None, rest or "latest")
    if not name:
        raise TrackingError(f"model reference {ref!r}: expected models:/<name>/<version or alias>")
    client = get_client(uri)
    try:
        if version is not None:
            return client.get_model_version(name, version)
        if alias != "latest":
            return client.get_model_version_by_alias(name, alias)
        versions = client.search_model_versions(f"name = '{filter_literal(name)}'")
    except MlflowException as exc:
        if _is_missing(exc) or exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise TrackingError(f"model {ref!r}: not in the Model Registry at {uri} ({_short(exc)})") from None
        raise
    if not versions:
        raise TrackingError(f"model {ref!r}: registered model {name!r} has no versions at {uri}")
    return max(versions, key=lambda v: int(v.version))


def download_model(uri: str, ref: str, dst_dir: str | os.PathLike) -> Path:
    """Download the ``model/`` folder that ``ref`` names (:func:`resolve_model_ref`: a run id,
    ``runs:/…`` or ``models:/…``) into the existing folder ``dst_dir``; returns the local folder
    (it holds ``weights.pt``, ``config.yaml`` and ``model.json`` for a trial's model). A run without
    that folder is a :class:`TrackingError`. Not retried."""
    run_id, path = resolve_model_ref(uri, ref)
    if find_run(uri, run_id) is None:
        raise TrackingError(f"model {ref!r}: no MLflow run {run_id} at {uri}")
    if path not in list_artifacts(uri, run_id, path.rpartition("/")[0] or None):
        raise TrackingError(f"model {ref!r}: run {run_id} has no artifact {path}/ (trained with "
                            "tracking.log_model=none, or not finished)")
    return download_artifact(uri, run_id, path, dst_dir)


def logged_model_id(uri: str, run_id: str) -> str | None:
    """The id of run ``run_id``'s LoggedModel (``jobs.tracking.pyfunc_io``; ``models:/<id>``), None if none."""
    from .pyfunc_io import find_logged_model

    client = get_client(uri)
    found = find_logged_model(client, client.get_run(run_id).info.experiment_id, run_id)
    return found.model_id if found else None


def register_model(uri: str, name: str, run_id: str, path: str = MODEL_ARTIFACT_PATH,
                   description: str | None = None) -> str:
    """Register ``runs:/<run_id>/<path>`` as a new version of registered model ``name`` (created if
    missing) in the store's Model Registry; returns the version (a decimal string). A version of
    ``name`` that already has this run and source is returned as it is (no duplicate). Transient
    errors retried for 60 s. The version is linked to the run's LoggedModel when it has one."""
    client = get_client(uri)
    source = f"runs:/{run_id}/{path}"

    def attempt() -> str:
        try:
            client.create_registered_model(name, description=description)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        for version in client.search_model_versions(f"name = '{filter_literal(name)}'"):
            if version.run_id == run_id and (version.source == source or version.source.endswith(f"/{path}")):
                return str(version.version)
        return str(client.create_model_version(name, source, run_id=run_id, description=description,
                                               model_id=logged_model_id(uri, run_id)).version)

    return retry_transient(attempt, timeout_s=60.0, what=f"register model {name!r}")
