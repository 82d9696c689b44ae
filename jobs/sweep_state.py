"""The saved state of a launched sweep: which backend job runs which trial.

One JSON file per sweep, ``<run.out_dir>/<sweep name>/sweep-state.json``, written atomically
(:mod:`rgflow.atomic`) so that a crash never leaves it half-written. It lets ``status``,
``cancel`` and re-runs work from a new shell: the Slurm backend records the job id of every
trial (``"1234_5"`` for array task 5 of job 1234) and its evaluation job, the local backend the
PID of every running trial subprocess. MLflow stays the source of truth for trial outcomes; this
file only maps trials to scheduler objects, and records the tracking URI the launch used (absolute
for sqlite, without credentials), which the read commands use when none is given
(:func:`recorded_uri`, :func:`jobs.tracking.uri.read_uri`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rgflow.atomic import write_atomic

STATE_FILE = "sweep-state.json"
VERSION = 1


class StateError(ValueError):
    """The state file exists but cannot be used; the message names it and says how to recover."""


@dataclass
class TrialJob:
    """The scheduler's handle on one trial: ``job_id`` (Slurm id or local PID as a string),
    ``eval_job_id`` (Slurm evaluation job, if any), ``submitted_at`` (UNIX seconds)."""

    index: int
    job_id: str
    eval_job_id: str | None = None
    submitted_at: float = 0.0


@dataclass
class SweepState:
    """Everything a later ``status``/``cancel``/re-run needs besides MLflow.

    ``trials`` maps trial id → :class:`TrialJob` for the trials handed to the backend by the
    latest launches (a re-run keeps the records of trials it did not resubmit).
    ``submitit_folder`` is the submitit log/pickle folder (Slurm only); ``driver_pid`` the
    launcher process of an in-process launch (Ray, local), which ``cancel`` interrupts.
    """

    sweep: str
    backend: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    trials: dict[str, TrialJob] = field(default_factory=dict)
    submitit_folder: str | None = None
    driver_pid: int | None = None
    version: int = VERSION

    def job_ids(self) -> list[str]:
        """Every recorded job id, training and evaluation, in trial order."""
        ids = []
        for job in sorted(self.trials.values(), key=lambda j: j.index):
            ids.append(job.job_id)
            if job.eval_job_id:
                ids.append(job.eval_job_id)
        return ids


def state_path(sweep_dir: str | os.PathLike) -> Path:
    """Where the state of the sweep whose run folder is ``sweep_dir`` lives."""
    return Path(sweep_dir) / STATE_FILE


def save_state(sweep_dir: str | os.PathLike, state: SweepState) -> Path:
    """Write ``state`` atomically; returns the file path. Creates ``sweep_dir`` if needed."""
    path = state_path(sweep_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(dataclasses.asdict(state), indent=1, sort_keys=True) + "\n")
    return path


def load_state(sweep_dir: str | os.PathLike) -> SweepState | None:
    """The saved state, or ``None`` if the sweep was never launched from this folder.

    A file that is not valid state raises :class:`StateError` naming the file (it is never guessed at).
    """
    path = state_path(sweep_dir)
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise StateError(f"{path}: unreadable sweep state ({err}); delete it to start the sweep afresh") from None
    try:
        if raw.get("version") != VERSION:
            raise ValueError(f"version {raw.get('version')!r} (expected {VERSION})")
        trials = {tid: TrialJob(**job) for tid, job in raw.pop("trials").items()}
        return SweepState(trials=trials, **raw)
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise StateError(f"{path}: invalid sweep state ({err}); delete it to start the sweep afresh") from None


def recorded_uri(sweep) -> str | None:
    """The tracking URI the latest launch of ``sweep`` (a loaded sweep) recorded in its run folder
    ``<run.out_dir>/<name>``; None if it was never launched there."""
    state = load_state(Path(sweep.first_config.run.out_dir).resolve() / sweep.name)
    return state.tracking_uri if state else None
