"""``tracking.json`` in a trial's run folder: what the run should look like in the store.

The trial process writes its intent here first (run id once known, attempt, params, tags, artifacts
still to upload, and an end state not yet delivered); the tracking store is brought in line with it
whenever it is reachable — by the background flusher, by ``TrialRun.end``, by the next attempt or by
``python -m jobs.tracking replay RUN_DIR``. Written atomically (temp + rename).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .spool import write_json_atomic

RECORD_NAME = "tracking.json"


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

    def save(self, run_dir: Path) -> None:
        write_json_atomic(Path(run_dir) / RECORD_NAME, asdict(self))

    @classmethod
    def load(cls, run_dir: Path) -> TrackingRecord | None:
        path = Path(run_dir) / RECORD_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc}); delete it to start the run's tracking over") from None
        return cls(**data)
