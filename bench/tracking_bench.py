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

Then what system metrics and the model artifact add to a trial (sqlite store):

5. system metrics: the CPU time of one sample (MLflow's samplers + the spool append: the work of
   the monitor thread, timed ``--samples`` times in this thread), its share of a core at the
   default 15 s interval and at ``--sm-interval``; and tiny training steps (logging every step) in
   ``--rounds`` interleaved blocks of ``--sm-steps`` steps with the monitor on (every
   ``--sm-interval`` s) and off — medians side by side and the on−off difference per round;
6. bytes per trial: ``model/weights.pt`` (the ``state_dict`` as :func:`jobs.model_io.write_model_folder`
   saves it) and ``config.yaml`` for the ``tiny`` and ``msds`` presets; metric rows and bytes (spool
   line, sqlite store growth) per row, per training step (``train.log_every`` = 50, 15 keys) and per
   hour of system metrics at 15 s.

The verdict lines say whether MLflow's share of a tiny step (logging every step, and every 50 steps
as the trainer does by default; system metrics every 15 s) stays ≤ 2 %.

Usage: ``.venv/bin/python bench/tracking_bench.py [--calls 3000] [--steps 5] [--batch 16] [--no-server]
[--rounds 4] [--sm-steps 20] [--sm-interval 1] [--samples 50]``.
Prints tables and writes ``bench/results/tracking.json``. Numbers from a shared, noisy machine:
read the ratios, and compare runs made on a quiet machine (``/proc/loadavg``).
"""
from __future__ import annotations

import argparse
import io
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
# Before torch starts OpenMP: waiting threads that sleep instead of spinning. On cores shared with
# other jobs, spinning made a 2-thread tiny step 20-30x slower (2 s instead of 0.1 s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from jobs import tracking as T  # noqa: E402
from jobs.config import load_trial_config, to_yaml  # noqa: E402
from jobs.tracking.spool import MetricSpool  # noqa: E402
from jobs.tracking.trial import SystemMetrics  # noqa: E402
from rgflow.config import PriorConfig, model_preset  # noqa: E402
from rgflow.model import RGFlowModel  # noqa: E402

KEYS = ["train_bpd", "grad_norm", "lr", "images_per_s", "samples_seen", "wall_s", "epoch", "noise_scale",
        "noise_scale_raw", "val_bpd"]
TRAIN_KEYS_PER_LOG = 15  # what the trainer logs every train.log_every steps (docs/ARCHITECTURE.md, Metrics)
LOG_EVERY = 50  # train.log_every's default
DEFAULT_INTERVAL_S = 15.0  # tracking.system_metrics_interval_s's default


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


def sample_cost(uri: str, run_dir: Path, samples: int) -> dict:
    """CPU µs of one system-metrics sample (samplers + spool append) and the keys it logs."""
    run_dir.mkdir(parents=True)
    spool = MetricSpool(run_dir)
    monitor = SystemMetrics(spool, DEFAULT_INTERVAL_S, uri, "bench")
    monitor.collect_metrics()
    cpu = []
    for _ in range(samples):
        t0 = time.thread_time_ns()
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        cpu.append((time.thread_time_ns() - t0) / 1e3)
    keys = sorted(k for k in spool.high_water if k.startswith("system/"))
    spool.close()
    return {"sample_cpu_us_median": statistics.median(cpu), "keys_per_sample": len(keys), "keys": keys}


def steps_with_monitor(uri: str, run_dir: Path, step, rounds: int, steps: int, interval_s: float) -> dict:
    """Median tiny step (logging every step) in interleaved blocks with the monitor on and off, and
    the on−off difference of each round's two blocks (a pair run back to back: drift cancels)."""
    exp = T.ensure_experiment(uri, "tracking-bench")
    times: dict[str, list[float]] = {"on": [], "off": []}
    block_medians: dict[str, list[float]] = {"on": [], "off": []}
    samples = 0
    for r in range(rounds):
        for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):
            name = f"sm-{mode}-{r}"
            trial = T.open_trial_run(uri, exp, name, name, None, {}, {}, run_dir / name,
                                     system_metrics_interval_s=interval_s if mode == "on" else None)
            block = []
            for i in range(1, steps + 1):
                t0 = time.perf_counter()
                loss = step()
                trial.log_metrics({k: loss + j for j, k in enumerate(KEYS)}, i)
                block.append(time.perf_counter() - t0)
            trial.end("finished")
            times[mode] += block
            block_medians[mode].append(statistics.median(block))
            if mode == "on":
                history = T.get_client(uri).get_metric_history(trial.run_id, "system/cpu_utilization_percentage")
                samples += len(history)
    paired = sorted((on - off) / off * 100 for on, off in zip(block_medians["on"], block_medians["off"]))
    return {"rounds": rounds, "steps_per_block": steps, "interval_s": interval_s, "samples_logged": samples,
            "step_ms_monitor_on": statistics.median(times["on"]) * 1e3,
            "step_ms_monitor_off": statistics.median(times["off"]) * 1e3,
            "on_minus_off_pct_per_round": paired, "on_minus_off_pct_median": statistics.median(paired)}


def store_bytes_per_row(uri_db: Path, run_dir: Path, rows: int) -> dict:
    """Spool bytes per metric row, and the sqlite file's growth per row once they are stored."""
    uri = f"sqlite:///{uri_db}"
    exp = T.ensure_experiment(uri, "bytes")
    trial = T.open_trial_run(uri, exp, "bytes", "bytes", None, {}, {}, run_dir, flush_interval_s=3600)
    trial.flush()
    before = uri_db.stat().st_size
    for i in range(1, rows // len(KEYS) + 1):
        trial.log_metrics({k: i * 1e-3 + j for j, k in enumerate(KEYS)}, i * LOG_EVERY)
    trial.end("finished")
    logged = rows // len(KEYS) * len(KEYS)
    return {"spool_bytes_per_row": (run_dir / "metrics-spool.jsonl").stat().st_size / logged,
            "sqlite_bytes_per_row": (uri_db.stat().st_size - before) / logged}


def model_bytes(preset: str) -> dict:
    """Bytes of ``model/weights.pt`` and ``model/config.yaml`` for a trial of ``preset``."""
    model = RGFlowModel(model_preset(preset), PriorConfig())
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    config = to_yaml(load_trial_config(None, [f"model.preset={preset}"]))
    return {"preset": preset, "num_params": sum(p.numel() for p in model.parameters()),
            "weights_bytes": len(buffer.getvalue()), "config_bytes": len(config.encode())}


def cost_of_extras(tmp: Path, step, args) -> dict:
    """Steps 5 and 6 of the module docstring."""
    uri = f"sqlite:///{tmp / 'sm.db'}"
    cost = steps_with_monitor(uri, tmp / "sm", step, args.rounds, args.sm_steps, args.sm_interval)
    cost.update(sample_cost(uri, tmp / "sample-cost", args.samples))
    cost.update(store_bytes_per_row(tmp / "sm.db", tmp / "bytes", 20000))
    cost["models"] = [model_bytes(p) for p in ("tiny", "msds")]
    return cost


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def print_extras(x: dict, sqlite_row: dict) -> dict[str, float]:
    """Print steps 5 and 6; return MLflow's share of a tiny step in %, logging every step and every
    ``LOG_EVERY`` steps (the trainer's default), with system metrics at the default interval."""
    step_ms, sample_ms, every = sqlite_row["tiny_step_ms_median"], x["sample_cpu_us_median"] / 1e3, x["interval_s"]
    core_pct = {i: sample_ms / (i * 1e3) * 100 for i in (DEFAULT_INTERVAL_S, every)}  # the monitor's CPU share
    print(f"\nsystem metrics: {x['keys_per_sample']} keys per sample, {sample_ms:.2f} ms CPU per sample = "
          f"{core_pct[DEFAULT_INTERVAL_S]:.4f} % of a core every {DEFAULT_INTERVAL_S:g} s, "
          f"{core_pct[every]:.4f} % every {every:g} s")
    block = f"{x['rounds']} rounds × {x['steps_per_block']} steps, monitor every {every:g} s"
    paired = x["on_minus_off_pct_per_round"]
    print(f"{'tiny step, logging every step':44} {'off ms':>8} {'on ms':>8} {'on−off % median':>16} "
          f"{'per round min..max':>19} {'samples':>8}")
    print(f"{block:44} {x['step_ms_monitor_off']:8.1f} {x['step_ms_monitor_on']:8.1f} "
          f"{x['on_minus_off_pct_median']:16.2f} {f'{paired[0]:.1f}..{paired[-1]:.1f}':>19} {x['samples_logged']:8d}")
    row_b, store_b = x["spool_bytes_per_row"], x["sqlite_bytes_per_row"]
    per_step, per_hour = TRAIN_KEYS_PER_LOG / LOG_EVERY, x["keys_per_sample"] * 3600 / DEFAULT_INTERVAL_S
    print(f"\n{'bytes per trial':44} {'rows':>8} {'spool B':>12} {'store B':>12}")
    for label, rows in (("one metric row", 1), (f"training metrics per step (log_every {LOG_EVERY})", per_step),
                        (f"system metrics per hour (every {DEFAULT_INTERVAL_S:g} s)", per_hour)):
        print(f"{label:44} {rows:8.2f} {rows * row_b:12,.0f} {rows * store_b:12,.0f}")
    print(f"{'model/ artifact':44} {'params':>12} {'weights.pt B':>14} {'config.yaml B':>14}")
    for m in x["models"]:
        print(f"{m['preset']:44} {m['num_params']:12,d} {m['weights_bytes']:14,d} {m['config_bytes']:14,d}")
    logging_pct, system_pct = sqlite_row["overhead_pct_of_tiny_step"], core_pct[DEFAULT_INTERVAL_S]
    share = {"every_step": logging_pct + system_pct, f"every_{LOG_EVERY}_steps": logging_pct / LOG_EVERY + system_pct}
    print(f"\nMLflow's share of a tiny step ({step_ms:.0f} ms, sqlite; CPU time of logging {len(KEYS)} metrics + "
          f"system metrics every {DEFAULT_INTERVAL_S:g} s at {system_pct:.4f} %):")
    for label, pct in share.items():
        print(f"  logging {label.replace('_', ' ')}: {pct:.3f} % — {'within' if pct <= 2 else 'ABOVE'} the 2 % budget")
    return share


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=5, help="training steps without, then with logging")
    parser.add_argument("--batch", type=int, default=16, help="batch size of the tiny training step")
    parser.add_argument("--no-server", action="store_true", help="only the sqlite store")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved blocks with the monitor on and off")
    parser.add_argument("--sm-steps", type=int, default=20, help="tiny training steps per block")
    parser.add_argument("--sm-interval", type=float, default=1.0, help="system metrics interval in the 'on' blocks (s)")
    parser.add_argument("--samples", type=int, default=50, help="system-metrics samples timed for their CPU cost")
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
        extras = cost_of_extras(tmp, step, args)
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
    share = print_extras(extras, rows[0])
    out = REPO / "bench" / "results" / "tracking.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"loadavg": Path("/proc/loadavg").read_text().split()[:3], "torch_threads": torch.get_num_threads(),
              "tiny_batch": args.batch, "rows": rows, "extras": extras, "mlflow_share_pct_of_tiny_step": share}
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0 if all(r["exactly_once"] and r["delivered"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
