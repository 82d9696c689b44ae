"""Cost of MLflow logging for a training loop, against a training step.

For each store (a local sqlite file and a real ``mlflow server`` started by ``mlflow/server.sh``):

1. per-call cost of ``TrialRun.log_metrics`` with 10 metrics per call in the training thread
   (``--calls`` back-to-back calls; median, p99, mean);
2. delivery cost: the CPU time of pushing those metrics to the store (the work the background
   flusher does, timed synchronously through ``flush()``), per logged step, plus the server's own
   CPU (its process group, from /proc) and the delivery rate in metrics/s;
3. a real tiny RG-Flow training step (preset ``tiny``, ``--batch`` images 3×32×32, CPU): median
   of ``--steps`` steps without logging, then with ``log_metrics`` after every step (flusher on);
4. overhead = (per-call mean + delivery CPU) / tiny step time, logging every step (the worst case;
   the trainer logs every ``train.log_every`` steps), and the step time above which that stays
   under 2 %; and that every value reached the store exactly once.

Usage: ``.venv/bin/python bench/tracking_bench.py [--calls 3000] [--steps 5] [--batch 16] [--no-server]``.
Prints a table and writes ``bench/results/tracking.json``. Numbers from a shared, noisy machine:
read the ratios, and compare runs made on a quiet machine (``/proc/loadavg``).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from jobs import tracking as T  # noqa: E402
from rgflow.config import PriorConfig, model_preset  # noqa: E402
from rgflow.model import RGFlowModel  # noqa: E402

KEYS = ["train_bpd", "grad_norm", "lr", "images_per_s", "samples_seen", "wall_s", "epoch", "noise_scale",
        "noise_scale_raw", "val_bpd"]


def tiny_step_fn(batch: int):
    """A real training step of the tiny preset on the CPU: returns a callable doing one step."""
    torch.manual_seed(0)
    model = RGFlowModel(model_preset("tiny"), PriorConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)

    def step() -> float:
        x_tilde = (x.float() + torch.rand(x.shape)) / 256.0
        loss = model.nll_per_dim(x_tilde).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def process_group_cpu_s(pgid: int | None) -> float:
    """CPU seconds (user + system) of every live process in process group ``pgid`` (the server)."""
    if pgid is None:
        return 0.0
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after "(comm)": state ppid pgrp ... utime(11) stime(12)
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def measure(store: str, uri: str, run_dir: Path, calls: int, steps: int, step, server_pgid: int | None) -> dict:
    exp = T.ensure_experiment(uri, "tracking-bench")
    # 1. per-call cost in the training thread (flusher idle, so no contention is counted here)
    trial = T.open_trial_run(uri, exp, f"calls-{store}", f"calls-{store}", None, {"bench": {"calls": calls}}, {},
                             run_dir / "calls", flush_interval_s=3600)
    per_call = []
    for i in range(1, calls + 1):
        values = {k: i * 1e-3 + j for j, k in enumerate(KEYS)}
        t0 = time.perf_counter_ns()
        trial.log_metrics(values, i)
        per_call.append((time.perf_counter_ns() - t0) / 1e3)
    # 2. delivery cost: the same work the flusher does, here synchronously in this thread
    cpu0, server0, wall0 = time.thread_time(), process_group_cpu_s(server_pgid), time.perf_counter()
    delivered = trial.flush(timeout_s=600)
    deliver_wall = time.perf_counter() - wall0
    deliver_cpu_us = (time.thread_time() - cpu0) / calls * 1e6
    server_cpu_us = (process_group_cpu_s(server_pgid) - server0) / calls * 1e6
    delivered &= trial.end("finished")
    client = T.get_client(uri)
    exactly_once = all(len(client.get_metric_history(trial.run_id, k)) == calls for k in ("train_bpd", "val_bpd"))
    # 3. real training steps, without and with logging (flusher on its default 2 s period)
    trial = T.open_trial_run(uri, exp, f"steps-{store}", f"steps-{store}", None, {}, {}, run_dir / "steps")
    plain, logged = [], []
    for i in range(1, 2 * steps + 1):
        t0 = time.perf_counter()
        loss = step()
        if i > steps:
            trial.log_metrics({k: loss + j for j, k in enumerate(KEYS)}, i)
        (logged if i > steps else plain).append(time.perf_counter() - t0)
    delivered &= trial.end("finished")
    mean_call_us = statistics.fmean(per_call)
    cost_us = mean_call_us + deliver_cpu_us  # training thread + background thread, per logged step
    step_ms = statistics.median(plain) * 1e3
    return {
        "store": store,
        "calls": calls,
        "metrics_per_call": len(KEYS),
        "log_metrics_us_median": statistics.median(per_call),
        "log_metrics_us_p99": percentile(per_call, 0.99),
        "log_metrics_us_mean": mean_call_us,
        "delivery_cpu_us_per_logged_step": deliver_cpu_us,
        "server_cpu_us_per_logged_step": server_cpu_us,
        "delivery_metrics_per_s": calls * len(KEYS) / deliver_wall,
        "tiny_step_ms_median": step_ms,
        "tiny_step_logged_ms_median": statistics.median(logged) * 1e3,
        "overhead_pct_of_tiny_step": cost_us / 1e3 / step_ms * 100,
        "step_ms_for_2pct_logging_every_step": cost_us / 1e3 / 0.02,
        "delivered": delivered,
        "exactly_once": exactly_once,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=5, help="training steps without, then with logging")
    parser.add_argument("--batch", type=int, default=16, help="batch size of the tiny training step")
    parser.add_argument("--no-server", action="store_true", help="only the sqlite store")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    step = tiny_step_fn(args.batch)
    step()  # warm-up
    rows = []
    with tempfile.TemporaryDirectory(prefix="tracking-bench-") as tmp:
        tmp = Path(tmp)
        rows.append(measure("sqlite", f"sqlite:///{tmp / 'mlflow.db'}", tmp / "run-sqlite", args.calls, args.steps,
                            step, None))
        if not args.no_server:
            env = dict(os.environ, MLFLOW_SERVER_DIR=str(tmp / "server"), MLFLOW_PORT=str(free_port()),
                       MLFLOW_HOST="127.0.0.1", PYTHON=sys.executable)
            script = ["bash", str(REPO / "mlflow" / "server.sh")]
            started = subprocess.run([*script, "start"], env=env, capture_output=True, text=True, check=True)
            uri = started.stdout.strip().split("=", 1)[1]
            try:
                pgid = int((tmp / "server" / "server.pid").read_text())
                rows.append(measure("server", uri, tmp / "run-server", args.calls, args.steps, step, pgid))
            finally:
                subprocess.run([*script, "stop"], env=env, capture_output=True, text=True, check=True)
    header = (f"{'store':7} {'call µs med':>11} {'p99':>6} {'mean':>6} {'deliver µs/step':>15} "
              f"{'server µs/step':>14} {'metrics/s':>9} {'tiny step ms':>12} {'+log ms':>8} {'overhead %':>10} "
              f"{'2% at step ms':>13} {'once':>5}")
    print(header)
    for r in rows:
        print(f"{r['store']:7} {r['log_metrics_us_median']:11.1f} {r['log_metrics_us_p99']:6.0f} "
              f"{r['log_metrics_us_mean']:6.1f} {r['delivery_cpu_us_per_logged_step']:15.1f} "
              f"{r['server_cpu_us_per_logged_step']:14.1f} {r['delivery_metrics_per_s']:9.0f} "
              f"{r['tiny_step_ms_median']:12.1f} {r['tiny_step_logged_ms_median']:8.1f} "
              f"{r['overhead_pct_of_tiny_step']:10.4f} {r['step_ms_for_2pct_logging_every_step']:13.2f} "
              f"{str(r['exactly_once'] and r['delivered']):>5}")
    out = REPO / "bench" / "results" / "tracking.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"loadavg": Path("/proc/loadavg").read_text().split()[:3], "torch_threads": torch.get_num_threads(),
              "tiny_batch": args.batch, "rows": rows}
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0 if all(r["exactly_once"] and r["delivered"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
