"""Ray Tune backend: an embedded local Ray by default, or a running cluster.

Settings (the sweep file's ``ray:`` section, ``jobs.sweep_spec.RaySettings``): ``address`` —
``local`` (an embedded Ray started here with all of this machine's CPUs and detected GPUs, and
stopped at the end), ``auto``, ``ray://host:port`` or ``host:port`` (a running cluster, e.g. one
started by ``slurm/ray-cluster.sh``); ``max_concurrent_trials``; ``storage_path`` (Tune's
experiment folder; default ``<sweep run folder>/tune``). The sweep's ``max_failures`` bounds
retries: a failed attempt is retried in its worker by :func:`jobs.attempt.next_action`, a worker
that died (SIGKILL, out of memory) by Tune's ``FailureConfig``; both resume from the checkpoint.

Per-trial resources come from the sweep's ``resources`` (``cpus``, ``gpus`` — fractional GPUs let
several small trials share one —, ``mem_gb``).

Each launch is one Tune experiment, ``<storage path>/launch-<time>``, whose workers are reused
from trial to trial (``reuse_actors``: a worker process and its imports cost seconds). A
function trainable runs one attempt (:func:`jobs.attempt.execute`) in the worker, with the parent run id passed explicitly; a retry or a later launch resumes the
trial from its own checkpoint because its run folder is the same. Interrupted drivers are
continued by re-running the same command, which re-expands the sweep and skips FINISHED trials —
chosen over ``Tuner.restore`` because it also picks up changed axes and never replays a trial
whose MLflow run already finished. The console stays quiet: Tune's verbosity is 0 with
``RAY_AIR_NEW_OUTPUT=0``, workers' output is not forwarded (``log_to_driver=False``; it stays in
Ray's session logs and the trial's ``train.log``), and ``jobs.sweep`` sends whatever the driver
still writes to ``<sweep run folder>/logs/driver.log``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from jobs.attempt import Action, ExitCode, execute, next_action
from jobs.backends.base import (
    Backend, LaunchResult, ProgressTracker, SweepContext, TrialResources, TrialTask, is_process,
)
from jobs.sweep_state import SweepState, TrialJob, save_state


def driver_alive(job_id: str) -> bool:
    """Whether ``pid:N`` names a live ``jobs.sweep`` process other than this one."""
    pid = int(job_id[4:]) if job_id.startswith("pid:") and job_id[4:].isdigit() else 0
    return pid != os.getpid() and is_process(pid, "jobs.sweep")


def _trainable(config: dict, ctx: SweepContext = None, tasks: dict = None) -> None:
    """Tune function trainable: attempts of one trial until :func:`jobs.attempt.next_action` says
    done, reported once with the outcome."""
    from ray import tune

    task: TrialTask = tasks[config["index"]]
    while True:
        outcome = execute(ctx, task)
        if next_action(outcome.exit_code, outcome.failures, ctx.max_failures) not in (Action.RETRY, Action.REQUEUE):
            break
    tune.report({"exit_code": int(outcome.exit_code), "state": outcome.state,
                 "val_bpd": outcome.val_bpd if outcome.val_bpd is not None else float("nan")})


def _callback(tracker: ProgressTracker, tasks: dict[int, TrialTask]):
    from ray import tune

    class ProgressCallback(tune.Callback):
        """Keeps the progress line in step with Tune's trial events."""

        def _tid(self, trial) -> str:
            return tasks[trial.config["index"]].trial_id

        def on_trial_start(self, iteration, trials, trial, **info):
            tracker.set(self._tid(trial), "running")

        def on_trial_recover(self, iteration, trials, trial, **info):
            tracker.set(self._tid(trial), "running")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            bpd = result.get("val_bpd")
            tracker.set(self._tid(trial), result.get("state", "running"), None if bpd is None or bpd != bpd else bpd)

        def on_trial_error(self, iteration, trials, trial, **info):
            tracker.set(self._tid(trial), "failed")

        def on_step_begin(self, iteration, trials, **info):
            tracker.draw()

    return ProgressCallback()


class RayBackend(Backend):
    name = "ray"

    def launch(
        self, ctx: SweepContext, tasks: list[TrialTask], tracker: ProgressTracker, state: SweepState, wait: bool
    ) -> LaunchResult:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        import ray
        from ray import tune

        settings = ctx.settings
        address = settings.address or "local"
        init_kw: dict[str, Any] = dict(address=address, log_to_driver=False, configure_logging=False)
        if address == "local":
            init_kw.update(num_cpus=os.cpu_count(), include_dashboard=False)
        by_index = {t.index: t for t in tasks}
        for task in tasks:
            state.trials[task.trial_id] = TrialJob(index=task.index, job_id=f"pid:{os.getpid()}", submitted_at=time.time())
        save_state(ctx.sweep_dir, state)
        ray.init(**init_kw)
        try:
            print(f"sweep {ctx.name}: Ray {address}, resources {ray.cluster_resources()}", flush=True)
            trainable = tune.with_resources(
                tune.with_parameters(_trainable, ctx=ctx, tasks=by_index), self.trial_resources(ctx)
            )
            tuner = tune.Tuner(
                trainable,
                param_space={"index": tune.grid_search(sorted(by_index))},
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=settings.max_concurrent_trials,
                    reuse_actors=True,  # no new worker process (and torch import) per trial
                    trial_name_creator=lambda t: f"{t.config['index']:04d}-{by_index[t.config['index']].trial_id}",
                    trial_dirname_creator=lambda t: f"{t.config['index']:04d}-{by_index[t.config['index']].trial_id}",
                ),
                run_config=tune.RunConfig(
                    name=time.strftime("launch-%Y%m%d-%H%M%S"),
                    storage_path=str(Path(settings.storage_path or Path(ctx.sweep_dir, "tune")).resolve()),
                    failure_config=tune.FailureConfig(max_failures=ctx.max_failures),
                    verbose=0,
                    callbacks=[_callback(tracker, by_index)],
                ),
            )
            grid = tuner.fit()
        finally:
            ray.shutdown()
        states = {}
        for result in grid:
            task = by_index[result.config["index"]] if result.config else None
            if task is None:
                continue
            code = (result.metrics or {}).get("exit_code")
            states[task.trial_id] = "failed" if result.error is not None else {ExitCode.FINISHED: "finished"}.get(
                code, (result.metrics or {}).get("state", "killed"))
        interrupted = any(tracker.states.get(t.trial_id) in ("running", "pending") for t in tasks) or any(
            s == "killed" for s in states.values())
        return LaunchResult(states=states, interrupted=interrupted)

    def live_jobs(self, ctx: SweepContext, state: SweepState | None) -> dict[str, str]:
        """Trials handed to a Ray driver (``pid:N``) that is still running."""
        return {tid: job_id for tid, (job_id, s) in self.job_states(ctx, state).items() if s == "RUNNING"}

    def job_states(self, ctx: SweepContext, state: SweepState | None) -> dict[str, tuple[str, str]]:
        """Trial id → (``pid:N`` of the driver that ran it last, ``RUNNING`` while that driver lives)."""
        if state is None or state.backend != self.name:
            return {}
        return {tid: (job.job_id, "RUNNING" if driver_alive(job.job_id) else "EXITED")
                for tid, job in state.trials.items()}

    @staticmethod
    def trial_resources(ctx: SweepContext) -> dict[str, float]:
        """Tune resource request of one trial from the sweep's ``resources`` (memory in bytes)."""
        return trial_request(ctx.resources)


def trial_request(res: TrialResources) -> dict[str, float]:
    """Tune resource request (``cpu``, ``gpu``, ``memory`` in bytes) of one trial."""
    out = {"cpu": float(res.cpus or 1), "gpu": float(res.gpus or 0)}
    if res.mem_gb:
        out["memory"] = float(res.mem_gb) * 2**30
    return out
