"""Overhead of the training loop (``rgflow.train.train``) over a bare optimisation step.

    .venv/bin/python bench/train_loop_bench.py [--preset tiny] [--batch 64] [--steps 60]
                                               [--log-every 10 50] [--device auto] [--threads N]

Measures, in one process and interleaved over ``--rounds`` rounds (the median of all rounds is
reported, so a noisy neighbour hurts every variant alike):

The variants' order rotates from round to round, so a drifting machine load does not favour one.

* ``bare``: a hand-written step — dequantise, ``nll_per_dim``, backward, clip, AdamW — with no
  logging, no checks, no noise scale;
* ``loop log_every=K``: :func:`rgflow.train.train` with do-nothing hooks, for each K in
  ``--log-every`` (every K-th step backpropagates the batch as two halves for the noise scale and
  reports metrics; every step syncs for the non-finite checks). Step times come from the
  ``should_stop`` poll that the loop makes before every step. Validation, samples and the final
  checkpoint happen after the last timed step and are not counted.
* ``noise-scale step / plain step``: forward+backward of one batch as two halves
  (:func:`rgflow.noise_scale.backward_two_halves`) against one plain forward+backward, alternated
  ``--steps`` times on the same batch — the one cost the noise scale adds, measured so that load
  drift cancels (the end-to-end rows above are noisier on a shared machine).

Prints a table (ms/step, overhead vs bare) and writes ``bench/results/train_loop.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rgflow.config import PriorConfig, TrainConfig, model_preset  # noqa: E402
from rgflow.data import EpochBatcher  # noqa: E402
from rgflow.device import choose_device, configure_runtime, seed_everything  # noqa: E402
from rgflow.logit import dequantize  # noqa: E402
from rgflow.model import RGFlowModel  # noqa: E402
from rgflow.noise_scale import backward_two_halves  # noqa: E402
from rgflow.train import TrainHooks, make_optimizer, train  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare(model, batcher, cfg, steps, device) -> list[float]:
    optimizer = make_optimizer(model, cfg)
    times = []
    batches = batcher.batches(0)
    for _ in range(steps + 1):
        _sync(device)
        t0 = time.perf_counter()
        batch = next(batches)
        x = dequantize(batch.x, batch.generator)
        optimizer.zero_grad(set_to_none=True)
        model.nll_per_dim(x).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
        optimizer.step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times[1:]  # the first step warms up allocators and kernels


class PollTimer(TrainHooks):
    """Timestamps of the loop's per-step ``should_stop`` polls (steps only: stops counting at
    the step cap, before validation polls)."""

    def __init__(self, steps: int):
        self.stamps: list[float] = []
        self.steps = steps

    def should_stop(self):
        if len(self.stamps) <= self.steps:
            self.stamps.append(time.perf_counter())
        return None


def loop(model, batcher, valid, cfg, steps, device) -> list[float]:
    hooks = PollTimer(steps)
    with tempfile.TemporaryDirectory() as run_dir:
        train(model, batcher, valid, cfg, run_dir, hooks, seed=0)
    gaps = [b - a for a, b in zip(hooks.stamps, hooks.stamps[1:])]
    return gaps[1:]


def halves_over_full(model, batcher, steps, device) -> float:
    """Median time of a two-halves forward+backward over that of a plain one (same batch, alternated)."""
    batch = next(batcher.batches(0))
    x = dequantize(batch.x, batch.generator)
    params = list(model.parameters())
    full, halves = [], []
    for _ in range(steps + 1):
        for times, run in ((full, lambda: model.nll_per_dim(x).backward()),
                           (halves, lambda: backward_two_halves(lambda sl: model.nll_per_dim(x[sl]), len(x), params))):
            model.zero_grad(set_to_none=True)
            _sync(device)
            t0 = time.perf_counter()
            run()
            _sync(device)
            times.append(time.perf_counter() - t0)
    return statistics.median(halves[1:]) / statistics.median(full[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--log-every", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    device = choose_device(args.device)
    configure_runtime(deterministic=False, threads=args.threads)
    images = torch.randint(0, 256, (args.batch * (args.steps + 2), 3, 32, 32), dtype=torch.uint8)
    valid_images = images[: args.batch]
    variants = [("bare", None)] + [(f"loop log_every={k}", k) for k in args.log_every]
    results: dict[str, list[float]] = {name: [] for name, _ in variants}
    for r in range(args.rounds):
        for name, log_every in variants[r % len(variants):] + variants[:r % len(variants)]:  # rotate the order
            seed_everything(0)
            model = RGFlowModel(model_preset(args.preset), PriorConfig()).to(device)
            batcher = EpochBatcher(images, args.batch, 0, device)
            valid = EpochBatcher(valid_images, args.batch, 0, device, drop_last=False)
            if log_every is None:
                cfg = TrainConfig(batch_size=args.batch)
                times = bare(model, batcher, cfg, args.steps, device)
            else:
                cfg = TrainConfig(batch_size=args.batch, epochs=1, steps=args.steps + 1, log_every=log_every,
                                  val_draws=1, sample_count=1, sample_temperatures=(1.0,), checkpoint_minutes=1e6)
                times = loop(model, batcher, valid, cfg, args.steps, device)
            results[name].extend(times)

    base = statistics.median(results["bare"])
    rows = []
    print(f"device {device} · preset {args.preset} · batch {args.batch} · threads {torch.get_num_threads()} · "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'variant':<22}{'median ms/step':>16}{'mean ms/step':>14}{'overhead':>10}")
    for name, times in results.items():
        median, mean = statistics.median(times), statistics.fmean(times)
        over = mean / statistics.fmean(results["bare"]) - 1
        rows.append({"variant": name, "median_ms": median * 1e3, "mean_ms": mean * 1e3, "overhead_of_mean": over,
                     "steps": len(times)})
        print(f"{name:<22}{median * 1e3:>16.1f}{mean * 1e3:>14.1f}{over:>+10.1%}")
    seed_everything(0)
    model = RGFlowModel(model_preset(args.preset), PriorConfig()).to(device)
    ratio = halves_over_full(model, EpochBatcher(images, args.batch, 0, device), args.steps, device)
    print(f"noise-scale step / plain step (forward+backward): {ratio:.3f} → at log_every=K the noise scale "
          f"adds ≈ {ratio - 1:.1%}/K of the training time")
    out = Path(__file__).resolve().parent / "results" / "train_loop.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": str(device), "preset": args.preset, "batch": args.batch,
                               "threads": torch.get_num_threads(), "load_average": os.getloadavg()[0],
                               "bare_median_ms": base * 1e3, "rows": rows, "halves_over_full": ratio}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
