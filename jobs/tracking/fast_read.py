"""Read-only lookups for commands that must answer fast (``jobs.sweep status``), without
importing mlflow (≈ 10 s on a loaded machine) where the store allows it.

* ``sqlite:///PATH`` stores are read with :mod:`sqlite3` (:mod:`jobs.tracking.sqlite_read`);
* ``http(s)://`` tracking servers through the REST API with :mod:`urllib`
  (:mod:`jobs.tracking.rest_read`);
* any other store (PostgreSQL, MySQL, ``file:`` folders, Databricks) through the mlflow client
  (:mod:`jobs.tracking.store`).

:func:`trial_runs` returns exactly what :func:`jobs.tracking.store.find_trial_runs` returns.
Nothing here creates or writes anything: a sqlite file that does not exist reads as empty
(:func:`missing_store` says so, for a command to stop with the fix before mlflow, which would
create it, is imported). :func:`store_line` names the store a read command read, without credentials.
"""
from __future__ import annotations

from collections.abc import Iterable

from . import rest_read, sqlite_read
from .layout import RunSummary
from .uri import URI_ENV, redact_uri, sqlite_path


def _kind(uri: str) -> str:
    if sqlite_path(uri) is not None:
        return "sqlite"
    return "rest" if uri.startswith(("http://", "https://")) else "client"


def store_line(uri: str) -> str:
    """``MLflow store sqlite:////abs/mlflow.db`` (credentials and query strings never shown), with
    ``(does not exist)`` for a sqlite file that is not there."""
    missing = " (does not exist)" if missing_store(uri) else ""
    return f"MLflow store {redact_uri(uri)}{missing}"


def missing_store(uri: str) -> str | None:
    """For a ``sqlite:///`` store whose file does not exist: a one-line message naming it and the
    fix (reading it through mlflow would create an empty one); None otherwise."""
    path = sqlite_path(uri)
    if path is None or path.exists():
        return None
    return (f"no MLflow store at {path}: run from the folder the sweep ran in, or pass the store that holds it "
            f"(--tracking-uri / tracking.uri=sqlite:////abs/path/mlflow.db or {URI_ENV})")


def experiment_id(uri: str, name: str) -> str | None:
    """The id of the active experiment ``name``; None if it does not exist (or is deleted)."""
    kind = _kind(uri)
    if kind == "sqlite":
        return sqlite_read.experiment_id(sqlite_path(uri), name)
    if kind == "rest":
        return rest_read.experiment_id(rest_read.server(uri), name)
    from .store import get_client

    found = get_client(uri).get_experiment_by_name(name)
    return None if found is None or found.lifecycle_stage == "deleted" else found.experiment_id


def run_status(uri: str, run_id: str) -> str | None:
    """The MLflow status (``RUNNING``, ``FINISHED``, ``FAILED``, ``KILLED``…) of a run; None if missing."""
    kind = _kind(uri)
    if kind == "sqlite":
        return sqlite_read.run_status(sqlite_path(uri), run_id)
    if kind == "rest":
        return rest_read.run_status(rest_read.server(uri), run_id)
    from mlflow.exceptions import MlflowException

    from .store import get_client

    try:
        return get_client(uri).get_run(run_id).info.status
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def trial_runs(uri: str, experiment: str, parent_run_id: str | None = None,
               trial_ids: Iterable[str] | None = None) -> dict[str, RunSummary]:
    """Trial runs of an experiment (optionally of one parent run) keyed by ``rgflow.trial_id``;
    the most recently started run of a trial wins; ``trial_ids`` restricts the result."""
    kind = _kind(uri)
    if kind == "sqlite":
        return sqlite_read.trial_runs(sqlite_path(uri), experiment, parent_run_id, trial_ids)
    if kind == "rest":
        return rest_read.trial_runs(rest_read.server(uri), experiment, parent_run_id, trial_ids)
    from .store import find_trial_runs

    return find_trial_runs(uri, experiment, parent_run_id, trial_ids)
