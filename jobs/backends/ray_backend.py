"""Ray Tune backend: an embedded local Ray by default, or a running cluster.

Settings (the sweep file's ``ray:`` section, ``jobs.sweep_spec.RaySettings``): ``address`` —
``local`` (an embedded Ray started here with all of this machine's CPUs and detected GPUs, and
stopped at the end), ``auto``, ``ray://host:port`` or ``host:port`` (a running cluster, e.g. one
started by ``slurm/ray-cluster.sh``); ``max_concurrent_trials``; ``storage_path`` (Tune's
experiment folder; default ``<sweep run folder>/tune``); ``dashboard`` (see below). The sweep's
``max_failures`` bounds retries: a failed attempt is retried in its worker by
:func:`jobs.attempt.next_action`, a worker that died (SIGKILL, out of memory) by Tune's
``FailureConfig``; both resume from the checkpoint.

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

**Security of the embedded Ray** (``ray.address=local``): nobody else can attach to it. Every
listener (GCS, raylet and object manager, runtime-env agent, workers) is bound to 127.0.0.1 and
the cluster is advertised there: Ray 2.60 binds its gRPC servers to loopback only when the node
address is 127.0.0.1, which ``ray.init`` keeps only with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
(its macOS/Windows default; on Linux it rewrites 127.0.0.1 to the host's address and listens on
all interfaces). On top of that (other users of the same host reach loopback too) the cluster
runs with Ray's token authentication: a random token made for this launch
(``secrets.token_hex(32)``), written with mode 0600 to ``<sweep run folder>/ray-auth-token``,
given to the driver and — through the environment they inherit, ``RAY_AUTH_MODE=token``,
``RAY_AUTH_TOKEN_PATH`` — to the GCS, the raylet and Tune's workers, never logged nor tracked; the
file is removed and the process environment restored after ``ray.shutdown()``. Whatever
``RAY_AUTH_MODE`` the environment has (the tests set ``disabled``) is overridden for the embedded
Ray. Ray's dashboard is off unless ``ray.dashboard: true`` (then on 127.0.0.1 only, token-protected
too; it needs ``ray[default]``). A running cluster (any other ``ray.address``) is left as its user
configured it: ``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN``/``RAY_AUTH_TOKEN_PATH`` (or Ray's
``~/.ray/auth_token`` for ``auto``) are passed through untouched.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator
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


LOOPBACK = "127.0.0.1"
#: The embedded Ray's token file in the sweep's run folder (mode 0600, removed after the launch).
TOKEN_FILE = "ray-auth-token"
_AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
#: ``0``: Ray's local-only mode (its macOS/Windows default): ``ray.init`` keeps a 127.0.0.1 node
#: address instead of rewriting it to the host's, and its servers then bind to loopback.
_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _refresh_ray_auth() -> None:
    """Make an already imported Ray re-read ``RAY_AUTH_*`` (its config and token are cached per
    process): config first, then the token cache, as Ray's own tests do."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # a Ray without token authentication: nothing cached
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def private_embedded_ray(sweep_dir: str) -> Iterator[Path]:
    """For the duration of one embedded Ray: loopback-only node address and token authentication
    with a fresh random token in ``<sweep_dir>/ray-auth-token`` (mode 0600), through this process'
    environment (inherited by the GCS, the raylet and the workers it starts). The environment, Ray's
    cached auth state and local-only flag are restored, and the token file removed, on exit.
    Yields the token file's path."""
    path = Path(sweep_dir, TOKEN_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older file keeps its mode through O_CREAT
        os.write(fd, secrets.token_hex(32).encode())
    finally:
        os.close(fd)
    saved = {k: os.environ.get(k) for k in (*_AUTH_ENV, _CLUSTER_ENV)}
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path.resolve()), _CLUSTER_ENV: "0"})
    os.environ.pop("RAY_AUTH_TOKEN", None)  # it would take precedence over the file
    from ray._private import ray_constants

    cluster_flag = ray_constants.ENABLE_RAY_CLUSTER  # read at import: set it for an already imported Ray
    ray_constants.ENABLE_RAY_CLUSTER = False
    _refresh_ray_auth()
    try:
        yield path
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_flag
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _refresh_ray_auth()
        path.unlink(missing_ok=True)


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
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        settings = ctx.settings
        address = settings.address or "local"
        embedded = address == "local"
        init_kw: dict[str, Any] = dict(address=address, log_to_driver=False, configure_logging=False)
        note = None
        if embedded:
            init_kw.update(num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address=LOOPBACK)
            if getattr(settings, "dashboard", False):
                from ray._private.utils import get_dashboard_dependency_error

                if get_dashboard_dependency_error() is None:
                    init_kw.update(include_dashboard=True, dashboard_host=LOOPBACK)
                else:
                    note = ("ray.dashboard=true but Ray's dashboard packages are not installed (pip install "
                            "'ray[default]'): started without the dashboard")
                    print(f"sweep {ctx.name}: {note}", flush=True)
        by_index = {t.index: t for t in tasks}
        for task in tasks:
            state.trials[task.trial_id] = TrialJob(index=task.index, job_id=f"pid:{os.getpid()}", submitted_at=time.time())
        save_state(ctx.sweep_dir, state)
        with private_embedded_ray(ctx.sweep_dir) if embedded else contextlib.nullcontext():
            grid = self._fit(ctx, by_index, tracker, address, init_kw)
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
        return LaunchResult(states=states, interrupted=interrupted, message=note)

    def _fit(self, ctx: SweepContext, by_index: dict[int, TrialTask], tracker: ProgressTracker, address: str,
             init_kw: dict[str, Any]):
        """Ray started (or joined), the Tune experiment run, Ray shut down: Tune's result grid."""
        import ray
        from ray import tune

        settings = ctx.settings
        info = ray.init(**init_kw)
        try:
            gcs = (getattr(info, "address_info", None) or {}).get("gcs_address") or address
            print(f"sweep {ctx.name}: Ray {address} at {gcs}, resources {ray.cluster_resources()}", flush=True)
            if address == "local" and not gcs.startswith(f"{LOOPBACK}:"):
                print(f"sweep {ctx.name}: warning: the embedded Ray is advertised at {gcs}, not on {LOOPBACK}; "
                      "only its token authentication keeps other hosts out", flush=True)
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
            return tuner.fit()
        finally:
            ray.shutdown()

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
