"""Ray Tune backend: an embedded local Ray by default, or a running cluster.

Settings (the sweep file's ``ray:`` section, ``jobs.sweep_spec.RaySettings``): ``address`` —
``local`` (an embedded Ray started here with all of this machine's CPUs and detected GPUs, and
stopped at the end), ``auto``, ``ray://host:port`` or ``host:port`` (a running cluster, e.g. one
started by ``slurm/ray-cluster.sh``); ``max_concurrent_trials``; ``storage_path`` (where the
sweep's Tune experiment folder, named after the sweep, goes; default ``<sweep run folder>/tune``); ``dashboard`` (see below). The sweep's
``max_failures`` bounds retries: a failed attempt is retried in its worker by
:func:`jobs.attempt.next_action`, a worker that died (SIGKILL, out of memory) by Tune's
``FailureConfig``; both resume from the checkpoint.

Per-trial resources come from the sweep's ``resources`` (``cpus``, ``gpus`` — fractional GPUs let
several small trials share one —, ``mem_gb``).

A sweep is one Tune experiment, ``<storage path>/<sweep name>``, that every launch adds to: each
launch runs a fresh ``Tuner`` there (its own ``experiment_state-<time>.json``, which Tune's
``ExperimentAnalysis`` of the folder opens, the newest first) with the trials ``jobs.sweep`` planned,
each a Tune trial named by the project's trial id in a folder of that name (a later launch that
resumes the trial writes that folder anew: Tune's files there then hold that launch's results,
MLflow the whole curve). A Tune trial's config holds
``index``, ``trial_id`` and the trial's axis values by their dotted keys (``train.batch_size``, …;
a searched trial also ``frame`` and ``name``, what its worker needs to rebuild it), proposed by
:func:`jobs.backends.tune_control.list_searcher` or the sweep's searcher. Workers are reused from
trial to trial (``reuse_actors``: a worker process and its imports cost seconds). A function
trainable runs one attempt (:func:`jobs.attempt.execute`) in the worker, with the parent run id
passed explicitly; a retry or a later launch resumes the trial from its own checkpoint because its
run folder is the same. Interrupted drivers are continued by re-running the same command, which
re-expands the sweep and skips FINISHED trials — chosen over ``Tuner.restore`` because it also
picks up changed axes and never replays a trial whose MLflow run already finished. The console
stays quiet: Tune's verbosity is 0 with
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
too; it needs ``ray[default]``, which the preflight checks). A running cluster (any other
``ray.address``) is left as its user configured it: ``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN``/``RAY_AUTH_TOKEN_PATH`` (or Ray's
``~/.ray/auth_token`` for ``auto``) are passed through untouched.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jobs.attempt import Action, execute, next_action
from jobs.backends.base import (
    Backend, LaunchResult, ProgressTracker, SweepContext, TrialResources, TrialTask, is_process,
)
from jobs.backends.tune_control import (
    BoardWatch, TuneReporter, list_searcher, make_scheduler, make_searcher, start_stop_board,
)
from jobs.config import flatten, resolved_dict
from jobs.tracking.tags import RAY_NODE_TAG
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


def _trainable(config: dict, ctx: SweepContext = None, tasks: dict = None, board=None) -> None:
    """Tune function trainable: attempts of one trial until :func:`jobs.attempt.next_action` says
    done or the board asks it to stop, each validation reported live (:class:`TuneReporter`), the
    outcome reported last. A trial the board stopped before it began reports ``pending`` at once.
    ``config``: the Tune config of one of ``tasks`` or of a searched trial (:meth:`_LaunchTrials.sample`)."""
    import ray
    from ray import tune

    task: TrialTask = searched_task(ctx, config) if "frame" in config else tasks[config["index"]]
    if ray.get(board.get.remote(task.trial_id)) is not None:
        tune.report({"exit_code": -1, "state": "pending", "val_bpd": float("nan")})
        return
    watch = BoardWatch(board, task.trial_id)
    reporter = TuneReporter(task.config.train.batch_size, task.config.train.epochs)

    def stop_flag():
        return watch() or reporter.stopped

    tags = {RAY_NODE_TAG: ray.get_runtime_context().get_node_id()}
    try:
        while True:
            outcome = execute(ctx, task, stop_flag=stop_flag, on_validation=reporter, tags=tags)
            action = next_action(outcome.exit_code, outcome.failures, ctx.max_failures, stopping=stop_flag() is not None)
            if action not in (Action.RETRY, Action.REQUEUE):
                break
    finally:
        watch.close()
    if reporter.stopped is None:
        tune.report({"exit_code": int(outcome.exit_code), "state": outcome.state,
                     "val_bpd": outcome.val_bpd if outcome.val_bpd is not None else float("nan")})


class _DriverStops:
    """SIGINT/SIGTERM to the driver during a launch: the first one stops every trial through the
    board (posted from Tune's loop by :func:`_callback`), each after a checkpoint — SIGINT as killed,
    SIGTERM (a preempted allocation) as preempted; trials not started yet are not started. A second
    SIGINT aborts at once (KeyboardInterrupt)."""

    STATES = {signal.SIGINT: "killed", signal.SIGTERM: "preempted"}

    def __init__(self):
        self.request: tuple[str, str] | None = None
        self.posted = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_DriverStops":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.STATES}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.request is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.request = self.request or (self.STATES[signum], f"sweep driver received {signal.Signals(signum).name}")

    def post(self, board) -> None:
        """Tell the board once a stop was asked (called from Tune's loop, never from the handler)."""
        if self.request is not None and not self.posted:
            self.posted = True
            board.stop_all.remote(*self.request)


def searched_task(ctx: SweepContext, config: dict) -> TrialTask:
    """The task of a searched trial from its Tune config (``index``, ``frame``, ``name`` and the
    searched params among its axis values)."""
    from jobs.run_folder import run_dir_for

    trial = ctx.search.trial(config["index"], config["frame"], {k: config[k] for k in ctx.search.params})
    return TrialTask(trial.index, trial.trial_id, trial.config, str(run_dir_for(trial.config, ctx.name)), config["name"])


def tune_config(ctx: SweepContext, task: TrialTask) -> dict[str, Any]:
    """What Tune (``ExperimentAnalysis``, ``ResultGrid``, ``params.json``) shows as a trial's config:
    ``index``, ``trial_id`` and its value of each axis of the sweep (the keys of the parent run's
    ``sweep.varying`` param), by dotted key."""
    tree = resolved_dict(task.config)
    keys = [k for k in ctx.parent_params["sweep"]["varying"].split(",") if k != "-"]
    return {"index": task.index, "trial_id": task.trial_id,
            **{k: tree[k.partition(".")[0]][k.partition(".")[2]] for k in keys}}


class _LaunchTrials:
    """The trials of one Ray launch: the given ``tasks`` and, with a searcher, those it samples
    (recorded in the sweep's search record before they run, added to the sweep state and the
    progress line)."""

    def __init__(self, ctx: SweepContext, tasks: list[TrialTask], state: SweepState, tracker: ProgressTracker):
        self.ctx, self.state, self.tracker = ctx, state, tracker
        self.by_index: dict[int, TrialTask] = {}
        for task in tasks:
            self.add(task)
        save_state(ctx.sweep_dir, state)

    def add(self, task: TrialTask) -> None:
        self.by_index[task.index] = task
        self.state.trials[task.trial_id] = TrialJob(index=task.index, job_id=f"pid:{os.getpid()}",
                                                    submitted_at=time.time())

    def identify(self, config: dict) -> tuple[str, tuple]:
        """(trial id, ``tune.scheduler.group_by`` values) of a Tune trial config."""
        task = self.by_index[config["index"]]
        keys = self.ctx.tune.scheduler.group_by if self.ctx.tune and self.ctx.tune.scheduler else ()
        flat = flatten(task.config)
        return task.trial_id, tuple(flat.get(k) for k in keys)

    def configs(self) -> list[dict[str, Any]]:
        """The Tune configs of the given tasks, in trial order (:func:`tune_config`)."""
        return [tune_config(self.ctx, self.by_index[i]) for i in sorted(self.by_index)]

    def max_epochs(self) -> float:
        """The longest ``train.epochs`` of the sweep (the scheduler's default budget)."""
        configs = [t.config for t in self.by_index.values()]
        if self.ctx.search is not None:
            configs += [self.ctx.search.trial(0, f, {}).config for f in range(len(self.ctx.search.frames))]
        return max(float(c.train.epochs) for c in configs)

    # -- searcher sweeps --------------------------------------------------------------------------

    def to_run(self) -> int:
        """Tune samples of this launch: the recorded trials to resume plus the budget left."""
        search = self.ctx.search
        done = len(search.entries()) - len(self.by_index)
        return max(search.budget - done, len(self.by_index))

    def searcher(self):
        """The Tune search algorithm (:func:`jobs.backends.tune_control.make_searcher`), told what the
        recorded trials gave (from MLflow) and resuming the unfinished ones."""
        from jobs.backends.base import best_val_bpd
        from jobs.tracking import find_trial_runs

        search = self.ctx.search
        self.entries = search.entries()
        self.known = {t.trial_id: t.index for _, t in search.recorded()}
        recorded = {t.index: t for _, t in search.recorded()}
        runs = find_trial_runs(self.ctx.tracking_uri, self.ctx.experiment_id, trial_ids=list(self.known)) \
            if self.ctx.experiment_id and self.known else {}
        done: dict[int, list] = {}
        pending: dict[int, list] = {}
        for entry in self.entries:
            trial = recorded.get(entry["index"])
            if trial is None:
                continue
            if entry["index"] in self.by_index:
                pending.setdefault(entry["frame"], []).append(entry["params"])
            else:
                run = runs.get(trial.trial_id)
                value = best_val_bpd(run.metrics) if run is not None else None
                done.setdefault(entry["frame"], []).append((entry["params"], value, run.state if run else "failed"))
        return make_searcher(search, done, pending, self.sample)

    def sample(self, frame: int, params: dict[str, Any]) -> dict[str, Any]:
        """Record the searcher's sample (a new trial, or one already recorded) and return its Tune config
        (:func:`tune_config` with the ``frame`` and run ``name`` its worker needs)."""
        from types import SimpleNamespace

        from jobs.run_folder import run_dir_for
        from jobs.train import trial_run_names

        search = self.ctx.search
        trial = search.trial(len(self.entries), frame, params)
        index = self.known.get(trial.trial_id)
        if index is None:
            index = trial.index
            self.entries.append({"index": index, "frame": frame, "params": params})
            search.write(self.entries)
            self.known[trial.trial_id] = index
        if index not in self.by_index:
            trial = search.trial(index, frame, params)
            names = trial_run_names(SimpleNamespace(trials=[t for _, t in search.recorded()]))
            self.add(TrialTask(index, trial.trial_id, trial.config, str(run_dir_for(trial.config, self.ctx.name)),
                               names[-1] if names else ""))
            save_state(self.ctx.sweep_dir, self.state)
            self.tracker.set(trial.trial_id, "pending")
        task = self.by_index[index]
        return {**tune_config(self.ctx, task), "frame": frame, "name": task.run_name}


def trial_name(trial) -> str:
    """A Tune trial's name and folder: the project's trial id."""
    return trial.config["trial_id"]


def _callback(tracker: ProgressTracker, stops: _DriverStops, board):
    from ray import tune

    class ProgressCallback(tune.Callback):
        """Keeps the progress line in step with Tune's trial events; relays the driver's stops."""

        def _tid(self, trial) -> str:
            return trial.config["trial_id"]

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
            stops.post(board)
            tracker.draw()

    return ProgressCallback()


class RayBackend(Backend):
    name = "ray"

    def launch(
        self, ctx: SweepContext, tasks: list[TrialTask], tracker: ProgressTracker, state: SweepState, wait: bool
    ) -> LaunchResult:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # the driver's own (_DriverStops) stops trials gracefully
        settings = ctx.settings
        address = settings.address or "local"
        embedded = address == "local"
        init_kw: dict[str, Any] = dict(address=address, log_to_driver=False, configure_logging=False)
        if embedded:  # the preflight refused ray.dashboard=true without Ray's dashboard packages
            init_kw.update(num_cpus=os.cpu_count(), _node_ip_address=LOOPBACK, include_dashboard=settings.dashboard)
            if settings.dashboard:
                init_kw.update(dashboard_host=LOOPBACK)
        trials = _LaunchTrials(ctx, tasks, state, tracker)
        with private_embedded_ray(ctx.sweep_dir) if embedded else contextlib.nullcontext(), _DriverStops() as stops:
            grid = self._fit(ctx, trials, tracker, address, init_kw, stops)
        states = {}
        for result in grid:
            if not result.config or result.config.get("index") not in trials.by_index:
                continue
            tid = trials.by_index[result.config["index"]].trial_id
            states[tid] = "failed" if result.error is not None else (result.metrics or {}).get("state", "killed")
        interrupted = stops.request is not None or any(
            tracker.states.get(t.trial_id) in ("running", "pending") for t in trials.by_index.values()) or any(
            s == "killed" for s in states.values())
        return LaunchResult(states=states, interrupted=interrupted)

    def _fit(self, ctx: SweepContext, trials: _LaunchTrials, tracker: ProgressTracker, address: str,
             init_kw: dict[str, Any], stops: _DriverStops):
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
            board = start_stop_board()
            trainable = tune.with_resources(
                tune.with_parameters(_trainable, ctx=ctx, tasks=dict(trials.by_index), board=board),
                self.trial_resources(ctx)
            )
            if ctx.search is None:
                search_kw = {"search_alg": list_searcher(trials.configs()), "num_samples": len(trials.by_index)}
            else:
                search_kw = {"search_alg": trials.searcher(), "num_samples": trials.to_run()}
            scheduler = None
            if ctx.tune is not None and ctx.tune.scheduler is not None:
                scheduler = make_scheduler(ctx.tune.scheduler, board, trials.identify, trials.max_epochs())
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    metric="val_bpd", mode="min", scheduler=scheduler, **search_kw,
                    max_concurrent_trials=settings.max_concurrent_trials,
                    reuse_actors=True,  # no new worker process (and torch import) per trial
                    trial_name_creator=trial_name,
                    trial_dirname_creator=trial_name,
                ),
                run_config=tune.RunConfig(
                    name=ctx.name,  # one experiment folder per sweep: every launch adds to it
                    storage_path=str(Path(settings.storage_path or Path(ctx.sweep_dir, "tune")).resolve()),
                    failure_config=tune.FailureConfig(max_failures=ctx.max_failures),
                    verbose=0,
                    callbacks=[_callback(tracker, stops, board)],
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
