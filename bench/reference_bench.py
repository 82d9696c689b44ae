"""Side-by-side benchmark: the authors' reference RG-Flow against ours, in one run.

    python bench/reference_bench.py --reference-repo PATH [--batches 16 64] [--steps 3]
                                    [--repeats 1] [--ours-ckpt on] [--sample-n 64] [--no-sample]
                                    [--device cpu|cuda] [--out bench/results/reference.json]
    python bench/reference_bench.py --reference-repo PATH --smoke   # tiny check, seconds

``PATH`` is the user's own checkout of https://github.com/hongyehu/RG-Flow (the folder that holds
``code/``, or ``code/`` itself). Nothing is downloaded and none of the authors' code lives in this
repository: the worker subprocess puts ``PATH/code`` at the front of its ``sys.path`` and imports
their ``main.py`` (which imports their ``args``, ``layers``, ``sources``, ``utils``).

The reference model is built by *their* ``main.build_mera()`` from *their* ``args.py``, parsed
from an explicit command line (``--data celeba32 --nchannels 3 --L 32 --prior laplace --subnet
rnvp --kernel_size 4 --nlayers 8,6,4,2 --nresblocks 4 --nmlp 2 --nhidden 512 --dtype float32
--lr 1e-3 --weight_decay 5e-2 --clip_grad 1 --out_dir ''``): ``layers.MERA`` over 8
``layers.RNVP`` sub-layers of ``layers.ResNetReshape`` S/T nets, ``sources.Laplace`` prior of
scale 1/√2, in training mode, so their gradient checkpointing (``layers.rnvp.my_checkpoint``
around every S and T call) is on, as in their training. The optimiser is built as their
``main.main()`` builds it: ``torch.optim.AdamW(params, lr, weight_decay)`` with torch's default
implementation (ours uses the fused kernel: that difference is part of what is compared).
A worker spec with ``precision: tf32`` (``bench/gpu_check.py``) switches TF32 on for their
matmuls and convolutions (``torch.backends.cuda.matmul.allow_tf32``, ``cudnn.allow_tf32``); this
script always runs fp32.

What is timed, per step (one warm-up step, then ``--steps`` timed), is the body of their training
loop (``main.main()``) minus data loading and log writing: ``optimizer.zero_grad()``;
``utils.logit_transform(x)`` (their dequantisation ``(255·x + u)/256`` and logit, with its
log-det); ``flow.log_prob``; ``loss = −(log_prob + ldj)/(C·L²)``, its mean and std;
``utils.check_nan``; backward; ``clip_grad_norm_(params, 1)``; ``optimizer.step()``; the
``.item()`` reads their per-step log line makes. ``x`` is a fixed batch of random 8-bit images as
their ``ToTensor`` delivers them (``k/255``, float32), made before timing — their data loader
(4 worker processes) is not timed, as ours is not. Our step (``bench/model_bench.py``'s worker,
imported and reused): dequantise → logit → log-likelihood → backward → clip-grad-norm 1 → AdamW.
Sampling: their ``do_plot`` without the plotting: ``flow.train(False)``, under ``no_grad``,
``flow.sample(n)`` (prior draw, prior log-prob, inverse), ``logit_transform(·, inverse=True)``,
``clamp(0, 1)``; ours ``model.sample(n)``. One 2-image warm-up first, on both sides.

Every configuration runs in a fresh subprocess (peak RSS ``ru_maxrss`` is its own), interleaved
ref, ours, ref, ours … so that drift of this shared machine hits both; with ``--repeats R > 1`` the
order alternates per round (ref-first, ours-first, …) and medians are reported. Each worker also
times the plain fp32 matmul of ``model_bench`` before and after, so each side's GFLOP/s can be
read against the machine's rate at that moment. ``speed-up`` is ours/ref throughput (ref/ours
seconds for sampling); ``cpu speed-up`` is the same from process CPU time, which time-slicing by
other processes does not inflate.

Runtime compatibility shims, applied inside the reference worker only (their files are never
edited):

* ``sys.argv`` is replaced while their ``args.py`` parses it (it calls ``parse_args()`` at import).
* Their ``layers/rnvp.py`` calls ``torch.utils.checkpoint.checkpoint`` without ``use_reentrant``;
  current torch warns (and announces an error) for that. The module's ``checkpoint`` name is
  wrapped to pass ``use_reentrant=True`` when not given — the behaviour of the torch their code
  was written for and what current torch still defaults to, so the compute is unchanged.
* Only where this torch lacks them: ``torch.set_default_tensor_type`` (used by their ``args.py``)
  is replaced by ``set_default_dtype``; ``torch.nn.utils.weight_norm`` by
  ``torch.nn.utils.parametrizations.weight_norm``.
* ``matplotlib``, ``skimage``, ``h5py``, ``torchvision``, ``PIL`` and ``distutils`` are replaced by
  empty stub modules: their ``main.py``/``utils`` import them for plotting and dataset loading
  only, which is not measured, and the stubs keep those libraries' memory out of the peak RSS.

Prints a table and writes JSON (atomically) to ``--out``. See the ``OMP_WAIT_POLICY`` note in
``bench/model_bench.py`` for runs on a busy machine.
"""
from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
import model_bench  # noqa: E402  (the same directory; reused, not duplicated)

CLONE_HINT = "git clone https://github.com/hongyehu/RG-Flow"
# what their main.py imports, transitively (layers/__init__ also imports arflow and masked_resnet)
REQUIRED = (
    "main.py", "args.py", "utils_support.py",
    "layers/__init__.py", "layers/flow.py", "layers/hierarchy.py", "layers/mera.py", "layers/rnvp.py",
    "layers/resnet.py", "layers/swish.py", "layers/scale.py", "layers/arflow.py", "layers/masked_resnet.py",
    "sources/__init__.py", "sources/laplace.py", "sources/gaussian.py", "sources/source.py",
    "utils/__init__.py", "utils/im2col.py", "utils/data_utils.py",
)
STUBBED = ("matplotlib", "skimage", "h5py", "torchvision", "PIL", "distutils")
THEIR_MODULES = ("main", "args", "utils", "utils_support", "layers", "sources")
PRESET = "celeba32"


# ------------------------------------------------------------------------------ locating their code

def find_reference_code(path: str | None) -> tuple[Path | None, str]:
    """(their ``code/`` folder, "") or (None, a one-line reason naming what was searched)."""
    if not path:
        return None, "--reference-repo was not given"
    root = Path(path).expanduser().resolve()
    candidates = [root / "code", root]
    for cand in candidates:
        if all((cand / f).is_file() for f in REQUIRED):
            return cand, ""
    best = min(candidates, key=lambda c: sum(not (c / f).is_file() for f in REQUIRED))
    missing = [f for f in REQUIRED if not (best / f).is_file()]
    shown = ", ".join(missing[:4]) + (f" (+{len(missing) - 4} more)" if len(missing) > 4 else "")
    return None, f"searched {candidates[0]} and {candidates[1]}: missing {shown}"


def _git_head(code: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(code), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


# ------------------------------------------------------------------------------ reference worker

class _StubType(type):
    """An empty class whose every attribute is another one (``X.Y.Z``, ``class A(X.Y)`` work)."""

    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubType(name, (), {})


class _StubModule(types.ModuleType):
    """Any attribute is a fresh :class:`_StubType` (so ``from X import Y`` works)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _StubType(name, (), {})
        setattr(self, name, value)
        return value


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in STUBBED:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def _reference_argv(spec: dict) -> list[str]:
    m = spec["model"]
    return ["main.py", "--data", "celeba32", "--nchannels", "3", "--L", "32", "--prior", "laplace",
            "--subnet", "rnvp", "--kernel_size", "4", "--nlayers", ",".join(map(str, m["nlayers"])),
            "--nresblocks", str(m["nresblocks"]), "--nmlp", str(m["nmlp"]), "--nhidden", str(m["nhidden"]),
            "--dtype", "float32", "--batch_size", str(spec.get("batch", 64)), "--lr", "1e-3",
            "--weight_decay", "5e-2", "--clip_grad", "1", "--out_dir", ""]


def _import_reference(torch, spec: dict):
    """Import their ``main`` (with the shims of the module docstring); returns (main, shims)."""
    shims = []
    clash = [m for m in THEIR_MODULES if m in sys.modules]
    if clash:
        raise RuntimeError(f"modules {clash} already imported; cannot import the reference code")
    sys.meta_path.insert(0, _StubFinder())  # modules already imported stay what they are
    shims.append("stub modules: " + ", ".join(STUBBED))
    if not hasattr(torch, "set_default_tensor_type"):
        def set_default_tensor_type(t):
            torch.set_default_dtype(torch.float64 if t in (torch.DoubleTensor, "torch.DoubleTensor") else torch.float32)
        torch.set_default_tensor_type = set_default_tensor_type
        shims.append("torch.set_default_tensor_type -> set_default_dtype")
    if not hasattr(torch.nn.utils, "weight_norm"):
        torch.nn.utils.weight_norm = torch.nn.utils.parametrizations.weight_norm
        shims.append("torch.nn.utils.weight_norm -> parametrizations.weight_norm")
    sys.path.insert(0, spec["reference_code"])
    argv, sys.argv = sys.argv, _reference_argv(spec)
    try:
        import main as ref_main
    finally:
        sys.argv = argv
    rnvp = sys.modules["layers.rnvp"]
    plain = rnvp.checkpoint

    def checkpoint(function, *args, **kwargs):
        checkpoint.calls += 1
        kwargs.setdefault("use_reentrant", True)
        return plain(function, *args, **kwargs)

    checkpoint.calls = 0
    rnvp.checkpoint = checkpoint
    shims.append("layers.rnvp.checkpoint: use_reentrant=True when not given")
    return ref_main, shims


def run_reference_worker(spec: dict) -> dict:
    import torch
    from torch.nn.utils import clip_grad_norm_

    from rgflow.config import model_preset

    device = spec["device"]
    cfg = model_preset(spec["preset"], **spec["model_overrides"])  # the same architecture, for the FLOP count
    ref_main, shims = _import_reference(torch, spec)
    args, utils = ref_main.args, ref_main.utils
    args.device = torch.device(device)  # their args.py derives it from --cuda; set it directly
    if spec["precision"] == "tf32":  # their fp32 code with TF32 tensor-core matmuls and convolutions
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    flow = ref_main.build_mera()
    flow.train(True)
    params = [p for p in flow.parameters() if p.requires_grad]
    out = {**spec, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""), "shims": shims,
           "nparams": sum(p.numel() for p in params), "reference_argv": _reference_argv(spec)[1:]}
    mm_before = model_bench._matmul_gflops(torch, device, spec.get("matmul_reps", 10))
    if spec["kind"] == "train":
        batch = spec["batch"]
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
        x_u8 = torch.randint(0, 256, (batch, args.nchannels, args.L, args.L), dtype=torch.uint8,
                             generator=torch.Generator().manual_seed(1))
        data = (x_u8.float() / 255).to(device)  # what their ToTensor() delivers
        nvars = args.nchannels * args.L**2

        def step() -> float:
            # their main.main() loop body, minus loading and log writing
            optimizer.zero_grad()
            x = data.to(args.device)
            x, ldj_logit = utils.logit_transform(x)
            log_prob = flow.log_prob(x)
            loss = -(log_prob + ldj_logit) / nvars
            loss_mean = loss.mean()
            loss_std = loss.std()
            utils.check_nan(loss_mean)
            loss_mean.backward()
            if args.clip_grad:
                clip_grad_norm_(params, args.clip_grad)
            optimizer.step()
            loss_std.item()
            return loss_mean.item()

        ckpt = sys.modules["layers.rnvp"].checkpoint
        t0 = time.perf_counter()
        losses = [step()]  # warm-up
        # their checkpointing is on: every S/T call but the first coupling's first half-step
        out["checkpoint_calls_per_step"] = ckpt.calls
        losses += [step() for _ in range(spec.get("warmup", 1) - 1)]
        model_bench._sync(torch, device)
        out["warmup_s"] = time.perf_counter() - t0
        times, cpu = [], []
        for _ in range(spec["steps"]):
            model_bench._sync(torch, device)
            t0, c0 = time.perf_counter(), time.process_time()
            losses.append(step())
            model_bench._sync(torch, device)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        step_s, cpu_s = sum(times) / len(times), sum(cpu) / len(cpu)
        gflop = 3 * model_bench.forward_gemm_flops(cfg) * batch / 1e9
        out.update(step_s=times, step_cpu_s=cpu, img_per_s=batch / step_s, gflops=gflop / step_s,
                   gflops_per_cpu_s=gflop / cpu_s, losses=losses, optimizer="AdamW(torch default)")
    else:
        n = spec["n"]
        flow.train(False)

        def sample(k):
            with torch.no_grad():
                s, _ = flow.sample(k)
                s, _ = utils.logit_transform(s, inverse=True)
                return torch.clamp(s, 0, 1)

        sample(2)  # warm-up
        model_bench._sync(torch, device)
        t0, c0 = time.perf_counter(), time.process_time()
        sample(n)
        model_bench._sync(torch, device)
        sample_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        gflop = model_bench.forward_gemm_flops(cfg) * n / 1e9
        out.update(sample_s=sample_s, sample_cpu_s=cpu_s, gflops=gflop / sample_s, gflops_per_cpu_s=gflop / cpu_s)
    mm_after = model_bench._matmul_gflops(torch, device, spec.get("matmul_reps", 10))
    out.update(matmul_gflops=(mm_before[0] + mm_after[0]) / 2, matmul_gflops_range=[mm_before[0], mm_after[0]],
               matmul_gflops_per_cpu_s=(mm_before[1] + mm_after[1]) / 2, peak_rss_mb=model_bench._peak_rss_mb())
    if device.startswith("cuda"):
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    out["ratio_to_matmul"] = out["gflops"] / out["matmul_gflops"]
    out["cpu_ratio_to_matmul"] = out["gflops_per_cpu_s"] / out["matmul_gflops_per_cpu_s"]
    return out


def run_ours_worker(spec: dict) -> dict:
    """``bench/model_bench.py``'s worker, with the model overrides (``--smoke``) applied."""
    overrides = spec["model_overrides"]
    if overrides:
        import rgflow.config as config

        preset = config.model_preset
        config.model_preset = lambda name, **kw: preset(name, **{**kw, **overrides})
    return model_bench.run_worker(spec)


def run_worker(spec: dict) -> dict:
    return (run_reference_worker if spec["impl"] == "ref" else run_ours_worker)(spec)


# ------------------------------------------------------------------------------ driver

def spawn(spec: dict, timeout: float, script: Path = Path(__file__).resolve()) -> dict:
    """Run ``script --worker SPEC`` in a fresh subprocess: its result row, or ``spec`` with ``error``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run([sys.executable, str(script), "--worker", json.dumps(spec)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {**spec, "error": (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def model_shape(smoke: bool) -> tuple[dict, dict]:
    """(overrides of our preset, the reference's architecture arguments) — the same model."""
    overrides = dict(nhidden=32) if smoke else {}
    cfg = dict(nlayers=(8, 6, 4, 2), nhidden=512, nmlp=2, nresblocks=4)
    return overrides, {**cfg, **overrides}


def configs(args, code: Path) -> list[list[dict]]:
    """Comparison groups: each is [ref spec, ours spec, ours spec …] for one workload."""
    overrides, model = model_shape(args.smoke)
    common = dict(device=args.device, precision="fp32", model_overrides=overrides, preset=PRESET)
    ref_common = dict(common, impl="ref", reference_code=str(code), model=model)
    ours = [dict(common, impl="ours", checkpointing=ck == "on") for ck in args.ours_ckpt]
    groups = []
    for batch in args.batches:
        work = dict(kind="train", batch=batch, steps=args.steps)
        groups.append([dict(ref_common, **work)] + [dict(o, **work) for o in ours])
    if not args.no_sample:
        work = dict(kind="sample", n=args.sample_n)
        groups.append([dict(ref_common, **work)] + [dict(ours[0], **work)])
    return groups


def _label(r: dict) -> str:
    if r["kind"] == "train":
        return f"train b{r['batch']}"
    return f"sample n={r['n']}"


def _who(r: dict) -> str:
    if r["impl"] == "ref":
        return "ref"
    return "ours" + ("" if r["kind"] == "sample" else f" ckpt={'on' if r['checkpointing'] else 'off'}")


def _rate(r: dict) -> tuple[float, float]:
    """(work per wall second, work per CPU second): images for training, samples for sampling."""
    if r["kind"] == "train":
        return r["img_per_s"], r["batch"] / (sum(r["step_cpu_s"]) / len(r["step_cpu_s"]))
    return r["n"] / r["sample_s"], r["n"] / r["sample_cpu_s"]


def summarise(groups: list[list[dict]], rows: list[dict]) -> list[dict]:
    """One entry per (workload, ours variant): medians over repeats, paired ratios."""
    out = []
    for group in groups:
        ref_spec, ours_specs = group[0], group[1:]

        def same(r, s):
            return all(r.get(k) == s.get(k) for k in ("impl", "kind", "batch", "n", "checkpointing"))

        refs = [r for r in rows if same(r, ref_spec)]
        for ospec in ours_specs:
            ours = [r for r in rows if same(r, ospec)]
            entry = {"what": _label(ref_spec), "ours": _who(ospec), "kind": ref_spec["kind"],
                     "errors": [r["error"] for r in refs + ours if "error" in r]}
            pairs = [(a, b) for a, b in zip(refs, ours) if "error" not in a and "error" not in b]
            good_r = [r for r in refs if "error" not in r]
            good_o = [r for r in ours if "error" not in r]
            if good_r:
                entry["ref_rss_gb"] = max(r["peak_rss_mb"] for r in good_r) / 1024
                entry["ref_nparams"] = good_r[0]["nparams"]
            if good_o:
                entry["ours_rss_gb"] = max(r["peak_rss_mb"] for r in good_o) / 1024
            if ref_spec["kind"] == "train":
                if good_r:
                    entry["ref_img_per_s"] = statistics.median(r["img_per_s"] for r in good_r)
                if good_o:
                    entry["ours_img_per_s"] = statistics.median(r["img_per_s"] for r in good_o)
            else:
                if good_r:
                    entry["ref_sample_s"] = statistics.median(r["sample_s"] for r in good_r)
                if good_o:
                    entry["ours_sample_s"] = statistics.median(r["sample_s"] for r in good_o)
            if pairs:
                entry["speedup"] = statistics.median(_rate(b)[0] / _rate(a)[0] for a, b in pairs)
                entry["cpu_speedup"] = statistics.median(_rate(b)[1] / _rate(a)[1] for a, b in pairs)
                entry["matmul_ref_over_ours"] = statistics.median(a["matmul_gflops"] / b["matmul_gflops"]
                                                                  for a, b in pairs)
            entry["pairs"] = len(pairs)
            out.append(entry)
    return out


def _f(entry: dict, key: str, fmt: str) -> str:
    return format(entry[key], fmt) if key in entry else "-"


def table(summary: list[dict]) -> str:
    lines = []
    sections = (  # (kind, title, ref column, ours column, value keys, number format, row label)
        ("train", "training step", "ref img/s", "ours img/s", ("ref_img_per_s", "ours_img_per_s"), ".3f",
         lambda e: e["what"] + " vs " + e["ours"]),
        ("sample", "sampling", "ref s", "ours s", ("ref_sample_s", "ours_sample_s"), ".2f", lambda e: e["what"]),
    )
    for kind, title, ref_col, ours_col, (ref_key, ours_key), fmt, label in sections:
        rows = [e for e in summary if e["kind"] == kind]
        if not rows:
            continue
        if lines:
            lines.append("")
        head = (f"{title:<28} {ref_col:>9} {ours_col:>10} {'speed-up':>8} {'cpu speed-up':>12} "
                f"{'ref RSS GB':>10} {'ours RSS GB':>11} {'mm ref/ours':>11}")
        lines += [head, "-" * len(head)]
        for e in rows:
            lines.append(f"{label(e):<28} {_f(e, ref_key, fmt):>9} {_f(e, ours_key, fmt):>10} "
                         f"{_f(e, 'speedup', '.2f'):>8} {_f(e, 'cpu_speedup', '.2f'):>12} "
                         f"{_f(e, 'ref_rss_gb', '.2f'):>10} {_f(e, 'ours_rss_gb', '.2f'):>11} "
                         f"{_f(e, 'matmul_ref_over_ours', '.2f'):>11}")
    for e in summary:
        for err in e["errors"]:
            lines.append(f"ERROR {e['what']} ({e['ours']} / ref): {err}")
    return "\n".join(lines)


def _progress(r: dict) -> str:
    what = f"{_label(r)} {_who(r)}"
    if "error" in r:
        return f"  {what:<26} ERROR {r['error']}"
    if r["kind"] == "train":
        val = f"{r['img_per_s']:.3f} img/s ({sum(r['step_s']) / len(r['step_s']):.2f} s/step)"
    else:
        val = f"{r['sample_s']:.2f} s"
    return f"  {what:<26} {val}, peak RSS {r['peak_rss_mb'] / 1024:.2f} GB, matmul {r['matmul_gflops']:.1f} GFLOP/s"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference-repo", help="your checkout of hongyehu/RG-Flow (the folder holding code/, or code/)")
    p.add_argument("--batches", nargs="+", type=int, default=[16, 64])
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration (after one warm-up)")
    p.add_argument("--repeats", type=int, default=1, help="rounds of the whole comparison; medians are reported")
    p.add_argument("--ours-ckpt", nargs="+", choices=["on", "off"], default=["on"],
                   help="our checkpointing setting(s) compared against the reference (which checkpoints)")
    p.add_argument("--sample-n", type=int, default=64, help="images sampled")
    p.add_argument("--no-sample", action="store_true", help="skip the sampling comparison")
    p.add_argument("--smoke", action="store_true",
                   help="correctness check only: nhidden 32, batch 2, one timed step, 2 samples")
    p.add_argument("--device", default="cpu")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON output (default bench/results/reference.json, reference-smoke.json with --smoke)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    code, why = find_reference_code(args.reference_repo)
    if code is None:
        print(f"reference_bench: no RG-Flow reference code ({why}); clone it yourself with `{CLONE_HINT}` "
              "and pass --reference-repo /path/to/RG-Flow (nothing is downloaded at run time)", file=sys.stderr)
        return 2
    if args.smoke:
        args.batches, args.steps, args.sample_n = [2], 1, 2
    if args.out is None:
        args.out = REPO / "bench" / "results" / ("reference-smoke.json" if args.smoke else "reference.json")
    groups = configs(args, code)
    head = _git_head(code)
    print(f"reference code: {code}" + (f" (git {head[:12]})" if head else ""), flush=True)
    rows = []
    for rnd in range(args.repeats):
        for group in groups:
            order = group if rnd % 2 == 0 else group[1:] + group[:1]
            for spec in order:
                rows.append({**spawn(spec, args.timeout), "round": rnd})
                print(_progress(rows[-1]), flush=True)
    summary = summarise(groups, rows)
    print()
    print(table(summary))
    nparams = {e.get("ref_nparams") for e in summary} - {None}
    if nparams:
        print(f"\nreference parameters: {', '.join(f'{n:,}' for n in sorted(nparams))}"
              + ("" if args.smoke else " (spec §4: 100,647,680)"))
    calls = {r["checkpoint_calls_per_step"] for r in rows if "checkpoint_calls_per_step" in r}
    if calls:
        print(f"reference checkpointed S/T calls per training step: {', '.join(map(str, sorted(calls)))}")
    model_bench.write_json(args.out, {"smoke": args.smoke, "reference_code": str(code), "reference_git": head,
                                      "repeats": args.repeats, "loadavg_end": os.getloadavg(),
                                      "summary": summary, "rows": rows})
    print(f"\nwrote {args.out}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
