"""What the sweep machinery costs on top of the trials it runs.

1. **Scheduling overhead per trial**, per backend: a 16-trial sweep (``sweeps/smoke.yaml``: batch
   32/128 × Laplace/Gaussian × seeds 0–3) whose trials each train for one optimizer step on 128
   MSDS1 images, one trial at a time (``ray.max_concurrent_trials=1``, ``local.parallel=1``,
   ``slurm.array_parallelism=1``) so that nothing overlaps. Overhead per trial = (wall time of
   ``python -m jobs.sweep`` − Σ trial work) / 16, where a trial's work is its MLflow run's
   ``end_time − start_time`` (opening the run, data, model, the step, validation, checkpoint,
   closing the run). It therefore counts the launcher (imports, MLflow setup), Ray start / Slurm
   scheduling / process start-up, and the per-trial hand-off. Slurm is followed with ``--wait``.
2. **1,000-trial sweep**: time of ``load_sweep`` (expansion + validation of every trial config)
   and of ``format_trials_table`` in-process, and of the whole ``--dry-run`` command; the Slurm
   submission of its 1,000 trials (``SlurmBackend.launch``: pickling + ``sbatch`` of held arrays
   of at most :data:`MAX_ARRAY` tasks, timed in-process; and the whole ``python -m jobs.sweep``
   command), then ``cancel``.
3. **MLflow logging overhead per step**: the numbers of ``bench/tracking_bench.py`` from
   ``bench/results/tracking.json`` (run that bench first; not re-measured here).
4. **Status**: wall time of ``python -m jobs.sweep status`` in a fresh process, as a user runs it
   (median and max of :data:`STATUS_REPEATS`), for ``sweeps/smoke.yaml`` and for the 1,000-trial
   sweep of part 2, whose runs (running, finished, failed, killed and missing ones, with their
   params and metrics) are first logged into a sqlite store with ``MlflowClient.log_batch``
   (``tests/fixtures/sweep_store.py``); for scale, a fresh ``python -c "import mlflow"``.
   Targets (issue 15): ≤ 2 s for the smoke sweep, < 5 s for 1,000 trials.
5. **Ray overhead per trivial trial, reporting on** (issue 12; target ≤ 1 s per trial): a sweep of
   ``--ray-trials`` trials (default 200: a ``seeds`` axis over one batch size and prior) on the
   embedded Ray, ``--ray-concurrency`` at a time (default 1), through the real path (``jobs.sweep`` →
   ``RayBackend`` → Tune → ``_trainable`` → ``jobs.attempt.execute`` → ``jobs.train`` with MLflow),
   each trial one optimizer step on 32 MSDS1 images and one validation, reported to Tune as a result
   before the final one. Overhead per trial = (wall − Σ trial work) / trials as in part 1 (with
   concurrency c > 1 also the slot form (c · wall − Σ work) / trials). Beside it, Tune's figure from
   its experiment folder: (the experiment's span, its controller's start to its final
   experiment-state save, − Σ per-trial ``time_total_s``) / trials; and, from Tune's per-trial start
   and last-result times, the wall time split into launcher start, Tune's start to the first trial,
   per-trial phases (Tune start → MLflow run start, MLflow run, run end → last result, last result
   → next trial's start) and exit.

Usage: ``.venv/bin/python bench/sweep_bench.py [--backends ray,local,slurm] [--skip-1000] [--merge]
[--status-only] [--ray-overhead-only] [--ray-trials N] [--ray-concurrency C] [--keep]``. Part 5
runs with the others when ``ray`` is among the backends; ``--ray-overhead-only`` runs it alone and
merges it into the existing JSON. Slurm
parts use the dev cluster (``slurm/devcluster.sh``), started if needed and shared with test sessions
through their lease files. Prints a
table and writes ``bench/results/sweep.json``. The machine is shared and noisy: the load average is
recorded with the numbers; compare runs made on a quiet machine.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SMOKE = REPO / "sweeps" / "smoke.yaml"
RESULTS = REPO / "bench" / "results" / "sweep.json"
ONE_STEP = ("seeds=[0,1,2,3]", "data.train_size=128", "data.valid_size=32", "data.test_size=32", "train.epochs=1",
            "train.steps=1", "train.log_every=1", "train.val_draws=1", "train.sample_count=4",
            "train.sample_every_epochs=1", "evaluation.enabled=false")
SERIAL = {"ray": ("ray.max_concurrent_trials=1",), "local": ("local.parallel=1",),
          "slurm": ("slurm.array_parallelism=1", "resources.time_limit_min=20")}
MAX_ARRAY = 400  # the 1,000-trial submission is split into 3 arrays
STATUS_REPEATS = 5
SWEEP_1000 = """name: thousand
base_config: {base}
base:
  data: {{train_size: 2000, valid_size: 200, test_size: 200}}
  run: {{device: cpu}}
axes:
  grid:
    train.lr: [1.0e-4, 2.0e-4, 3.0e-4, 5.0e-4, 7.0e-4, 1.0e-3, 1.5e-3, 2.0e-3, 3.0e-3, 5.0e-3]
    train.batch_size: [16, 32, 48, 64, 96, 128, 192, 256, 384, 512]
  seeds: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
resources: {{cpus: 1, gpus: 0, memory_gb: 1, time_limit_min: 30}}
evaluation: {{enabled: false}}
"""


def _env(root: Path) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "MLFLOW_DISABLE_TELEMETRY": "true",
           "RAY_AUTH_MODE": "disabled"}
    env.pop("MLFLOW_RUN_ID", None)
    return env


def _sweep(args: list[str], env: dict[str, str], timeout: float = 3600) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jobs.sweep", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return time.perf_counter() - started, proc


@contextlib.contextmanager
def _slurm_cluster(wanted: bool):
    """The dev cluster's environment (``{"SLURM_CONF": …}``), or None without Slurm binaries.

    Shares the cluster with test sessions through the lease files of ``tests/fixtures/slurm.py``:
    starts it if needed and stops it at the end only if this process started it and nobody else
    holds a lease.
    """
    if not wanted or not shutil.which("slurmctld"):
        yield None
        return
    from tests.fixtures.slurm import STARTED_MARKER, _devcluster, _live_leases, _locked

    cluster_dir = Path(os.environ.get("RGFLOW_SLURM_DIR", REPO / ".slurm-dev")).resolve()
    leases = cluster_dir / "leases"
    leases.mkdir(parents=True, exist_ok=True)
    lock = cluster_dir / ".fixture-lock"
    with _locked(lock):
        if _devcluster("status", cluster_dir, 30).returncode != 0:
            started = _devcluster("start", cluster_dir, 180)
            if started.returncode != 0:
                raise RuntimeError(f"slurm/devcluster.sh start failed: {started.stderr[-1000:]}")
            if not _live_leases(leases):
                (cluster_dir / STARTED_MARKER).touch()
        (leases / str(os.getpid())).touch()
    try:
        yield {"SLURM_CONF": str(cluster_dir / "etc" / "slurm.conf")}
    finally:
        with _locked(lock):
            (leases / str(os.getpid())).unlink(missing_ok=True)
            if (cluster_dir / STARTED_MARKER).exists() and not _live_leases(leases):
                _devcluster("stop", cluster_dir, 180)
                (cluster_dir / STARTED_MARKER).unlink(missing_ok=True)


def scheduling_overhead(backend: str, extra_env: dict[str, str]) -> dict:
    """Part 1 for one backend (see the module docstring)."""
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory(prefix=f"sweep-bench-{backend}-") as tmp:
        root = Path(tmp)
        env = {**_env(root), **extra_env}
        args = [str(SMOKE), f"backend={backend}", f"run.out_dir={root / 'runs'}", *ONE_STEP, *SERIAL[backend]]
        if backend == "slurm":
            args.append("--wait")
        wall, proc = _sweep(args, env)
        if proc.returncode != 0:
            raise RuntimeError(f"{backend} sweep failed ({proc.returncode}): {proc.stderr[-2000:]}")
        client = MlflowClient(env["MLFLOW_TRACKING_URI"])
        exp = client.get_experiment_by_name("smoke")
        runs = [r for r in client.search_runs([exp.experiment_id], max_results=100)
                if r.data.tags.get("rgflow.role") == "trial"]
        assert len(runs) == 16 and all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
        work = sum((r.info.end_time - r.info.start_time) / 1000 for r in runs)
    return {"backend": backend, "trials": 16, "wall_s": wall, "trial_work_s": work,
            "overhead_per_trial_s": (wall - work) / 16, "trial_work_per_trial_s": work / 16}


def thousand(slurm_env: dict[str, str] | None) -> dict:
    """Part 2 (see the module docstring)."""
    from jobs.dryrun import format_trials_table
    from jobs.sweep_spec import load_sweep

    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="sweep-bench-1000-") as tmp:
        root = Path(tmp)
        path = root / "thousand.yaml"
        path.write_text(SWEEP_1000.format(base=REPO / "configs" / "tiny.yaml"))
        overrides = [f"run.out_dir={root / 'runs'}"]
        started = time.perf_counter()
        sweep = load_sweep(path, overrides)
        out["expand_s"] = time.perf_counter() - started
        out["trials"] = len(sweep.trials)
        started = time.perf_counter()
        table = format_trials_table(sweep)
        out["format_table_s"] = time.perf_counter() - started
        out["table_lines"] = len(table.splitlines())
        wall, proc = _sweep([str(path), "--dry-run", *overrides], _env(root))
        assert proc.returncode == 0, proc.stderr
        out["dry_run_command_s"] = wall
        if slurm_env is None:
            out["slurm"] = "skipped: Slurm binaries missing"
            return out
        os.environ.update(slurm_env)
        out.update(_submit_1000(sweep, root, path, overrides, {**_env(root), **slurm_env}))
    return out


def _submit_1000(_, root: Path, path: Path, overrides: list[str], env: dict[str, str]) -> dict:
    """Submission only (held arrays, then cancelled): in-process launch, then the whole command."""
    from jobs.backends.base import ProgressTracker
    from jobs.backends.slurm_backend import SlurmBackend
    from jobs.progress import Progress
    from jobs.sweep import make_context, tasks_of
    from jobs.sweep_state import SweepState
    from jobs.tracking import ensure_experiment, ensure_sweep_run

    from jobs.sweep_spec import load_sweep

    out: dict = {}
    held = ["backend=slurm", "slurm.extra_sbatch=[--hold]", f"slurm.max_array_size={MAX_ARRAY}", *overrides]
    sweep = load_sweep(path, held)
    uri = env["MLFLOW_TRACKING_URI"]
    experiment = ensure_experiment(uri, sweep.name)
    parent = ensure_sweep_run(uri, experiment, sweep.name, sweep.sweep_id, {})
    ctx = make_context(sweep, uri, experiment, parent)
    state = SweepState(sweep.name, "slurm", uri, experiment, parent)
    tasks = tasks_of(sweep)
    tracker = ProgressTracker(Progress(sweep.name, enabled=False), {t.trial_id: "pending" for t in tasks})
    backend = SlurmBackend()
    started = time.perf_counter()
    backend.launch(ctx, tasks, tracker, state, wait=False)
    out["slurm_submit_1000_inprocess_s"] = time.perf_counter() - started
    out["slurm_arrays"] = len({j.job_id.split("_")[0] for j in state.trials.values()})
    started = time.perf_counter()
    cancelled = backend.cancel(ctx, state)
    out["slurm_cancel_s"] = time.perf_counter() - started
    out["slurm_cancelled_jobs"] = len(cancelled)
    other = root / "cmd"
    wall, proc = _sweep([str(path), *held, f"run.out_dir={other}"], env)
    assert proc.returncode == 0, proc.stderr
    out["slurm_submit_1000_command_s"] = wall
    wall, proc = _sweep(["cancel", str(path), *held, f"run.out_dir={other}"], env)
    assert proc.returncode == 0, proc.stderr
    out["slurm_cancel_command_s"] = wall
    return out


TRIVIAL = ("train.batch_size=[32]", "prior.kind=[laplace]", "data.train_size=32", "data.valid_size=32",
           "data.test_size=32", "train.epochs=1", "train.steps=1", "train.log_every=1", "train.val_draws=1",
           "train.sample_count=4", "evaluation.enabled=false")


def _quantiles(values: list[float]) -> dict:
    """Median, mean, 90th percentile, max and sum of ``values`` (s)."""
    if not values:
        return {}
    ordered = sorted(values)
    return {"median": statistics.median(ordered), "mean": statistics.fmean(ordered),
            "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], "max": ordered[-1], "sum": sum(ordered)}


def _tune_launch(sweep_dir: Path) -> dict:
    """Tune's own record of the (one) launch: the experiment's start and end, and per trial (by
    trial id) its start time, last-result time, ``time_total_s`` and result rows."""
    (launch,) = (sweep_dir / "tune").iterdir()
    state = json.loads(max(launch.glob("experiment_state-*.json")).read_text())
    trials = {}
    for trial_json, runtime_json in state["trial_data"]:
        trial, runtime = json.loads(trial_json), json.loads(runtime_json)
        folder = launch / trial["relative_logdir"]
        rows = [json.loads(line) for line in (folder / "result.json").read_text().splitlines() if line.strip()]
        trials[trial["relative_logdir"].split("-", 1)[1]] = {
            "start": runtime["start_time"], "last_result": runtime["last_result_time"],
            "time_total_s": runtime["last_result"]["time_total_s"], "rows": rows}
    # The experiment's span: the controller's start to its last experiment-state save (at the end of
    # fit). Tune's own "_total_time" is no wall time: Σ time_this_iter_s, with a function trainable's
    # last result counted twice (re-processed as the ``done`` result); kept for reference.
    saved = max(launch.glob("experiment_state-*.json")).stat().st_mtime
    return {"start": state["stats"]["start_time"], "end": saved, "runner_total_time": state["runner_data"]["_total_time"],
            "trials": trials}


def ray_overhead(trials: int, concurrency: int, keep: bool = False) -> dict:
    """Part 5 (see the module docstring)."""
    from mlflow import MlflowClient

    tmp = tempfile.mkdtemp(prefix="sweep-bench-ray-overhead-")
    root = Path(tmp)
    try:
        env = _env(root)
        args = [str(SMOKE), "backend=ray", f"run.out_dir={root / 'runs'}", *TRIVIAL,
                f"seeds=[{','.join(map(str, range(trials)))}]", f"ray.max_concurrent_trials={concurrency}"]
        load = _loadavg()
        started_at = time.time()
        wall, proc = _sweep(args, env, timeout=6 * 3600)
        ended_at = time.time()
        if proc.returncode != 0:
            raise RuntimeError(f"ray sweep failed ({proc.returncode}): {proc.stderr[-2000:]}")
        client = MlflowClient(env["MLFLOW_TRACKING_URI"])
        exp = client.get_experiment_by_name("smoke")
        found = client.search_runs([exp.experiment_id], max_results=trials + 100)
        runs = [r for r in found if r.data.tags.get("rgflow.role") == "trial"]
        (parent,) = [r for r in found if r.data.tags.get("rgflow.role") == "sweep"]
        assert len(runs) == trials and all(r.info.status == "FINISHED" for r in runs), \
            (len(runs), {r.info.status for r in runs})
        tune = _tune_launch(root / "runs" / "smoke")
        assert len(tune["trials"]) == trials, len(tune["trials"])
        per = []
        for run in runs:
            t = tune["trials"][run.data.tags["rgflow.trial_id"]]
            validations = [row for row in t["rows"] if row.get("val_epoch") is not None]
            assert len(validations) == 1 and len(t["rows"]) == 2, t["rows"]  # intermediate result + outcome
            per.append({"tune_start": t["start"], "mlflow_start": run.info.start_time / 1000,
                        "mlflow_end": run.info.end_time / 1000, "last_result": t["last_result"],
                        "time_total_s": t["time_total_s"]})
        per.sort(key=lambda p: p["tune_start"])
        work = sum(p["mlflow_end"] - p["mlflow_start"] for p in per)
        tune_inside = sum(p["time_total_s"] for p in per)
        tune_end = tune["end"]
        tune_span = tune_end - tune["start"]
        first = per[0]
        phases = {
            "tune_start_to_mlflow_run_start": _quantiles([p["mlflow_start"] - p["tune_start"] for p in per]),
            "mlflow_run": _quantiles([p["mlflow_end"] - p["mlflow_start"] for p in per]),
            "mlflow_run_end_to_last_result": _quantiles([p["last_result"] - p["mlflow_end"] for p in per]),
            "time_total_s": _quantiles([p["time_total_s"] for p in per]),
        }
        if concurrency == 1:
            phases["last_result_to_next_trial_start"] = _quantiles(
                [b["tune_start"] - a["last_result"] for a, b in zip(per, per[1:])])
        out = {
            "trials": trials, "concurrency": concurrency, "command": "python -m jobs.sweep sweeps/smoke.yaml " + " ".join(
                a if not a.startswith("seeds=") else f"seeds=[0..{trials - 1}]" for a in args[1:]),
            "wall_s": wall, "trial_work_s": work, "overhead_per_trial_s": (wall - work) / trials,
            "tune_experiment_s": tune_span, "tune_time_total_s_sum": tune_inside,
            "tune_overhead_per_trial_s": (tune_span - tune_inside) / trials,
            "tune_runner_total_time_s": tune["runner_total_time"],
            "launcher_before_tune_s": tune["start"] - started_at, "after_tune_s": ended_at - tune_end,
            # the launcher's start split at the parent run's creation: imports, preflight, the MLflow
            # store | Ray started, the trainable's parameters put, the Tuner built
            "launcher_to_parent_run_s": parent.info.start_time / 1000 - started_at,
            "parent_run_to_tune_s": tune["start"] - parent.info.start_time / 1000,
            "before_first_trial_s": first["tune_start"] - tune["start"],
            "first_trial": {"tune_start_to_mlflow_run_start_s": first["mlflow_start"] - first["tune_start"],
                            "mlflow_run_s": first["mlflow_end"] - first["mlflow_start"],
                            "time_total_s": first["time_total_s"]},
            "after_last_result_s": tune_end - max(p["last_result"] for p in per),
            "phases": phases, "loadavg_start": load, "loadavg_end": _loadavg(),
        }
        if concurrency > 1:
            out["slot_overhead_per_trial_s"] = (concurrency * wall - work) / trials
            out["tune_slot_overhead_per_trial_s"] = (concurrency * tune_span - tune_inside) / trials
        if keep:
            out["kept"] = str(root)
        return out
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def status_times() -> dict:
    """Part 4 (see the module docstring)."""
    from jobs.sweep_spec import load_sweep
    from tests.fixtures.sweep_store import log_sweep_runs

    out: dict = {"import_mlflow_s": _python_seconds("import mlflow")}
    with tempfile.TemporaryDirectory(prefix="sweep-bench-status-") as tmp:
        root = Path(tmp)
        thousand = root / "thousand.yaml"
        thousand.write_text(SWEEP_1000.format(base=REPO / "configs" / "tiny.yaml"))
        for name, path in (("smoke", SMOKE), ("thousand", thousand)):
            folder = root / name
            folder.mkdir()
            env, overrides = _env(folder), [f"run.out_dir={folder / 'runs'}"]
            sweep = load_sweep(path, overrides)
            started = time.perf_counter()
            log_sweep_runs(env["MLFLOW_TRACKING_URI"], sweep)
            logged = time.perf_counter() - started
            walls = []
            for _ in range(STATUS_REPEATS):
                wall, proc = _sweep(["status", str(path), *overrides], env)
                assert proc.returncode == 0, proc.stderr
                assert len(proc.stdout.splitlines()) == len(sweep.trials) + 2, proc.stdout[-2000:]
                walls.append(wall)
            out[name] = {"trials": len(sweep.trials), "log_runs_s": logged, "status_s": walls,
                         "status_median_s": statistics.median(walls), "status_max_s": max(walls)}
            print(f"status {name} ({len(sweep.trials)} trials): median {out[name]['status_median_s']:.2f} s, "
                  f"max {out[name]['status_max_s']:.2f} s", flush=True)
    return out


def _python_seconds(code: str) -> float:
    """Wall time of ``python -c CODE`` in a fresh process (s)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="ray,local,slurm")
    parser.add_argument("--skip-1000", action="store_true")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other parts of an existing bench/results/sweep.json (re-measure some backends)")
    parser.add_argument("--status-only", action="store_true", help="measure part 4 (status) only")
    parser.add_argument("--ray-overhead-only", action="store_true",
                        help="measure part 5 (Ray overhead per trivial trial) only, merged into the existing JSON")
    parser.add_argument("--ray-trials", type=int, default=200, help="trials of part 5 (default 200)")
    parser.add_argument("--ray-concurrency", type=int, default=1, help="trials at a time in part 5 (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep part 5's run folder (driver log, Tune folder)")
    args = parser.parse_args()
    if args.ray_overhead_only:
        result = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        row = _ray_overhead_row(args)
        result["ray_overhead"] = _merge_rows(result.get("ray_overhead"), row)
        result.setdefault("loadavg_start", row["loadavg_start"])
        result.setdefault("loadavg_end", row["loadavg_end"])
        _report(result)
        return
    if args.status_only:
        result = {"loadavg_start": _loadavg(), "status": status_times(), "loadavg_end": _loadavg()}
        if args.merge and RESULTS.exists():
            result = {**json.loads(RESULTS.read_text()), **result}
        _report(result)
        return
    backends = list(filter(None, args.backends.split(",")))
    with _slurm_cluster("slurm" in backends or not args.skip_1000) as slurm_env:
        result = _measure(backends, args.skip_1000, slurm_env)
    if "ray" in backends:
        result["ray_overhead"] = [_ray_overhead_row(args)]
    if args.merge and RESULTS.exists():
        old = json.loads(RESULTS.read_text())
        result["scheduling"] = [r for r in old.get("scheduling", []) if r["backend"] not in backends] + result["scheduling"]
        if args.skip_1000 and "thousand" in old:
            result["thousand"] = old["thousand"]
        rows = old.get("ray_overhead")
        for row in result.get("ray_overhead", []):
            rows = _merge_rows(rows, row)
        if rows:
            result["ray_overhead"] = rows
    _report(result)


def _merge_rows(old, row: dict) -> list[dict]:
    """Part 5's rows: ``row`` replaces an earlier one of the same trials and concurrency."""
    rows = old if isinstance(old, list) else []
    return [r for r in rows if (r["trials"], r["concurrency"]) != (row["trials"], row["concurrency"])] + [row]


def _ray_overhead_row(args) -> dict:
    row = ray_overhead(args.ray_trials, args.ray_concurrency, args.keep)
    print(f"ray    {row['trials']} trivial trials, {row['concurrency']} at a time: wall {row['wall_s']:.1f} s, "
          f"trial work {row['trial_work_s']:.1f} s → overhead {row['overhead_per_trial_s']:.2f} s/trial "
          f"(Tune: {row['tune_overhead_per_trial_s']:.2f} s/trial)", flush=True)
    return row


def _loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def _measure(backends: list[str], skip_1000: bool, slurm_env: dict[str, str] | None) -> dict:
    result: dict = {"loadavg_start": _loadavg(), "scheduling": []}
    for backend in backends:
        if backend == "slurm" and slurm_env is None:
            result["scheduling"].append({"backend": "slurm", "skipped": "Slurm binaries missing"})
            continue
        row = scheduling_overhead(backend, slurm_env if backend == "slurm" else {})
        result["scheduling"].append(row)
        print(f"{backend:6s} 16 one-step trials: wall {row['wall_s']:.1f} s, trial work {row['trial_work_s']:.1f} s "
              f"→ overhead {row['overhead_per_trial_s']:.2f} s/trial", flush=True)
    if not skip_1000:
        result["thousand"] = thousand(slurm_env)
    result["status"] = status_times()
    tracking = REPO / "bench" / "results" / "tracking.json"
    result["mlflow_logging"] = json.loads(tracking.read_text())["rows"] if tracking.exists() else \
        "run bench/tracking_bench.py first"
    result["loadavg_end"] = _loadavg()
    return result


def _report(result: dict) -> None:

    print("\n| measure | value |\n|---|---|")
    for row in result.get("scheduling", []):
        if "skipped" in row:
            print(f"| {row['backend']}: scheduling overhead | skipped ({row['skipped']}) |")
        else:
            print(f"| {row['backend']}: scheduling overhead per trial (16 one-step trials, serial) | "
                  f"{row['overhead_per_trial_s']:.2f} s (wall {row['wall_s']:.1f} s, work {row['trial_work_s']:.1f} s) |")
    rows = result.get("ray_overhead") or []
    for row in rows if isinstance(rows, list) else [rows]:
        what = f"ray: {row['trials']} trivial trials (1 step, 1 validation reported), {row['concurrency']} at a time"
        print(f"| {what}: overhead per trial, (wall − Σ MLflow run time) / trials | {row['overhead_per_trial_s']:.2f} s "
              f"(wall {row['wall_s']:.1f} s, work {row['trial_work_s']:.1f} s; target ≤ 1 s) |")
        if "slot_overhead_per_trial_s" in row:
            print(f"| {what}: slot overhead per trial, (c · wall − Σ work) / trials | "
                  f"{row['slot_overhead_per_trial_s']:.2f} s |")
        print(f"| {what}: Tune's figure, (experiment span − Σ time_total_s) / trials | "
              f"{row['tune_overhead_per_trial_s']:.2f} s (span {row['tune_experiment_s']:.1f} s, "
              f"Σ time_total_s {row['tune_time_total_s_sum']:.1f} s) |")
        if "tune_slot_overhead_per_trial_s" in row:
            print(f"| {what}: Tune's slot figure, (c · span − Σ time_total_s) / trials | "
                  f"{row['tune_slot_overhead_per_trial_s']:.2f} s |")
        print(f"| {what}: launcher before Tune (to the parent run + after it) / Tune start to first trial / after "
              f"last result / exit after Tune | {row['launcher_before_tune_s']:.1f} "
              f"({row.get('launcher_to_parent_run_s', float('nan')):.1f} + {row.get('parent_run_to_tune_s', float('nan')):.1f})"
              f" / {row['before_first_trial_s']:.1f} / {row['after_last_result_s']:.1f} / {row['after_tune_s']:.1f} s |")
        first = row.get("first_trial")
        if first:
            print(f"| {what}: first trial (new worker): Tune start to MLflow run start / MLflow run / time_total_s | "
                  f"{first['tune_start_to_mlflow_run_start_s']:.1f} / {first['mlflow_run_s']:.1f} / "
                  f"{first['time_total_s']:.1f} s |")
        for name, q in row["phases"].items():
            print(f"| {what}: per trial, {name.replace('_', ' ')}: median / p90 / sum | "
                  f"{q['median']:.2f} / {q['p90']:.2f} / {q['sum']:.1f} s |")
    for key, value in (result.get("thousand") or {}).items():
        print(f"| 1,000-trial sweep: {key} | {value:.2f} |" if isinstance(value, float) else
              f"| 1,000-trial sweep: {key} | {value} |")
    status = result.get("status")
    if status:
        for name in ("smoke", "thousand"):
            row = status[name]
            print(f"| status, {name} ({row['trials']} trials, fresh process): median / max of {len(row['status_s'])} | "
                  f"{row['status_median_s']:.2f} s / {row['status_max_s']:.2f} s |")
        print(f"| for scale: python -c 'import mlflow' (fresh process) | {status['import_mlflow_s']:.2f} s |")
    if isinstance(result.get("mlflow_logging"), list):
        for row in result["mlflow_logging"]:
            print(f"| MLflow ({row['store']}): log_metrics mean per call (10 metrics) | {row['log_metrics_us_mean']:.0f} µs |")
            print(f"| MLflow ({row['store']}): delivery CPU per logged step | {row['delivery_cpu_us_per_logged_step']:.0f} µs |")
            print(f"| MLflow ({row['store']}): step time for < 2 % overhead when logging every step | "
                  f"{row['step_ms_for_2pct_logging_every_step']:.0f} ms |")
    print(f"| load average start → end | {' '.join(result['loadavg_start'])} → {' '.join(result['loadavg_end'])} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
