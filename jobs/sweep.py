"""``python -m jobs.sweep``: run, inspect and cancel a sweep on Ray Tune, Slurm or locally.

``python -m jobs.sweep [run|status|cancel] SWEEP.yaml [--dry-run] [--show N] [--json|--csv] [overrides…]``:
the preflight, then skip finished trials, resume unfinished ones, retry failed ones and hand the
rest to the backend; ``status`` and ``cancel`` read and stop what runs. ``python -m jobs.sweep
calibrate [SWEEP.yaml]`` measures this machine's training throughput for the dry-run
(:mod:`jobs.calibrate`). What a re-run does with each
trial is :func:`jobs.attempt.plan_trial`. Full reference (options, re-run rules, end states, exit
codes ``0`` / ``1`` / ``2`` / ``3`` / ``130``): docs/CLI.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from jobs.attempt import LIVE_STATES, ExitCode, failures_of, plan_trial, sweep_end_state
from jobs.backends import get_backend
from jobs.backends.base import (
    Backend, LaunchResult, ProgressTracker, SweepContext, TrialResources, TrialTask, best_val_bpd, is_process,
)
from jobs.overrides import ConfigError
from jobs.progress import Progress, console_to_file
from jobs.run_lock import DRIVER_LOCK, RunFolderLock, RunFolderLocked, holder_alive
from jobs.sweep_state import StateError, SweepState, load_state, recorded_uri, save_state
from jobs.tracking.layout import TrackingError
from jobs.tracking.tags import BACKEND_TAG, SWEEP_OVERRIDES_TAG
from jobs.tracking.uri import read_uri, redact_uri

COMMANDS = ("run", "status", "cancel")
#: ``jobs.sweep`` exit codes: the sweep finished; a trial failed (or the store was unreachable at
#: the end); bad input; another ``jobs.sweep`` runs this sweep; interrupted.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY, EXIT_INTERRUPTED = 0, 1, 2, int(ExitCode.LOCKED), 130
CANCEL_WAIT_S = 90.0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {message} (usage: {self.usage})\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m jobs.sweep", description="Run (default), inspect or cancel a sweep.",
        usage="python -m jobs.sweep [run|status|cancel] SWEEP.yaml [--dry-run] [--show N] [--wait] [--json|--csv] "
              "[overrides...]",
    )
    parser.add_argument("sweep", help="sweep file (sweeps/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="Hydra-style key=value overrides")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the expanded trials and the preflight problems, then exit (2 if one is fatal; run only)")
    parser.add_argument("--show", type=int, metavar="N",
                        help="print trial N's resolved config as YAML and exit (run only)")
    parser.add_argument("--wait", action="store_true", help="slurm: follow the jobs until they end (run only)")
    parser.add_argument("--json", action="store_true", help="status as JSON: trials and a summary (status only)")
    parser.add_argument("--csv", action="store_true", help="status as CSV: header and one line per trial (status only)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--verbose", action="store_true", help="let Ray/MLflow logs through to the console")
    return parser


# ----------------------------------------------------------------------------------------------
# Shared set-up
# ----------------------------------------------------------------------------------------------

def sweep_dir_of(sweep) -> Path:
    """``<run.out_dir>/<sweep name>`` (absolute): the sweep's run folder."""
    return Path(sweep.first_config.run.out_dir).resolve() / sweep.name


def tracking_uri_of(sweep) -> str:
    """The store of ``sweep``'s runs (:func:`jobs.tracking.uri.read_uri`): the configured one, else
    the one its last launch recorded in its run folder, so a re-run or ``cancel`` from another
    folder continues in the same store instead of starting a new ``./mlflow.db``."""
    return read_uri(sweep.first_config.tracking.uri, recorded_uri(sweep))


def backend_settings(sweep, backend: str):
    """(typed settings, :class:`TrialResources`, max failures) for ``backend`` from the loaded sweep;
    ConfigError for settings the backend cannot honour."""
    res = sweep.resources
    resources = TrialResources(res.cpus, res.gpus, res.memory_gb, res.time_limit_min)
    settings = getattr(sweep, backend)
    if backend == "slurm":
        if settings.python:
            raise ConfigError(f"slurm.python={settings.python!r}: not supported by the submitit backend (submitit "
                              "1.5 ignores it for job arrays); install the same environment path on the compute nodes",
                              "slurm.python", settings.python)
        resources = TrialResources(settings.cpus_per_trial, settings.gpus_per_trial, settings.mem_gb, settings.time_min)
    return settings, resources, sweep.max_failures


def make_context(sweep, uri: str, experiment_id: str | None, parent_run_id: str | None) -> SweepContext:
    settings, resources, max_failures = backend_settings(sweep, sweep.backend)
    return SweepContext(
        name=sweep.name, sweep_path=str(Path(sweep.path).resolve()), overrides=tuple(sweep.overrides),
        sweep_dir=str(sweep_dir_of(sweep)), tracking_uri=uri, experiment_id=experiment_id,
        parent_run_id=parent_run_id, backend=sweep.backend, sweep_id=sweep.sweep_id,
        evaluations=tuple(sweep.evaluation.selected), max_failures=max_failures, settings=settings,
        resources=resources, cwd=os.getcwd(), parent_params=parent_params(sweep), tune=sweep.tune,
        search=sweep.search,
    )


def parent_params(sweep) -> dict[str, Any]:
    """The params of the sweep's parent run."""
    from jobs.train import sweep_parent_params

    return {**sweep_parent_params(sweep), "resources": {"gpus": sweep.resources.gpus, "cpus": sweep.resources.cpus}}


def tasks_of(sweep) -> list[TrialTask]:
    """The sweep's trials as backend tasks, with the run folders ``jobs.train`` uses."""
    from jobs.train import run_dir_for, trial_run_names

    names = trial_run_names(sweep)
    return [TrialTask(t.index, t.trial_id, t.config, str(run_dir_for(t.config, sweep.name)), names[i])
            for i, t in enumerate(sweep.trials)]


def searched_left(sweep, todo: list[str]) -> int:
    """Trials a searcher sweep has still to sample: its budget less the recorded trials that are
    done (finished, pruned or given up), less those to resume (``todo``); 0 for other sweeps and for
    a budget lowered below what was sampled."""
    if sweep.search is None:
        return 0
    return max(sweep.search.budget - len(sweep.trials), 0)


def _busy(ctx: SweepContext, state: SweepState) -> bool:
    """Whether an earlier launch still has jobs (training or evaluation) queued or running."""
    return get_backend(state.backend).busy(dataclasses.replace(ctx, backend=state.backend), state)


# ----------------------------------------------------------------------------------------------
# run
# ----------------------------------------------------------------------------------------------

def plan(sweep, runs: dict, live: dict[str, str], max_failures: int,
         evaluations: tuple[str, ...] = ()) -> tuple[dict[str, str], list[str], dict[str, str]]:
    """(initial states, trial ids to launch, reasons for skips) of every trial of ``sweep`` by
    :func:`jobs.attempt.plan_trial`."""
    states, todo, skipped = {}, [], {}
    for trial in sweep.trials:
        run = runs.get(trial.trial_id)
        failures = failures_of(run.tags, run.status) if run is not None else 0
        decision = plan_trial(run, live.get(trial.trial_id), max_failures, evaluations, failures)
        states[trial.trial_id] = decision.state
        if decision.launch:
            todo.append(trial.trial_id)
        if decision.why:
            skipped[trial.trial_id] = decision.why
    return states, todo, skipped


def cmd_run(args, sweep=None) -> int:
    """Run (or ``--dry-run``) the sweep the command line names, or ``sweep`` (a study's stage)."""
    from jobs.preflight import format_problems, preflight

    sweep = sweep or _load(args)
    if args.dry_run:
        from jobs.dryrun import format_trials_table

        print(format_trials_table(sweep))
        problems = preflight(sweep)
        print(format_problems(problems, launching=False))
        return EXIT_USAGE if any(p.fatal for p in problems) else EXIT_OK
    backend_settings(sweep, sweep.backend)  # validates backend-specific settings before side effects
    problems = preflight(sweep)  # before anything is created: the run folder, the MLflow experiment
    if problems:
        print(format_problems(problems, launching=True), file=sys.stderr)
    if any(p.fatal for p in problems):
        return EXIT_USAGE
    log_file = sweep_dir_of(sweep) / "logs" / "driver.log"
    with console_to_file(log_file, enabled=not args.verbose) as console:
        return _run(args, sweep, console)


def _run(args, sweep, console) -> int:
    """Launch under the sweep folder's driver lock: a second ``jobs.sweep`` of a running sweep
    names the driver and exits (3) instead of taking the sweep state over."""
    sweep_dir = sweep_dir_of(sweep)
    try:
        with RunFolderLock(sweep_dir, DRIVER_LOCK):
            return _launch(args, sweep, console)
    except RunFolderLocked as err:
        print(f"error: {err}: follow it with python -m jobs.sweep status {args.sweep}, stop it with "
              f"python -m jobs.sweep cancel {args.sweep}", file=console, flush=True)
        return EXIT_BUSY


def _open_parent(sweep, uri: str, say) -> tuple[str | None, str | None]:
    """(experiment id, parent run id) of the sweep, created if missing, with the sweep's description
    as the parent run's note and the experiment's description; (None, None) while the store is
    unreachable (the trials start offline and find them later)."""
    from jobs.tracking import ensure_experiment, ensure_sweep_run, log_parent_tags
    from jobs.tracking.store import is_transient

    try:
        experiment_id = ensure_experiment(uri, sweep.name, timeout_s=20.0)
        parent = ensure_sweep_run(uri, experiment_id, sweep.name, sweep.sweep_id, parent_params(sweep), timeout_s=20.0,
                                  description=sweep.description)
        log_parent_tags(uri, parent, {BACKEND_TAG: sweep.backend, SWEEP_OVERRIDES_TAG: " ".join(sweep.overrides)})
    except Exception as err:  # noqa: BLE001 - an outage is not fatal; a refusal is
        if not is_transient(err):
            raise TrackingError(f"tracking store {redact_uri(uri)}: {str(err).splitlines()[0][:200]}") from None
        say(f"sweep {sweep.name}: tracking store {redact_uri(uri)} unreachable; trials start offline and their runs "
            "appear, complete, when it is back")
        return None, None
    return experiment_id, parent


def _launch(args, sweep, console) -> int:
    from jobs.reaper import settle
    from jobs.tracking import find_trial_runs

    def say(message: str) -> None:
        print(message, file=console, flush=True)

    backend = get_backend(sweep.backend)
    uri = tracking_uri_of(sweep)
    experiment_id, parent = _open_parent(sweep, uri, say)
    ctx = make_context(sweep, uri, experiment_id, parent)
    ids = [t.trial_id for t in sweep.trials]
    previous = load_state(ctx.sweep_dir)
    jobs = _previous_jobs(ctx, previous)
    live = {tid: job for tid, (job, st) in jobs.items() if st in LIVE_STATES and not tid.startswith("eval:")}
    if previous is not None and previous.backend == "local" and live:  # trials that outlived a killed launcher
        say(f"sweep {sweep.name}: waiting for {len(live)} trial process(es) left running by an earlier launch")
        while live:
            time.sleep(1.0)
            jobs = _previous_jobs(ctx, previous)
            live = {tid: job for tid, (job, st) in jobs.items() if st in LIVE_STATES}
    if previous is not None and previous.backend != sweep.backend and live:
        say(f"error: sweep {sweep.name} still has {len(live)} live {previous.backend} job(s) from an earlier launch; "
            f"wait for them or run python -m jobs.sweep cancel {args.sweep} before launching on {sweep.backend}")
        return EXIT_BUSY
    runs = find_trial_runs(uri, experiment_id, trial_ids=ids) if experiment_id else {}
    settled = settle(uri, {t.trial_id: t for t in tasks_of(sweep)}, runs, jobs,
                     previous.backend if previous else None) if experiment_id else []
    for line in settled:
        say(f"  {line}")
    if settled:
        runs = find_trial_runs(uri, experiment_id, trial_ids=ids)
    states, todo, notes = plan(sweep, runs, live, ctx.max_failures, ctx.evaluations)
    linked = 0
    if experiment_id:  # trials finished in other sweeps of the store are linked, not trained (jobs.reuse)
        from jobs.reuse import apply_reuse

        todo, linked = apply_reuse(sweep, uri, experiment_id, parent, runs, states, todo, notes)
    state = SweepState(sweep.name, sweep.backend, uri, experiment_id or "", parent or "",
                       trials=dict(previous.trials) if previous and previous.backend == sweep.backend else {},
                       submitit_folder=previous.submitit_folder if previous else None,
                       driver_pid=None if sweep.backend == "slurm" else os.getpid())
    save_state(ctx.sweep_dir, state)
    best = min((b for r in runs.values() if (b := best_val_bpd(r.metrics)) is not None), default=None)
    n_done = sum(s == "finished" for s in states.values())
    reused = f" ({linked} reused from other sweeps)" if linked else ""
    say(f"sweep {sweep.name}: {len(sweep.trials)} trials, {n_done} already finished{reused}, "
        f"{len(ids) - len(todo) - n_done} "
        f"skipped, {len(todo)} to run on {sweep.backend}; MLflow {redact_uri(uri)} experiment {experiment_id or '-'} "
        f"parent run {parent or '-'}; run folder {ctx.sweep_dir} (logs in logs/)")
    for tid, why in notes.items():
        say(f"  {'run' if tid in todo else 'skip'} {tid}: {why}")
    to_sample = searched_left(sweep, todo)
    if to_sample:
        say(f"sweep {sweep.name}: {sweep.tune.searcher.kind} samples up to {to_sample} more trials "
            f"({sweep.search.settings.num_samples} per setting × {len(sweep.search.frames)} settings in all)")

    result = LaunchResult(states={})
    if todo or to_sample:
        tasks = [t for t in tasks_of(sweep) if t.trial_id in set(todo)]
        with Progress(sweep.name, stream=console, enabled=not args.quiet) as progress:
            tracker = ProgressTracker(progress, states, best)
            try:
                result = backend.launch(ctx, tasks, tracker, state, wait=args.wait)
            except KeyboardInterrupt:
                result = LaunchResult(states={}, interrupted=True)
    if result.message:
        say(f"sweep {sweep.name}: {result.message}")
    if sweep.search is not None:  # the trials the searcher sampled in this launch join the sweep
        sweep = dataclasses.replace(sweep, trials=[t for _, t in sweep.search.recorded()])
    if state.driver_pid is not None:
        state.driver_pid = None
        save_state(ctx.sweep_dir, state)
    if result.queued or (not todo and previous is not None and _busy(ctx, previous)):
        say(f"sweep {sweep.name}: {len(todo)} trials submitted, jobs queued or running; parent run {parent} stays "
            f"RUNNING. Follow with: python -m jobs.sweep status {args.sweep}")
        return EXIT_OK
    return _close_parent(args, sweep, ctx, result, todo, say)


def _previous_jobs(ctx: SweepContext, previous: SweepState | None) -> dict[str, tuple[str, str]]:
    """Scheduler view (trial id → (job id, state)) of the jobs an earlier launch recorded, whatever its backend."""
    if previous is None:
        return {}
    return get_backend(previous.backend).job_states(dataclasses.replace(ctx, backend=previous.backend), previous)


def _close_parent(args, sweep, ctx: SweepContext, result: LaunchResult, todo: list[str], say) -> int:
    """End the parent run in the state its trials add up to, with the sweep's aggregates as its
    metrics (:func:`jobs.tracking.store.close_sweep_run`); exit code of the launch."""
    from jobs.tracking import ensure_experiment, find_trial_runs, mark_killed
    from jobs.tracking.store import close_sweep_run, is_transient

    uri, ids = ctx.tracking_uri, [t.trial_id for t in sweep.trials]
    try:
        experiment_id = ctx.experiment_id or ensure_experiment(uri, sweep.name, timeout_s=30.0)
        runs = find_trial_runs(uri, experiment_id, trial_ids=ids)
        if result.interrupted:
            left = [r.run_id for tid, r in runs.items() if tid in set(todo) and r.status == "RUNNING"]
            mark_killed(uri, left, "sweep driver interrupted")
            runs = find_trial_runs(uri, experiment_id, trial_ids=ids)
        end_state, reason = sweep_end_state(sweep.trials, runs, result.states, ctx.evaluations,
                                            sweep.search.budget if sweep.search else None)
        if result.interrupted and end_state != "finished":
            end_state, reason = "killed", f"interrupted by the user; {reason}"
        parent = ctx.parent_run_id or _open_parent(sweep, uri, say)[1]
        if parent is None:
            raise ConnectionError("the parent run could not be created")
        close_sweep_run(uri, parent, len(sweep.trials), runs, end_state, reason)
    except Exception as err:  # noqa: BLE001 - an outage at the end leaves the parent run for the next launch
        if not is_transient(err) and not isinstance(err, ConnectionError):
            raise
        say(f"sweep {sweep.name}: tracking store {redact_uri(uri)} unreachable at the end; trial runs are kept in their "
            f"run folders. Re-run the same command (or python -m jobs.sweep status {args.sweep}) when it is back")
        return EXIT_INTERRUPTED if result.interrupted else EXIT_FAILED
    finished = sum(r.status == "FINISHED" for r in runs.values())
    say(f"sweep {sweep.name}: {finished}/{len(sweep.trials)} trials finished; parent run {end_state.upper()}"
        + (f" ({reason})" if reason else ""))
    if result.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if end_state == "finished" else EXIT_FAILED


# ----------------------------------------------------------------------------------------------
# status
# ----------------------------------------------------------------------------------------------

def cmd_status(args, sweep=None) -> int:
    """The status table (text, ``--json`` or ``--csv`` on stdout). Settles trials whose attempt
    is gone (:mod:`jobs.reaper`) and closes the parent run, with the sweep's aggregates
    (:func:`jobs.tracking.store.close_sweep_run`), of a sweep whose launcher and jobs are all gone;
    names the trials reused from other sweeps (:mod:`jobs.reuse`). Reads the store without mlflow
    where it can (:mod:`jobs.tracking.fast_read`); mlflow is imported only to settle a trial or
    close the parent run. The store: ``tracking.uri``, ``MLFLOW_TRACKING_URI``, else the one the
    launch recorded in the run folder (:func:`jobs.tracking.uri.read_uri`), named in the first line."""
    from jobs.reaper import needs_settling, settle
    from jobs.sweep_status import (attempt_states, format_summary, format_table, summarize_rows, to_csv, to_json,
                                   trial_rows)
    from jobs.tracking import fast_read

    sweep = sweep or _load(args)
    note = sys.stderr if args.json or args.csv else sys.stdout
    sweep_dir = sweep_dir_of(sweep)
    state = load_state(sweep_dir)
    uri = read_uri(sweep.first_config.tracking.uri, state.tracking_uri if state else None)
    print(f"{sweep.name}: {fast_read.store_line(uri)}; run folder {sweep_dir}"
          + ("" if state else " (no launch recorded there)"), file=note)
    if state is None and fast_read.missing_store(uri):
        print(f"{sweep.name}: no launch recorded and no store found, so every trial shows as pending; if the sweep "
              "ran from another folder, run status there or pass run.out_dir=/abs/path/runs "
              "tracking.uri=sqlite:////abs/path/mlflow.db", file=note)
    experiment_id = fast_read.experiment_id(uri, sweep.name)
    ids = [t.trial_id for t in sweep.trials]
    runs = fast_read.trial_runs(uri, experiment_id, trial_ids=ids) if experiment_id else {}
    ctx = make_context(sweep, uri, experiment_id, state.parent_run_id if state else None)
    jobs = _previous_jobs(ctx, state)
    driver_gone = state is None or holder_alive(ctx.sweep_dir, DRIVER_LOCK) is False
    tasks = {t.trial_id: t for t in tasks_of(sweep)}
    if experiment_id and driver_gone and any(
            needs_settling(t, runs.get(tid), jobs.get(tid, ("", None))[1]) for tid, t in tasks.items()):
        for line in settle(uri, tasks, runs, jobs, state.backend if state else None):
            print(f"{sweep.name}: {line}", file=note)
        runs = fast_read.trial_runs(uri, experiment_id, trial_ids=ids)
    rows = trial_rows(sweep, runs, jobs, attempt_states({tid: t.run_dir for tid, t in tasks.items()}))
    summary = summarize_rows(sweep.name, rows)
    if args.json:
        print(to_json(rows, summary))
    elif args.csv:
        print(to_csv(rows), end="")
    else:
        print(format_table(rows))
        print(format_summary(summary))
    from jobs.reuse import reused_lines

    for line in reused_lines(sweep, runs):
        print(f"{sweep.name}: {line}", file=note)
    if state is not None and experiment_id and driver_gone and state.parent_run_id \
            and not any(s in LIVE_STATES for _, s in jobs.values()) \
            and fast_read.run_status(uri, state.parent_run_id) == "RUNNING":
        from jobs.tracking.store import close_sweep_run

        end_state, reason = sweep_end_state(sweep.trials, runs, evaluations=ctx.evaluations,
                                            expected=sweep.search.budget if sweep.search else None)
        close_sweep_run(uri, state.parent_run_id, len(sweep.trials), runs, end_state, reason)
        print(f"{sweep.name}: all jobs ended; parent run {state.parent_run_id} is now {end_state.upper()}", file=note)
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# cancel
# ----------------------------------------------------------------------------------------------

CANCELLED = "cancelled by python -m jobs.sweep cancel"


def cmd_cancel(args, sweep=None) -> int:
    """Stop the sweep: SIGINT to its live launcher (which forwards it once to each trial), or —
    with no launcher — to the backend's jobs directly; then mark KILLED only the runs whose attempt
    is gone (a trial still ending keeps its own end state)."""
    from jobs.tracking import end_run, find_trial_runs

    sweep = sweep or _load(args)
    uri = tracking_uri_of(sweep)
    sweep_dir = sweep_dir_of(sweep)
    state = load_state(sweep_dir)
    if state is None:
        print(f"{sweep.name}: never launched from {sweep_dir}; nothing to cancel")
        return EXIT_OK
    driver = holder_alive(sweep_dir, DRIVER_LOCK)
    if driver is None:
        from jobs.run_lock import read_holder

        holder = read_holder(sweep_dir, DRIVER_LOCK)
        print(f"error: sweep {sweep.name} is run by a jobs.sweep on {holder.host if holder else 'another host'}: run "
              "cancel there", file=sys.stderr)
        return EXIT_BUSY
    ctx = dataclasses.replace(make_context(sweep, uri, state.experiment_id, state.parent_run_id), backend=state.backend)
    backend: Backend = get_backend(state.backend)
    trial_ids = [t.trial_id for t in sweep.trials]
    running = {tid for tid, r in find_trial_runs(uri, state.experiment_id, trial_ids=trial_ids).items()
               if r.status == "RUNNING"}
    cancelled: list[str] = []
    if driver and is_process(state.driver_pid, "jobs.sweep"):
        os.kill(state.driver_pid, signal.SIGINT)
    else:
        driver = False
        cancelled = backend.cancel(ctx, state)
    deadline = time.monotonic() + CANCEL_WAIT_S
    while time.monotonic() < deadline and (backend.live_jobs(ctx, state) or holder_alive(sweep_dir, DRIVER_LOCK)):
        time.sleep(1.0)
    runs = find_trial_runs(uri, state.experiment_id, trial_ids=trial_ids)
    stopped = sum(tid in runs and runs[tid].status != "RUNNING" for tid in running)
    live = backend.live_jobs(ctx, state)
    killed, still = [], []
    for task in tasks_of(sweep):
        run = runs.get(task.trial_id)
        if run is None or not (run.status == "RUNNING" or (run.status == "KILLED" and run.state != "killed")):
            continue
        if run.status == "RUNNING" and (holder_alive(task.run_dir) or task.trial_id in live):
            still.append(run.run_id)
            continue
        end_run(uri, run.run_id, "killed", CANCELLED)
        killed.append(run.run_id)
    if not still:
        from jobs.tracking.store import close_sweep_run

        close_sweep_run(uri, state.parent_run_id, len(sweep.trials), find_trial_runs(
            uri, state.experiment_id, trial_ids=trial_ids), "killed", CANCELLED)
    print(f"{sweep.name}: cancelled {len(cancelled)} job(s)" + (" and the launcher" if driver else "")
          + f"; {stopped} of {len(running)} running trial(s) stopped; {len(killed)} run(s) marked KILLED"
          + (f"; {len(still)} run(s) still ending, parent run left RUNNING" if still
             else f"; parent run {state.parent_run_id} KILLED"))
    return EXIT_OK


# ----------------------------------------------------------------------------------------------

def _load(args):
    """The sweep the command line names; a trial config file is refused with the command to use."""
    from jobs.overrides import load_yaml_file
    from jobs.study import is_study_file, load_stage
    from jobs.sweep_spec import is_sweep_file, load_sweep

    raw = load_yaml_file(args.sweep)
    if is_study_file(raw):
        return load_stage(args.sweep, list(args.overrides))
    if not is_sweep_file(raw):
        command = " ".join(["python -m jobs.train", args.sweep, *args.overrides])
        raise ConfigError(f"{args.sweep} is a trial config, not a sweep: run it with {command}")
    return load_sweep(args.sweep, list(args.overrides))


def _is_study(path: str) -> bool:
    from jobs.overrides import load_yaml_file
    from jobs.study import is_study_file

    return Path(path).is_file() and is_study_file(load_yaml_file(path))


def cmd_study(command: str, args) -> int:
    """``run`` / ``--dry-run`` / ``status`` / ``cancel`` of a study (:mod:`jobs.study`): its stages in
    order (only the one ``stage=NAME`` names, if given). ``run`` launches a stage only once the
    stages before it are done, so one command runs the whole study (a re-run continues it); a stage
    waiting for an earlier one ends the command with exit 0 and says so."""
    from jobs.study import best_in_history, choose, load_study, stage_sweep

    only = [o.split("=", 1)[1].strip() for o in args.overrides if o.split("=", 1)[0].strip() == "stage"]
    study = load_study(args.sweep, [o for o in args.overrides if o.split("=", 1)[0].strip() != "stage"])
    if only and only[0] not in study.stages:
        raise ConfigError(f"stage={only[0]}: not a stage of {args.sweep} ({', '.join(study.stages)})", "stage")
    code, priced = EXIT_OK, []
    for stage in study.stages:
        if only and stage != only[0]:
            continue
        sweep, waits = stage_sweep(study, stage)
        if command == "run" and args.dry_run:
            priced.append(sweep)
        dep = study.best_of.get(stage)
        print(f"== stage {stage} ({sweep.name}): {sweep.description}", flush=True)
        if dep is not None and not waits:
            earlier = stage_sweep(study, dep.stage)[0]
            uri = tracking_uri_of(earlier)
            from jobs.tracking import fast_read

            runs = fast_read.trial_runs(uri, fast_read.experiment_id(uri, earlier.name),
                                        trial_ids=[t.trial_id for t in earlier.trials])
            chosen = choose(earlier, runs, dep, best_in_history(uri))
            for key, value in sorted(chosen.values.items(), key=str):
                taken = ", ".join(f"{k}={value[k]:.4g}" if isinstance(value[k], float) else f"{k}={value[k]}"
                                  for k in dep.take)
                print(f"  {', '.join(f'{k}={v}' for k, v in zip(dep.by, key))}: {taken} (trial {value['trial_id']}, "
                      f"best val {value['best_val_bpd']:.4f} bits/dim in stage {dep.stage})", flush=True)
            for key in chosen.missing:
                print(f"  {', '.join(f'{k}={v}' for k, v in zip(dep.by, key))}: no trial of stage {dep.stage} ran to "
                      "the end: left out", flush=True)
        if waits:
            if command == "run" and args.dry_run:
                print(f"  up to {len(sweep.trials)} trials: {', '.join(dep.take)} from stage {dep.stage}, not known "
                      f"yet ({waits}); priced with the shared values", flush=True)
                code = max(code, cmd_run(args, sweep))
                continue
            print(f"  waits: {waits}", flush=True)
            if command == "run":
                print(f"study {study.name}: stage {stage} runs once stage {dep.stage} is done: run python -m jobs.sweep "
                      f"{args.sweep} again (or follow it with python -m jobs.sweep status {args.sweep})", flush=True)
                return code
            continue
        result = {"run": cmd_run, "status": cmd_status, "cancel": cmd_cancel}[command](args, sweep)
        code = max(code, result)
        if command == "run" and result != EXIT_OK and not args.dry_run:
            return result
    if len(priced) > 1:
        from jobs.dryrun import study_total_line

        print(study_total_line(study.name, priced), flush=True)
    return code


def cmd_show(args) -> int:
    """Trial ``--show N``'s resolved config as YAML: what ``jobs.train`` writes to its run folder's ``config.yaml``."""
    from jobs.config import to_yaml

    print(to_yaml(_load(args).trial(args.show).config), end="")
    return EXIT_OK


def _check_flags(command: str, args) -> None:
    """Flags that apply to another command, or to each other, are usage errors."""
    parser = _parser()
    if command != "run" and (args.dry_run or args.wait or args.show is not None):
        parser.error(f"--dry-run, --show and --wait apply to 'run', not '{command}'")
    if command != "status" and (args.json or args.csv):
        parser.error(f"--json and --csv apply to 'status', not '{command}'")
    if args.json and args.csv:
        parser.error("--json and --csv: choose one")
    if args.show is not None and (args.dry_run or args.wait):
        parser.error("--show prints one trial's config and exits: not with --dry-run or --wait")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["calibrate"]:
        from jobs.calibrate import main as calibrate

        return calibrate(argv[1:])
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "run"
    args = _parser().parse_intermixed_args(argv)
    _check_flags(command, args)
    if args.show is not None:
        command = "show"
    try:
        if command != "show" and _is_study(args.sweep):
            return cmd_study(command, args)
        return {"run": cmd_run, "show": cmd_show, "status": cmd_status, "cancel": cmd_cancel}[command](args)
    except (ConfigError, StateError, TrackingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
