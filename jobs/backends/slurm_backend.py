"""Slurm backend through submitit: one job array per sweep launch, split at the array size limit.

Settings (the sweep file's ``slurm:`` section, see ``jobs.sweep_spec.SlurmSettings``): partition,
account, qos, constraint; ``gpus_per_trial``, ``cpus_per_trial``, ``mem_gb``, ``time_min`` (from
``resources`` when null); ``array_parallelism`` (array tasks running at once, ``%N``; null: no cap);
``max_array_size`` (larger launches are split into several arrays); ``extra_sbatch`` (more
``--flag[=value]`` options). ``jobs.sweep`` hands them over as ``ctx.settings`` (the typed
``SlurmSettings``) and ``ctx.resources``. USR2 is asked for :data:`SIGNAL_DELAY_S` seconds before the time limit.

The submitted callable :class:`SlurmTrial` is a ``submitit.helpers.Checkpointable``: its
``__call__`` runs one attempt (:func:`jobs.attempt.execute`) in the job (parent run id and tracking URI passed
explicitly, ``MLFLOW_RUN_ID`` removed). When the trial gets USR2 (submitit's ``--signal=USR2@N``
before the time limit, or ``scancel --signal=USR2`` on preemption) ``jobs.train`` checkpoints and
returns 75; if the job is still RUNNING, the callable then hands over to submitit's own USR2
handler, which calls :meth:`SlurmTrial.checkpoint` (a requeue ``DelayedSubmission``), requeues
the job and exits; the next start resumes from the checkpoint into the same MLflow run. SIGTERM
(``scancel``, ``scontrol requeue``, preemption by Slurm) also checkpoints but never self-requeues:
Slurm either requeues the job itself or it was cancelled. Submitit ignores SIGTERM, so the trial
also checkpoints regularly by itself. With evaluation enabled, an evaluation array is submitted with
``--dependency=aftercorr:<training array>`` (task *i* starts once training task *i* completed
successfully: one ``afterok`` per trial) and ``--kill-on-invalid-dep=yes``.

Job ids are saved in the sweep state (``sweep-state.json``) at once, so ``status``, ``cancel`` and
re-runs (which skip trials whose job is still queued or running) work from any shell.
"""
from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from jobs.attempt import LIVE_STATES, ExitCode, evaluate_trial, execute, trial_state
from jobs.backends.base import (
    Backend, LaunchResult, ProgressTracker, SweepContext, TrialTask, best_val_bpd, child_environment,
)
from jobs.overrides import ConfigError
from jobs.sweep_state import SweepState, TrialJob, save_state

DEFAULT_MAX_ARRAY = 1000
POLL_S = 5.0  # --wait: seconds between scheduler + MLflow polls
SIGNAL_DELAY_S = 120  # as slurm/train.sh: time to checkpoint before the time limit
_TASK_RANGE = re.compile(r"^(\d+)_\[(.+?)(%\d+)?\]$")


class SlurmTrial(Checkpointable):
    """The job body: one trial attempt; requeued through submitit when preempted."""

    def __call__(self, ctx: SweepContext, task: TrialTask) -> dict[str, Any]:
        submitit_handler = signal.getsignal(signal.SIGUSR2)
        outcome = execute(ctx, task, evaluate=False)
        if outcome.exit_code is ExitCode.PREEMPTED and "SIGUSR2" in (outcome.reason or "") and _job_running():
            submitit_handler(signal.SIGUSR2, None)  # checkpoint() → scontrol requeue → exit
        if outcome.exit_code is not ExitCode.FINISHED:
            raise RuntimeError(f"trial {task.index} ({task.trial_id}) ended {outcome.state} (exit {outcome.exit_code})")
        return {"trial_id": task.trial_id, "state": outcome.state, "val_bpd": outcome.val_bpd}

    def checkpoint(self, ctx: SweepContext, task: TrialTask) -> DelayedSubmission:
        """Requeue the same trial; it resumes from the checkpoint in its run folder."""
        return DelayedSubmission(SlurmTrial(), ctx, task)


class SlurmEvaluation:
    """The evaluation job of one trial (runs after its training job completed successfully)."""

    def __call__(self, ctx: SweepContext, task: TrialTask) -> str:
        child_environment()
        error = evaluate_trial(task.config, task.run_dir, ctx.tracking_uri, ctx.evaluations)
        if error:
            raise RuntimeError(f"evaluation of trial {task.index} ({task.trial_id}) failed: {error}")
        return task.trial_id


def _job_running() -> bool:
    """Whether this job is still RUNNING — not cancelled (``scancel``) and not already being
    requeued by Slurm itself (``scontrol requeue``, preemption with requeue): only then must the
    job requeue itself."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    done = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=60)
    return done.returncode == 0 and done.stdout.strip() == "RUNNING"


def _slurm_env_ok() -> None:
    for tool in ("sbatch", "sacct", "squeue", "scancel"):
        if not any(Path(d, tool).exists() for d in os.environ.get("PATH", "").split(os.pathsep)):
            raise ConfigError(f"backend=slurm: '{tool}' is not on PATH; run on a Slurm login node or use backend=ray")


def _run(args: list[str], timeout: float = 60) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed (exit {done.returncode}): {done.stderr.strip()[:300]}")
    return done.stdout


def _expand_tasks(spec: str) -> list[str]:
    """``'0-3,7'`` → ``['0', '1', '2', '3', '7']`` (Slurm array task lists)."""
    out = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.extend(str(i) for i in range(int(lo), int(hi or lo) + 1))
    return out


def parse_job_table(text: str) -> dict[str, str]:
    """``JOBID|STATE`` lines (squeue -r / sacct -P) → job id → state; pending array ranges
    (``123_[2-5%2]``) are expanded to one entry per task; ``CANCELLED by 0`` → ``CANCELLED``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if "|" not in line:
            continue
        job, state = line.split("|")[:2]
        job, state = job.strip(), state.strip().split(" ")[0]
        match = _TASK_RANGE.match(job)
        if match:
            for task in _expand_tasks(match.group(2)):
                out[f"{match.group(1)}_{task}"] = state
        elif job:
            out[job] = state
    return out


def scheduler_states(job_ids: list[str], job_name: str) -> dict[str, str]:
    """Scheduler state of each job id: live jobs from ``squeue`` (by job name), ended ones from
    ``sacct``; a job neither knows (accounting lag right after submission) is ``PENDING``."""
    if not job_ids:
        return {}
    live = parse_job_table(_run(["squeue", "-h", "-r", "-n", job_name, "-o", "%i|%T"]))
    states = {j: live[j] for j in job_ids if j in live}
    rest = [j for j in job_ids if j not in states]
    if rest:
        arrays = sorted({j.split("_")[0] for j in rest})
        done = parse_job_table(_run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(arrays)]))
        states.update({j: done.get(j, "PENDING") for j in rest})
    return states


class SlurmBackend(Backend):
    name = "slurm"

    @staticmethod
    def job_name(ctx: SweepContext) -> str:
        return f"rgflow-{ctx.name}"

    def executor(self, ctx: SweepContext, dependency: str | None = None) -> submitit.AutoExecutor:
        """A submitit executor with the sweep's resources and Slurm settings."""
        s, res = ctx.settings, ctx.resources
        gpus = res.gpus or 0
        if gpus != int(gpus):
            raise ConfigError(f"resources.gpus={gpus}: Slurm allocates whole GPUs; use an integer or backend=ray")
        extra = sbatch_options(s.extra_sbatch)
        if dependency:
            extra.update({"dependency": dependency, "kill-on-invalid-dep": "yes"})
        executor = submitit.AutoExecutor(folder=str(Path(ctx.sweep_dir, "submitit").resolve()), cluster="slurm")
        params: dict[str, Any] = dict(
            name=self.job_name(ctx),
            timeout_min=int(res.time_min or 60),
            cpus_per_task=int(res.cpus or 1),
            slurm_array_parallelism=int(s.array_parallelism or s.max_array_size),  # null: no cap below the array
            slurm_signal_delay_s=SIGNAL_DELAY_S,
            slurm_additional_parameters=extra,
        )
        if gpus:
            params["gpus_per_node"] = int(gpus)
        if res.mem_gb:
            params["mem_gb"] = math.ceil(float(res.mem_gb))
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(s, key):
                params[f"slurm_{key}"] = getattr(s, key)
        executor.update_parameters(**params)
        return executor

    def launch(
        self, ctx: SweepContext, tasks: list[TrialTask], tracker: ProgressTracker, state: SweepState, wait: bool
    ) -> LaunchResult:
        _slurm_env_ok()
        tasks = sorted(tasks, key=lambda t: t.index)
        size = int(ctx.settings.max_array_size or DEFAULT_MAX_ARRAY)
        state.submitit_folder = str(Path(ctx.sweep_dir, "submitit").resolve())
        for start in range(0, len(tasks), size):
            chunk = tasks[start:start + size]
            executor = self.executor(ctx)
            with executor.batch():
                jobs = [executor.submit(SlurmTrial(), ctx, t) for t in chunk]
            now = time.time()
            for task, job in zip(chunk, jobs):
                state.trials[task.trial_id] = TrialJob(index=task.index, job_id=str(job.job_id), submitted_at=now)
                tracker.set(task.trial_id, "queued")
            save_state(ctx.sweep_dir, state)
            if ctx.evaluations:
                self._submit_evaluations(ctx, chunk, [str(j.job_id) for j in jobs], state)
        if not wait:
            return LaunchResult(states={t.trial_id: "queued" for t in tasks}, queued=True)
        return self.follow(ctx, state, tracker, {t.trial_id for t in tasks})

    def _submit_evaluations(self, ctx: SweepContext, chunk: list[TrialTask], train_ids: list[str], state: SweepState) -> None:
        array_id = train_ids[0].split("_")[0]
        dependency = f"aftercorr:{array_id}" if "_" in train_ids[0] else f"afterok:{train_ids[0]}"
        executor = self.executor(ctx, dependency=dependency)
        with executor.batch():
            jobs = [executor.submit(SlurmEvaluation(), ctx, t) for t in chunk]
        for task, job in zip(chunk, jobs):
            state.trials[task.trial_id].eval_job_id = str(job.job_id)
        save_state(ctx.sweep_dir, state)

    def follow(self, ctx: SweepContext, state: SweepState, tracker: ProgressTracker, trial_ids: set[str]) -> LaunchResult:
        """Poll the scheduler and MLflow until the jobs of ``trial_ids`` (and their evaluations) ended.
        Ctrl-C stops following; the jobs keep running."""
        from jobs.tracking import find_trial_runs

        poll = POLL_S
        try:
            while True:
                jobs = self.job_states(ctx, state)
                runs = find_trial_runs(ctx.tracking_uri, ctx.experiment_id, trial_ids=trial_ids)
                live = False
                for tid in trial_ids:
                    job_id, job_state = jobs.get(tid, ("", "UNKNOWN"))
                    eval_state = jobs.get(f"eval:{tid}", ("", "COMPLETED"))[1]
                    live |= job_state in LIVE_STATES or eval_state in LIVE_STATES
                    run = runs.get(tid)
                    tracker.set(tid, trial_state(job_state, run), best_val_bpd(run.metrics) if run else None)
                if not live:
                    return LaunchResult(states={tid: tracker.states[tid] for tid in trial_ids})
                time.sleep(poll)
        except KeyboardInterrupt:
            return LaunchResult(states={tid: tracker.states[tid] for tid in trial_ids}, queued=True)

    def live_jobs(self, ctx: SweepContext, state: SweepState | None) -> dict[str, str]:
        return {tid: job_id for tid, (job_id, s) in self.job_states(ctx, state).items()
                if not tid.startswith("eval:") and s in LIVE_STATES}

    def busy(self, ctx: SweepContext, state: SweepState | None) -> bool:
        return any(s in LIVE_STATES for _, s in self.job_states(ctx, state).values())

    def job_states(self, ctx: SweepContext, state: SweepState | None) -> dict[str, tuple[str, str]]:
        """Trial id → (job id, Slurm state); evaluation jobs under ``eval:<trial id>``."""
        if state is None or state.backend != self.name or not state.trials:
            return {}
        ids = state.job_ids()
        states = scheduler_states(ids, self.job_name(ctx))
        out = {tid: (job.job_id, states[job.job_id]) for tid, job in state.trials.items()}
        out.update({f"eval:{tid}": (job.eval_job_id, states[job.eval_job_id])
                    for tid, job in state.trials.items() if job.eval_job_id})
        return out

    def cancel(self, ctx: SweepContext, state: SweepState | None) -> list[str]:
        """``scancel`` every live training and evaluation job of the sweep."""
        live = [job_id for job_id, s in self.job_states(ctx, state).values() if s in LIVE_STATES]
        if live:
            _run(["scancel", *live])
        return live


def sbatch_options(flags: tuple[str, ...]) -> dict[str, Any]:
    """``('--exclusive', '--nodelist=n1')`` → ``{'exclusive': True, 'nodelist': 'n1'}`` (submitit's
    ``slurm_additional_parameters``)."""
    out: dict[str, Any] = {}
    for flag in flags:
        key, sep, value = flag[2:].partition("=")
        out[key] = value if sep else True
    return out
