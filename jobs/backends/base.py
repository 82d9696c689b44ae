"""The one small interface every sweep backend implements, and what they share.

A backend receives the trials still to run (:class:`TrialTask`) with the sweep's context
(:class:`SweepContext`: where the sweep's run folder is, the MLflow experiment and the parent run
already created by ``jobs.sweep``) and

* :meth:`Backend.launch` runs them (Ray, local: blocking, with the progress line) or submits them
  (Slurm: returns once queued, or follows them with ``wait=True``);
* :meth:`Backend.live_jobs` names the trials whose job is still queued or running (a re-run must
  not submit them again);
* :meth:`Backend.job_states` reports the scheduler's view of each trial for ``status``;
* :meth:`Backend.cancel` stops the sweep's jobs.

Trial outcomes always come from MLflow (``jobs.tracking``), never from the scheduler alone.
:func:`execute_trial` is the in-process entry used by the Ray trainable and the Slurm job: it calls
``jobs.train.run_trial`` with the parent run id passed explicitly and counts failures on the run.
"""
from __future__ import annotations

import abc
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from jobs.progress import Counts, Progress, count_states
from jobs.sweep_state import SweepState

# Exit codes of jobs.train (docs/ARCHITECTURE.md, "jobs.train exit codes").
EXIT_FINISHED, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_REQUEUE, EXIT_INTERRUPTED = 0, 1, 2, 75, 130
STATE_BY_EXIT = {
    EXIT_FINISHED: "finished", EXIT_FAILED: "failed", EXIT_BAD_INPUT: "failed",
    EXIT_REQUEUE: "preempted", EXIT_INTERRUPTED: "killed",
}
FAILURES_TAG = "rgflow.failures"  # failed attempts of a trial, counted by the sweep launcher
# Scheduler states of a job that is queued or running (Slurm's names; the in-process backends
# report RUNNING or EXITED).
LIVE_STATES = frozenset({
    "PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
    "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING",
})


@dataclass(frozen=True)
class TrialTask:
    """One trial to run: its position in the sweep's expansion, id, resolved config (a picklable
    ``jobs.config.TrialConfig``) and run folder."""

    index: int
    trial_id: str
    config: Any
    run_dir: str


@dataclass(frozen=True)
class SweepContext:
    """What every trial of one launch shares.

    ``sweep_path`` (absolute) and ``overrides`` reproduce the expansion in another process
    (``python -m jobs.train SWEEP --trial N overrides…``). ``sweep_dir`` is the sweep's run folder
    ``<run.out_dir>/<sweep name>``. ``settings`` holds this backend's section of the sweep file
    (a plain dict) and ``resources`` the per-trial resources (plain dict: ``cpus``, ``gpus``,
    ``mem_gb``, ``time_min``). ``max_failures``: failed attempts retried per trial.
    ``evaluations``: the evaluations to run after training (``jobs.evaluate``), empty for none. ``cwd``: the
    launcher's working directory, where relative paths in the trial config resolve.
    """

    name: str
    sweep_path: str
    overrides: tuple[str, ...]
    sweep_dir: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    backend: str
    sweep_id: str = ""
    evaluations: tuple[str, ...] = ()
    max_failures: int = 1
    settings: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    cwd: str = "."

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
        self, ctx: SweepContext, tasks: list[TrialTask], tracker: "ProgressTracker", state: SweepState, wait: bool
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


def failures_of(tags: dict[str, str], status: str) -> int:
    """Failed attempts recorded on a trial run (a FAILED run without the tag counts one)."""
    default = 1 if status == "FAILED" else 0
    try:
        return int(tags.get(FAILURES_TAG, default))
    except ValueError:
        return default


def count_failure(ctx: SweepContext, trial_id: str) -> int:
    """Add one to the trial run's failure count; returns the new count."""
    from jobs.tracking import find_trial_runs, get_client
    from jobs.tracking.store import log_tags

    run = find_trial_runs(ctx.tracking_uri, ctx.experiment_id, trial_ids=[trial_id]).get(trial_id)
    if run is None:
        return 1
    failures = int(run.tags.get(FAILURES_TAG, 0) or 0) + 1
    log_tags(get_client(ctx.tracking_uri), run.run_id, {FAILURES_TAG: str(failures)})
    return failures


@dataclass(frozen=True)
class TrialOutcome:
    """One attempt's result: ``exit_code`` of jobs.train semantics, ``state``, the run's best
    validation BPD (bits/dim) when known, total failed attempts, the evaluation error (one line)
    if the evaluation after training raised, and jobs.train's one-line ``reason`` (e.g.
    ``received SIGUSR2``)."""

    exit_code: int
    state: str
    val_bpd: float | None = None
    failures: int = 0
    eval_error: str | None = None
    reason: str | None = None


def execute_trial(ctx: SweepContext, task: TrialTask, evaluate: bool | None = None) -> TrialOutcome:
    """Run one trial attempt in this process through ``jobs.train.run_trial`` (it resumes from the
    run folder's checkpoint by itself, and returns at once for a finished trial), then — when it
    finished and ``evaluate`` (default: the sweep's setting) — ``jobs.evaluate.evaluate_trial``.
    A failed attempt bumps the run's failure count. An evaluation that raises does not fail the
    trial: its error is returned (and the traceback printed to this process's log)."""
    child_environment()
    if os.path.isdir(ctx.cwd):
        os.chdir(ctx.cwd)
    from jobs.train import run_trial

    result = run_trial(
        task.config, sweep=ctx.name, sweep_id=ctx.sweep_id, trial_index=task.index, parent_run_id=ctx.parent_run_id,
        tracking_uri=ctx.tracking_uri, experiment_id=ctx.experiment_id, backend=ctx.backend,
    )
    failures = count_failure(ctx, task.trial_id) if result.exit_code == EXIT_FAILED else 0
    eval_error = None
    if result.exit_code == EXIT_FINISHED and ctx.evaluations and (evaluate is None or evaluate):
        eval_error = run_evaluation(ctx, task)
    return TrialOutcome(result.exit_code, result.state, result.best_val_bpd, failures, eval_error, result.reason)


def run_evaluation(ctx: SweepContext, task: TrialTask) -> str | None:
    """``jobs.evaluate.evaluate_trial`` for a finished trial; returns ``None`` or the error line."""
    try:
        from jobs.evaluate import evaluate_trial

        evaluate_trial(task.config, task.run_dir, tracking_uri=ctx.tracking_uri, selected=ctx.evaluations)
    except Exception as err:  # noqa: BLE001 - reported, never fails the trained trial
        traceback.print_exc()
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None
