"""Data-path benchmark: MSDS1 generation, cache load, and per-step batching + dequantisation.

    .venv/bin/python bench/data_bench.py [--workers N] [--batch 512] [--steps 50] [--device cpu]
                                         [--count N]   # generate fewer images (smoke run)

Builds a fresh MSDS1 cache (seed 0) in a temporary folder and measures
* ``generate``: the 90,000 + 10,000 images rendered by ``rgflow.data.msds.generate`` into .npy
  files with ``--workers`` processes (wall and CPU seconds, images/s);
* ``cache build``: the whole ``ensure_msds`` (generation + labels + sha256 + atomic swap);
* ``load+verify``: ``load_split(train)`` in a fresh state (sha256 of every file), and ``load``
  (verification memoised for unchanged files, as for the later splits of a run);
* ``celeba``: preprocessing rate (decode, crop 148, resize 32) of ``--celeba`` fabricated
  178×218 JPEGs with ``--workers`` processes, and the implied time for the 202,599 real ones;
* ``step``: one training batch from ``EpochBatcher`` (gather, optional flip, per-batch generator)
  plus ``rgflow.logit.dequantize`` at ``--batch`` on ``--device``, mean over ``--steps`` steps.

Prints a table and writes ``bench/results/data.json``. The machine's load average is recorded:
on a shared machine, wall time is only meaningful next to it and to the CPU time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rgflow.atomic import write_atomic  # noqa: E402
from rgflow.config import DataConfig  # noqa: E402
from PIL import Image  # noqa: E402

from rgflow.data import EpochBatcher, cache, celeba, load_split, msds  # noqa: E402
from rgflow.data.splits import ensure_msds  # noqa: E402
from rgflow.logit import dequantize  # noqa: E402


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn):
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = fn()
    return result, time.perf_counter() - wall, cpu_seconds() - cpu


def bench_generate(root: Path, counts: dict[str, int], workers: int) -> dict:
    def run():
        for split, count in counts.items():
            path = root / f"gen-{split}.npy"
            np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, 3, 32, 32)).flush()
            msds.generate("msds1", 0, split, count, workers=workers, images_path=path)
    _, wall, cpu = timed(run)
    n = sum(counts.values())
    return {"images": n, "workers": workers, "wall_s": wall, "cpu_s": cpu, "images_per_s": n / wall}


def bench_celeba(root: Path, n: int, workers: int) -> dict:
    folder = root / "img_align_celeba"
    folder.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:218, 0:178]
    names = [f"{k + 1:06d}.jpg" for k in range(n)]
    for name in names:   # smooth colour fields plus noise: JPEG content of realistic complexity
        base = np.stack([np.sin(xx / rng.uniform(8, 40) + c) * np.cos(yy / rng.uniform(8, 40)) for c in range(3)], -1)
        pixels = np.clip(128 + 90 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / name, quality=95)
    _, wall, cpu = timed(lambda: celeba.preprocess_split(root, names, "bicubic", root / "celeba.npy", workers))
    return {"images": n, "workers": workers, "wall_s": wall, "cpu_s": cpu, "images_per_s": n / wall,
            "full_set_estimate_s": 202_599 / (n / wall)}


def bench_step(images: torch.Tensor, batch: int, steps: int, device: str, flip: bool) -> dict:
    batcher = EpochBatcher(images, batch, seed=0, device=device, flip=flip)
    it = (b for epoch in range(10**6) for b in batcher.batches(epoch))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):                                   # warm-up
        b = next(it)
        dequantize(b.x, b.generator)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        b = next(it)
        x = dequantize(b.x, b.generator)
    sync()
    per_step = (time.perf_counter() - start) / steps
    assert x.shape == (batch, 3, 32, 32)
    return {"batch": batch, "device": device, "flip": flip, "ms_per_step": per_step * 1e3,
            "images_per_s": batch / per_step}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--celeba", type=int, default=400, help="fabricated CelebA JPEGs to preprocess")
    parser.add_argument("--count", type=int, help="images per split at most (smoke run; default all)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "data.json"))
    args = parser.parse_args()
    counts = {s: min(n, args.count or n) for s, n in msds.SPLIT_COUNTS.items()}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="rgflow-data-bench-") as tmp:
        root = Path(tmp)
        gen = bench_generate(root, counts, args.workers)
        (_, _, report), build_wall, build_cpu = timed(lambda: ensure_msds(root, "msds1", 0, counts, workers=args.workers))
        cfg = DataConfig(name="msds1", root=str(root), seed=0, msds_valid_holdout=min(5000, counts["train"] // 10))
        cache._VERIFIED.clear()
        train, verify_wall, _ = timed(lambda: load_split(cfg, "train", msds_counts=counts))
        _, load_wall, _ = timed(lambda: load_split(cfg, "train", msds_counts=counts))
        celeba_rate = bench_celeba(root, args.celeba, args.workers)
        steps = [bench_step(train.images, min(args.batch, len(train)), args.steps, args.device, flip)
                 for flip in (False, True)]
    result = {
        "generate": gen,
        "cache_build": {"wall_s": build_wall, "cpu_s": build_cpu, "bytes": report.nbytes, "action": report.action},
        "load_verify_s": verify_wall, "load_s": load_wall, "train_images": len(train),
        "celeba_preprocess": celeba_rate,
        "step": steps,
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                    "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
                    "processor": platform.processor() or platform.machine()},
    }
    rows = [
        ("MSDS1 generation", f"{gen['images']:,} images", f"{gen['wall_s']:.1f} s wall, {gen['cpu_s']:.1f} s CPU",
         f"{gen['images_per_s']:,.0f} images/s ({gen['workers']} workers)"),
        ("cache build (gen+sha256+swap)", f"{report.nbytes / 1e6:.0f} MB", f"{build_wall:.1f} s wall, {build_cpu:.1f} s CPU", ""),
        ("load_split(train) + verify", f"{len(train):,} images", f"{verify_wall:.2f} s", "sha256 of every file"),
        ("load_split(train)", f"{len(train):,} images", f"{load_wall:.2f} s", "verification memoised"),
        ("CelebA preprocessing", f"{celeba_rate['images']:,} JPEGs", f"{celeba_rate['wall_s']:.1f} s wall, {celeba_rate['cpu_s']:.1f} s CPU",
         f"{celeba_rate['images_per_s']:,.0f} images/s → {celeba_rate['full_set_estimate_s'] / 60:.0f} min for 202,599"),
    ] + [(f"batch+dequantise ({s['device']}{', flip' if s['flip'] else ''})", f"batch {s['batch']}",
          f"{s['ms_per_step']:.2f} ms/step", f"{s['images_per_s']:,.0f} images/s") for s in steps]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print(f"load average before/after: {load_before[0]:.1f} / {result['machine']['loadavg_after'][0]:.1f} on {os.cpu_count()} CPUs")
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
