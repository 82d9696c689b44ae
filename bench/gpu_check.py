"""GPU check (issue #13): ours against the authors' RG-Flow on one GPU, in one ≤ 8-minute run.

    python bench/gpu_check.py --reference-repo ../shared/reference/RG-Flow [--device cuda]
                              [--budget-s 480] [--out bench/results/gpu_check.json]
    python bench/gpu_check.py --smoke --out /tmp/gpu_check.json    # the same code paths on the CPU, ≤ 60 s

Measures, each configuration in a fresh subprocess (``reference_bench.spawn``):

1. Training throughput (img/s) at batch 64 and 512 for the ``celeba32`` and ``msds`` presets: the
   authors' code (``reference_bench``'s reference worker: their ``build_mera()``, their loop body)
   in fp32 and TF32 (``torch.backends.cuda.matmul.allow_tf32`` and ``cudnn.allow_tf32`` on), and
   ours (``model_bench``'s worker) with ``model.precision`` fp32, tf32 and bf16 — rgflow's own
   precision setting: tf32 allows TF32 GEMMs inside the flow's kernels; bf16 runs every GEMM on
   bfloat16 operands, its product converted back to fp32, and everything else in fp32 (it is not
   ``torch.autocast``) — and ``model.compile`` (``torch.compile`` of the MLP kernels) on for bf16
   and fp32 at batch 512. Ours warms up 2 steps (3 compiled) and times 5; theirs 1 and 3.
   The reference is built from its CelebA command line with the preset's ``--nlayers`` etc. (for
   ``msds``: ``--nlayers 4``, the same 80,518,144-parameter architecture; the data set name only
   matters to their data loading, which is not timed). Random 8-bit images, as in both benches.
2. Validation BPD (bits/dim) after equal steps, bf16 against fp32 (ours, ``msds`` preset): same
   seed, the same MSDS1 training images in the same order and the same dequantisation noise, N
   AdamW steps of the reference recipe, then the mean BPD of a fixed batch of MSDS1 test images
   with fixed noise, in the run's own precision (and, for information, the bf16-trained weights
   evaluated in fp32).
3. Sampling 64 images (s): theirs (fp32) against ours (fp32, bf16), ``celeba32``.
4. Packing: small trials (``tiny`` preset, batch 64, our training step) as Ray actors with
   ``num_gpus=0.25`` in an embedded Ray (``ray.init(num_gpus=1, include_dashboard=False)``,
   loopback-only with token authentication, as ``jobs.backends.ray_backend`` runs it). All actors
   are built and warmed up first; then one runs alone (the single small trial), then all four at
   once. Aggregate img/s = all images ÷ (last end − first start).

Targets (an H200): bf16 training ≥ 8× the authors' fp32 img/s at batch 512 (ours: the faster of
compile off/on); |val BPD(bf16) − val BPD(fp32)| ≤ 0.01 bits/dim; packed aggregate ≥ 3× the single
trial. Each is reported as pass, fail or not-measured.

Time: ``--budget-s`` (480 s; 60 s with ``--smoke``) is a global deadline. Measurements run in
order of importance (what the targets need, BPD, packing, sampling, the rest of batch 512,
compiled bf16, batch 64, compiled fp32); one whose estimated cost no longer fits is skipped and
listed as such, and a subprocess is killed after 4× its estimate (at least 60 s) or at the deadline.

``--smoke`` (CPU): ``tiny`` preset, batch 4, one warm-up and one timed step, fp32 and bf16 (tf32
is fp32 on a CPU), compile off (compiling the kernels on the CPU takes minutes), 4 samples, 2 BPD
steps, the packing part as 2 Ray actors of 1 CPU each and 1 step, one thread per worker. Its
numbers only show that every path runs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
import model_bench  # noqa: E402  (the same directory; reused, not duplicated)
import reference_bench  # noqa: E402

sys.path.insert(0, str(REPO))
from jobs.tracking.env import device_name  # noqa: E402  (GPU or CPU model name, as the trial runs record it)

DEFAULT_REFERENCE = REPO.parent / "shared" / "reference" / "RG-Flow"
TARGET_SPEEDUP, TARGET_BPD_DELTA, TARGET_PACKING = 8.0, 0.01, 3.0


# ---------------------------------------------------------------------------------------- plan

def plan(smoke: bool) -> dict:
    """Sizes of every measurement: the GPU run, or the CPU smoke run."""
    if smoke:  # no tf32 (on the CPU it is fp32: the TF32 switches only act on CUDA), no compile
        return dict(presets=("tiny",), batches=(4,), ours_warmup=1, ref_warmup=1, ours_steps=1, ref_steps=1,
                    ref_precisions=("fp32",), ours_precisions=("fp32", "bf16"), compile_precisions=(),
                    sample_preset="tiny", sample_n=4, sample_precisions=("fp32",),
                    bpd=dict(preset="tiny", batch=4, steps=2, val_n=8),
                    packing=dict(preset="tiny", batch=4, trials=2, warmup=1, steps=1))
    return dict(presets=("celeba32", "msds"), batches=(64, 512), ours_warmup=2, ref_warmup=1, ours_steps=5,
                ref_steps=3, ref_precisions=("fp32", "tf32"), ours_precisions=("fp32", "tf32", "bf16"),
                compile_precisions=("bf16", "fp32"), sample_preset="celeba32", sample_n=64,
                sample_precisions=("fp32", "bf16"), bpd=dict(preset="msds", batch=64, steps=100, val_n=512),
                packing=dict(preset="tiny", batch=64, trials=4, warmup=3, steps=100))


# Estimated seconds per measurement on the GPU (subprocess start, CUDA, model build, steps); a
# measurement is skipped when its estimate no longer fits before the deadline, and killed after
# 4× its estimate (at least a minute: a busy machine is slow, not hung) or at the deadline.
GPU_COST = dict(ref=20, ours=12, compile=60, sample=12, bpd=30, packing=45)
SMOKE_COST = dict(ref=4, ours=3, sample=3, bpd=3, packing=15)


def measurements(args, code: Path | None) -> list[dict]:
    """Every measurement's spec, in the order they run (what the targets need first)."""
    p = plan(args.smoke)
    from rgflow.config import model_preset

    def arch(preset: str) -> dict:
        cfg = model_preset(preset)
        return dict(nlayers=cfg.nlayers, nhidden=cfg.nhidden, nmlp=cfg.nmlp, nresblocks=cfg.nresblocks)

    # the plain-matmul rate beside each worker's measurement (model_bench): 1 repetition in the smoke run
    base = dict(device=args.device, model_overrides={}, matmul_reps=1 if args.smoke else 10)

    def train(impl: str, preset: str, batch: int, precision: str, compiled: bool = False) -> dict:
        if impl == "ref":
            return dict(base, impl="ref", kind="train", preset=preset, batch=batch, precision=precision,
                        reference_code=str(code), model=arch(preset), warmup=p["ref_warmup"], steps=p["ref_steps"])
        return dict(base, impl="ours", kind="train", preset=preset, batch=batch, precision=precision,
                    checkpointing=True, model_overrides={"compile": compiled},
                    warmup=p["ours_warmup"] + (1 if compiled else 0), steps=p["ours_steps"])

    def sample(impl: str, precision: str) -> dict:
        preset = p["sample_preset"]
        extra = dict(reference_code=str(code), model=arch(preset)) if impl == "ref" else {}
        return dict(base, impl=impl, kind="sample", preset=preset, n=p["sample_n"], precision=precision, **extra)

    top = max(p["batches"])
    have_ref = code is not None
    first = [s for preset in p["presets"] for s in
             ([train("ref", preset, top, "fp32")] if have_ref else []) + [train("ours", preset, top, "bf16")]]
    bpd = [dict(base, impl="ours", kind="bpd", precision=prec, **p["bpd"]) for prec in ("fp32", "bf16")]
    packing = [dict(base, impl="ours", kind="packing", precision="fp32", **p["packing"])]
    samples = ([sample("ref", "fp32")] if have_ref else []) + [sample("ours", prec) for prec in p["sample_precisions"]]
    matrix: dict[int, list[dict]] = {}
    for batch in p["batches"]:
        for preset in p["presets"]:
            refs = [train("ref", preset, batch, prec) for prec in p["ref_precisions"]] if have_ref else []
            ours = [train("ours", preset, batch, prec) for prec in p["ours_precisions"]]
            matrix.setdefault(batch, []).extend(s for s in refs + ours if s not in first)
    compiled = [train("ours", preset, top, prec, True) for prec in p["compile_precisions"] for preset in p["presets"]]
    split = len(p["presets"]) if compiled else 0
    # the target batch, compiled in the first precision (bf16: it may raise the speed-up), the other
    # batches, compiled in the others
    later = [s for batch in sorted(matrix) if batch != top for s in matrix[batch]]
    return first + bpd + packing + samples + matrix[top] + compiled[:split] + later + compiled[split:]


def cost_kind(spec: dict) -> str:
    if spec["kind"] == "train":
        return "ref" if spec["impl"] == "ref" else ("compile" if spec["model_overrides"].get("compile") else "ours")
    return spec["kind"]


def label(r: dict) -> str:
    """``train celeba32 b512 ours bf16 compile`` and the like."""
    who = "ref" if r["impl"] == "ref" else "ours"
    if r["kind"] == "train":
        comp = " compile" if r["model_overrides"].get("compile") else ""
        return f"train {r['preset']} b{r['batch']} {who} {r['precision']}{comp}"
    if r["kind"] == "sample":
        return f"sample {r['preset']} n={r['n']} {who} {r['precision']}"
    if r["kind"] == "bpd":
        return f"bpd {r['preset']} b{r['batch']} {r['steps']} steps {r['precision']}"
    return f"packing {r['preset']} b{r['batch']} {r['trials']} trials"


# ---------------------------------------------------------------------------------------- workers

def run_bpd_worker(spec: dict) -> dict:
    """Train ours ``steps`` steps on MSDS1 in ``precision``; validation BPD (bits/dim) of a fixed batch."""
    import dataclasses

    import torch

    from rgflow.config import PriorConfig, model_preset
    from rgflow.data.msds import generate
    from rgflow.logit import dequantize
    from rgflow.model import RGFlowModel

    device, batch, steps = spec["device"], spec["batch"], spec["steps"]
    train_u8, _ = generate("msds1", 0, "train", batch * steps)  # every image seen once, in order
    val_u8, _ = generate("msds1", 0, "test", spec["val_n"])
    torch.manual_seed(0)
    cfg = model_preset(spec["preset"], precision=spec["precision"])
    model = RGFlowModel(cfg, PriorConfig()).to(device)
    opt = model_bench._adamw(torch, model)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.from_numpy(train_u8).to(device)
    model_bench._sync(torch, device)
    t0 = time.perf_counter()
    losses = [model_bench.train_step(torch, model, opt, x[i * batch:(i + 1) * batch], gen) for i in range(steps)]
    model_bench._sync(torch, device)
    train_s = time.perf_counter() - t0
    val = torch.from_numpy(val_u8).to(device)
    noise = torch.rand(val.shape, generator=torch.Generator().manual_seed(1)).to(device)
    fp32 = RGFlowModel(dataclasses.replace(cfg, precision="fp32"), PriorConfig()).to(device)
    fp32.load_state_dict(model.state_dict())
    with torch.no_grad():
        val_bpd = model.bpd(dequantize(val, noise=noise)).mean().item()
        val_bpd_fp32_eval = fp32.bpd(dequantize(val, noise=noise)).mean().item()
    return {**spec, "val_bpd": val_bpd, "val_bpd_fp32_eval": val_bpd_fp32_eval, "first_loss": losses[0],
            "last_loss": losses[-1], "train_s": train_s, "img_per_s": batch * steps / train_s}


class PackedTrial:
    """One small training trial in a Ray actor: our training step on a fixed batch of 8-bit images."""

    def __init__(self, spec: dict):
        import torch

        from rgflow.config import PriorConfig, model_preset
        from rgflow.model import RGFlowModel

        self.torch, self.spec = torch, spec
        self.device = "cuda" if spec["device"].startswith("cuda") else "cpu"  # the GPU Ray assigned
        torch.manual_seed(0)
        cfg = model_preset(spec["preset"], precision=spec["precision"])
        self.model = RGFlowModel(cfg, PriorConfig()).to(self.device)
        self.opt = model_bench._adamw(torch, self.model)
        self.gen = torch.Generator(device=self.device).manual_seed(0)
        self.x = torch.randint(0, 256, (spec["batch"], 3, cfg.size, cfg.size), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(1)).to(self.device)
        for _ in range(spec["warmup"]):
            self.step()
        model_bench._sync(torch, self.device)

    def ready(self) -> bool:
        return True

    def step(self) -> float:
        return model_bench.train_step(self.torch, self.model, self.opt, self.x, self.gen)

    def run(self) -> dict:
        """``steps`` timed steps: wall-clock start and end (s since the epoch) and images trained."""
        start = time.time()
        for _ in range(self.spec["steps"]):
            self.step()
        model_bench._sync(self.torch, self.device)
        return {"start": start, "end": time.time(), "images": self.spec["batch"] * self.spec["steps"]}


def _aggregate(runs: list[dict]) -> dict:
    """Aggregate img/s of concurrent runs: all images ÷ (last end − first start)."""
    start, end = min(r["start"] for r in runs), max(r["end"] for r in runs)
    overlap = max(0.0, min(r["end"] for r in runs) - max(r["start"] for r in runs))
    return {"img_per_s": sum(r["images"] for r in runs) / (end - start), "wall_s": end - start,
            "overlap_fraction": overlap / (end - start),
            "per_trial_img_per_s": [r["images"] / (r["end"] - r["start"]) for r in runs]}


def run_packing_worker(spec: dict) -> dict:
    """``trials`` actors on one GPU (``num_gpus = 1/trials`` each; 1 CPU each on the CPU): one alone,
    then all at once, in an embedded, private Ray."""
    import ray

    from jobs.backends.ray_backend import LOOPBACK, private_embedded_ray

    n, cuda = spec["trials"], spec["device"].startswith("cuda")
    # the actors unpickle this module's class by value and import model_bench by name
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), str(BENCH), os.environ.get("PYTHONPATH")]))
    init_kw = dict(num_cpus=n, include_dashboard=False, log_to_driver=False,
                   configure_logging=False, _node_ip_address=LOOPBACK, object_store_memory=128 * 2**20)
    resources = dict(num_cpus=1)
    if cuda:
        init_kw["num_gpus"] = 1
        resources["num_gpus"] = 1 / n
    with tempfile.TemporaryDirectory(prefix="gpu-check-ray-") as tmp, private_embedded_ray(tmp):
        t0 = time.perf_counter()
        ray.init(**init_kw)
        try:
            started_s = time.perf_counter() - t0
            actor = ray.remote(**resources)(PackedTrial)
            trials = [actor.remote(spec) for _ in range(n)]
            timeout = spec["timeout_s"]
            ray.get([t.ready.remote() for t in trials], timeout=timeout)  # built and warmed up
            single = ray.get(trials[0].run.remote(), timeout=timeout)
            packed = ray.get([t.run.remote() for t in trials], timeout=timeout)
        finally:
            ray.shutdown()
    single_ips = single["images"] / (single["end"] - single["start"])
    out = {**spec, "ray_init_s": started_s, "resources_per_trial": resources,
           "single_img_per_s": single_ips, "packed": _aggregate(packed)}
    out["packed_over_single"] = out["packed"]["img_per_s"] / single_ips
    return out


def run_worker(spec: dict) -> dict:
    if spec["kind"] == "bpd":
        out = run_bpd_worker(spec)
    elif spec["kind"] == "packing":
        out = run_packing_worker(spec)
    else:
        out = reference_bench.run_worker(spec)
    return {**out, "device_name": device_name(spec["device"])}


# ---------------------------------------------------------------------------------------- driver

def machine(torch, device: str) -> dict:
    """What ran it: torch/CUDA/cuDNN versions, CPUs (the GPU's name comes from the workers)."""
    return {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cuda_available": torch.cuda.is_available(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "host_cpu": device_name("cpu")}


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _ok(r: dict) -> bool:
    return "error" not in r


def targets(rows: list[dict], smoke: bool, have_ref: bool) -> list[dict]:
    """Each target's value and status: ``pass``, ``fail`` or ``not-measured`` (with why)."""
    p = plan(smoke)
    top = max(p["batches"])
    out = []

    def entry(name: str, target: str, value, ok, detail: str) -> dict:
        status = "not-measured" if value is None else ("pass" if ok else "fail")
        return {"name": name, "target": target, "value": value, "status": status, "detail": detail}

    trains = [r for r in rows if r["kind"] == "train" and _ok(r)]
    for preset in p["presets"]:
        ref = [r for r in trains if r["impl"] == "ref" and r["preset"] == preset and r["batch"] == top
               and r["precision"] == "fp32"]
        ours = [r for r in trains if r["impl"] == "ours" and r["preset"] == preset and r["batch"] == top
                and r["precision"] == "bf16"]
        value, detail = None, "reference: not found" if not have_ref else "not measured (error or skipped)"
        if ref and ours:
            best = max(ours, key=lambda r: r["img_per_s"])
            value = best["img_per_s"] / ref[0]["img_per_s"]
            detail = (f"ours bf16 compile={'on' if best['model_overrides'].get('compile') else 'off'} "
                      f"{best['img_per_s']:.1f} img/s / ref fp32 {ref[0]['img_per_s']:.1f} img/s")
        out.append(entry(f"train_speedup_bf16_b{top}_{preset}", f"≥ {TARGET_SPEEDUP:g}× the authors' img/s",
                         value, value is not None and value >= TARGET_SPEEDUP, detail))
    bpd = {r["precision"]: r for r in rows if r["kind"] == "bpd" and _ok(r)}
    value, detail = None, "not measured (error or skipped)"
    if "fp32" in bpd and "bf16" in bpd:
        value = abs(bpd["bf16"]["val_bpd"] - bpd["fp32"]["val_bpd"])
        detail = f"val BPD bf16 {bpd['bf16']['val_bpd']:.4f}, fp32 {bpd['fp32']['val_bpd']:.4f} bits/dim"
    out.append(entry("val_bpd_delta_bf16_vs_fp32", f"≤ {TARGET_BPD_DELTA:g} bits/dim", value,
                     value is not None and value <= TARGET_BPD_DELTA, detail))
    pack = [r for r in rows if r["kind"] == "packing" and _ok(r)]
    value, detail = None, "not measured (error or skipped)"
    if pack:
        r = pack[0]
        value = r["packed_over_single"]
        detail = f"{r['trials']} packed {r['packed']['img_per_s']:.1f} img/s, 1 alone {r['single_img_per_s']:.1f} img/s"
    out.append(entry("packing_aggregate_over_single", f"≥ {TARGET_PACKING:g}× a single small trial", value,
                     value is not None and value >= TARGET_PACKING, detail))
    return out


def _g(r: dict, key: str, fmt: str) -> str:
    return format(r[key], fmt) if _finite_positive(r.get(key)) else "-"


def table(rows: list[dict], skipped: list[dict], goals: list[dict], smoke: bool) -> str:
    lines = []
    trains = sorted((r for r in rows if r["kind"] == "train"),
                    key=lambda r: (r["preset"], r["batch"], r["impl"] != "ref", r["precision"],
                                   bool(r["model_overrides"].get("compile"))))
    if trains:
        head = f"{'training':<40} {'img/s':>9} {'step s':>8} {'warm-up s':>9} {'peak GB':>8} {'× ref fp32':>10}"
        lines += [head, "-" * len(head)]
        for r in trains:
            if not _ok(r):
                lines.append(f"{label(r):<40} ERROR {r['error']}")
                continue
            ref = [x for x in trains if _ok(x) and x["impl"] == "ref" and x["precision"] == "fp32"
                   and x["preset"] == r["preset"] and x["batch"] == r["batch"]]
            ratio = f"{r['img_per_s'] / ref[0]['img_per_s']:.2f}" if ref else "-"
            peak = r.get("peak_cuda_mb", r["peak_rss_mb"]) / 1024
            lines.append(f"{label(r):<40} {r['img_per_s']:>9.2f} {sum(r['step_s']) / len(r['step_s']):>8.3f} "
                         f"{_g(r, 'warmup_s', '.2f'):>9} {peak:>8.2f} {ratio:>10}")
    samples = [r for r in rows if r["kind"] == "sample"]
    if samples:
        head = f"{'sampling':<40} {'s':>9} {'peak GB':>8}"
        lines += ["", head, "-" * len(head)]
        for r in samples:
            if _ok(r):
                lines.append(f"{label(r):<40} {r['sample_s']:>9.3f} {r.get('peak_cuda_mb', r['peak_rss_mb']) / 1024:>8.2f}")
            else:
                lines.append(f"{label(r):<40} ERROR {r['error']}")
    bpds = [r for r in rows if r["kind"] == "bpd"]
    if bpds:
        head = f"{'validation BPD after equal steps':<40} {'val BPD':>9} {'fp32 eval':>9} {'loss 1st→last':>15} {'img/s':>8}"
        lines += ["", head, "-" * len(head)]
        for r in bpds:
            if _ok(r):
                lines.append(f"{label(r):<40} {r['val_bpd']:>9.4f} {r['val_bpd_fp32_eval']:>9.4f} "
                             f"{r['first_loss']:>7.3f}→{r['last_loss']:<7.3f} {r['img_per_s']:>8.1f}")
            else:
                lines.append(f"{label(r):<40} ERROR {r['error']}")
    for r in (r for r in rows if r["kind"] == "packing"):
        head = f"{'packing (Ray)':<40} {'img/s':>9} {'overlap':>8} {'per trial img/s':>30}"
        lines += ["", head, "-" * len(head)]
        if not _ok(r):
            lines.append(f"{label(r):<40} ERROR {r['error']}")
            continue
        per = ", ".join(f"{x:.1f}" for x in r["packed"]["per_trial_img_per_s"])
        lines.append(f"{'1 trial alone':<40} {r['single_img_per_s']:>9.1f}")
        packed = f"{r['trials']} trials packed (aggregate)"
        lines.append(f"{packed:<40} {r['packed']['img_per_s']:>9.1f} "
                     f"{r['packed']['overlap_fraction']:>8.2f} {per:>30}")
    if skipped:
        lines += ["", "skipped (global deadline):"] + [f"  {s['what']}: {s['why']}" for s in skipped]
    title = "targets" + (" (smoke: CPU, tiny preset — the targets apply to the GPU run)" if smoke else "")
    lines += ["", title]
    for t in goals:
        value = "-" if t["value"] is None else f"{t['value']:.3f}"
        lines.append(f"  {t['name']:<34} {t['target']:<32} {value:>8}  {t['status']:<12} {t['detail']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference-repo", default=str(DEFAULT_REFERENCE),
                   help="the authors' RG-Flow checkout (the folder holding code/, or code/); default %(default)s")
    p.add_argument("--device", help="cuda[:N] (default: cuda when available; cpu with --smoke)")
    p.add_argument("--smoke", action="store_true", help="the same code paths on the CPU, tiny sizes, ≤ 60 s")
    p.add_argument("--budget-s", type=float, help="global deadline in seconds (default 480; 60 with --smoke)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_check.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    t_start = time.perf_counter()
    import torch

    if args.device is None:
        args.device = "cpu" if args.smoke else ("cuda" if torch.cuda.is_available() else None)
    cuda = (args.device or "").startswith("cuda")
    if (not args.smoke and not cuda) or (cuda and not torch.cuda.is_available()):
        asked = f"--device {args.device}" if args.device else "none found"
        print(f"gpu_check: needs a CUDA device ({asked}; torch {torch.__version__} sees "
              f"{torch.cuda.device_count()}): run it on a GPU machine, or use --smoke for the CPU check", file=sys.stderr)
        return 2
    if args.smoke:  # the tiny model's GEMMs gain nothing from threads; on a busy 2-core host they cost seconds
        os.environ["OMP_NUM_THREADS"] = "1"
    budget = args.budget_s or (60.0 if args.smoke else 480.0)
    deadline = t_start + budget
    cost = SMOKE_COST if args.smoke else GPU_COST
    code, why = reference_bench.find_reference_code(args.reference_repo)
    print(f"reference: {code}" if code else f"reference: not found ({why})", flush=True)
    info = machine(torch, args.device)
    rows, skipped = [], []
    for spec in measurements(args, code):
        left = deadline - time.perf_counter()
        est = cost[cost_kind(spec)]
        if left < est:
            skipped.append({"what": label(spec), "spec": spec,
                            "why": f"needs ~{est:.0f} s, {max(left, 0):.0f} s left of the {budget:g} s budget"})
            print(f"  {label(spec):<44} skipped: {skipped[-1]['why']}", flush=True)
            continue
        timeout = min(left, max(4 * est, 60))
        if spec["kind"] == "packing":  # the worker's own Ray timeout, so that it shuts its Ray down
            spec = dict(spec, timeout_s=max(timeout - 10, 1))
        t0 = time.perf_counter()
        r = reference_bench.spawn(spec, timeout, script=Path(__file__).resolve())
        rows.append({**r, "subprocess_s": time.perf_counter() - t0})  # with start-up: what the budget pays
        print(f"  {label(r):<44} {'ERROR ' + r['error'] if not _ok(r) else 'ok'} "
              f"in {rows[-1]['subprocess_s']:.1f} s (at {time.perf_counter() - t_start:.0f} s)", flush=True)
    info["gpu_names"] = sorted({r["device_name"] for r in rows if _ok(r) and r["device"].startswith("cuda")})
    goals = targets(rows, args.smoke, code is not None)
    print()
    print(table(rows, skipped, goals, args.smoke))
    elapsed = time.perf_counter() - t_start
    model_bench.write_json(args.out, {
        "smoke": args.smoke, "machine": info, "budget_s": budget, "elapsed_s": elapsed,
        "reference": {"code": str(code) if code else None, "found": code is not None, "why": why or None},
        "plan": plan(args.smoke), "loadavg_end": os.getloadavg(), "targets": goals, "skipped": skipped,
        "train": [r for r in rows if r["kind"] == "train"], "sample": [r for r in rows if r["kind"] == "sample"],
        "bpd": [r for r in rows if r["kind"] == "bpd"], "packing": [r for r in rows if r["kind"] == "packing"],
    })
    print(f"\n{elapsed:.0f} s; wrote {args.out}")
    return 1 if any(not _ok(r) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
