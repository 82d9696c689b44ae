"""``jobs.sweep --dry-run``: the expanded trials as a table, with estimated GPU-hours.

**The estimate is not a measurement.** A trial's cost is counted in image passes through the
flow and converted to time with a per-preset training throughput on one A100-class GPU
(:data:`IMAGES_PER_S`, fp32). The ``celeba32`` and ``msds`` figures are derived, not measured:
spec §4 gives ≈ 12.6 / 6.8 GFLOP per image forward (reproduced by :func:`forward_flops`); a
training step costs ≈ 4 forwards (forward, backward ≈ 2×, and the recompute of gradient
checkpointing; 3 without it); at an assumed sustained 10 TFLOP/s (about half the A100's 19.5 TFLOP/s
fp32 peak; these are plain GEMMs of width 512) that is ≈ 200 and ≈ 370 images/s. ``tiny`` is
launch-bound, not FLOP-bound: 20,000 images/s is a guess. Other precisions scale the rate by
:data:`PRECISION_SPEEDUP` (also assumed), model field overrides by their FLOP ratio to the preset.
Replace these numbers with measured ones (``bench/``) when a GPU run exists.

Counted per trial: training images (``epochs × train images``, capped by ``steps × batch``) ×
passes; validation (``val_draws`` forwards of the validation split every ``val_every_epochs``);
evaluation when enabled in the sweep: test BPD (``test_draws`` forwards of the test split) and FID
sampling (``fid_samples`` per temperature, one inverse pass each; the Inception network and
receptive fields are not counted).
"""
from __future__ import annotations

import math
from typing import Any

from rgflow.config import ModelConfig, model_preset
from jobs.config import TrialConfig
from jobs.sweep_spec import EvaluationSettings, Sweep

IMAGES_PER_S: dict[str, float] = {"celeba32": 200.0, "msds": 370.0, "tiny": 20000.0}
PRECISION_SPEEDUP: dict[str, float] = {"fp32": 1.0, "tf32": 2.0, "bf16": 3.0}

# Split sizes (train, valid, test) of the full datasets, spec §9. MSDS's validation split is the
# last `msds_valid_holdout` of its 90,000 training images.
CELEBA_SPLITS = (162_770, 19_867, 19_962)
MSDS_TRAIN, MSDS_TEST = 90_000, 10_000


def forward_flops(model: ModelConfig) -> float:
    """FLOPs of one image through the flow (spec §2–§4): every coupling layer of sub-layer k runs
    4 residual-MLP evaluations (S and T, two half-steps) on each of its (L / (m·2^h))² patches."""
    width = model.patch_dim
    macs = model.nresblocks * (2 * width * model.nhidden + (model.nmlp - 1) * model.nhidden**2)
    patches = [(model.size // (model.kernel * 2 ** (k // 2))) ** 2 for k in range(2 * model.levels)]
    return sum(4 * 2 * macs * n * p for n, p in zip(model.couplings_per_sublayer, patches))


def training_passes(model: ModelConfig) -> int:
    """Forward-equivalents per training image: forward + backward (≈ 2) + checkpoint recompute."""
    return 4 if model.checkpointing else 3


def images_per_second(model: ModelConfig) -> float:
    """Estimated training throughput (images/s) on one A100-class GPU (see module docstring)."""
    preset = model_preset(model.preset)
    ratio = (forward_flops(preset) * training_passes(preset)) / (forward_flops(model) * training_passes(model))
    return IMAGES_PER_S[model.preset] * ratio * PRECISION_SPEEDUP[model.precision]


def split_sizes(cfg: TrialConfig) -> tuple[int, int, int]:
    """(train, valid, test) image counts the trial uses."""
    data = cfg.data
    if data.name == "celeba":
        full = CELEBA_SPLITS
    else:
        full = (MSDS_TRAIN - data.msds_valid_holdout, data.msds_valid_holdout, MSDS_TEST)
    caps = (data.train_size, data.valid_size, cfg.eval.test_size or data.test_size)
    return tuple(n if cap is None else min(n, cap) for n, cap in zip(full, caps))


def training_images(cfg: TrialConfig) -> int:
    """Images the optimiser sees: epochs × train split, capped by ``steps × batch_size``."""
    n_train = split_sizes(cfg)[0]
    images = cfg.train.epochs * n_train
    return images if cfg.train.steps is None else min(images, cfg.train.steps * cfg.train.batch_size)


def gpu_hours(cfg: TrialConfig, evaluation: EvaluationSettings) -> float:
    """Estimated GPU-hours of one trial on one A100-class GPU (see module docstring)."""
    n_train, n_valid, n_test = split_sizes(cfg)
    images = training_images(cfg)
    passes = training_passes(cfg.model)
    validations = math.floor(images / n_train / cfg.train.val_every_epochs)
    forwards = images * passes + validations * n_valid * cfg.train.val_draws
    if "test_bpd" in evaluation.selected:
        forwards += n_test * cfg.eval.test_draws
    if "fid" in evaluation.selected:
        forwards += cfg.eval.fid_samples * len(cfg.eval.temperatures)
    return forwards / passes / images_per_second(cfg.model) / 3600


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_cell(v) for v in value) + "]"
    return "null" if value is None else str(value)


def _count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(int(n))


def _headers(keys: list[str]) -> list[str]:
    """Column names: the key's last part when that is unique and says enough, else the dotted key."""
    leaves = [k.rpartition(".")[2] for k in keys]
    return [leaf if leaves.count(leaf) == 1 and leaf not in ("name", "kind") else key for key, leaf in zip(keys, leaves)]


def format_trials_table(sweep: Sweep) -> str:
    """The dry-run table: one row per trial (index, trial id, each varying value, resources,
    training images, estimated GPU-hours), a total line, and a note on the estimate."""
    keys = sweep.varying_keys
    r = sweep.resources
    resources = [_cell(r.cpus), _cell(r.gpus), _cell(r.memory_gb) if r.memory_gb else "-",
                 _cell(r.time_limit_min) if r.time_limit_min else "-"]
    rows = [["#", "trial id", *_headers(keys), "cpus", "gpus", "mem GB", "time min", "images", "GPU-h"]]
    total = 0.0
    for trial in sweep.trials:
        hours = gpu_hours(trial.config, sweep.evaluation)
        total += hours
        rows.append([str(trial.index), trial.trial_id, *(_cell(trial.varying[k]) for k in keys), *resources,
                     _count(training_images(trial.config)), f"{hours:.3g}"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    numeric = {0, *range(2 + len(keys), len(widths))}
    lines = ["  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in rows]
    presets = sorted({t.config.model.preset for t in sweep.trials})
    rates = ", ".join(f"{p} {IMAGES_PER_S[p]:g}" for p in presets)
    evaluations = ", ".join(sweep.evaluation.selected) or "none"
    return "\n".join([
        f"sweep {sweep.name} ({sweep.path}): {len(sweep.trials)} trials, sweep id {sweep.sweep_id}, backend {sweep.backend}",
        *lines,
        f"total: {len(sweep.trials)} trials, {_count(sum(training_images(t.config) for t in sweep.trials))} training "
        f"images, {total:.3g} GPU-hours (estimated)",
        f"estimate: one A100-class GPU at {rates} training images/s (fp32; assumed figures, not measurements: "
        f"see jobs/dryrun.py); evaluations after training: {evaluations}",
    ])


__all__ = ["IMAGES_PER_S", "PRECISION_SPEEDUP", "forward_flops", "images_per_second", "split_sizes",
           "training_images", "gpu_hours", "format_trials_table"]
