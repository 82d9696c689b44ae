"""Chaos run: a real sweep under injected faults loses, doubles and leaves RUNNING nothing.

A tiny deterministic sweep (2 trials of the ``tiny`` model on 256 MSDS1 images, 3 epochs of 8
steps, test-BPD evaluation chained) is run with ``python -m jobs.sweep`` as a real subprocess,
on the local backend and on embedded Ray (``backend=local`` / ``backend=ray``), tracked in a real
``mlflow server`` (sqlite backend, HTTP on 127.0.0.1, a free port) that this script starts and
always stops. Faults come from a schedule drawn from ``--seed``:

==================  ==========================================================================
kind                what is done, at a random moment of the launch
==================  ==========================================================================
trial_sigkill       SIGKILL to one running trial process (local: the ``jobs.train`` subprocess;
                    Ray: the worker running the trial) — found as the process holding the trial's
                    ``train.log`` open
driver_sigkill      SIGKILL to the ``jobs.sweep`` process (its pid only, not its group)
driver_sigterm      SIGTERM to the ``jobs.sweep`` process
driver_sigint       SIGINT to the ``jobs.sweep`` process (``kill -INT``, not a terminal Ctrl-C)
cancel              ``python -m jobs.sweep cancel SWEEP overrides…`` from a second shell
server_outage       the tracking server stopped (SIGKILL of its process group or SIGTERM, drawn)
                    for 10–60 s (× ``--time-scale``), then restarted on the same port and store
truncated_ckpt      SIGKILL to a running trial that has a step checkpoint, then its newest
                    ``checkpoints/step-*.ckpt`` truncated to a random fraction of its size (a
                    crash that tore the file the resume would pick)
second_launch       a second ``python -m jobs.sweep`` of the same sweep while the first runs
==================  ==========================================================================

The moment is a drawn fraction (15–75 %) of the median duration of recent fault-free launches on
that backend (at first: the reference run's), so it follows the machine's load; a launch that ends
before its fault is repeated once in a fresh sweep at half the moment (``chaos-NNNb``), and a fault
that still found nothing to hit counts as scheduled but not injected.

After the fault the driver(s) are waited for (bounded), then the same command is re-run until it
exits 0 (at most ``--max-reruns`` times). Then the scenario's MLflow experiment is checked against
a **fault-free reference run** of the same trials (run once first, in its own out_dir and its own
sqlite store, on the first backend of ``--backends``; trial ids and every metric except the timing
ones are backend-independent — the local and Ray runs of this sweep agree bitwise).

Scenarios are independent: each has its own out_dir and its own sweep name (``name=chaos-NNN``,
hence its own MLflow experiment and parent run) in the one tracking server. Trial ids do not depend
on the sweep name, so each trial is compared with the reference trial of the same id.

Invariants (``invariant`` in a violation line):

* ``completes`` — a re-run exits 0 within ``--max-reruns``; ``driver-exits`` — each faulted driver
  exits within ``--sweep-timeout``;
* ``one-run-per-trial`` — exactly one active MLflow run per trial (tag ``rgflow.trial_id``), and
  no trial run for an unknown trial id;
* ``finished`` — every trial run FINISHED with ``rgflow.state=finished``; ``none-running`` — no
  run of the experiment (trial, parent or any other) RUNNING;
* ``parent-finished`` — exactly one active parent run (``rgflow.role=sweep``), FINISHED, and every
  trial's ``mlflow.parentRunId`` pointing at it;
* ``metric-keys`` — the same metric keys as the reference trial;
* ``no-duplicate-steps`` / ``no-missing-steps`` / ``no-extra-steps`` — every metric series
  (:meth:`MlflowClient.get_metric_history`) has each step once, and exactly the reference's steps;
* ``bitwise-equal`` — every value equal to the reference's at the same step (float equality of
  the bits, NaN equal to NaN), except the keys in :data:`NOT_BITWISE`;
* ``evaluated`` — the evaluation protocol tag ``rgflow.eval.protocol`` present and every
  ``rgflow.eval.*`` tag equal to the reference's except :data:`EVAL_TAGS_PER_RUN` (``test_bpd``
  is covered by the metric checks);
* ``no-leftover-trial-process`` — no ``jobs.train`` process, nor any process holding files of a
  trial's run folder open, once a re-run exited 0 (such processes are then waited for, bounded,
  before the store is checked); other leftovers, e.g. Ray's raylet or idle ``ray::ImplicitFunc``
  workers, are recorded in the JSON as ``leftovers``, then killed.

Exit code 1 if any invariant is violated (each printed as one ``VIOLATION`` line naming the
scenario, the trial, the invariant and the evidence), 0 otherwise, 2 for bad arguments or a
reference run that does not complete. JSON goes to ``--json`` (default
``bench/results/chaos.json``, ``chaos-quick.json`` with ``--quick``).

Usage::

    .venv/bin/python bench/chaos.py                                  # 50 faults, local + ray, seed 0
    .venv/bin/python bench/chaos.py --faults 20 --seed 3
    .venv/bin/python bench/chaos.py --quick --backends local:3,ray:1 # the slow test's run
    .venv/bin/python bench/chaos.py --kinds driver_sigkill,cancel --backends ray --faults 4

Everything is written under ``--workdir`` (default: a fresh temporary folder, removed at the end
unless ``--keep``); the MSDS1 cache in the repository's git-ignored ``data/`` is shared. Every
process started here carries an environment marker, and all of them (the server's process group
included) are killed at the end, also on Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
PYTHON = sys.executable

KINDS = ("trial_sigkill", "driver_sigkill", "driver_sigterm", "driver_sigint", "cancel", "server_outage",
         "truncated_ckpt", "second_launch")
BACKENDS = ("local", "ray")
#: Metric keys that legitimately differ between a faulted and a fault-free run: timing. They are
#: still checked for missing, extra and duplicated steps. ``system/…`` (MLflow system metrics) too.
NOT_BITWISE = frozenset({"wall_s", "images_per_s"})
NOT_BITWISE_PREFIXES = ("system/",)
#: The evaluation protocol tags (``rgflow.eval.*``) must equal the reference's, except these: the
#: SHA-256 of the evaluated checkpoint file (it holds the run id and timing state, so it differs per
#: run) and the protocol hash, which covers it.
EVAL_TAG_PREFIX = "rgflow.eval."
EVAL_TAGS_PER_RUN = frozenset({"rgflow.eval.checkpoint_sha256", "rgflow.eval.protocol"})
MARKER_VAR = "RGFLOW_CHAOS_MARKER"
STEP_CKPT = re.compile(r"^step-(\d+)(?:\.(\d+))?\.ckpt$")

SWEEP_YAML = """\
# Written by bench/chaos.py: 2 trials (Laplace, Gaussian) of the tiny model, 3 epochs x 8 steps,
# deterministic on one thread, test BPD evaluated after training.
name: chaos
base_config: {base_config}
base:
  data: {{train_size: 256, valid_size: 64, test_size: 64, root: {data_root}}}
  train: {{batch_size: 32, epochs: 3, log_every: 2, val_draws: 1, sample_every_epochs: 3, sample_count: 4,
          checkpoint_minutes: 1.0}}
  run: {{device: cpu, threads: 1, deterministic: true, seed: 0}}
  eval: {{test_draws: 1, receptive_field_samples: 1}}
  tracking: {{system_metrics: false}}  # sampled by the clock: not part of what must replay exactly
axes:
  grid:
    prior.kind: [laplace, gaussian]
  seeds: [0]
resources: {{cpus: 1, gpus: 0, memory_gb: 2, time_limit_min: 10}}
reuse: false  # every scenario trains its trials (they share trial ids with the other scenarios' sweeps)
backend: local
ray: {{address: local, max_concurrent_trials: 2, max_failures: 1}}
local: {{parallel: 2}}
evaluation: {{enabled: true, test_bpd: true, samples: false, fid: false, receptive_fields: false}}
"""


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def marked_pids(marker: str) -> list[int]:
    """Live processes whose environment holds ``MARKER_VAR=<marker…>`` (a prefix match, so the
    run's marker finds every scenario's processes). Never this process."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(item.startswith(needle) for item in env) and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return "?"


def open_files(pid: int) -> set[str]:
    out = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                out.add(os.readlink(fd))
            except OSError:
                continue
    except OSError:
        pass
    return out


def kill_pids(pids, sig=signal.SIGKILL, wait_s: float = 15.0) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)


def kill_marked(marker: str) -> list[dict]:
    """SIGKILL every process carrying ``marker`` (repeated: killing a parent can spawn nothing new,
    but Ray's agents may be mid-fork); returns what was killed (pid, command line)."""
    killed = []
    for _ in range(3):
        pids = marked_pids(marker)
        if not pids:
            break
        killed += [{"pid": p, "cmd": cmdline(p)} for p in pids]
        kill_pids(pids)
    return killed


def wait_proc(proc: subprocess.Popen, timeout_s: float) -> int | None:
    try:
        return proc.wait(timeout=max(0.0, timeout_s))
    except subprocess.TimeoutExpired:
        return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------------------------
# Tracking server
# ----------------------------------------------------------------------------------------------

class Server:
    """``mlflow server`` with a sqlite store and proxied artifacts under ``root``, bound to
    127.0.0.1:``port``, in its own session (process group) so that it can be crashed whole."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.env = {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)

    def start(self, timeout_s: float = 180.0, wait: bool = True) -> None:
        """Start the server; with ``wait``, until ``/health`` answers (else call :meth:`wait_healthy`)."""
        logf = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],
            cwd=self.root, env=self.env, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        logf.close()
        if wait:
            self.wait_healthy(timeout_s)

    def wait_healthy(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.proc.returncode}); see {self.root / 'server.log'}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop(crash=True)
        raise RuntimeError(f"mlflow server not healthy after {timeout_s:.0f} s; see {self.root / 'server.log'}")

    def warm_up(self) -> None:
        """The first API request to a fresh server is slow (≈ 16 s): pay it here."""
        from mlflow import MlflowClient

        MlflowClient(self.uri).search_experiments(max_results=1)

    def stop(self, crash: bool = False) -> None:
        """SIGKILL to the whole process group (``crash``) or SIGTERM and wait (then SIGKILL)."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        try:
            os.killpg(pgid, signal.SIGKILL if crash else signal.SIGTERM)
        except ProcessLookupError:
            pass
        if wait_proc(self.proc, 30.0) is None:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_proc(self.proc, 10.0)
        try:  # uvicorn workers left in the group
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None


# ----------------------------------------------------------------------------------------------
# The sweep
# ----------------------------------------------------------------------------------------------

@dataclass
class SweepRun:
    """One sweep of the chaos run: where it lives and how to launch it."""

    sweep_file: Path
    name: str
    out_dir: Path
    backend: str
    uri: str
    env: dict[str, str]
    cwd: Path

    @property
    def overrides(self) -> list[str]:
        return [f"name={self.name}", f"run.out_dir={self.out_dir}", f"backend={self.backend}"]

    @property
    def sweep_dir(self) -> Path:
        return self.out_dir / self.name

    def command(self, *pre: str) -> list[str]:
        return [PYTHON, "-m", "jobs.sweep", *pre, str(self.sweep_file), *self.overrides]

    def popen(self, label: str, *pre: str) -> tuple[subprocess.Popen, Path]:
        out = self.out_dir.parent / f"{label}.log"
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "ab") as fh:
            proc = subprocess.Popen(self.command(*pre), cwd=self.cwd, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        return proc, out

    def run(self, label: str, timeout_s: float, *pre: str) -> tuple[int | None, str, float]:
        """Run to the end (killed at ``timeout_s``); (exit code or None on timeout, output tail, seconds)."""
        started = time.monotonic()
        proc, out = self.popen(label, *pre)
        code = wait_proc(proc, timeout_s)
        if code is None:
            kill_pids([proc.pid])
            proc.wait()
        return code, tail(out), time.monotonic() - started

    def trial_dirs(self) -> list[Path]:
        return sorted(p for p in self.sweep_dir.iterdir() if p.is_dir() and p.name != "logs" and p.name != "tune") \
            if self.sweep_dir.is_dir() else []

    def trial_processes(self, marker: str, any_file: bool = False) -> dict[int, str]:
        """pid → trial id of the processes holding a trial's ``train.log`` open (training), or with
        ``any_file`` any file of a trial's run folder (also starting up, or ending)."""
        dirs = {str(d): d.name for d in self.trial_dirs()}
        found = {}
        for pid in marked_pids(marker):
            for path in open_files(pid):
                folder, _, name = path.rpartition("/")
                if folder in dirs and (any_file or name == "train.log"):
                    found[pid] = dirs[folder]
        return found


def tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())[-800:]


def newest_step_checkpoint(folder: Path) -> Path | None:
    found = [((int(m.group(1)), int(m.group(2) or 0)), p) for p in folder.glob("step-*.ckpt")
             if (m := STEP_CKPT.match(p.name))] if folder.is_dir() else []
    return max(found)[1] if found else None


# ----------------------------------------------------------------------------------------------
# Reading a store
# ----------------------------------------------------------------------------------------------

@dataclass
class TrialRecord:
    run_id: str
    status: str
    tags: dict[str, str]
    history: dict[str, list[tuple[int, float]]]  # key → [(step, value)] in store order


def read_experiment(uri: str, name: str) -> dict:
    """Every run of experiment ``name``: trial runs with their metric histories, parents, others."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return {"trials": [], "parents": [], "others": [], "deleted_trials": 0}
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], "", ViewType.ALL, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    out = {"trials": [], "parents": [], "others": [], "deleted_trials": 0}
    for run in runs:
        role = run.data.tags.get("rgflow.role")
        if run.info.lifecycle_stage == "deleted":
            out["deleted_trials"] += role == "trial"
            continue
        if role == "trial":
            history = {key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
                       for key in run.data.metrics}
            out["trials"].append(TrialRecord(run.info.run_id, run.info.status, dict(run.data.tags), history))
        elif role == "sweep":
            out["parents"].append((run.info.run_id, run.info.status))
        else:
            out["others"].append((run.info.run_id, run.info.status, role))
    return out


def _bits(value: float) -> bytes:
    return struct.pack("<d", math.nan if value != value else value)


def bitwise_excluded(key: str) -> bool:
    return key in NOT_BITWISE or key.startswith(NOT_BITWISE_PREFIXES)


def check(found: dict, reference: dict[str, TrialRecord]) -> list[tuple[str, str, str]]:
    """Violations (trial id or ``-``, invariant, evidence) of one scenario's experiment."""
    bad: list[tuple[str, str, str]] = []
    by_trial: dict[str, list[TrialRecord]] = {}
    for rec in found["trials"]:
        by_trial.setdefault(rec.tags.get("rgflow.trial_id", "?"), []).append(rec)
    for tid in sorted(set(by_trial) - set(reference)):
        bad.append((tid, "one-run-per-trial", f"{len(by_trial[tid])} run(s) for a trial id not in the sweep: "
                                              f"{[r.run_id for r in by_trial[tid]]}"))
    parents = found["parents"]
    active_parents = [p for p in parents]
    if len(active_parents) != 1:
        bad.append(("-", "parent-finished", f"{len(active_parents)} active parent runs: {active_parents}"))
    for run_id, status in parents:
        if status != "FINISHED":
            bad.append(("-", "parent-finished", f"parent run {run_id} is {status}"))
    parent_ids = {p[0] for p in parents}
    for run_id, status, role in found["others"]:
        if status == "RUNNING":
            bad.append(("-", "none-running", f"run {run_id} (rgflow.role={role}) is RUNNING"))
    for tid in sorted(reference):
        runs = by_trial.get(tid, [])
        if len(runs) != 1:
            bad.append((tid, "one-run-per-trial", f"{len(runs)} active runs: "
                                                  f"{[(r.run_id, r.status) for r in runs]}"))
        for rec in runs:
            if rec.status == "RUNNING":
                bad.append((tid, "none-running", f"run {rec.run_id} is RUNNING"))
            if rec.status != "FINISHED" or rec.tags.get("rgflow.state") != "finished":
                bad.append((tid, "finished", f"run {rec.run_id} status {rec.status}, rgflow.state="
                                             f"{rec.tags.get('rgflow.state')}"))
            if rec.tags.get("mlflow.parentRunId") not in parent_ids:
                bad.append((tid, "parent-finished", f"run {rec.run_id} has mlflow.parentRunId="
                                                    f"{rec.tags.get('mlflow.parentRunId')} not an active parent"))
        if not runs:
            continue
        rec, ref = runs[0], reference[tid]
        if "rgflow.eval.protocol" not in rec.tags:
            bad.append((tid, "evaluated", f"run {rec.run_id} has no rgflow.eval.protocol tag (never evaluated)"))
        else:
            differ = {k: (rec.tags.get(k), v) for k, v in ref.tags.items()
                      if k.startswith(EVAL_TAG_PREFIX) and k not in EVAL_TAGS_PER_RUN and rec.tags.get(k) != v}
            if differ:
                bad.append((tid, "evaluated", f"run {rec.run_id} evaluation tags differ (run, reference): {differ}"))
        missing_keys = sorted(set(ref.history) - set(rec.history))
        extra_keys = sorted(set(rec.history) - set(ref.history))
        if missing_keys or extra_keys:
            bad.append((tid, "metric-keys", f"run {rec.run_id} missing {missing_keys}, extra {extra_keys}"))
        for key in sorted(set(ref.history) & set(rec.history)):
            points, ref_points = rec.history[key], ref.history[key]
            steps = [s for s, _ in points]
            dup = sorted({s for s in steps if steps.count(s) > 1})
            if dup:
                bad.append((tid, "no-duplicate-steps", f"{key}: steps {dup[:10]} logged more than once "
                                                       f"({len(points)} points, {len(set(steps))} steps)"))
            want_steps = {s for s, _ in ref_points}
            missing = sorted(want_steps - set(steps))
            extra = sorted(set(steps) - want_steps)
            if missing:
                bad.append((tid, "no-missing-steps", f"{key}: steps {missing[:10]} missing ({len(missing)} of "
                                                     f"{len(want_steps)})"))
            if extra:
                bad.append((tid, "no-extra-steps", f"{key}: steps {extra[:10]} not in the reference"))
            if bitwise_excluded(key):
                continue
            ref_by_step = dict(ref_points)
            differ = [(s, v, ref_by_step[s]) for s, v in points if s in ref_by_step and _bits(v) != _bits(ref_by_step[s])]
            if differ:
                s, v, r = differ[0]
                bad.append((tid, "bitwise-equal", f"{key}: {len(differ)} value(s) differ, first at step {s}: "
                                                  f"{v!r} != reference {r!r}"))
    return bad


# ----------------------------------------------------------------------------------------------
# Schedule and scenarios
# ----------------------------------------------------------------------------------------------

@dataclass
class Fault:
    index: int
    backend: str
    kind: str
    at_fraction: float  # when, as a fraction of a fault-free launch's duration (Chaos.expected_s)
    params: dict = field(default_factory=dict)


def parse_backends(text: str, total: int) -> list[tuple[str, int]]:
    """``local,ray`` (``total`` split evenly, the remainder to the first) or ``local:3,ray:1``."""
    items = [p.strip() for p in text.split(",") if p.strip()]
    out, free = [], []
    for item in items:
        name, _, count = item.partition(":")
        if name not in BACKENDS:
            raise SystemExit(f"error: --backends: unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
        out.append([name, int(count) if count else None])
        if not count:
            free.append(len(out) - 1)
    left = total - sum(c for _, c in out if c is not None)
    for n, i in enumerate(free):
        out[i][1] = max(0, left // len(free) + (1 if n < left % len(free) else 0))
    return [(name, count) for name, count in out]


def make_schedule(seed: int, plan: list[tuple[str, int]], kinds: tuple[str, ...], time_scale: float) -> list[Fault]:
    """The faults, drawn from ``seed``: per backend the kinds cycle through seeded permutations (so
    a short run still covers distinct kinds), interleaved across backends; moments and parameters drawn."""
    rng = random.Random(seed)
    per_backend = {}
    for backend, count in plan:
        order: list[str] = []
        while len(order) < count:
            perm = list(kinds)
            rng.shuffle(perm)
            order += perm
        per_backend[backend] = order[:count]
    faults: list[Fault] = []
    while any(per_backend.values()):
        for backend, _ in plan:
            if per_backend[backend]:
                kind = per_backend[backend].pop(0)
                params: dict = {}
                if kind == "server_outage":
                    params = {"down_s": round(rng.uniform(10.0, 60.0) * time_scale, 2), "crash": rng.random() < 0.5}
                elif kind == "truncated_ckpt":
                    params = {"keep_fraction": round(rng.uniform(0.0, 0.9), 3), "pick": rng.random()}
                elif kind == "trial_sigkill":
                    params = {"pick": rng.random()}
                faults.append(Fault(len(faults), backend, kind, round(rng.uniform(0.15, 0.75), 3), params))
    return faults


@dataclass
class Outcome:
    index: int
    backend: str
    kind: str
    name: str
    injected: bool = False
    detail: str = ""
    fault_rc: list = field(default_factory=list)
    reruns: list = field(default_factory=list)
    survived: bool = False
    violations: list = field(default_factory=list)
    leftovers: list = field(default_factory=list)
    seconds: float = 0.0


class Chaos:
    def __init__(self, args, workdir: Path, marker: str):
        self.args = args
        self.workdir = workdir
        self.marker = marker
        base_env = {k: v for k, v in os.environ.items()
                    if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_URI")}
        base_env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
                         "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(args.code), MARKER_VAR: marker})
        self.base_env = base_env
        self.sweep_file = workdir / "chaos.yaml"
        data_root = Path(os.environ.get("RGFLOW_TEST_DATA_ROOT", REPO / "data")).resolve()
        self.sweep_file.write_text(SWEEP_YAML.format(base_config=args.code / "configs" / "tiny.yaml", data_root=data_root))
        self.server = Server(workdir / "server", base_env)
        self.reference: dict[str, TrialRecord] = {}
        self.reference_s = 30.0
        #: backend → durations (s) of recent launches that ran the whole sweep without a fault: a
        #: fault's moment is a fraction of their median, so it adapts to the machine's load
        self.full_launch_s: dict[str, list[float]] = {}

    def expected_s(self, backend: str) -> float:
        recent = (self.full_launch_s.get(backend) or [self.reference_s])[-3:]
        return sorted(recent)[len(recent) // 2]

    def sweep(self, name: str, backend: str, uri: str, out_dir: Path, marker: str) -> SweepRun:
        env = {**self.base_env, "MLFLOW_TRACKING_URI": uri, MARKER_VAR: marker}
        return SweepRun(self.sweep_file, name, out_dir, backend, uri, env, self.workdir)

    # ---- reference -------------------------------------------------------------------------
    def run_reference(self, backend: str) -> None:
        root = self.workdir / "reference"
        uri = f"sqlite:///{root / 'mlflow.db'}"
        sweep = self.sweep("chaos-reference", backend, uri, root / "runs", f"{self.marker}-ref")
        log(f"fault-free reference run ({backend}, store {uri})")
        code, out, seconds = sweep.run("reference", self.args.sweep_timeout)
        kill_marked(f"{self.marker}-ref")
        if code != 0:
            print(f"error: the fault-free reference run did not complete (exit {code}): {out}", file=sys.stderr)
            raise SystemExit(2)
        found = read_experiment(uri, sweep.name)
        self.reference = {r.tags["rgflow.trial_id"]: r for r in found["trials"]}
        bad = check(found, self.reference)
        if bad or len(self.reference) != 2:
            print(f"error: the reference run itself is inconsistent: {bad or found}", file=sys.stderr)
            raise SystemExit(2)
        self.reference_s = seconds
        log(f"reference: {len(self.reference)} trials in {seconds:.1f} s, "
            f"{sum(len(h) for r in self.reference.values() for h in r.history.values())} metric points")

    # ---- one scenario ----------------------------------------------------------------------
    def scenario(self, fault: Fault) -> Outcome:
        """One fault; if the launch ended before it could be injected, once more in a fresh sweep
        (suffix ``b``) at half the moment."""
        out = self._scenario(fault, f"chaos-{fault.index:03d}", fault.at_fraction)
        if not out.injected and not out.violations:
            log(f"{out.name}: not injected (the launch ended first); again at {fault.at_fraction / 2:.0%}")
            out = self._scenario(fault, f"chaos-{fault.index:03d}b", fault.at_fraction / 2)
        return out

    def _scenario(self, fault: Fault, name: str, at_fraction: float) -> Outcome:
        marker = f"{self.marker}-{name}"
        out = Outcome(fault.index, fault.backend, fault.kind, name)
        sweep = self.sweep(name, fault.backend, self.server.uri, self.workdir / name / "runs", marker)
        started = time.monotonic()
        expected = self.expected_s(fault.backend)
        log(f"{name}: {fault.backend} {fault.kind} at {at_fraction:.0%} of {expected:.0f} s {fault.params or ''}")
        try:
            self._inject(fault, sweep, marker, out, at_fraction * expected)
            self._rerun(sweep, out)
            time.sleep(0.5)
            self._leftovers(sweep, marker, out)
            if out.survived:
                out.violations += [list(v) for v in check(read_experiment(self.server.uri, name), self.reference)]
        except Exception as err:  # noqa: BLE001 - a harness error is reported as a violation, the run goes on
            out.violations.append(["-", "harness", f"{type(err).__name__}: {err}"])
        finally:
            kill_marked(marker)
            if self.server.proc is None or self.server.proc.poll() is not None:
                self.server.start()
        out.seconds = round(time.monotonic() - started, 1)
        return out

    def _deadline_wait(self, procs, until: float) -> bool:
        """Sleep until monotonic ``until``; False when every process in ``procs`` ended first."""
        while time.monotonic() < until:
            if all(p.poll() is not None for p in procs):
                return False
            time.sleep(0.1)
        return True

    def _inject(self, fault: Fault, sweep: SweepRun, marker: str, out: Outcome, delay_s: float) -> None:
        launched = time.monotonic()
        driver, _ = sweep.popen("launch-0")
        procs = [driver]
        at = launched + delay_s
        kind = fault.kind
        if kind in ("trial_sigkill", "truncated_ckpt"):
            self._deadline_wait(procs, at)
            while driver.poll() is None:
                targets = sweep.trial_processes(marker)
                if kind == "truncated_ckpt":
                    targets = {p: t for p, t in targets.items()
                               if newest_step_checkpoint(sweep.sweep_dir / t / "checkpoints") is not None}
                if targets:
                    pids = sorted(targets)
                    pid = pids[int(fault.params["pick"] * len(pids)) % len(pids)]
                    os.kill(pid, signal.SIGKILL)
                    out.injected = True
                    out.detail = f"SIGKILL pid {pid} ({cmdline(pid)[:60]}) of trial {targets[pid]}"
                    if kind == "truncated_ckpt":
                        kill_pids([pid], signal.SIGKILL, 10.0)
                        ckpt = newest_step_checkpoint(sweep.sweep_dir / targets[pid] / "checkpoints")
                        if ckpt is not None:
                            size = ckpt.stat().st_size
                            keep = int(size * fault.params["keep_fraction"])
                            os.truncate(ckpt, keep)
                            out.detail += f"; truncated {ckpt.name} {size} -> {keep} bytes"
                        else:
                            out.detail += "; no step checkpoint left to truncate"
                    break
                time.sleep(0.05)
        elif kind.startswith("driver_"):
            if self._deadline_wait(procs, at):
                sig = {"driver_sigkill": signal.SIGKILL, "driver_sigterm": signal.SIGTERM,
                       "driver_sigint": signal.SIGINT}[kind]
                os.kill(driver.pid, sig)
                out.injected = True
                out.detail = f"{sig.name} to driver pid {driver.pid}"
        elif kind == "cancel":
            if self._deadline_wait(procs, at):
                code, text, seconds = sweep.run("cancel", 240.0, "cancel")
                out.injected = True
                out.detail = f"cancel exit {code} after {seconds:.1f} s: {text[-200:]}"
        elif kind == "second_launch":
            if self._deadline_wait(procs, at):
                second, _ = sweep.popen("launch-1")
                procs.append(second)
                out.injected = True
                out.detail = f"second launch pid {second.pid}"
        elif kind == "server_outage":
            if self._deadline_wait(procs, at):
                down = fault.params["down_s"]
                self.server.stop(crash=fault.params["crash"])
                out.injected = True
                time.sleep(down)
                self.server.start()
                out.detail = f"server {'crashed' if fault.params['crash'] else 'stopped'} for {down:.1f} s"
        deadline = time.monotonic() + self.args.sweep_timeout
        for n, proc in enumerate(procs):
            code = wait_proc(proc, deadline - time.monotonic())
            if code is None:
                out.violations.append(["-", "driver-exits", f"launch {n} (pid {proc.pid}) still running "
                                                            f"{self.args.sweep_timeout:.0f} s after the fault; killed"])
                kill_pids([proc.pid])
                proc.wait()
            out.fault_rc.append(code)
        if not out.injected:
            out.detail = "not injected: the launch ended before the fault's moment or target"
            if out.fault_rc == [0]:
                self.full_launch_s.setdefault(fault.backend, []).append(time.monotonic() - launched)

    def _rerun(self, sweep: SweepRun, out: Outcome) -> None:
        if out.fault_rc and all(c == 0 for c in out.fault_rc) and not out.injected:
            out.survived = True
            return
        last = ""
        for n in range(self.args.max_reruns):
            code, text, seconds = sweep.run(f"rerun-{n}", self.args.sweep_timeout)
            out.reruns.append(code)
            last = text
            if code == 0:
                out.survived = True
                return
            time.sleep(self.args.rerun_pause)
        out.violations.append(["-", "completes", f"{len(out.reruns)} re-runs, exit codes {out.reruns}; last output: "
                                                 f"{last[-300:]}"])

    def _leftovers(self, sweep: SweepRun, marker: str, out: Outcome) -> None:
        """Trial processes alive after the sweep said it completed are a violation; they are then
        waited for (bounded), so that the store checks see what they leave behind for good."""
        trials = sweep.trial_processes(marker, any_file=True)
        trials.update({pid: "-" for pid in marked_pids(marker) if pid not in trials and " -m jobs.train " in cmdline(pid)})
        for pid, tid in sorted(trials.items()):
            out.violations.append([tid, "no-leftover-trial-process",
                                   f"pid {pid} ({cmdline(pid)[:80]}) still alive (a jobs.train process, or one with "
                                   "files of the trial's run folder open) after a re-run exited 0"])
        deadline = time.monotonic() + self.args.sweep_timeout
        while trials and time.monotonic() < deadline and any(_alive(p) for p in trials):
            time.sleep(0.5)
        out.leftovers = [{"pid": p, "cmd": cmdline(p)} for p in marked_pids(marker)]


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------

def summary_rows(outcomes: list[Outcome]) -> list[dict]:
    rows = {}
    for o in outcomes:
        row = rows.setdefault((o.backend, o.kind), {"backend": o.backend, "kind": o.kind, "scheduled": 0, "injected": 0,
                                                    "survived": 0, "violated": 0, "violations": 0, "invariants": set()})
        row["scheduled"] += 1
        row["injected"] += o.injected
        row["survived"] += o.survived
        row["violated"] += bool(o.violations)
        row["violations"] += len(o.violations)
        row["invariants"] |= {v[1] for v in o.violations}
    out = []
    for key in sorted(rows):
        row = rows[key]
        row["invariants"] = sorted(row["invariants"])
        out.append(row)
    return out


def format_table(rows: list[dict]) -> str:
    head = f"{'backend':<8} {'fault':<15} {'sched':>5} {'injected':>8} {'survived':>8} {'violated':>8} {'#viol':>5}  invariants violated"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['backend']:<8} {r['kind']:<15} {r['scheduled']:>5} {r['injected']:>8} {r['survived']:>8} "
                     f"{r['violated']:>8} {r['violations']:>5}  {', '.join(r['invariants']) or '-'}")
    tot = {k: sum(r[k] for r in rows) for k in ("scheduled", "injected", "survived", "violated", "violations")}
    lines.append("-" * len(head))
    lines.append(f"{'total':<8} {'':<15} {tot['scheduled']:>5} {tot['injected']:>8} {tot['survived']:>8} "
                 f"{tot['violated']:>8} {tot['violations']:>5}")
    return "\n".join(lines)


def violation_lines(outcomes: list[Outcome]) -> list[str]:
    return [f"VIOLATION scenario={o.name} ({o.backend}/{o.kind}: {o.detail[:120]}) trial={trial} invariant={inv} "
            f"evidence={evidence}" for o in outcomes for trial, inv, evidence in o.violations]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faults", type=int, default=50, help="faults to inject in all (default 50)")
    parser.add_argument("--backends", default="local,ray",
                        help="local,ray (faults split evenly) or local:3,ray:1 (counts per backend)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"fault kinds to draw from (default: all: {','.join(KINDS)})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault schedule")
    parser.add_argument("--quick", action="store_true",
                        help="scaled-down timings: outages x0.1 (1-6 s), shorter timeouts and pauses")
    parser.add_argument("--time-scale", type=float, default=None,
                        help="factor on the server outage durations of 10-60 s (default 1, 0.1 with --quick)")
    parser.add_argument("--max-reruns", type=int, default=6, help="re-runs after a fault before 'completes' fails")
    parser.add_argument("--sweep-timeout", type=float, default=None,
                        help="seconds one jobs.sweep process may run (default 600, 300 with --quick)")
    parser.add_argument("--json", type=Path, default=None, help="JSON output (default bench/results/chaos[-quick].json)")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for everything (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (run folders, logs, stores)")
    parser.add_argument("--code", type=Path, default=REPO,
                        help="the checkout whose jobs/ and rgflow/ the sweeps run (default: this one), e.g. an "
                             "exported commit (git archive HEAD | tar -x -C DIR) while the tree is being edited")
    args = parser.parse_args(argv)
    args.time_scale = args.time_scale if args.time_scale is not None else (0.1 if args.quick else 1.0)
    args.sweep_timeout = args.sweep_timeout or (300.0 if args.quick else 600.0)
    args.rerun_pause = 1.0 if args.quick else 3.0
    args.code = args.code.resolve()
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        parser.error(f"--kinds: unknown {unknown} (choose from {', '.join(KINDS)})")
    plan = parse_backends(args.backends, args.faults)
    faults = make_schedule(args.seed, plan, kinds, args.time_scale)
    json_path = args.json or RESULTS / ("chaos-quick.json" if args.quick else "chaos.json")

    owned = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="rgflow-chaos-")) if owned else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    marker = uuid.uuid4().hex

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    chaos = Chaos(args, workdir, marker)
    outcomes: list[Outcome] = []
    started = time.monotonic()
    try:
        log(f"starting the tracking server ({chaos.server.uri})")
        chaos.server.start(wait=False)  # starts up while the reference runs
        chaos.run_reference(plan[0][0])
        chaos.server.wait_healthy()
        chaos.server.warm_up()
        for fault in faults:
            outcome = chaos.scenario(fault)
            outcomes.append(outcome)
            state = "survived" if outcome.survived else "NOT survived"
            log(f"{outcome.name}: {'injected' if outcome.injected else 'not injected'}, {state}, "
                f"{len(outcome.violations)} violation(s), {outcome.seconds:.0f} s; {outcome.detail[:150]}")
            for line in violation_lines([outcome]):
                log(line[:400])
    finally:
        chaos.server.stop()
        leftovers = kill_marked(marker)
        for s, handler in previous.items():
            signal.signal(s, handler)
        if owned and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif leftovers:
            log(f"killed {len(leftovers)} leftover process(es)")

    rows = summary_rows(outcomes)
    lines = violation_lines(outcomes)
    print(format_table(rows))
    for line in lines:
        print(line)
    print(f"{sum(o.injected for o in outcomes)} faults injected, {len(lines)} violation(s), "
          f"{time.monotonic() - started:.0f} s" + (f"; work folder {workdir}" if not owned or args.keep else ""))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({
        "seed": args.seed, "quick": args.quick, "time_scale": args.time_scale, "backends": plan, "kinds": kinds,
        "max_reruns": args.max_reruns, "reference_s": chaos.reference_s, "not_bitwise": sorted(NOT_BITWISE),
        "not_bitwise_prefixes": list(NOT_BITWISE_PREFIXES), "schedule": [asdict(f) for f in faults],
        "summary": rows, "scenarios": [asdict(o) for o in outcomes], "violations": lines,
        "seconds": round(time.monotonic() - started, 1),
    }, indent=1, default=str) + "\n")
    print(f"wrote {json_path}")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
