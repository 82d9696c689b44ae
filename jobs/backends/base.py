"""The one small interface every sweep backend implements, and what they share.

A backend receives the trials still to run (:class:`TrialTask`) with the sweep's context
(:class:`SweepContext`: where the sweep's run folder is, the MLflow experiment and the parent run
already created by ``jobs.sweep``, and the backend's typed settings) and

* :meth:`Backend.launch` runs them (Ray, local: blocking, with the progress line) or submits them
  (Slurm: returns once queued, or follows them with ``wait=True``);
* :meth:`Backend.live_jobs` names the trials whose job is still queued or running (a re-run must
  not submit them again);
* :meth:`Backend.job_states` reports the scheduler's view of each trial for ``status``;
* :meth:`Backend.cancel` stops the sweep's jobs.

What an attempt's end means and what happens next is not decided here: :mod:`jobs.attempt` holds
that contract (exit codes, retry rule, the in-process attempt :func:`jobs.attempt.execute`).
Trial outcomes always come from MLflow (``jobs.tracking``), never from the scheduler alone.
"""
from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from jobs.progress import Counts, Progress, count_states
from jobs.sweep_spec import LocalSettings, RaySettings, SlurmSettings, Search, TuneSettings
from jobs.sweep_state import SweepState


@dataclass(frozen=True)
class TrialResources:
    """What one trial holds: ``cpus`` cores, ``gpus`` (fractional on Ray), ``mem_gb`` GiB and
    ``time_min`` minutes of wall time (None: the scheduler's default)."""

    cpus: int = 1
    gpus: float = 0.0
    mem_gb: float | None = None
    time_min: int | None = None


@dataclass(frozen=True)
class TrialTask:
    """One trial to run: its position in the sweep's expansion, id, resolved config (a picklable
    ``jobs.config.TrialConfig``), run folder and MLflow run name (``jobs.train.trial_run_name``;
    ``""``: ``jobs.train``'s default)."""

    index: int
    trial_id: str
    config: Any
    run_dir: str
    run_name: str = ""


@dataclass(frozen=True)
class SweepContext:
    """What every trial of one launch shares.

    ``sweep_path`` (absolute) and ``overrides`` reproduce the expansion in another process
    (``python -m jobs.train SWEEP --trial N overrides…``). ``sweep_dir`` is the sweep's run folder
    ``<run.out_dir>/<sweep name>``. ``settings`` holds this backend's section of the sweep file
    (a plain dict) and ``resources`` the per-trial resources (plain dict: ``cpus``, ``gpus``,
    ``mem_gb``, ``time_min``). ``max_failures``: failed attempts retried per trial.
    ``evaluations``: the evaluations to run after training (``jobs.evaluate``), empty for none. ``cwd``: the
    launcher's working directory, where relative paths in the trial config resolve. ``tune``: the
    sweep's Ray Tune scheduler and searcher (Ray backend); ``search``: what its searcher samples.
    """

    name: str
    sweep_path: str
    overrides: tuple[str, ...]
    sweep_dir: str
    tracking_uri: str
    experiment_id: str | None
    parent_run_id: str | None
    backend: str
    sweep_id: str = ""
    evaluations: tuple[str, ...] = ()
    max_failures: int = 1
    settings: LocalSettings | RaySettings | SlurmSettings | None = None
    resources: TrialResources = TrialResources()
    cwd: str = "."
    parent_params: dict[str, Any] | None = None
    tune: TuneSettings | None = None
    search: Search | None = None

    def logs_dir(self) -> str:
        """``<sweep_dir>/logs``: driver-side logs of Ray, MLflow and the backends."""
        return os.path.join(self.sweep_dir, "logs")


@dataclass
class LaunchResult:
    """What a launch ended with: ``states`` trial id → ``finished|failed|preempted|killed|queued|
    running``; ``interrupted`` when the user stopped the driver; ``queued`` when jobs were left to
    a scheduler (the parent run then stays RUNNING); ``message``: why the launch stopped early."""

    states: dict[str, str]
    interrupted: bool = False
    queued: bool = False
    message: str | None = None


class Backend(abc.ABC):
    """A place to run trials. Instances are cheap; nothing is started before :meth:`launch`."""

    name: ClassVar[str]

    @abc.abstractmethod
    def launch(
        self, ctx: SweepContext, tasks: list[TrialTask], tracker: ProgressTracker, state: SweepState, wait: bool
    ) -> LaunchResult:
        """Run or submit ``tasks``; keep ``tracker`` informed and record jobs in ``state``
        (saved with :func:`jobs.sweep_state.save_state` as soon as they exist)."""

    def live_jobs(self, ctx: SweepContext, state: SweepState | None) -> dict[str, str]:
        """Trial id → job id of jobs still queued or running (none for in-process backends)."""
        return {}

    def job_states(self, ctx: SweepContext, state: SweepState | None) -> dict[str, tuple[str, str]]:
        """Trial id → (job id, scheduler state) for ``status``."""
        return {}

    def busy(self, ctx: SweepContext, state: SweepState | None) -> bool:
        """Whether any job of the sweep (training or evaluation) is still queued or running."""
        return bool(self.live_jobs(ctx, state))

    def cancel(self, ctx: SweepContext, state: SweepState | None) -> list[str]:
        """Stop the sweep's jobs; returns the job ids signalled."""
        return []


class ProgressTracker:
    """Trial states and the best validation BPD of one launch, drawn on a :class:`Progress` line.

    ``states`` starts with every trial of the sweep (skipped finished ones as ``finished``).
    """

    def __init__(self, progress: Progress, states: dict[str, str], best_val_bpd: float | None = None):
        self.progress = progress
        self.states = dict(states)
        self.best_val_bpd = best_val_bpd
        self.draw()

    def set(self, trial_id: str, state: str, val_bpd: float | None = None) -> None:
        self.states[trial_id] = state
        if val_bpd is not None and (self.best_val_bpd is None or val_bpd < self.best_val_bpd):
            self.best_val_bpd = val_bpd
        self.draw()

    def counts(self) -> Counts:
        return count_states({k: ("pending" if v == "queued" else v) for k, v in self.states.items()})

    def draw(self) -> None:
        self.progress.update(self.counts(), self.best_val_bpd)


def is_process(pid: int | None, *needles: str) -> bool:
    """Whether ``pid`` is a live (non-zombie) process whose command line has every one of
    ``needles`` as an argument or inside one (PIDs are reused: never signal by PID alone)."""
    if not pid:
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return all(any(needle in arg for arg in argv) for needle in needles)


def best_val_bpd(metrics: dict[str, float]) -> float | None:
    """The best validation BPD (bits/dim) a run reports: ``best_val_bpd`` if logged, else the
    latest ``val_bpd``; ``None`` before the first validation."""
    for key in ("best_val_bpd", "val_bpd"):
        if key in metrics:
            return float(metrics[key])
    return None


def child_environment() -> None:
    """Make this process safe for a trial: no ambient MLflow run may capture its run."""
    os.environ.pop("MLFLOW_RUN_ID", None)
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)
