"""``jobs.sweep --dry-run``: the expanded trials as a table, with estimated hours per trial.

A trial's cost is counted in image passes through the flow and converted to time with a training
throughput (training images per second) for the device it trains on — a GPU, or the CPU when
``run.device=cpu`` or the trial is given no GPU (``resources.gpus=0``). Every throughput says
where it comes from (:attr:`Throughput.basis`):

* **measured on <device> (<file>)** — from the benchmark results of this checkout, in
  :func:`default_results_dir` (``bench/results``, or ``$RGFLOW_BENCH_RESULTS``; git-ignored, so the
  figures are those of the machines this checkout measured): the ``train`` rows of
  ``model*.json``, written by ``python -m jobs.sweep calibrate`` (:mod:`jobs.calibrate`, the real
  training step of ``rgflow.train``) and by ``bench/model_bench.py``, and of ``gpu_check*.json``
  (``bench/gpu_check.py`` on a GPU; its ``--smoke`` files are left out). A row is used for a trial
  when its device kind (``cpu``, or ``cuda…`` for a GPU), preset, precision and ``model.compile``
  match; among those, the ones closest in checkpointing and thread count (CPU), of the device
  measured last. Throughput depends on the batch size: between two measured batch sizes the rate
  is interpolated linearly in log batch size; outside them the nearest measured size is used
  (the basis says which). For the same configuration a newer file's row replaces an older one's.
  Each row names its device (``device_name``: the CPU model or the GPU's name) when the bench
  records it, else its ``device`` (``cpu``, ``cuda``).
* **assumed (…)** — no matching measurement. GPU: per-preset rates on one A100-class GPU, fp32
  (:data:`IMAGES_PER_S`). ``celeba32`` and ``msds`` are derived: spec §4 gives ≈ 12.6 / 6.8 GFLOP
  per image forward (reproduced by :func:`forward_flops`); a training step costs ≈ 4 forwards
  (forward, backward ≈ 2×, and the recompute of gradient checkpointing; 3 without it); at an
  assumed sustained 10 TFLOP/s (about half the A100's 19.5 TFLOP/s fp32 peak; these are plain
  GEMMs of width 512) that is ≈ 200 and ≈ 370 images/s. ``tiny`` is launch-bound, not FLOP-bound:
  20,000 images/s is a guess. Other precisions scale the rate by :data:`PRECISION_SPEEDUP` (also
  assumed). CPU: :data:`ASSUMED_CPU_FLOP_S` sustained (about what the 2-core host of
  ``bench/README.md`` reaches on the large presets' GEMMs; far too high for ``tiny``, whose
  small GEMMs are overhead-bound: calibrate).

Model field overrides scale either rate by their FLOP ratio to the measured (or preset)
configuration.

Counted per trial: training images (``epochs × train images``, capped by ``steps × batch``) ×
passes; validation (``val_draws`` forwards of the validation split every ``val_every_epochs``);
evaluation when enabled in the sweep: test BPD (``test_draws`` forwards of the test split) and FID
sampling (``fid_samples`` per temperature, one inverse pass each; the Inception network and
receptive fields are not counted). Not counted: process start-up, data loading, tracking and
checkpoint writes — the hours compare with the ``wall_s`` a trial logs (its training loop), which
is what ``jobs.report`` turns into GPU-/CPU-hours.

``python -m jobs.dryrun SWEEP.yaml [--assumed] [overrides…]`` prints the cost of a sweep or study
as a Markdown table (:func:`cost_markdown`); the tables in docs/CLUSTER.md §5 and sweeps/README.md
are its output with ``--assumed``, checked by ``tests/test_cost_docs.py``.
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rgflow.config import ModelConfig, model_preset
from jobs.config import TrialConfig
from jobs.report import power
from jobs.sweep_spec import EvaluationSettings, Sweep

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
RESULTS_ENV = "RGFLOW_BENCH_RESULTS"
RESULTS_GLOBS = ("model*.json", "gpu_check*.json")

IMAGES_PER_S: dict[str, float] = {"celeba32": 200.0, "msds": 370.0, "tiny": 20000.0}
PRECISION_SPEEDUP: dict[str, float] = {"fp32": 1.0, "tf32": 2.0, "bf16": 3.0}
GPU_ASSUMPTION = {"celeba32": "assumed (10 TFLOP/s)", "msds": "assumed (10 TFLOP/s)", "tiny": "assumed (guess)"}
ASSUMED_CPU_FLOP_S = 1.0e11  # FLOP/s
CPU_ASSUMPTION = "assumed (100 GFLOP/s)"

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


def flow_parameters(model: ModelConfig) -> int:
    """Trainable parameters of the flow (the priors have none), counted from the config: every
    coupling has an S and a T residual MLP of ``nresblocks`` blocks over widths
    ``[C·m²] + [nhidden]·nmlp + [C·m²]`` (a Swish β per input feature of each layer, a
    weight-normalised matrix with its gain and bias per layer) and an output gain of ``C·m²``."""
    widths = [model.patch_dim] + [model.nhidden] * model.nmlp + [model.patch_dim]
    block = sum(a + a * b + 2 * b for a, b in zip(widths[:-1], widths[1:]))
    network = model.nresblocks * block + model.patch_dim
    return 2 * network * sum(model.couplings_per_sublayer)


def training_passes(model: ModelConfig) -> int:
    """Forward-equivalents per training image: forward + backward (≈ 2) + checkpoint recompute."""
    return 4 if model.checkpointing else 3


def _step_flops(model: ModelConfig) -> float:
    return forward_flops(model) * training_passes(model)


def images_per_second(model: ModelConfig) -> float:
    """Assumed training throughput (images/s) on one A100-class GPU (see module docstring)."""
    preset = model_preset(model.preset)
    return IMAGES_PER_S[model.preset] * _step_flops(preset) / _step_flops(model) * PRECISION_SPEEDUP[model.precision]


# ----------------------------------------------------------------------------------------------
# Throughput: measured (bench/results) or assumed
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Measurement:
    """One ``train`` row of the benchmark results: ``images_per_s`` training images per second of
    ``preset`` at ``batch`` on ``device`` (``cpu`` or ``gpu``, named ``device_name``)."""

    device: str
    device_name: str
    preset: str
    precision: str
    checkpointing: bool
    compiled: bool
    batch: int
    threads: int | None
    images_per_s: float
    file: str


@dataclass(frozen=True)
class Throughput:
    """Training images per second of one trial on its device, and ``basis``: ``measured on <device>
    (<file>)`` or ``assumed (<what>)``."""

    images_per_s: float
    basis: str

    @property
    def measured(self) -> bool:
        return self.basis.startswith("measured")


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def default_results_dir() -> Path:
    """Where benchmark results are read and ``calibrate`` writes: ``$RGFLOW_BENCH_RESULTS``, else
    ``bench/results`` of this checkout."""
    return Path(os.environ.get(RESULTS_ENV) or RESULTS_DIR)


def _rows(payload: Any) -> list:
    """The training rows of one results file: ``rows`` (``model_bench``, ``calibrate``) or
    ``train`` (``gpu_check``); none from a ``gpu_check --smoke`` run (tiny sizes, only a check
    that every path runs)."""
    if not isinstance(payload, dict) or payload.get("smoke"):
        return []
    rows = payload.get("rows") or payload.get("train") or []
    return rows if isinstance(rows, list) else []


def load_measurements(folder: str | Path | None = None) -> list[Measurement]:
    """The training-throughput rows of ``<folder>/model*.json`` and ``<folder>/gpu_check*.json``
    (default :func:`default_results_dir`), oldest file first; rows with an error, the reference
    implementation's rows, and files that are not bench output are left out."""
    folder = Path(folder) if folder is not None else default_results_dir()
    files = sorted({f for pattern in RESULTS_GLOBS for f in folder.glob(pattern)},
                   key=lambda f: (f.stat().st_mtime, f.name))
    out = []
    for file in files:
        try:
            rows = _rows(json.loads(file.read_text()))
        except (OSError, ValueError):
            continue
        for row in rows:
            if not isinstance(row, dict) or row.get("kind") != "train" or "error" in row \
                    or row.get("impl", "ours") != "ours":
                continue
            try:
                device = str(row["device"])
                overrides = row.get("model_overrides") or {}
                out.append(Measurement(
                    device="gpu" if device.startswith("cuda") else "cpu",
                    device_name=str(row.get("device_name") or device),
                    preset=str(row["preset"]), precision=str(row.get("precision", "fp32")),
                    checkpointing=bool(row.get("checkpointing", True)),
                    compiled=bool(row.get("compile", overrides.get("compile", False))), batch=int(row["batch"]),
                    threads=row.get("threads"), images_per_s=float(row["img_per_s"]), file=_shown(file)))
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
    return out


def trial_gpus(sweep: Sweep) -> float:
    """GPUs one trial is given: ``slurm.gpus_per_trial`` on Slurm, else ``resources.gpus``."""
    if sweep.backend == "slurm":
        return float(sweep.slurm.gpus_per_trial or 0)
    return float(sweep.resources.gpus)


def trial_device(cfg: TrialConfig, gpus: float) -> str:
    """``cpu`` when the trial trains on the CPU (``run.device=cpu``, or no GPU given), else ``gpu``."""
    return "cpu" if cfg.run.device == "cpu" or gpus == 0 else "gpu"


def _closeness(m: Measurement, cfg: TrialConfig) -> tuple[bool, bool]:
    threads = cfg.run.threads if m.device == "cpu" and cfg.run.threads is not None else m.threads
    return m.checkpointing != cfg.model.checkpointing, m.threads != threads


def _at_batch(rows: list[Measurement], batch: int) -> tuple[float, str]:
    """(images/s, how) at ``batch`` from rows of one configuration at several batch sizes: the
    row at ``batch``, else linear in log batch size between the nearest measured sizes either
    side, else the nearest measured size. A later row replaces an earlier one of the same size."""
    rate = {m.batch: m.images_per_s for m in rows}
    below = [b for b in rate if b <= batch]
    above = [b for b in rate if b >= batch]
    if below and above:
        lo, hi = max(below), min(above)
        if lo == hi:
            return rate[lo], f"batch {lo}"
        t = math.log(batch / lo) / math.log(hi / lo)
        return rate[lo] + t * (rate[hi] - rate[lo]), f"batch {batch} interpolated in log batch between {lo} and {hi}"
    nearest = min(rate, key=lambda b: abs(math.log(b / batch)))
    return rate[nearest], f"batch {nearest}, the nearest measured"


def throughput(cfg: TrialConfig, device: str, measurements: list[Measurement]) -> Throughput:
    """The trial's training throughput on ``device``: from the matching measurements at its batch
    size, else the assumption (see module docstring)."""
    model = cfg.model
    candidates = [m for m in measurements if (m.device, m.preset, m.precision, m.compiled)
                  == (device, model.preset, model.precision, model.compile)]
    if candidates:
        best = min(_closeness(m, cfg) for m in candidates)
        closest = [m for m in candidates if _closeness(m, cfg) == best]
        last = closest[-1]
        rows = [m for m in closest if (m.device_name, m.checkpointing, m.threads)
                == (last.device_name, last.checkpointing, last.threads)]
        rate, how = _at_batch(rows, cfg.train.batch_size)
        measured = model_preset(last.preset, checkpointing=last.checkpointing, precision=last.precision)
        threads = f", {last.threads} thread{'s' * (last.threads != 1)}" if device == "cpu" and last.threads else ""
        files = ", ".join(dict.fromkeys(m.file for m in rows))
        return Throughput(rate * _step_flops(measured) / _step_flops(model),
                          f"measured on {last.device_name}{threads}, {how} ({files})")
    if device == "cpu":
        return Throughput(ASSUMED_CPU_FLOP_S / _step_flops(model), CPU_ASSUMPTION)
    return Throughput(images_per_second(model), GPU_ASSUMPTION[model.preset])


# ----------------------------------------------------------------------------------------------
# Cost of a trial
# ----------------------------------------------------------------------------------------------

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


def gpu_hours(cfg: TrialConfig, evaluation: EvaluationSettings, images_per_s: float | None = None) -> float:
    """Estimated hours of one trial at ``images_per_s`` training images per second (default: the
    assumed rate of one A100-class GPU, :func:`images_per_second`)."""
    n_train, n_valid, n_test = split_sizes(cfg)
    images = training_images(cfg)
    passes = training_passes(cfg.model)
    validations = math.floor(images / n_train / cfg.train.val_every_epochs)
    forwards = images * passes + validations * n_valid * cfg.train.val_draws
    if "test_bpd" in evaluation.selected:
        forwards += n_test * cfg.eval.test_draws
    if "fid" in evaluation.selected:
        forwards += cfg.eval.fid_samples * len(cfg.eval.temperatures)
    rate = images_per_second(cfg.model) if images_per_s is None else images_per_s
    return forwards / passes / rate / 3600


@dataclass(frozen=True)
class Estimate:
    """One trial's estimate: ``device`` (``cpu`` | ``gpu``), its :class:`Throughput`, ``hours``."""

    index: int
    trial_id: str
    device: str
    throughput: Throughput
    hours: float


def estimates(sweep: Sweep, results_dir: str | Path | None = None) -> list[Estimate]:
    """Every trial's estimate, from the measurements in ``results_dir`` (default :func:`default_results_dir`)."""
    measurements = load_measurements(results_dir)
    gpus = trial_gpus(sweep)
    out = []
    for trial in sweep.trials:
        device = trial_device(trial.config, gpus)
        rate = throughput(trial.config, device, measurements)
        out.append(Estimate(trial.index, trial.trial_id, device, rate,
                            gpu_hours(trial.config, sweep.evaluation, rate.images_per_s)))
    return out


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------

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


def _basis_line(sweep: Sweep, found: list[Estimate]) -> str:
    """``estimate, training images/s: tiny 375 img/s (fp32 on cpu: measured on cpu, 2 threads, batch 32
    (bench/results/model.json)); …``"""
    seen: dict[str, None] = {}
    for trial, est in zip(sweep.trials, found):
        model = trial.config.model
        rate = est.throughput.images_per_s
        shown = f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}"
        seen[f"{model.preset} {shown} img/s ({model.precision} on {est.device}: "
             f"{est.throughput.basis})"] = None
    note = ("; assumed figures are not measurements: see jobs/dryrun.py; measure this machine with python -m "
            f"jobs.sweep calibrate {sweep.path} (a GPU: bench/gpu_check.py)") \
        if not all(e.throughput.measured for e in found) else ""
    return "estimate, training images/s: " + "; ".join(seen) + note


def reuse_line(sweep: Sweep) -> str | None:
    """How many trials a launch would link from other sweeps instead of training them
    (:mod:`jobs.reuse`), when that is cheap to know: the sweep reuses and its tracking store is a
    sqlite file that exists (read, nothing started or created; mlflow is imported). None otherwise,
    and when no trial would be linked."""
    from jobs.tracking import fast_read
    from jobs.tracking.uri import redact_uri, resolve_tracking_uri, sqlite_path

    uri = resolve_tracking_uri(sweep.first_config.tracking.uri)
    db = sqlite_path(uri)
    if not sweep.reuse or db is None or not db.is_file():
        return None
    from jobs.reuse import reusable
    from jobs.sweep import plan

    try:
        experiment = fast_read.experiment_id(uri, sweep.name)
        runs = fast_read.trial_runs(uri, experiment, trial_ids=[t.trial_id for t in sweep.trials]) if experiment else {}
        todo = plan(sweep, runs, {}, sweep.max_failures, tuple(sweep.evaluation.selected))[1]
        found = reusable(sweep, uri, experiment, runs, todo)
    except Exception as err:  # noqa: BLE001 - an estimate: the launch decides anyway
        return f"reuse: not checked ({str(err).splitlines()[0][:160]})"
    if not found:
        return None
    return (f"reuse: {len(found)} of {len(sweep.trials)} trials finished in other sweeps of {redact_uri(uri)}: linked, "
            "not trained (reuse=false trains them)")


def _searched(sweep: Sweep, results_dir: str | Path | None) -> tuple[int, float, set[str]]:
    """For a ``tune.searcher`` sweep: (trials the searcher may still sample, their estimated hours
    — each priced as its setting with the first random draw —, their devices); (0, 0, ∅) otherwise."""
    import dataclasses

    search = sweep.search
    if search is None:
        return 0, 0.0, set()
    per_frame = [0] * len(search.frames)
    for frame, _ in search.recorded():
        per_frame[frame] += 1
    left = [max(search.settings.num_samples - n, 0) for n in per_frame]
    draw = dataclasses.replace(sweep.axes.random, samples=1).draw()[0]
    shapes = [search.trial(f, f, draw) for f in range(len(search.frames))]
    found = estimates(dataclasses.replace(sweep, trials=shapes), results_dir)
    return sum(left), sum(e.hours * n for e, n in zip(found, left)), {e.device for e in found}


def _hours_unit(devices: set[str]) -> str:
    return {frozenset({"gpu"}): "GPU-hours", frozenset({"cpu"}): "CPU-hours"}.get(frozenset(devices),
                                                                                  "hours (GPU and CPU)")


def search_line(sweep: Sweep, results_dir: str | Path | None = None) -> str | None:
    """For a ``tune.searcher`` sweep: how many trials the searcher may still sample and their
    estimated hours ("up to": each priced as its setting with the first random draw); else None."""
    if sweep.search is None:
        return None
    left, hours, devices = _searched(sweep, results_dir)
    settings = sweep.search.settings
    unit = _hours_unit(devices) if devices else "hours"
    return (f"searcher: {settings.kind} samples up to {left} more trials ({settings.num_samples} "
            f"per setting × {len(sweep.search.frames)} settings; {len(sweep.trials)} sampled so far), up to {hours:.3g} "
            f"{unit} more (estimated: the searched values are not known yet)")


def study_total_line(name: str, stages: list[Sweep], results_dir: str | Path | None = None) -> str:
    """One line: the trials and estimated hours of a study's stages together, and per stage (a
    searcher's trials still to sample included, "up to"; a scheduler's hours an upper bound)."""
    trials, hours, devices, parts = 0, 0.0, set(), []
    for sweep in stages:
        found = estimates(sweep, results_dir)
        left, searched, searched_on = _searched(sweep, results_dir)
        stage_hours = sum(e.hours for e in found) + searched
        trials += len(found) + left
        hours += stage_hours
        devices |= {e.device for e in found} | searched_on
        notes = ([f"up to {left} more searched"] if left else []) + \
            ([f"upper bound: {sweep.tune.scheduler.kind} stops trials early"] if sweep.tune.scheduler else [])
        parts.append(f"{sweep.name} {len(found) + left} trials {stage_hours:.3g}" + (f" ({'; '.join(notes)})"
                                                                                      if notes else ""))
    return (f"study {name}: {len(stages)} stages, {trials} trials, {hours:.3g} {_hours_unit(devices)} "
            f"(estimated): {', '.join(parts)}")


def power_lines(sweep: Sweep) -> list[str]:
    """What the report's comparisons of this sweep can find (:mod:`jobs.report.power`): for a sweep
    that compares settings over seeds — two or more settings of its non-seed axes, none of them
    searched (no ``axes.random``, ``tune.scheduler`` or ``tune.searcher``: those are searches, as a
    study's tuning stage) — one line: per comparison of two settings over the fewest seeds a
    setting has, the minimum detectable difference (two-sided paired t, bits/dim) and the seeds
    the TOST needs to show equivalence within ``report.equivalence_margin`` when the true
    difference is 0; and a WARNING line when that is out of reach at the sweep's seeds (TOST power
    below 0.8, or one seed). The s.d. of a per-seed difference is √2 × ``report.expected_seed_sd``,
    the two settings' seeds taken as independent: conservative when seeds correlate positively,
    as in the mini-study (:data:`jobs.sweep_spec.DEFAULT_SEED_SD`). Empty for any other sweep."""
    if sweep.tune.scheduler or sweep.tune.searcher or sweep.axes.random or not sweep.trials:
        return []
    seeds: dict[str, set] = {}
    for trial in sweep.trials:
        setting = "|".join(_cell(v) for k, v in trial.varying.items() if k != "run.seed")
        seeds.setdefault(setting, set()).add(trial.config.run.seed)
    if len(seeds) < 2:
        return []
    axes = [[k for k in group if k != "run.seed"] for group in [*sweep.axes.zip, *([k] for k in sweep.axes.grid)]]
    compared = ["/".join(group) for group in axes
                if len({tuple(_cell(t.varying[k]) for k in group) for t in sweep.trials}) > 1]
    n = min(map(len, seeds.values()))
    paired = len({frozenset(s) for s in seeds.values()}) == 1
    report = sweep.report
    sd = math.sqrt(2) * report.expected_seed_sd
    margin = report.equivalence_margin
    needed = power.seeds_for_tost(sd, margin, power.POWER, power.ALPHA, max_n=power.MAX_SEEDS)
    tost = power.tost_power(n, sd, margin, power.ALPHA)
    seed_words = f"{n} seed{'s' * (n != 1)}"
    design = f"{seed_words}, paired by seed" if paired else f"at least {seed_words} each, unpaired (modelled as paired)"
    assumed = (f"s.d. of a per-seed difference {sd:.2g} bits/dim = √2 × report.expected_seed_sd {report.expected_seed_sd:g}, "
               f"seeds independent; two-sided α {power.ALPHA:g}, power {power.POWER:g}, before family adjustment")
    detectable = (f"minimum detectable difference {power.min_detectable_difference(n, sd):.2g} bits/dim"
                  if n >= 2 else "nothing tested (the report needs ≥ 2 seeds per setting; it states no direction)")
    needs = f"{needed} seeds" if needed else f"more than {power.MAX_SEEDS} seeds"
    lines = [f"power: per comparison of two of the {len(seeds)} settings ({' × '.join(compared)}) over {design} "
             f"({assumed}): {detectable}; equivalence within ±{margin:g} bits/dim (report.equivalence_margin) "
             f"needs {needs} (TOST power {tost:.2f} at {seed_words})"]
    if n < 2:
        lines.append(f"WARNING: at {seed_words} the report tests no comparison: give ≥ 2 seeds for a test, {needs} for "
                     f"equivalence within ±{margin:g} bits/dim")
    elif tost < power.POWER:
        lines.append(f"WARNING: equivalence within ±{margin:g} bits/dim is out of reach at {seed_words} (TOST power "
                     f"{tost:.2f} < {power.POWER:g}): the report can find differences but will not call two settings "
                     f"equivalent; give {needs}, or widen report.equivalence_margin")
    return lines


def format_trials_table(sweep: Sweep, results_dir: str | Path | None = None) -> str:
    """The dry-run table: one row per trial (index, trial id, each varying value, resources,
    training images, estimated hours on the trial's device), a total line, a line saying
    where each throughput comes from (measurements in ``results_dir``, default :func:`default_results_dir`),
    when some would be, how many trials a launch links from other sweeps (:func:`reuse_line`),
    and the power of the report's comparisons (:func:`power_lines`)."""
    found = estimates(sweep, results_dir)
    devices = {e.device for e in found}
    hours = {"gpu": "GPU-h", "cpu": "CPU-h"}[devices.pop()] if len(devices) == 1 else "hours"
    keys = sweep.varying_keys
    r = sweep.resources
    resources = [_cell(r.cpus), _cell(r.gpus), _cell(r.memory_gb) if r.memory_gb else "-",
                 _cell(r.time_limit_min) if r.time_limit_min else "-"]
    rows = [["#", "trial id", *_headers(keys), "cpus", "gpus", "mem GB", "time min", "images", hours]]
    for trial, est in zip(sweep.trials, found):
        rows.append([str(trial.index), trial.trial_id, *(_cell(trial.varying[k]) for k in keys), *resources,
                     _count(training_images(trial.config)), f"{est.hours:.3g}"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    numeric = {0, *range(2 + len(keys), len(widths))}
    lines = ["  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in rows]
    total_words = {"GPU-h": "GPU-hours", "CPU-h": "CPU-hours"}.get(hours, "hours (GPU and CPU)")
    evaluations = ", ".join(sweep.evaluation.selected) or "none"
    reuse = reuse_line(sweep)
    searched = search_line(sweep, results_dir)
    scheduler = sweep.tune.scheduler
    pruning = (f"scheduler: {scheduler.kind} stops trials that fall behind (first rung after {scheduler.first_rung}): "
               "the hours above are an upper bound, every trial run to its full budget") if scheduler else None
    grid = sweep.axes.lr_grid
    widening = (f"lr grid: {grid.steps + 1} points per setting ({len(grid.extra)} added so far); a study adds up to "
                f"{grid.widen} more points per group if an edge wins, before its next stage") if grid and grid.widen else None
    return "\n".join([
        f"sweep {sweep.name} ({sweep.path}): {len(sweep.trials)} trials, sweep id {sweep.sweep_id}, backend {sweep.backend}",
        *lines,
        f"total: {len(sweep.trials)} trials, {_count(sum(training_images(t.config) for t in sweep.trials))} training "
        f"images, {sum(e.hours for e in found):.3g} {total_words} (estimated)",
        *([f"{_basis_line(sweep, found)}; evaluations after training: {evaluations}"] if found else []),
        *([reuse] if reuse else []),
        *([searched] if searched else []),
        *([pruning] if pruning else []),
        *([widening] if widening else []),
        *power_lines(sweep),
    ])


# ----------------------------------------------------------------------------------------------
# The cost table of a sweep or study, in Markdown (docs/CLUSTER.md §5, sweeps/README.md)
# ----------------------------------------------------------------------------------------------

COST_KEYS = ("data.name", "model.preset", "train.epochs")


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.3g}" if f"{lo:.3g}" == f"{hi:.3g}" else f"{lo:.3g}–{hi:.3g}"


def cost_markdown(stages: list[Sweep], results_dir: str | Path | None = None) -> str:
    """The estimated cost of a sweep (one stage) or a study's stages as a Markdown table: per stage
    and (data set, preset, epochs), the trials, training images and hours per trial, and their
    sum; a total row; then the throughputs used and the schedulers' caveat. Trials still to be
    sampled by a searcher are not in it."""
    rows, total_trials, total_hours, devices, rates, notes, longest = [], 0, 0.0, set(), {}, [], []
    for sweep in stages:
        found = estimates(sweep, results_dir)
        devices |= {e.device for e in found}
        groups: dict[tuple, list] = {}
        for trial, est in zip(sweep.trials, found):
            cfg = trial.config
            groups.setdefault((cfg.data.name, cfg.model.preset, cfg.train.epochs), []).append((trial, est))
            rates[(f"{cfg.model.preset} {cfg.model.precision} on {est.device}", est.throughput)] = None
        for (data, preset, epochs), members in groups.items():
            hours = [est.hours for _, est in members]
            rows.append(f"| {sweep.name} | {data} | {preset} | {epochs} | {len(members)} | "
                        f"{_count(training_images(members[0][0].config))} | {_span(hours)} | {sum(hours):.3g} |")
        total_trials += len(found)
        total_hours += sum(e.hours for e in found)
        longest.append(f"{sweep.name} {max((e.hours for e in found), default=0.0):.3g}")
        if sweep.tune.scheduler:
            notes.append(f"{sweep.name}: an upper bound, every trial run to its full budget "
                         f"({sweep.tune.scheduler.kind} stops trials that fall behind)")
        if sweep.search is not None:
            notes.append(f"{sweep.name}: the trials its searcher ({sweep.search.settings.kind}) samples are not counted")
    unit = {"GPU-hours": "GPU-h", "CPU-hours": "CPU-h"}.get(_hours_unit(devices), "hours")
    used = "; ".join(f"{what} {_cell(rate.images_per_s)} img/s ({rate.basis})" for what, rate in rates)
    return "\n".join([
        f"| stage | data set | preset | epochs | trials | training images per trial | {unit} per trial | {unit} |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        f"| **total** | | | | **{total_trials}** | | | **{total_hours:.3g}** |",
        "",
        f"Training throughput: {used}.",
        *([f"Hours of {'; '.join(notes)}."] if notes else []),
        f"Longest trial ({unit}): {', '.join(longest)}. Each trial holds its devices throughout, so with at least as "
        "many devices as trials a stage takes about its longest trial, and with N at once about the larger of that "
        f"and its {unit} / N{' (stages run one after another)' if len(stages) > 1 else ''}.",
    ])


def main(argv: list[str] | None = None) -> int:
    """``python -m jobs.dryrun SWEEP.yaml [--assumed] [overrides…]``: the cost table in Markdown."""
    from jobs.overrides import ConfigError, load_yaml_file
    from jobs.study import is_study_file, load_study
    from jobs.sweep import _Parser   # one-line usage errors, as jobs.sweep's own
    from jobs.sweep_spec import load_sweep

    parser = _Parser(prog="python -m jobs.dryrun", usage="python -m jobs.dryrun SWEEP.yaml [--assumed] [overrides...]",
                     description="The estimated cost of a sweep or study, as a Markdown table.")
    parser.add_argument("sweep", help="sweep or study file (sweeps/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="Hydra-style key=value overrides")
    parser.add_argument("--assumed", action="store_true",
                        help="price from the assumed rates only, ignoring measurements (the documented tables)")
    args = parser.parse_intermixed_args(argv)
    try:
        if is_study_file(load_yaml_file(args.sweep)):
            study = load_study(args.sweep, args.overrides)
            stages = [study.sweep(stage) for stage in study.stages]
        else:
            stages = [load_sweep(args.sweep, args.overrides)]
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(cost_markdown(stages, NO_RESULTS if args.assumed else None))
    return 0


#: A results folder that never exists: :func:`load_measurements` finds nothing there (``--assumed``).
NO_RESULTS = REPO / "bench" / "no-results"


__all__ = ["IMAGES_PER_S", "PRECISION_SPEEDUP", "ASSUMED_CPU_FLOP_S", "RESULTS_DIR", "RESULTS_ENV", "Measurement",
           "Throughput", "Estimate", "forward_flops", "flow_parameters", "images_per_second", "load_measurements",
           "default_results_dir", "throughput", "trial_device", "trial_gpus", "split_sizes", "training_images",
           "gpu_hours", "estimates", "format_trials_table", "reuse_line", "search_line", "study_total_line",
           "power_lines", "cost_markdown", "main"]


if __name__ == "__main__":
    sys.exit(main())
