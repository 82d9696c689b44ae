"""``python -m jobs.sweep``: run, inspect and cancel a sweep on Ray Tune, Slurm or locally.

``python -m jobs.sweep [run|status|cancel] SWEEP.yaml [--dry-run] [--show N] [--json|--csv] [overrides…]``:
the preflight, then skip finished trials, resume unfinished ones, retry failed ones and hand the
rest to the backend; ``status`` and ``cancel`` read and stop what runs. Full reference (options,
re-run rules, end states, exit codes ``0`` / ``1`` / ``2`` / ``130``): docs/CLI.md.
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

from jobs.backends import get_backend
from jobs.backends.base import (
    LIVE_STATES, Backend, LaunchResult, ProgressTracker, SweepContext, TrialTask, best_val_bpd, failures_of,
    is_process,
)
from jobs.overrides import ConfigError
from jobs.progress import Progress, console_to_file
from jobs.sweep_state import StateError, SweepState, load_state, save_state
from jobs.tracking.layout import TrackingError
from jobs.tracking.uri import redact_uri

COMMANDS = ("run", "status", "cancel")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
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
    return Path(sweep.trials[0].config.run.out_dir).resolve() / sweep.name


def tracking_uri_of(sweep) -> str:
    from jobs.tracking.uri import resolve_tracking_uri

    return resolve_tracking_uri(sweep.trials[0].config.tracking.uri)


def backend_settings(sweep, backend: str) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(settings dict, resources dict, max failures) for ``backend`` from the loaded sweep."""
    res = sweep.resources
    resources = {"cpus": res.cpus, "gpus": res.gpus, "mem_gb": res.memory_gb, "time_min": res.time_limit_min}
    if backend == "slurm":
        s = sweep.slurm
        if s.python:
            raise ConfigError(f"slurm.python={s.python!r}: not supported by the submitit backend (submitit 1.5 "
                              "ignores it for job arrays); install the same environment path on the compute nodes",
                              "slurm.python", s.python)
        resources = {"cpus": s.cpus_per_trial, "gpus": s.gpus_per_trial, "mem_gb": s.mem_gb, "time_min": s.time_min}
        settings = {"partition": s.partition, "account": s.account, "qos": s.qos, "constraint": s.constraint,
                    "array_parallelism": s.array_parallelism, "max_array_size": s.max_array_size,
                    "extra": sbatch_options(s.extra_sbatch)}
    else:
        settings = dataclasses.asdict(getattr(sweep, backend))
    return settings, resources, sweep.ray.max_failures


def sbatch_options(flags: tuple[str, ...]) -> dict[str, Any]:
    """``('--exclusive', '--nodelist=n1')`` → ``{'exclusive': True, 'nodelist': 'n1'}`` (submitit's
    ``slurm_additional_parameters``)."""
    out: dict[str, Any] = {}
    for flag in flags:
        key, sep, value = flag[2:].partition("=")
        out[key] = value if sep else True
    return out


def make_context(sweep, uri: str, experiment_id: str, parent_run_id: str) -> SweepContext:
    settings, resources, max_failures = backend_settings(sweep, sweep.backend)
    return SweepContext(
        name=sweep.name, sweep_path=str(Path(sweep.path).resolve()), overrides=tuple(sweep.overrides),
        sweep_dir=str(sweep_dir_of(sweep)), tracking_uri=uri, experiment_id=experiment_id,
        parent_run_id=parent_run_id, backend=sweep.backend, sweep_id=sweep.sweep_id,
        evaluations=tuple(sweep.evaluation.selected), max_failures=max_failures, settings=settings,
        resources=resources, cwd=os.getcwd(),
    )


def tasks_of(sweep) -> list[TrialTask]:
    """The sweep's trials as backend tasks, with the run folders ``jobs.train`` uses."""
    from jobs.train import run_dir_for

    return [TrialTask(t.index, t.trial_id, t.config, str(run_dir_for(t.config, sweep.name))) for t in sweep.trials]


def _busy(ctx: SweepContext, state: SweepState) -> bool:
    """Whether an earlier launch still has jobs (training or evaluation) queued or running."""
    return get_backend(state.backend).busy(dataclasses.replace(ctx, backend=state.backend), state)


def _other_backend_live(ctx: SweepContext, state: SweepState | None) -> dict[str, str]:
    """Live jobs recorded by an earlier launch, whatever its backend."""
    if state is None:
        return {}
    other = dataclasses.replace(ctx, backend=state.backend)
    return get_backend(state.backend).live_jobs(other, state)


# ----------------------------------------------------------------------------------------------
# run
# ----------------------------------------------------------------------------------------------

def plan(sweep, runs: dict, live: dict[str, str], max_failures: int) -> tuple[dict[str, str], list[str], dict[str, str]]:
    """Decide what each trial needs: (initial states, trial ids to launch, reasons for skips).

    FINISHED → ``finished`` (skipped); a live job → ``running`` (skipped); FAILED more than
    ``max_failures`` times → ``failed`` (skipped, given up); anything else (no run, RUNNING left by
    a killed driver, KILLED, FAILED with retries left) → launched, resuming its checkpoint.
    """
    states, todo, skipped = {}, [], {}
    for trial in sweep.trials:
        run = runs.get(trial.trial_id)
        if run is not None and run.status == "FINISHED":
            states[trial.trial_id] = "finished"
        elif trial.trial_id in live:
            states[trial.trial_id] = "running"
            skipped[trial.trial_id] = f"job {live[trial.trial_id]} still alive"
        elif run is not None and run.status == "FAILED" and failures_of(run.tags, run.status) > max_failures:
            states[trial.trial_id] = "failed"
            skipped[trial.trial_id] = f"failed {failures_of(run.tags, run.status)} times (ray.max_failures={max_failures})"
        else:
            states[trial.trial_id] = "pending"
            todo.append(trial.trial_id)
    return states, todo, skipped


def summarize(sweep, runs: dict, launched: dict[str, str] | None = None) -> tuple[str, str | None]:
    """The parent run's end state and reason from the trial runs (and, for trials that never got a
    run, e.g. rejected input, this launch's states): all FINISHED → finished; any failed → failed."""
    launched = launched or {}

    def failed(t) -> bool:
        run = runs.get(t.trial_id)
        return run.status == "FAILED" if run is not None else launched.get(t.trial_id) == "failed"

    def why(t) -> str:
        run = runs.get(t.trial_id)
        return run.tags.get("rgflow.failure_reason", "no reason given")[:120] if run else "rejected its input (no run)"

    bad = [t for t in sweep.trials if failed(t)]
    unfinished = [t for t in sweep.trials if runs.get(t.trial_id) is None or runs[t.trial_id].status != "FINISHED"]
    if not unfinished:
        return "finished", None
    if bad:
        detail = "; ".join(f"{t.index}: {why(t)}" for t in bad[:5])
        return "failed", f"{len(bad)} of {len(sweep.trials)} trials failed ({detail})"
    return "killed", f"{len(unfinished)} of {len(sweep.trials)} trials unfinished"


def cmd_run(args) -> int:
    from jobs.preflight import format_problems, preflight

    sweep = _load(args)
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
    from jobs.tracking import ensure_experiment, ensure_sweep_run, end_run, find_trial_runs, get_client, mark_killed
    from jobs.tracking.store import log_tags

    def say(message: str) -> None:
        print(message, file=console, flush=True)

    backend = get_backend(sweep.backend)
    uri = tracking_uri_of(sweep)
    experiment_id = ensure_experiment(uri, sweep.name)
    parent = ensure_sweep_run(uri, experiment_id, sweep.name, sweep.sweep_id, {
        "sweep": {"path": str(Path(sweep.path).resolve()), "trials": len(sweep.trials),
                  "varying": ",".join(sweep.varying_keys) or "-"},
        "resources": {"gpus": sweep.resources.gpus, "cpus": sweep.resources.cpus}})
    log_tags(get_client(uri), parent, {"rgflow.backend": sweep.backend, "rgflow.sweep_overrides": " ".join(sweep.overrides)})
    ctx = make_context(sweep, uri, experiment_id, parent)
    ids = [t.trial_id for t in sweep.trials]
    runs = find_trial_runs(uri, experiment_id, trial_ids=ids)
    previous = load_state(ctx.sweep_dir)
    live = _other_backend_live(ctx, previous)
    states, todo, skipped = plan(sweep, runs, live, ctx.max_failures)
    state = SweepState(sweep.name, sweep.backend, uri, experiment_id, parent,
                       trials=dict(previous.trials) if previous and previous.backend == sweep.backend else {},
                       submitit_folder=previous.submitit_folder if previous else None,
                       driver_pid=None if sweep.backend == "slurm" else os.getpid())
    save_state(ctx.sweep_dir, state)
    best = min((b for r in runs.values() if (b := best_val_bpd(r.metrics)) is not None), default=None)
    n_done = sum(s == "finished" for s in states.values())
    say(f"sweep {sweep.name}: {len(sweep.trials)} trials, {n_done} already finished, {len(skipped)} skipped, "
        f"{len(todo)} to run on {sweep.backend}; MLflow {redact_uri(uri)} experiment {experiment_id} parent run {parent}; "
        f"run folder {ctx.sweep_dir} (logs in logs/)")
    for tid, why in skipped.items():
        say(f"  skip {tid}: {why}")

    result = LaunchResult(states={})
    if todo:
        tasks = [t for t in tasks_of(sweep) if t.trial_id in set(todo)]
        with Progress(sweep.name, stream=console, enabled=not args.quiet) as progress:
            tracker = ProgressTracker(progress, states, best)
            try:
                result = backend.launch(ctx, tasks, tracker, state, wait=args.wait)
            except KeyboardInterrupt:
                result = LaunchResult(states={}, interrupted=True)
    if result.message:
        say(f"sweep {sweep.name}: {result.message}")
    if result.queued or (not todo and previous is not None and _busy(ctx, previous)):
        say(f"sweep {sweep.name}: {len(todo)} trials submitted, jobs queued or running; parent run {parent} stays "
            f"RUNNING. Follow with: python -m jobs.sweep status {args.sweep}")
        return EXIT_OK
    runs = find_trial_runs(uri, experiment_id, trial_ids=ids)
    if result.interrupted:
        left = [r.run_id for tid, r in runs.items() if tid in set(todo) and r.status == "RUNNING"]
        mark_killed(uri, left, "sweep driver interrupted")
        runs = find_trial_runs(uri, experiment_id, trial_ids=ids)
    end_state, reason = summarize(sweep, runs, result.states)
    if result.interrupted and end_state != "finished":
        end_state, reason = "killed", f"interrupted by the user; {reason}"
    if state.driver_pid is not None:
        state.driver_pid = None
        save_state(ctx.sweep_dir, state)
    end_run(uri, parent, end_state, reason)
    finished = sum(r.status == "FINISHED" for r in runs.values())
    say(f"sweep {sweep.name}: {finished}/{len(sweep.trials)} trials finished; parent run {end_state.upper()}"
        + (f" ({reason})" if reason else ""))
    if result.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if end_state == "finished" else EXIT_FAILED


# ----------------------------------------------------------------------------------------------
# status
# ----------------------------------------------------------------------------------------------

def cmd_status(args) -> int:
    """The status table (text, ``--json`` or ``--csv`` on stdout); closes the parent run of a
    sweep whose launcher and jobs are all gone. Reads the store without mlflow where it can
    (:mod:`jobs.tracking.fast_read`); mlflow is imported only to close that parent run."""
    from jobs.sweep_status import format_summary, format_table, summarize_rows, to_csv, to_json, trial_rows
    from jobs.tracking import fast_read

    sweep = _load(args)
    uri = tracking_uri_of(sweep)
    experiment_id = fast_read.experiment_id(uri, sweep.name)
    state = load_state(sweep_dir_of(sweep))
    ids = [t.trial_id for t in sweep.trials]
    runs = fast_read.trial_runs(uri, experiment_id, trial_ids=ids) if experiment_id else {}
    jobs: dict[str, tuple[str, str]] = {}
    if state is not None:
        ctx = make_context(sweep, uri, experiment_id or "", state.parent_run_id)
        jobs = get_backend(state.backend).job_states(dataclasses.replace(ctx, backend=state.backend), state)
    rows = trial_rows(sweep, runs, jobs)
    summary = summarize_rows(sweep.name, rows)
    if args.json:
        print(to_json(rows, summary))
    elif args.csv:
        print(to_csv(rows), end="")
    else:
        print(format_table(rows))
        print(format_summary(summary))
    if state is not None and experiment_id and not is_process(state.driver_pid, "jobs.sweep") \
            and not any(s in LIVE_STATES for _, s in jobs.values()) \
            and fast_read.run_status(uri, state.parent_run_id) == "RUNNING":
        from jobs.tracking import end_run

        end_state, reason = summarize(sweep, runs)
        end_run(uri, state.parent_run_id, end_state, reason)
        print(f"{sweep.name}: all jobs ended; parent run {state.parent_run_id} is now {end_state.upper()}",
              file=sys.stderr if args.json or args.csv else sys.stdout)
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# cancel
# ----------------------------------------------------------------------------------------------

def _interrupt_driver(pid: int | None) -> bool:
    """SIGINT to the launcher of an in-process sweep if it still runs (checked by its command line)."""
    if not is_process(pid, "jobs.sweep"):
        return False
    os.kill(pid, signal.SIGINT)
    return True


def cmd_cancel(args) -> int:
    from jobs.tracking import end_run, find_trial_runs

    sweep = _load(args)
    uri = tracking_uri_of(sweep)
    state = load_state(sweep_dir_of(sweep))
    if state is None:
        print(f"{sweep.name}: never launched from {sweep_dir_of(sweep)}; nothing to cancel")
        return EXIT_OK
    ctx = dataclasses.replace(make_context(sweep, uri, state.experiment_id, state.parent_run_id), backend=state.backend)
    backend: Backend = get_backend(state.backend)
    driver = _interrupt_driver(state.driver_pid)
    cancelled = backend.cancel(ctx, state)
    deadline = time.monotonic() + CANCEL_WAIT_S
    while time.monotonic() < deadline and (
            backend.live_jobs(ctx, state) or is_process(state.driver_pid, "jobs.sweep")):
        time.sleep(1.0)
    runs = find_trial_runs(uri, state.experiment_id, trial_ids=[t.trial_id for t in sweep.trials])
    killed = []
    for run in runs.values():
        if run.status == "RUNNING" or (run.status == "KILLED" and run.state != "killed"):
            end_run(uri, run.run_id, "killed", "cancelled by python -m jobs.sweep cancel")
            killed.append(run.run_id)
    end_run(uri, state.parent_run_id, "killed", "cancelled by python -m jobs.sweep cancel")
    print(f"{sweep.name}: cancelled {len(cancelled)} job(s)" + (" and the launcher" if driver else "")
          + f"; {len(killed)} run(s) marked KILLED; parent run {state.parent_run_id} KILLED")
    return EXIT_OK


# ----------------------------------------------------------------------------------------------

def _load(args):
    """The sweep the command line names; a trial config file is refused with the command to use."""
    from jobs.overrides import load_yaml_file
    from jobs.sweep_spec import is_sweep_file, load_sweep

    if not is_sweep_file(load_yaml_file(args.sweep)):
        command = " ".join(["python -m jobs.train", args.sweep, *args.overrides])
        raise ConfigError(f"{args.sweep} is a trial config, not a sweep: run it with {command}")
    return load_sweep(args.sweep, list(args.overrides))


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
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "run"
    args = _parser().parse_intermixed_args(argv)
    _check_flags(command, args)
    if args.show is not None:
        command = "show"
    try:
        return {"run": cmd_run, "show": cmd_show, "status": cmd_status, "cancel": cmd_cancel}[command](args)
    except (ConfigError, StateError, TrackingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
