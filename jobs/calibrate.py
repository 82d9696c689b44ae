"""``python -m jobs.sweep calibrate [SWEEP.yaml] [overrides…]``: measure this machine's training
throughput for the dry-run's cost model (:mod:`jobs.dryrun`).

For every (device, preset, precision, checkpointing, ``model.compile``, threads, batch size) the
sweep's trials use — or, without a sweep, the ``tiny`` preset on the CPU at batch 32, 128 and 512
with 1 thread — it times the real training step of ``rgflow.train`` (``_Trainer.train_step``, the
trainer a trial runs:
dequantise, log-likelihood, backward, clip, AdamW, and at the trial's ``train.log_every`` the
gradient-noise measurement) on random 8-bit images in this process: one warm-up step, then steps
until ``--seconds`` (and at least 3 steps) have passed. Each row holds the images per second of
wall time (``img_per_s``, what the dry-run uses) and per second of this process's CPU time
(``img_per_cpu_s``); their ratio (``cpu_per_wall``) below the threads used says other processes
shared the cores meanwhile, which lowers ``img_per_s`` — calibrate on a machine as busy as the
trials will find it. Trials on a GPU are measured only where
this machine has CUDA. Configurations are measured cheapest first (smaller model, then smaller
batch) within ``--budget-s`` (120 s); one whose warm-up step shows it cannot finish in what is
left is skipped and listed.

Writes ``model-calibrate.json`` (``--out``; the rows in ``bench/model_bench.py``'s format, with
the device's name; the rows of an earlier calibration there are kept unless measured again) into :func:`jobs.dryrun.default_results_dir` — ``bench/results/`` of this
checkout (git-ignored: the figures belong to this machine) or ``$RGFLOW_BENCH_RESULTS`` —,
where ``--dry-run`` reads it. Exit 0, or 2 on bad input.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from jobs.overrides import ConfigError
from rgflow.atomic import write_json_atomic

DEFAULT_BATCHES = (32, 128, 512)
RESULTS_FILE = "model-calibrate.json"
MIN_STEPS = 3
#: A measurement that got less than this share of its threads' CPU time was slowed by other processes.
BUSY = 0.8


@dataclass(frozen=True, order=True)
class Spec:
    """One configuration to time."""

    cost: float             # forward FLOPs × batch of one step: the cheapest run first
    device: str             # cpu | cuda
    preset: str
    precision: str
    checkpointing: bool
    compile: bool
    threads: int | None
    batch: int
    log_every: int

    @property
    def label(self) -> str:
        threads = f" {self.threads} thread{'s' * (self.threads != 1)}" if self.threads else ""
        return (f"{self.preset} b{self.batch} {self.precision} ckpt={'on' if self.checkpointing else 'off'}"
                f"{' compile' if self.compile else ''} on {self.device}{threads}")


def _spec(model, batch: int, device: str, threads: int | None, log_every: int) -> Spec:
    from jobs.dryrun import forward_flops

    return Spec(forward_flops(model) * batch, device, model.preset, model.precision, model.checkpointing,
                model.compile, threads if device == "cpu" else None, batch, log_every)


def plan(stages: list, cuda: bool) -> tuple[list[Spec], list[str]]:
    """(what to time, cheapest first; why trials of ``stages`` are not measured here). Without
    stages: :data:`DEFAULT_BATCHES` of ``tiny`` on the CPU, 1 thread."""
    from rgflow.config import TrainConfig, model_preset
    from jobs.dryrun import trial_device, trial_gpus

    if not stages:
        return sorted(_spec(model_preset("tiny"), b, "cpu", 1, TrainConfig.log_every) for b in DEFAULT_BATCHES), []
    specs, notes = {}, []
    for sweep in stages:
        gpus = trial_gpus(sweep)
        for trial in sweep.trials:
            cfg = trial.config
            device = "cpu" if trial_device(cfg, gpus) == "cpu" else "cuda"
            if device == "cuda" and not cuda:
                notes.append(f"{sweep.name}: trials on a GPU, but torch sees no CUDA here: measure them on a GPU "
                             "machine (python -m jobs.sweep calibrate there, or bench/gpu_check.py)")
                continue
            model = model_preset(cfg.model.preset, checkpointing=cfg.model.checkpointing,
                                 precision=cfg.model.precision, compile=cfg.model.compile)
            spec = _spec(model, cfg.train.batch_size, device, cfg.run.threads, cfg.train.log_every)
            specs.setdefault(dataclasses.replace(spec, log_every=0), spec)
    return sorted(specs.values()), list(dict.fromkeys(notes))


def measure(spec: Spec, seconds: float, deadline: float) -> dict:
    """Time ``spec``'s training step: a ``model_bench``-style row, or the spec with ``skipped``."""
    import torch

    from rgflow.config import PriorConfig, TrainConfig, model_preset
    from rgflow.data import EpochBatcher
    from rgflow.model import RGFlowModel
    from rgflow.train import TrainHooks, _Trainer
    from jobs.tracking.env import device_name

    row = {"kind": "train", "impl": "ours", "preset": spec.preset, "batch": spec.batch, "precision": spec.precision,
           "checkpointing": spec.checkpointing, "compile": spec.compile, "device": spec.device,
           "device_name": device_name(spec.device), "log_every": spec.log_every}
    threads = torch.get_num_threads()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    try:
        torch.manual_seed(0)
        cfg = model_preset(spec.preset, checkpointing=spec.checkpointing, precision=spec.precision,
                           compile=spec.compile)
        model = RGFlowModel(cfg, PriorConfig()).to(spec.device)
        images = torch.randint(0, 256, (2 * spec.batch, 3, cfg.size, cfg.size), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(1))
        batcher = EpochBatcher(images, spec.batch, 0, spec.device)
        train = TrainConfig(batch_size=spec.batch, log_every=spec.log_every)
        with tempfile.TemporaryDirectory(prefix="rgflow-calibrate-") as run_dir:
            trainer = _Trainer(model, batcher, batcher, train, Path(run_dir), TrainHooks(), 0, {})
            batches = (b for epoch in itertools.count() for b in batcher.batches(epoch))
            t0 = time.perf_counter()
            trainer.train_step(next(batches))  # warm-up: allocator, optimizer state (and compilation)
            _sync(torch, spec.device)
            warmup = time.perf_counter() - t0
            row.update(threads=torch.get_num_threads(), warmup_s=warmup)
            left = deadline - time.perf_counter()
            if warmup * MIN_STEPS > left:
                return {**row, "skipped": f"one step took {warmup:.1f} s: {MIN_STEPS} steps do not fit in the "
                                          f"{max(left, 0):.0f} s left of the budget"}
            steps, cpu, start = [], [], time.perf_counter()
            while len(steps) < MIN_STEPS or (time.perf_counter() - start < seconds
                                             and time.perf_counter() + steps[-1] < deadline):
                t0, c0 = time.perf_counter(), time.process_time()
                trainer.train_step(next(batches))
                _sync(torch, spec.device)
                steps.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    finally:
        torch.set_num_threads(threads)
    images = spec.batch * len(steps)
    return {**row, "step_s": steps, "step_cpu_s": cpu, "img_per_s": images / sum(steps),
            "img_per_cpu_s": images / sum(cpu), "cpu_per_wall": sum(cpu) / sum(steps)}


def _sync(torch, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _key(row: dict) -> tuple:
    return tuple(row.get(k) for k in ("device", "device_name", "preset", "precision", "checkpointing", "compile",
                                      "threads", "batch"))


def _earlier_rows(out: Path) -> list[dict]:
    """The rows of an earlier calibration in ``out`` (none if it is missing or not one): a run for
    one sweep replaces only the configurations it measured again."""
    try:
        earlier = json.loads(out.read_text())
    except (OSError, ValueError):
        return []
    return list(earlier.get("rows") or []) if isinstance(earlier, dict) and earlier.get("calibrate") else []


def _stages(path: str, overrides: list[str]) -> list:
    """The sweep at ``path`` as one stage, or a study's stages (each with its shared values)."""
    from jobs.overrides import load_yaml_file
    from jobs.study import is_study_file, load_study
    from jobs.sweep_spec import load_sweep

    if is_study_file(load_yaml_file(path)):
        study = load_study(path, overrides)
        return [study.sweep(stage) for stage in study.stages]
    return [load_sweep(path, overrides)]


def main(argv: list[str] | None = None) -> int:
    from jobs.dryrun import default_results_dir

    from jobs.sweep import _Parser   # one-line usage errors, as jobs.sweep's own

    parser = _Parser(
        prog="python -m jobs.sweep calibrate",
        usage="python -m jobs.sweep calibrate [SWEEP.yaml] [overrides...] [--out FILE] [--budget-s S] [--seconds S]",
        description="Measure this machine's training throughput (images/s) for the dry-run's cost model.")
    parser.add_argument("sweep", nargs="?", help="sweep or study file: measure what its trials use "
                                                 "(default: tiny at batch 32, 128, 512 on the CPU, 1 thread)")
    parser.add_argument("overrides", nargs="*", help="Hydra-style key=value overrides of the sweep")
    parser.add_argument("--out", type=Path, help=f"results file (default: {RESULTS_FILE} in $RGFLOW_BENCH_RESULTS or "
                                                 "bench/results; the dry-run reads model*.json there)")
    parser.add_argument("--budget-s", type=float, default=120.0, help="total time limit (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="timed seconds per configuration, after one warm-up step (default %(default)s)")
    args = parser.parse_intermixed_args(argv)
    started = time.perf_counter()
    deadline = started + args.budget_s
    out = args.out or default_results_dir() / RESULTS_FILE
    try:
        stages = _stages(args.sweep, args.overrides) if args.sweep else []
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import torch

    specs, notes = plan(stages, torch.cuda.is_available())
    for note in notes:
        print(f"calibrate: {note}", flush=True)
    rows = []
    for spec in specs:
        rows.append(measure(spec, args.seconds, deadline))
        done = rows[-1]
        if "skipped" in done:
            result = f"skipped: {done['skipped']}"
        else:
            busy = done["cpu_per_wall"] < BUSY * done["threads"]
            result = (f"{done['img_per_s']:.4g} img/s ({len(done['step_s'])} steps, {done['cpu_per_wall']:.2f} "
                      "CPU-s per s" + (": other processes shared the cores meanwhile" if busy else "") + ")")
        print(f"calibrate: {spec.label}: {result}", flush=True)
    measured = [r for r in rows if "skipped" not in r]
    kept = [r for r in _earlier_rows(out) if _key(r) not in {_key(m) for m in measured}]
    payload = {"calibrate": True, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sweep": args.sweep,
               "overrides": args.overrides, "elapsed_s": time.perf_counter() - started,
               "loadavg_end": os.getloadavg(), "notes": notes,
               "rows": kept + measured, "skipped": [r for r in rows if "skipped" in r]}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, payload)
    print(f"calibrate: {len(measured)} of {len(rows)} configurations measured in {payload['elapsed_s']:.0f} s; wrote "
          f"{out}" + (f" (keeping {len(kept)} earlier measurement(s) of other configurations)" if kept else ""))
    return 0


__all__ = ["DEFAULT_BATCHES", "RESULTS_FILE", "Spec", "plan", "measure", "main"]
