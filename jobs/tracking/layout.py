"""The MLflow layout shared by every reader and writer (docs/ARCHITECTURE.md, "MLflow layout"):
end states, :class:`RunSummary` and how trial runs are picked from a search (tag names: ``tags.py``).

Imports nothing heavy (no mlflow): the fast read path of ``jobs.sweep status``
(:mod:`jobs.tracking.fast_read`) builds the same :class:`RunSummary` objects as
:func:`jobs.tracking.store.find_trial_runs`.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# The tag names live in tags.py (the one list); re-exported here for the readers that import them from layout.
from .tags import (  # noqa: F401
    ATTEMPT_TAG, PARENT_TAG, REASON_TAG, ROLE_TAG, RUN_DIR_TAG, STATE_TAG, SWEEP_ID_TAG, SWEEP_TAG, TRIAL_ID_TAG,
)

#: ``rgflow.state`` value → MLflow run status (docs/ARCHITECTURE.md, "MLflow run status").
END_STATES = {"finished": "FINISHED", "pruned": "FINISHED", "failed": "FAILED", "preempted": "KILLED",
              "killed": "KILLED"}
TERMINAL_STATUSES = frozenset({"FINISHED", "FAILED", "KILLED"})

#: Runs per page of a trial search (MLflow's largest page is 50,000; 1,000 keeps replies small).
SEARCH_PAGE = 1000


class TrackingError(RuntimeError):
    """The tracking store refused an operation for a reason that retrying will not fix."""


@dataclass(frozen=True)
class RunSummary:
    """One trial run as read back from MLflow.

    ``metrics`` holds the latest value of each metric (the value at its highest step);
    ``params`` and ``tags`` are MLflow's strings. ``start_time``/``end_time`` are ms since epoch.
    """

    run_id: str
    trial_id: str
    status: str
    state: str
    attempt: int
    start_time: int
    end_time: int | None
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]


def trial_filter(parent_run_id: str | None = None) -> str:
    """The MLflow search filter of trial runs (optionally of one parent run)."""
    query = f"tags.`{ROLE_TAG}` = 'trial'"
    if parent_run_id:
        query += f" and tags.`{PARENT_TAG}` = '{filter_literal(parent_run_id)}'"
    return query


def sweep_filter(sweep_id: str | None = None) -> str:
    """The MLflow search filter of sweep parent runs (optionally of one ``rgflow.sweep_id``)."""
    query = f"tags.`{ROLE_TAG}` = 'sweep'"
    if sweep_id:
        query += f" and tags.`{SWEEP_ID_TAG}` = '{filter_literal(sweep_id)}'"
    return query


def filter_literal(value: str) -> str:
    """``value`` checked to be safe inside a quoted MLflow search-filter literal."""
    if "'" in value or "\\" in value:
        raise ValueError(f"id {value!r} must not contain quotes or backslashes")
    return value


def keep_trial(found: Mapping[str, RunSummary], trial_id: str, wanted: set[str] | None) -> bool:
    """Whether a run of ``trial_id`` met in search order (most recently started first) is the
    one to keep: the first of its trial, and a trial asked for (``wanted``: None for all)."""
    return trial_id not in found and (wanted is None or trial_id in wanted)


def run_summary(run_id: str, status: str, start_time: int, end_time: int | None, tags: Mapping[str, str],
                params: Mapping[str, str], metrics: Mapping[str, float]) -> RunSummary:
    """A :class:`RunSummary` from one run's fields as MLflow stores them."""
    return RunSummary(
        run_id=run_id, trial_id=tags.get(TRIAL_ID_TAG, ""), status=status, state=tags.get(STATE_TAG, ""),
        attempt=int(tags.get(ATTEMPT_TAG, "0") or 0), start_time=start_time, end_time=end_time,
        tags=dict(tags), params=dict(params), metrics=dict(metrics),
    )


def wanted_ids(trial_ids: Iterable[str] | None) -> set[str] | None:
    """``trial_ids`` as a set, or None (no restriction)."""
    return set(trial_ids) if trial_ids is not None else None
