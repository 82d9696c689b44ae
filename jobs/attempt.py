"""The trial-attempt contract: exit codes, one outcome, and the decisions every backend shares.

An *attempt* is one execution of ``jobs.train`` for one trial (a subprocess, a Ray worker call or a
Slurm job). Whatever runs it, the same pure functions here decide

* what its exit code means (:class:`ExitCode`, :data:`STATE_OF`),
* what happens next (:func:`next_action`: done, retry from the checkpoint, requeue, give up, or
  stop the sweep),
* what a re-run does with a trial (:func:`plan_trial`: skip, launch or evaluate), and
* how ``status`` and the progress line name a trial (:func:`trial_state`) from its MLflow run and
  its scheduler job.

Backends only adapt an engine to this module; none decides anything of its own. The full table
with the MLflow status each state ends in: docs/CLI.md, "Exit codes and end states".
"""
from __future__ import annotations

import enum
import signal
from dataclasses import dataclass
from pathlib import Path


class ExitCode(enum.IntEnum):
    """Exit codes of ``python -m jobs.train`` (and of one attempt in any backend)."""

    FINISHED = 0  #: trained to the end (or already finished)
    FAILED = 1  #: an error during training; retried from its checkpoint while failures allow
    BAD_INPUT = 2  #: the config, data or device is wrong; nothing was created; never retried
    LOCKED = 3  #: another live attempt holds the trial's run folder; this one did nothing
    PREEMPTED = 75  #: stopped by SIGTERM/SIGUSR2 or the backend after a checkpoint (EX_TEMPFAIL): requeue
    KILLED = 130  #: stopped by SIGINT/cancel after a checkpoint: the user wants it stopped


#: Trial state after an attempt that exited with each code.
STATE_OF = {
    ExitCode.FINISHED: "finished", ExitCode.FAILED: "failed", ExitCode.BAD_INPUT: "failed",
    ExitCode.LOCKED: "running", ExitCode.PREEMPTED: "preempted", ExitCode.KILLED: "killed",
}
#: Exit code of each state an attempt ends in (``jobs.train``'s own ending). ``pruned``: stopped
#: early by a Tune scheduler after a checkpoint; done for good (MLflow FINISHED, never resumed).
CODE_OF = {"finished": ExitCode.FINISHED, "pruned": ExitCode.FINISHED, "failed": ExitCode.FAILED,
           "preempted": ExitCode.PREEMPTED, "killed": ExitCode.KILLED}
#: States a trial never leaves: a re-run skips it.
DONE_STATES = frozenset({"finished", "pruned"})
#: Scheduler states of a job that is queued or running (Slurm's names; the in-process backends
#: report RUNNING or EXITED).
LIVE_STATES = frozenset({
    "PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
    "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING",
})
#: Why a Slurm job that ended without closing its run died (sacct state → reason).
SLURM_DEATHS = {
    "OUT_OF_MEMORY": "out of memory (Slurm OUT_OF_MEMORY)", "NODE_FAIL": "its node failed (Slurm NODE_FAIL)",
    "TIMEOUT": "time limit reached before a checkpoint (Slurm TIMEOUT)", "CANCELLED": "cancelled (scancel)",
    "FAILED": "its job failed (Slurm FAILED)", "BOOT_FAIL": "its node did not boot (Slurm BOOT_FAIL)",
    "DEADLINE": "deadline reached (Slurm DEADLINE)", "PREEMPTED": "preempted without requeue (Slurm PREEMPTED)",
}


def exit_code(code: int | None) -> ExitCode | None:
    """``code`` as an :class:`ExitCode`, or None for anything else (a signal, a crash)."""
    try:
        return ExitCode(code)
    except ValueError:
        return None


def death_reason(returncode: int) -> str:
    """One line for a process that ended with ``returncode`` outside the contract (a negative
    ``Popen.returncode`` is the signal that killed it)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " — out of memory?" if -returncode == signal.SIGKILL else ""
        return f"killed by {name} (signal {-returncode}){hint}"
    if returncode > 128:
        return death_reason(128 - returncode)
    return f"exited with code {returncode} (not a jobs.train exit code)"


@dataclass(frozen=True)
class StopRequest:
    """A backend asking a running attempt to stop after a checkpoint: ``state`` preempted (it
    resumes later), killed (the user stopped it) or pruned (a scheduler ended it early, for good)."""

    state: str
    reason: str


@dataclass(frozen=True)
class TrialOutcome:
    """How one attempt ended.

    ``state``: finished | pruned | failed | preempted | killed | running (another attempt holds the run
    folder); ``exit_code``: its :class:`ExitCode`; ``reason``: one line for anything but finished;
    ``best_val_bpd`` / ``val_bpd``: bits per dim on the validation images (best over the run, and
    at the end) when known; ``step``: optimizer steps completed when known; ``failures``: failed
    attempts recorded on the run; ``eval_error``: one line when the evaluation after training raised.
    """

    state: str
    exit_code: ExitCode
    trial_id: str
    run_dir: Path | None = None
    run_id: str | None = None
    attempt: int | None = None
    reason: str | None = None
    best_val_bpd: float | None = None
    val_bpd: float | None = None
    step: int | None = None
    failures: int = 0
    eval_error: str | None = None


class Action(enum.Enum):
    """What a backend does after an attempt."""

    DONE = "done"  #: the trial ended in its state (finished, killed, preempted while stopping)
    RETRY = "retry"  #: run it again; it resumes from its checkpoint (a failure was counted)
    REQUEUE = "requeue"  #: run it again at once; it was preempted, not failed
    GIVE_UP = "give-up"  #: failed more than ``max_failures`` times
    STOP_SWEEP = "stop-sweep"  #: bad input or an interruption: launch nothing more


def next_action(code: ExitCode | None, failures: int, max_failures: int, stopping: bool = False) -> Action:
    """The one retry rule. ``code``: the attempt's exit code (None: killed outside the contract,
    counted as a failure); ``failures``: failed attempts so far, this one included; ``stopping``:
    the user or scheduler is stopping the sweep, so nothing is started again."""
    if code is ExitCode.FINISHED or code is ExitCode.LOCKED:
        return Action.DONE
    if code is ExitCode.BAD_INPUT or code is ExitCode.KILLED:
        return Action.STOP_SWEEP
    if stopping:
        return Action.DONE
    if code is ExitCode.PREEMPTED:
        return Action.REQUEUE
    return Action.RETRY if failures <= max_failures else Action.GIVE_UP


@dataclass(frozen=True)
class Plan:
    """A re-run's decision for one trial: ``state`` to show, whether to ``launch`` an attempt,
    and a one-line ``why`` for trials it skips or only evaluates."""

    state: str
    launch: bool
    why: str | None = None


def plan_trial(run, live_job: str | None, max_failures: int, evaluations: tuple[str, ...],
               failures: int) -> Plan:
    """What a re-run does with one trial, from its MLflow run (a :class:`jobs.tracking.RunSummary`
    or None), the id of a live job running it, ``max_failures``, the sweep's evaluations, and the
    failed attempts recorded on the run.

    FINISHED with every evaluation logged → skip; FINISHED without (tag ``rgflow.eval.protocol``
    absent) → launch (the attempt returns at once and evaluates); pruned (FINISHED, ``rgflow.state``
    pruned) → skip, never evaluated; a live job → skip; failed more than ``max_failures`` times →
    skip (given up); anything else → launch.
    """
    from jobs.tracking.tags import EVAL_PROTOCOL_TAG

    if live_job is not None:
        return Plan("running", False, f"job {live_job} still alive")
    if run is not None and run.status == "FINISHED" and run.state == "pruned":
        return Plan("pruned", False, "pruned by the scheduler")
    if run is not None and run.status == "FINISHED":
        if evaluations and EVAL_PROTOCOL_TAG not in run.tags:
            return Plan("finished", True, "finished but not evaluated: evaluating")
        return Plan("finished", False)
    if run is not None and run.status == "FAILED" and failures > max_failures:
        return Plan("failed", False, f"failed {failures} times (max_failures={max_failures})")
    return Plan("pending", True)


def trial_state(job_state: str, run) -> str:
    """A trial's state for the progress line and ``status`` from its scheduler job state (Slurm's
    names, or RUNNING/EXITED) and its MLflow run (a ``RunSummary`` or None)."""
    if run is not None and run.status == "FINISHED":
        return "pruned" if run.state == "pruned" else "finished"
    if job_state == "PENDING":
        return "pending" if run is None else "preempted"
    if job_state in LIVE_STATES:
        return "running"
    if run is not None and run.state in ("preempted", "killed") and job_state in ("REQUEUED", "PREEMPTED"):
        return "preempted"
    if job_state == "CANCELLED":
        return "killed"
    return "failed"


def sweep_end_state(trials, runs: dict, launched: dict[str, str] | None = None,
                    evaluations: tuple[str, ...] = (), expected: int | None = None) -> tuple[str, str | None]:
    """The parent run's end state and reason from the trial runs (``runs``: trial id →
    ``RunSummary``) of ``trials`` (objects with ``index`` and ``trial_id``) and, for trials that
    never got a run (rejected input), this launch's states: all FINISHED (and, with
    ``evaluations``, all evaluated) → finished; any FAILED, or FINISHED without its evaluation →
    failed (a re-run evaluates those); otherwise killed (unfinished). Pruned trials are FINISHED and
    need no evaluation. ``expected``: the trials a searcher sweep will have in all (fewer sampled so
    far: unfinished)."""
    launched = launched or {}
    from jobs.tracking.tags import EVAL_PROTOCOL_TAG, REASON_TAG

    def failed(t) -> bool:
        run = runs.get(t.trial_id)
        return run.status == "FAILED" if run is not None else launched.get(t.trial_id) == "failed"

    def why(t) -> str:
        run = runs.get(t.trial_id)
        return run.tags.get(REASON_TAG, "no reason given")[:120] if run else "rejected its input (no run)"

    trials = list(trials)
    bad = [t for t in trials if failed(t)]
    unfinished = [t for t in trials if runs.get(t.trial_id) is None or runs[t.trial_id].status != "FINISHED"]
    unevaluated = [t for t in trials if evaluations and t not in unfinished and runs[t.trial_id].state != "pruned"
                   and EVAL_PROTOCOL_TAG not in runs[t.trial_id].tags]
    missing = max((expected or 0) - len(trials), 0)
    if not unfinished and not unevaluated and not missing:
        return "finished", None
    if unevaluated and not bad:
        return "failed", (f"{len(unevaluated)} of {len(trials)} trials finished but their evaluation did not "
                          "complete; re-run the sweep to evaluate them")
    if bad:
        detail = "; ".join(f"{t.index}: {why(t)}" for t in bad[:5])
        return "failed", f"{len(bad)} of {len(trials)} trials failed ({detail})"
    return "killed", f"{len(unfinished) + missing} of {len(trials) + missing} trials unfinished"


def execute(ctx, task, evaluate: bool | None = None, stop_flag=None, on_validation=None,
            tags: dict[str, str] | None = None) -> TrialOutcome:
    """One attempt of ``task`` in this process (a Ray worker, a Slurm job): ``jobs.train.run_trial``
    with the sweep's ``ctx`` (a ``SweepContext``), resuming from the run folder's checkpoint or
    returning at once for a finished trial; then — when it finished (not pruned) and ``evaluate``
    (default: the sweep's setting) — the sweep's evaluations. ``stop_flag``: polled before every
    training step; a :class:`StopRequest` stops the attempt after a checkpoint. ``on_validation(step,
    metrics)``: called after every validation. ``tags``: more tags for the run (e.g. the Ray node).
    An evaluation that raises never fails the trial: its one-line error is in ``eval_error``."""
    import dataclasses
    import os

    from jobs.backends.base import child_environment
    from jobs.train import run_trial

    child_environment()
    if os.path.isdir(ctx.cwd):
        os.chdir(ctx.cwd)
    outcome = run_trial(
        task.config, sweep=ctx.name, sweep_id=ctx.sweep_id, trial_index=task.index, parent_run_id=ctx.parent_run_id,
        tracking_uri=ctx.tracking_uri, experiment_id=ctx.experiment_id, backend=ctx.backend, stop_flag=stop_flag,
        sweep_params=ctx.parent_params, run_name=getattr(task, "run_name", "") or None, on_validation=on_validation,
        tags=tags,
    )
    if outcome.state == "finished" and ctx.evaluations and (evaluate is None or evaluate):
        error = evaluate_trial(task.config, task.run_dir, ctx.tracking_uri, ctx.evaluations)
        outcome = dataclasses.replace(outcome, eval_error=error)
    return outcome


#: Seconds between tries of an evaluation that failed because the tracking store was unreachable.
EVAL_RETRY_S = (10.0, 30.0, 60.0)


def evaluate_trial(config, run_dir, tracking_uri: str | None, evaluations: tuple[str, ...]) -> str | None:
    """The sweep's ``evaluations`` of a finished trial (``jobs.evaluate``), tried again after
    :data:`EVAL_RETRY_S` while the tracking store is unreachable; None, or the error as one line
    (the traceback goes to this process's stderr). A trial whose evaluation never completed is
    evaluated by the next re-run (:func:`plan_trial`)."""
    import time
    import traceback

    from jobs.evaluate import evaluate_trial as run_evaluations
    from jobs.tracking.store import is_transient

    for wait in (*EVAL_RETRY_S, None):
        try:
            run_evaluations(config, run_dir, tracking_uri=tracking_uri, selected=evaluations)
            return None
        except Exception as err:  # noqa: BLE001 - reported, never fails the trained trial
            traceback.print_exc()
            if wait is None or not is_transient(err):
                return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            print(f"evaluation: tracking store unreachable; trying again in {wait:.0f} s", flush=True)
            time.sleep(wait)
    return None


def failures_of(tags: dict[str, str], status: str) -> int:
    """Failed attempts recorded on a trial run (tag ``rgflow.failures``; a FAILED run without it
    counts one)."""
    from jobs.tracking.tags import FAILURES_TAG

    default = 1 if status == "FAILED" else 0
    try:
        return int(tags.get(FAILURES_TAG, default))
    except ValueError:
        return default
