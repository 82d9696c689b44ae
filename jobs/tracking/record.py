"""``tracking.json`` in a trial's run folder: what the run should look like in the store.

The trial process writes its intent here first (run id once known, attempt, params, tags, artifacts
still to upload, and an end state not yet delivered); the tracking store is brought in line with it
whenever it is reachable — by the background flusher, by ``TrialRun.end``, by the next attempt or by
``python -m jobs.tracking replay RUN_DIR``. Written atomically and durably (:mod:`rgflow.atomic`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rgflow.atomic import write_json_atomic

from .spool import CURSOR_NAME, SPOOL_NAME

RECORD_NAME = "tracking.json"


class UnreadableRecord(ValueError):
    """A run folder's tracking record that no longer parses; the message names the file and the fix."""


@dataclass
class TrackingRecord:
    tracking_uri: str
    experiment_id: str
    trial_id: str
    run_name: str
    parent_run_id: str | None
    run_id: str | None = None  # None until the store has created the run
    attempt: int = 1
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    pending_artifacts: list[list[str | None]] = field(default_factory=list)  # [local path, artifact dir]
    pending_end: dict | None = None  # {"state": ..., "end_time": ms} not yet delivered
    experiment_name: str | None = None  # to find or create the experiment when experiment_id is "" (started offline)
    deferred_parent: dict | None = None  # {"name", "sweep_id", "params"}: the parent run to find or create later

    def save(self, run_dir: Path) -> None:
        write_json_atomic(Path(run_dir) / RECORD_NAME, asdict(self))

    @classmethod
    def load(cls, run_dir: Path) -> TrackingRecord | None:
        path = Path(run_dir) / RECORD_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:  # UnicodeDecodeError included: garbled bytes
            raise UnreadableRecord(f"{path}: not valid JSON ({exc}); delete it to start the run's tracking "
                                   "over") from None
        try:
            return cls(**data)
        except TypeError as exc:
            raise UnreadableRecord(f"{path}: not a tracking record ({exc}); delete it to start the run's "
                                   "tracking over") from None


def has_pending(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds anything its run in the store lacks: an end state, artifacts or
    metrics not yet delivered (spool longer than its acknowledged cursor), or a run never created.
    Reads two small files and a file size; never writes (safe beside a live attempt)."""
    run_dir = Path(run_dir)
    record = TrackingRecord.load(run_dir)
    if record is None:
        return False
    if record.pending_end or record.pending_artifacts or record.run_id is None:
        return True
    try:
        size = (run_dir / SPOOL_NAME).stat().st_size
    except FileNotFoundError:
        return False
    try:
        acknowledged = int(json.loads((run_dir / CURSOR_NAME).read_text())["offset"])
    except (OSError, ValueError, KeyError, TypeError):
        acknowledged = 0
    return size > acknowledged
