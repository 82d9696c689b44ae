"""Local backend: trials as subprocesses on this machine, one after another or N at a time.

Settings (the sweep file's ``local:`` section)::

    local:
      parallel: 1     # trials running at once

Each trial is ``python -m jobs.train SWEEP.yaml --trial N [overrides…]`` (the same overrides as
the sweep command, so the child expands the same trial), with ``MLFLOW_RUN_ID`` removed from its
environment and the tracking URI passed explicitly; the child attaches its run to the sweep's
parent run, found by the sweep id. Its output goes to
``<sweep run folder>/logs/trial-NNNN.log``. When the sweep's evaluation is enabled, a finished trial is
evaluated in its own process right after training (``jobs.train --evaluate``): a trial that
outlives its launcher (a killed driver) still ends evaluated.
What each exit code leads to is :func:`jobs.attempt.next_action`: finished; failed — restarted
(it resumes from its checkpoint) while the failure count allows; bad input — the sweep stops
launching, since every trial shares the same files; preempted — restarted at once; interrupted —
the sweep stops. A trial killed by a signal (SIGKILL, the kernel's OOM killer) could not end its
run: the launcher reaps it (:func:`jobs.run_folder.reap_dead_attempt`: FAILED with the signal as
reason, counted as a failure) and retries it the same way. Ctrl-C (or SIGINT/SIGTERM to the
launcher) is forwarded once to each running trial as SIGINT, so each checkpoints and ends its run
KILLED; a second Ctrl-C is not forwarded again (it would cut a checkpoint short).

GPUs (:mod:`jobs.backends.gpus`): each trial process gets ``CUDA_VISIBLE_DEVICES`` (in its
environment only) set to the ``resources.gpus`` GPUs of a free slot of the visible ones, and ``""``
when it asks for none; the launcher writes the value as the first line of each attempt in the trial's log. A launch
whose parallel trials (``local.parallel``, at most the trials to run) exceed the GPU slots is refused before any trial starts
(:class:`~jobs.overrides.ConfigError`, exit 2).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from jobs.attempt import STATE_OF, Action, death_reason, exit_code, next_action
from jobs.backends.base import Backend, LaunchResult, ProgressTracker, SweepContext, TrialTask, is_process
from jobs.backends.gpus import SlotPool, gpu_pool
from jobs.run_folder import read_state, reap_dead_attempt
from jobs.sweep_state import SweepState, TrialJob, save_state

POLL_S = 0.2


@dataclass
class _Running:
    task: TrialTask
    proc: subprocess.Popen
    log: object
    slot: int


def trial_command(ctx: SweepContext, index: int) -> list[str]:
    """The argument list that runs trial ``index`` of the sweep as a subprocess (which evaluates
    it after training when the sweep evaluates)."""
    evaluate = ["--evaluate"] if ctx.evaluations else []
    return [sys.executable, "-m", "jobs.train", ctx.sweep_path, "--trial", str(index), *evaluate, *ctx.overrides]


def trial_environment(ctx: SweepContext) -> dict[str, str]:
    """The trial subprocess's environment: this one without ``MLFLOW_RUN_ID``, with the tracking
    URI explicit (the child finds the sweep's parent run by the sweep id, ``jobs.train``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")}
    env["MLFLOW_TRACKING_URI"] = ctx.tracking_uri
    return env


class LocalBackend(Backend):
    name = "local"

    def launch(
        self, ctx: SweepContext, tasks: list[TrialTask], tracker: ProgressTracker, state: SweepState, wait: bool
    ) -> LaunchResult:
        parallel = ctx.settings.parallel
        slots = gpu_pool(min(parallel, len(tasks)), float(ctx.resources.gpus or 0), os.environ)
        queue = sorted(tasks, key=lambda t: t.index)
        running: list[_Running] = []
        states: dict[str, str] = {}
        stop_reason: str | None = None
        logs = Path(ctx.logs_dir())
        logs.mkdir(parents=True, exist_ok=True)
        env = trial_environment(ctx)
        interrupted = []
        forwarded: set[int] = set()
        early_deaths: dict[str, int] = {}  # deaths before training began (no run folder state to count them)

        def on_signal(signum, frame):
            interrupted.append(signum)
            for r in running:
                if r.proc.poll() is None and r.proc.pid not in forwarded:
                    forwarded.add(r.proc.pid)
                    r.proc.send_signal(signal.SIGINT)

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while queue or running:
                while queue and len(running) < parallel and not interrupted and stop_reason is None:
                    running.append(self._start(ctx, queue.pop(0), env, logs, state, slots))
                    tracker.set(running[-1].task.trial_id, "running")
                time.sleep(POLL_S)
                for r in [r for r in running if r.proc.poll() is not None]:
                    running.remove(r)
                    slots.free(r.slot)
                    r.log.close()
                    action, trial_state = self._after(ctx, r, bool(interrupted), logs, early_deaths)
                    if action in (Action.RETRY, Action.REQUEUE):
                        queue.insert(0, r.task)
                        continue
                    states[r.task.trial_id] = trial_state
                    tracker.set(r.task.trial_id, trial_state,
                                _run_bpd(ctx, r.task.trial_id) if trial_state == "finished" else None)
                    if action is Action.STOP_SWEEP and stop_reason is None:
                        stop_reason = (f"trial {r.task.index} was interrupted" if trial_state == "killed" else
                                       f"trial {r.task.index} rejected its input (exit 2): see {r.log.name}")
                if (interrupted or stop_reason) and not running:
                    queue.clear()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return LaunchResult(states=states, interrupted=bool(interrupted) or (stop_reason or "").endswith("interrupted"),
                            message=stop_reason)

    @staticmethod
    def _after(ctx: SweepContext, r: _Running, stopping: bool, logs: Path,
               early_deaths: dict[str, int]) -> tuple[Action, str]:
        """What the ended process ``r`` means (:func:`jobs.attempt.next_action`) and the trial's
        state; reaps an attempt killed outside the contract."""
        code = exit_code(r.proc.returncode)
        tid = r.task.trial_id
        if code is None:
            reason = death_reason(r.proc.returncode)
            if reap_dead_attempt(r.task.run_dir, reason) is None:  # died before training: nothing to close
                early_deaths[tid] = early_deaths.get(tid, 0) + 1
        failures = int((read_state(r.task.run_dir) or {}).get("failures", 0)) + early_deaths.get(tid, 0)
        if code is None:
            _append_log(logs, r.task, f"local backend: trial {r.task.index} {reason}; failure {failures}")
        action = next_action(code, failures, ctx.max_failures, stopping)
        trial_state = STATE_OF[code] if code is not None else ("killed" if stopping else "failed")
        return action, trial_state

    def _start(self, ctx: SweepContext, task: TrialTask, env: dict, logs: Path, state: SweepState,
               slots: SlotPool) -> _Running:
        slot = slots.take()
        devices = slots.visible_devices(slot)
        where = f"GPU slot {slot} of {len(slots.slots)}" if devices else "resources.gpus=0: GPUs hidden"
        log = open(logs / f"trial-{task.index:04d}.log", "ab")
        log.write(f"local backend: trial {task.index} starts with CUDA_VISIBLE_DEVICES={devices} ({where})\n".encode())
        log.flush()
        proc = subprocess.Popen(trial_command(ctx, task.index), env={**env, "CUDA_VISIBLE_DEVICES": devices},
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        state.trials[task.trial_id] = TrialJob(index=task.index, job_id=str(proc.pid), submitted_at=time.time())
        save_state(ctx.sweep_dir, state)
        return _Running(task, proc, log, slot)

    def live_jobs(self, ctx: SweepContext, state: SweepState | None) -> dict[str, str]:
        if state is None or state.backend != self.name:
            return {}
        return {tid: job.job_id for tid, job in state.trials.items() if _is_trial_process(int(job.job_id), ctx)}

    def job_states(self, ctx: SweepContext, state: SweepState | None) -> dict[str, tuple[str, str]]:
        if state is None or state.backend != self.name:
            return {}
        return {tid: (job.job_id, "RUNNING" if _is_trial_process(int(job.job_id), ctx) else "EXITED")
                for tid, job in state.trials.items()}

    def cancel(self, ctx: SweepContext, state: SweepState | None) -> list[str]:
        """SIGINT to every live trial process of the sweep (each checkpoints and ends KILLED)."""
        signalled = []
        for job_id in self.live_jobs(ctx, state).values():
            try:
                os.kill(int(job_id), signal.SIGINT)
                signalled.append(job_id)
            except ProcessLookupError:
                pass
        return signalled


def _append_log(logs: Path, task: TrialTask, line: str) -> None:
    """Add one line (the launcher's own words) to the trial's log."""
    with open(logs / f"trial-{task.index:04d}.log", "a") as log:
        log.write(line + "\n")


def _is_trial_process(pid: int, ctx: SweepContext) -> bool:
    """True if ``pid`` is alive and is a ``jobs.train`` process of this sweep."""
    return is_process(pid, "jobs.train", ctx.sweep_path)


def _run_bpd(ctx: SweepContext, trial_id: str) -> float | None:
    from jobs.backends.base import best_val_bpd
    from jobs.tracking import find_trial_runs

    run = find_trial_runs(ctx.tracking_uri, ctx.experiment_id, trial_ids=[trial_id]).get(trial_id)
    return None if run is None else best_val_bpd(run.metrics)
