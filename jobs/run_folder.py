"""A trial's run folder, ``<run.out_dir>/<sweep or single>/<trial id>``, and its ``state.json``.

``state.json`` is the attempt's own account of the trial, written atomically by ``jobs.train``:
``state`` (running | finished | failed | preempted | killed), ``reason``, ``attempt``, ``failures``
(failed attempts so far, deaths included), ``run_id``, and at the end the step, best and final
validation BPD and the checkpoints. :func:`reap_dead_attempt` closes the folder of an attempt that
died without ending (SIGKILL, out of memory, node failure): it is the one place outside
``jobs.train`` that writes it, and only while holding the folder's lock (:mod:`jobs.run_lock`).
Files: docs/CLI.md, "The run folder".
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from jobs.config import TrialConfig, trial_id
from jobs.run_lock import RunFolderLock, RunFolderLocked
from rgflow.atomic import write_atomic

STATE_FILE = "state.json"
LOG_FILE = "train.log"
SINGLE = "single"


def run_dir_for(config: TrialConfig, sweep: str | None = None) -> Path:
    """``<run.out_dir>/<sweep or single>/<trial id>`` as an absolute path."""
    return (Path(config.run.out_dir) / (sweep or SINGLE) / trial_id(config)).resolve()


def read_state(run_dir: str | Path) -> dict[str, Any] | None:
    """``state.json`` of a run folder, or None if absent or unreadable."""
    try:
        state = json.loads((Path(run_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def write_state(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Update ``state.json`` atomically with ``fields`` (and the time); returns the new content."""
    state = {**(read_state(run_dir) or {}), **fields, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_atomic(Path(run_dir) / STATE_FILE, json.dumps(state, indent=1, sort_keys=True) + "\n")
    return state


def adopt_run_id(run_dir: str | Path) -> str | None:
    """Copy the MLflow run id from the run folder's tracking record into ``state.json`` when the
    run was created after the attempt ended (it trained offline; a replay created the run).
    Returns the run id ``state.json`` now names."""
    from jobs.tracking.record import TrackingRecord

    state = read_state(run_dir)
    record = TrackingRecord.load(Path(run_dir))
    if state is None or record is None or not record.run_id or state.get("run_id") == record.run_id:
        return (state or {}).get("run_id")
    write_state(run_dir, run_id=record.run_id)
    return record.run_id


def reap_dead_attempt(run_dir: str | Path, reason: str, state: str = "failed") -> int | None:
    """Close the run folder of an attempt that died while ``state.json`` said running: ``state``
    (failed: one more failure; killed: its launcher took it down, not counted) with ``reason``, and
    the same for its MLflow run (through the run folder's tracking record, so a store that is down
    gets it on replay). Returns the failures now counted, or None when there is nothing to reap
    (not running, or a live attempt holds it)."""
    from jobs.tracking.trial import end_recorded_run

    run_dir = Path(run_dir)
    if not (run_dir / STATE_FILE).exists():
        return None
    try:
        with RunFolderLock(run_dir):
            current = read_state(run_dir)
            if not current or current.get("state") != "running":
                return None
            failures = int(current.get("failures", 0)) + (state == "failed")
            write_state(run_dir, state=state, reason=reason, failures=failures)
            end_recorded_run(run_dir, state, reason, failures)
            return failures
    except RunFolderLocked:
        return None
