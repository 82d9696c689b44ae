"""Read trial runs straight from an MLflow sqlite store with :mod:`sqlite3`, read-only.

The tables and columns are MLflow 3's (``mlflow/store/tracking/dbmodels/models.py``):
``experiments(experiment_id, name, lifecycle_stage)``, ``runs(run_uuid, experiment_id, status,
start_time, end_time, lifecycle_stage)``, ``tags``/``params(run_uuid, key, value)`` and
``latest_metrics(run_uuid, key, value, is_nan)``. The order and choice of runs are those of
``MlflowClient.search_runs`` with ``order_by=["attributes.start_time DESC"]`` (ties: run id
ascending), so :func:`trial_runs` returns what :func:`jobs.tracking.store.find_trial_runs` does.
The database is opened with ``mode=ro``: nothing is ever created or written.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from urllib.parse import quote

from .layout import PARENT_TAG, ROLE_TAG, TRIAL_ID_TAG, RunSummary, TrackingError, keep_trial, run_summary, wanted_ids

BUSY_TIMEOUT_S = 10.0  # how long to wait for a writer's lock (a trial committing its metrics)
_CHUNK = 500  # run ids per IN (…) list, below SQLite's smallest variable limit (999)

_TRIALS = f"""
SELECT r.run_uuid, r.status, r.start_time, r.end_time, COALESCE(tid.value, '')
FROM runs r
JOIN tags role ON role.run_uuid = r.run_uuid AND role.key = '{ROLE_TAG}' AND role.value = 'trial'
LEFT JOIN tags tid ON tid.run_uuid = r.run_uuid AND tid.key = '{TRIAL_ID_TAG}'
{{parent}}
WHERE r.experiment_id = ? AND r.lifecycle_stage = 'active'
ORDER BY r.start_time DESC, r.run_uuid
"""
_PARENT = f"JOIN tags parent ON parent.run_uuid = r.run_uuid AND parent.key = '{PARENT_TAG}' AND parent.value = ?"


@contextmanager
def _reading(path: Path) -> Iterator[Callable[..., list[tuple]]]:
    """A query function on one read-only connection, inside one read transaction (a consistent
    snapshot while trials write). A missing table (an empty database file) gives no rows."""
    def query(sql: str, args: Iterable = ()) -> list[tuple]:
        try:
            return db.execute(sql, tuple(args)).fetchall()
        except sqlite3.OperationalError as err:
            if str(err).startswith("no such table"):
                return []
            raise

    try:
        with closing(sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True,
                                     timeout=BUSY_TIMEOUT_S, isolation_level=None)) as db:
            db.execute("BEGIN")
            yield query
    except sqlite3.OperationalError as err:
        raise TrackingError(f"sqlite store {path}: cannot read: {err}") from None
    except sqlite3.DatabaseError as err:
        raise TrackingError(f"sqlite store {path}: not a readable MLflow database: {err}") from None


def experiment_id(path: Path, name: str) -> str | None:
    """The id of the active experiment ``name``; None if it does not exist or is deleted."""
    if not path.exists():
        return None
    with _reading(path) as query:
        rows = query("SELECT experiment_id, lifecycle_stage FROM experiments WHERE name = ?", (name,))
    return str(rows[0][0]) if rows and rows[0][1] == "active" else None


def run_status(path: Path, run_id: str) -> str | None:
    """``RUNNING``/``FINISHED``/… of a run; None if there is no such run."""
    if not path.exists():
        return None
    with _reading(path) as query:
        rows = query("SELECT status FROM runs WHERE run_uuid = ?", (run_id,))
    return rows[0][0] if rows else None


def trial_runs(path: Path, experiment: str, parent_run_id: str | None = None,
               trial_ids: Iterable[str] | None = None) -> dict[str, RunSummary]:
    """Trial runs of an experiment keyed by trial id, as :func:`jobs.tracking.store.find_trial_runs`."""
    if not path.exists():
        return {}
    sql = _TRIALS.format(parent=_PARENT if parent_run_id else "")
    args = [parent_run_id] if parent_run_id else []
    wanted = wanted_ids(trial_ids)
    chosen: dict[str, tuple] = {}
    with _reading(path) as query:
        for run_id, status, start, end, trial_id in query(sql, [*args, int(experiment)]):
            if keep_trial(chosen, trial_id, wanted):
                chosen[trial_id] = (run_id, status, start, end)
        ids = [row[0] for row in chosen.values()]
        tags, params, metrics = (_by_run(query, table, ids) for table in ("tags", "params", "latest_metrics"))
    return {tid: run_summary(run_id, status, start, end, tags.get(run_id, {}), params.get(run_id, {}),
                             metrics.get(run_id, {}))
            for tid, (run_id, status, start, end) in chosen.items()}


def _by_run(query: Callable[..., list[tuple]], table: str, run_ids: list[str]) -> dict[str, dict]:
    """``{run id: {key: value}}`` of ``tags``, ``params`` or ``latest_metrics`` (NaN where ``is_nan``)."""
    value = "value, is_nan" if table == "latest_metrics" else "value, 0"
    out: dict[str, dict] = {}
    for i in range(0, len(run_ids), _CHUNK):
        chunk = run_ids[i:i + _CHUNK]
        sql = f"SELECT run_uuid, key, {value} FROM {table} WHERE run_uuid IN ({','.join('?' * len(chunk))})"
        for run_id, key, val, is_nan in query(sql, chunk):
            out.setdefault(run_id, {})[key] = float("nan") if is_nan else val
    return out
