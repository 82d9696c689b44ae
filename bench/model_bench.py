"""Model benchmark: training-step throughput, peak memory, sampling time, GEMM efficiency.

    python bench/model_bench.py [--quick] [--presets celeba32 msds] [--batches 16 64]
                                [--device cpu|cuda] [--out bench/results/model.json]

One training step = dequantise + logit + log-likelihood + backward + clip-grad-norm(1) + AdamW
(lr 1e-3, weight decay 5e-2), the reference recipe (spec §7). Every configuration runs in a fresh
subprocess so that its peak RSS (``ru_maxrss``) is its own. Each worker also times a plain fp32
matmul ``(64·64, 512) × (512, 512)`` before and after its measurement; the model's achieved
GFLOP/s (useful GEMM FLOPs: forward + 2× for the backward, recomputation not counted) is reported
as a ratio to that rate, which is what stays comparable on a shared, noisy machine.

Prints a table and writes JSON (atomically) to ``--out``; ``jobs.sweep --dry-run`` prices trials from
its ``train`` rows (``bench/results/model*.json``, each naming its device). On a machine shared with other busy
processes, run it with ``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads that spin while their partner
is descheduled otherwise burn most of the CPU time (measured here: 6× slower couplings at load 8
on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------- worker

def _matmul_gflops(torch, device: str, reps: int = 10) -> tuple[float, float]:
    """(GFLOP per wall second, GFLOP per process-CPU second) of the reference matmul."""
    a = torch.randn(64 * 64, 512, device=device)
    w = torch.randn(512, 512, device=device)
    for _ in range(2):
        a @ w
    _sync(torch, device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(reps):
        a @ w
    _sync(torch, device)
    gflop = reps * 2 * a.shape[0] * 512 * 512 / 1e9
    return gflop / (time.perf_counter() - t0), gflop / (time.process_time() - c0)


def _sync(torch, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def forward_gemm_flops(cfg) -> float:
    """GEMM FLOPs of one image through the flow (forward only)."""
    widths = [cfg.patch_dim] + [cfg.nhidden] * cfg.nmlp + [cfg.patch_dim]
    per_row = 2 * cfg.nresblocks * sum(a * b for a, b in zip(widths[:-1], widths[1:]))  # one network
    total = 0.0
    for k, n in enumerate(cfg.couplings_per_sublayer):
        patches = (cfg.size // (cfg.kernel * 2 ** (k // 2))) ** 2
        total += patches * n * 2 * 2 * per_row  # two half-steps × (S and T)
    return total


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_worker(spec: dict) -> dict:
    import torch

    from jobs.tracking.env import device_name
    from rgflow.config import PriorConfig, model_preset
    from rgflow.model import RGFlowModel

    device = spec["device"]
    torch.manual_seed(0)
    cfg = model_preset(spec["preset"], checkpointing=spec.get("checkpointing", True),
                       precision=spec.get("precision", "fp32"))
    model = RGFlowModel(cfg, PriorConfig()).to(device)
    out = {**spec, "device_name": device_name(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
    mm_before = _matmul_gflops(torch, device, spec.get("matmul_reps", 10))
    gen = torch.Generator(device=device).manual_seed(0)
    if spec["kind"] == "train":
        batch = spec["batch"]
        opt = _adamw(torch, model)
        x = torch.randint(0, 256, (batch, 3, cfg.size, cfg.size), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(1)).to(device)

        t0 = time.perf_counter()
        for _ in range(spec.get("warmup", 1)):  # warm-up: allocator, optimizer state (and compilation)
            train_step(torch, model, opt, x, gen)
        _sync(torch, device)
        out["warmup_s"] = time.perf_counter() - t0
        times, cpu = [], []
        for _ in range(spec["steps"]):
            _sync(torch, device)
            t0, c0 = time.perf_counter(), time.process_time()
            train_step(torch, model, opt, x, gen)
            _sync(torch, device)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        step_s, cpu_s = sum(times) / len(times), sum(cpu) / len(cpu)
        gflop = 3 * forward_gemm_flops(cfg) * batch / 1e9
        out.update(step_s=times, step_cpu_s=cpu, img_per_s=batch / step_s, gflops=gflop / step_s,
                   gflops_per_cpu_s=gflop / cpu_s,
                   optimizer=opt.__class__.__name__ + ("(fused)" if opt.defaults.get("fused") else ""))
    else:
        n = spec["n"]
        model.sample(2, 1.0, generator=gen)  # warm-up
        _sync(torch, device)
        t0, c0 = time.perf_counter(), time.process_time()
        model.sample(n, 1.0, generator=gen)
        _sync(torch, device)
        sample_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        gflop = forward_gemm_flops(cfg) * n / 1e9
        out.update(sample_s=sample_s, sample_cpu_s=cpu_s, gflops=gflop / sample_s, gflops_per_cpu_s=gflop / cpu_s)
    mm_after = _matmul_gflops(torch, device, spec.get("matmul_reps", 10))
    out.update(matmul_gflops=(mm_before[0] + mm_after[0]) / 2, matmul_gflops_range=[mm_before[0], mm_after[0]],
               matmul_gflops_per_cpu_s=(mm_before[1] + mm_after[1]) / 2, peak_rss_mb=_peak_rss_mb())
    if device.startswith("cuda"):
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    out["ratio_to_matmul"] = out["gflops"] / out["matmul_gflops"]
    # time-slicing by other processes inflates wall time but not CPU time: the CPU-time ratio is
    # the robust efficiency figure on a shared machine
    out["cpu_ratio_to_matmul"] = out["gflops_per_cpu_s"] / out["matmul_gflops_per_cpu_s"]
    return out


def train_step(torch, model, opt, x, gen) -> float:
    """One step of the reference recipe on the uint8 images ``x``; returns the loss (nats/dim)."""
    from rgflow.logit import dequantize

    opt.zero_grad(set_to_none=True)
    loss = model.nll_per_dim(dequantize(x, gen))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def _adamw(torch, model):
    """AdamW of the reference recipe; the fused kernel where this torch has it, else foreach."""
    kw = dict(lr=1e-3, weight_decay=5e-2)
    try:
        return torch.optim.AdamW(model.parameters(), fused=True, **kw)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(model.parameters(), foreach=True, **kw)


# ---------------------------------------------------------------------------------------- driver

def configs(args) -> list[dict]:
    specs = []
    for preset in args.presets:
        for batch in args.batches:
            for ck in args.ckpt:
                specs.append(dict(kind="train", preset=preset, batch=batch, checkpointing=ck == "on",
                                  precision=args.precision, steps=args.steps, device=args.device))
    specs.append(dict(kind="sample", preset=args.presets[0], n=64, precision=args.precision, device=args.device))
    return specs


def spawn(spec: dict, timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {**spec, "error": (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    head = (f"{'what':<34} {'img/s':>7} {'step s':>8} {'peak RSS GB':>11} {'GFLOP/s':>8} {'matmul':>7} "
            f"{'ratio':>6} {'cpu-ratio':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["kind"] == "train":
            what = f"train {r['preset']} b{r['batch']} ckpt={'on' if r['checkpointing'] else 'off'}"
        else:
            what = f"sample {r['preset']} n={r['n']}"
        if "error" in r:
            lines.append(f"{what:<34} ERROR {r['error']}")
            continue
        ips = f"{r['img_per_s']:.2f}" if "img_per_s" in r else "-"
        secs = sum(r["step_s"]) / len(r["step_s"]) if "step_s" in r else r["sample_s"]
        lines.append(f"{what:<34} {ips:>7} {secs:>8.2f} {r['peak_rss_mb'] / 1024:>11.2f} "
                     f"{r['gflops']:>8.1f} {r['matmul_gflops']:>7.1f} {r['ratio_to_matmul']:>6.2f} "
                     f"{r['cpu_ratio_to_matmul']:>9.2f}")
    return "\n".join(lines)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="celeba32 at batch 16 only, one timed step")
    p.add_argument("--presets", nargs="+", default=["celeba32", "msds"])
    p.add_argument("--batches", nargs="+", type=int, default=[16, 64])
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration (after one warm-up)")
    p.add_argument("--ckpt", nargs="+", choices=["off", "on"], default=["off", "on"],
                   help="checkpointing settings to measure")
    p.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "model.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    if args.quick:
        args.presets, args.batches, args.steps = ["celeba32"], [16], 1
    rows = []
    for spec in configs(args):
        rows.append(spawn(spec, args.timeout))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    write_json(args.out, {"quick": args.quick, "loadavg_end": os.getloadavg(), "rows": rows})
    print(f"\nwrote {args.out}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
