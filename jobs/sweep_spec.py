"""Sweep files: one YAML describes many trials; :func:`load_sweep` expands it into ordered trials.

The shape (every key but ``name`` is optional; see ``sweeps/README.md`` for a commented example)::

    name: batchsize                    # MLflow experiment and run-folder name: [A-Za-z0-9_.-]+
    description: free text
    base_config: ../configs/x.yaml     # a trial config file, relative to this sweep file
    base: {train: {weight_decay: 5.0e-5}}   # trial config keys on top of base_config
    axes:
      zip:                             # groups of keys whose lists vary together (equal lengths)
        - {data.name: [msds1, celeba], model.preset: [msds, celeba32], train.epochs: [60, 100]}
      grid:                            # cartesian product, one axis per key
        train.batch_size: [64, 512]
        prior.kind: [laplace, gaussian]
      random:                          # `samples` points drawn with random.Random(seed)
        samples: 4
        seed: 0
        params:
          train.lr: {loguniform: [1.0e-4, 3.0e-3]}   # or {uniform: [lo, hi]} or {choice: [a, b]}
      seeds: [0, 1, 2]                 # run.seed values: the innermost repeat
    resources: {cpus: 1, gpus: 1, memory_gb: 32, time_limit_min: 1440}   # per trial
    backend: ray                       # ray | slurm | local
    max_failures: 2                    # failed attempts retried per trial (each resumes its checkpoint)
    reuse: true                        # link trials finished in other sweeps of the store instead of training them (jobs.reuse)
    ray: {address: local, max_concurrent_trials: null, storage_path: null, dashboard: false}  # ray.max_failures: old name
    slurm: {partition: gpu, account: null, qos: null, constraint: null, gpus_per_trial: null,
            cpus_per_trial: null, mem_gb: null, time_min: null, array_parallelism: null,
            max_array_size: 1000, extra_sbatch: [], python: null}   # null: from resources
    local: {parallel: 1}
    tune:                              # Ray backend only; metric val_bpd, minimised
      scheduler: {kind: asha, grace_epochs: 1, reduction_factor: 3, max_epochs: null, group_by: [train.batch_size]}
      searcher: {kind: optuna, num_samples: 8, seed: 0}   # searches axes.random.params
    evaluation: {enabled: true, test_bpd: true, samples: true, fid: true, receptive_fields: true}
    report: {equivalence_margin: 0.01, expected_seed_sd: 0.026, min_gain: 0.001, targets: null}   # bits/dim

**Trial order** (the index used by ``--trial N`` and Slurm array task ids) is the cartesian
product of, outermost first: each ``zip`` group (in file order), each ``grid`` key (in file order,
values in list order), the ``random`` samples (in draw order), the ``seeds`` (innermost). A trial's
config is: defaults ← ``base_config`` ← ``base`` ← command-line base overrides ← its axis values.

**Overrides** (``load_sweep(path, ["train.epochs=5", "seeds=[0,1]", "backend=slurm"])``):

* ``seeds=[…]``, ``seed=[…]`` or ``run.seed=[…]`` replace the seeds axis (a scalar: one seed);
* a grid key (``'train.batch_size=[64,512]'``) replaces that axis' values (a scalar: one value);
* a zip key with a scalar keeps the group positions having that value (``data.name=msds1``), with
  a list as long as the group replaces that key's list;
* a random key leaves ``random`` and is treated as below; ``random.samples=N``, ``random.seed=S``;
* any other trial key sets the base for every trial (``train.epochs=5``) — or, when a list is given
  for a key whose value is not itself a list, adds a grid axis (``'prior.temperature=[0.5,1.0]'``);
* ``backend=…``, ``name=…``, ``description=…``, ``resources.*``, ``ray.*``, ``slurm.*``,
  ``local.*``, ``evaluation.*``, ``report.*``, ``tune.scheduler.*``, ``tune.searcher.*`` set those
  settings.

Hydra's multirun forms ``key=a,b,c`` and ``key=range(0,3)`` (:class:`jobs.overrides.Multirun`)
mean the list ``key=[a,b,c]``, with two exceptions, where the comma is part of one value: a free-text
trial key (:func:`jobs.config.takes_text`: ``data.root``, ``run.out_dir``, ``tracking.uri`` …)
that is not an axis of the sweep, and a string setting (``name``, ``description``, ``backend``,
``slurm.partition`` …). A multirun list for any other setting (``resources.gpus``,
``random.samples`` …) is an error: settings apply to the whole sweep, not per trial.

Every key is checked (one-line :class:`~jobs.config.ConfigError` with did-you-mean), every trial's
config is built (so a bad axis value is reported with its key, value and origin), and two trials
with the same trial id are an error naming both indexes.

``Sweep.overrides`` are the overrides as given, except that a ``tracking.uri=`` value has its
credentials moved to the environment (:func:`jobs.tracking.uri.take_credentials`): the overrides are
passed on to every trial's command line and logged as the tag ``rgflow.sweep_overrides``.

``Sweep.sweep_id`` is 12 hex digits of SHA-256 over the name and the ordered trial ids: it
identifies what the sweep trains, not where (backend, resources and tracking do not change it).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import random
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rgflow import config as lib
from jobs.config import (
    SECTIONS, SWEEP_MARKERS, ConfigError, TrialConfig, coerce, compose, config_keys, is_list_key, is_list_type,
    is_text_type, load_trial_config, resolved_dict, show, takes_text, trial_id, unknown_key_error, value_error,
)
from jobs.overrides import Multirun, did_you_mean, load_yaml_file, nest, parse_override
from jobs.tracking.uri import take_credentials

BACKENDS = ("ray", "slurm", "local")
SWEEP_KEYS = ("name", "description", "base_config", "base", "axes", "resources", "backend", "max_failures", "ray",
              "slurm", "local", "evaluation", "report", "tune", "reuse")
AXIS_KINDS = ("zip", "grid", "lr_grid", "random", "seeds")
LR_GRID_KEYS = ("low", "high", "center", "decades", "per_decade", "widen")
LR_CENTERS = ("sqrt", "linear")
RANDOM_KEYS = ("samples", "seed", "params")
DISTRIBUTIONS = ("uniform", "loguniform", "choice")
SEED_KEYS = ("seeds", "seed", "run.seed")
DEFAULT_MAX_FAILURES = 2
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
RAY_ADDRESS = re.compile(r"^(local|auto|ray://\S+|[A-Za-z0-9_.-]+:[0-9]+)$")


# ----------------------------------------------------------------------------------------------
# Settings sections
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Resources:
    """Per trial: ``cpus``, ``gpus`` (fractions below 1 share a GPU on Ray and local; above 1 must be whole),
    ``memory_gb`` (GiB, ``None``: backend default), ``time_limit_min`` (minutes, ``None``: none)."""

    cpus: int = 1
    gpus: float = 0.0
    memory_gb: float | None = None
    time_limit_min: int | None = None

    def __post_init__(self) -> None:
        lib._check_positive("resources.cpus", self.cpus)
        lib._check_positive("resources.gpus", self.gpus, allow_zero=True, integer=False)
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise lib.ConfigError("resources.gpus", self.gpus, "must be a whole number when above 1")
        if self.memory_gb is not None:
            lib._check_positive("resources.memory_gb", self.memory_gb, integer=False)
        if self.time_limit_min is not None:
            lib._check_positive("resources.time_limit_min", self.time_limit_min)


@dataclass(frozen=True)
class RaySettings:
    """``address``: ``local`` (an embedded Ray started for the sweep), ``auto`` (the running
    cluster), ``ray://host:port`` or ``host:port``. ``max_concurrent_trials`` (``None``: as many
    as resources allow), ``max_failures`` the old name of the sweep's top-level ``max_failures``
    (used when that is not set), ``storage_path`` the parent of the sweep's one Ray Tune experiment
    folder ``<sweep name>/`` (``None``: ``<run folder>/tune``). ``dashboard``: start Ray's dashboard
    with the embedded Ray, on 127.0.0.1 only (default off; needs ``ray[default]``, checked by the
    preflight)."""

    address: str = "local"
    max_concurrent_trials: int | None = None
    max_failures: int | None = None
    storage_path: str | None = None
    dashboard: bool = False

    def __post_init__(self) -> None:
        if not RAY_ADDRESS.match(self.address):
            raise lib.ConfigError("ray.address", self.address, "must be 'local', 'auto', 'ray://HOST:PORT' or 'HOST:PORT'")
        if self.max_concurrent_trials is not None:
            lib._check_positive("ray.max_concurrent_trials", self.max_concurrent_trials)
        if self.max_failures is not None:
            lib._check_positive("ray.max_failures", self.max_failures, allow_zero=True)


@dataclass(frozen=True)
class SlurmSettings:
    """sbatch options of the sweep's job arrays. ``gpus_per_trial``, ``cpus_per_trial``, ``mem_gb``
    and ``time_min`` left ``null`` in the file are filled from ``resources`` by :func:`load_sweep`
    (GPUs rounded up). ``array_parallelism``: at most this many array tasks at once (``None``: no
    cap); arrays larger than ``max_array_size`` are split. ``extra_sbatch``: more ``--flag[=value]``
    options, passed as separate arguments. ``python``: interpreter on the compute nodes
    (``None``: the launcher's ``sys.executable``)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_trial: int | None = None
    cpus_per_trial: int | None = None
    mem_gb: float | None = None
    time_min: int | None = None
    array_parallelism: int | None = None
    max_array_size: int = 1000
    extra_sbatch: tuple[str, ...] = ()
    python: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra_sbatch", tuple(self.extra_sbatch))
        if self.gpus_per_trial is not None:
            lib._check_positive("slurm.gpus_per_trial", self.gpus_per_trial, allow_zero=True)
        for key in ("cpus_per_trial", "time_min", "array_parallelism"):
            if getattr(self, key) is not None:
                lib._check_positive(f"slurm.{key}", getattr(self, key))
        if self.mem_gb is not None:
            lib._check_positive("slurm.mem_gb", self.mem_gb, integer=False)
        lib._check_positive("slurm.max_array_size", self.max_array_size)
        for flag in self.extra_sbatch:
            if not flag.startswith("--") or len(flag) < 3 or any(c.isspace() for c in flag):
                raise lib.ConfigError("slurm.extra_sbatch", flag, "each entry must be one long sbatch option such as '--exclusive' or '--nodelist=n1'")


@dataclass(frozen=True)
class LocalSettings:
    """``parallel``: trials run at once as subprocesses on this machine."""

    parallel: int = 1

    def __post_init__(self) -> None:
        lib._check_positive("local.parallel", self.parallel)


@dataclass(frozen=True)
class EvaluationSettings:
    """Which evaluations run after a trial trains (their parameters are the trial's ``eval`` section).
    ``enabled: false`` skips them all."""

    enabled: bool = True
    test_bpd: bool = True
    samples: bool = True
    fid: bool = True
    receptive_fields: bool = True

    @property
    def selected(self) -> tuple[str, ...]:
        """Names of the evaluations to run, in order (empty when disabled)."""
        names = ("test_bpd", "samples", "fid", "receptive_fields")
        return tuple(n for n in names if self.enabled and getattr(self, n))


#: bits/dim: the default ``report.expected_seed_sd``, measured in the committed mini-study
#: (docs/results/mini-study/trials.csv: 18 finished trials, test_bpd of seeds 0, 1, 2 in each of 6
#: settings, train.batch_size 32/64/128 × prior.kind): the pooled within-setting s.d. over seeds,
#: √(Σ squared deviations from the setting's mean / 12 df) = 0.0384, rounded. The s.d. of paired
#: per-seed differences between two of those settings, pooled over the 15 pairs, is 0.050 — a
#: little below √2 × 0.038 = 0.054, the value for independent seeds. (The study's first run gave
#: 0.026 and 0.031: with 12 df such an s.d. is itself uncertain by about ±20 %.)
DEFAULT_SEED_SD = 0.038


@dataclass(frozen=True)
class ReportSettings:
    """How ``jobs.report`` judges comparisons (all in bits/dim; see docs/STATISTICS.md):

    * ``equivalence_margin``: the ± margin of the TOST equivalence test of every BPD comparison;
    * ``expected_seed_sd``: the s.d. over seeds of one setting's BPD that ``--dry-run`` assumes for
      the power of those comparisons (:data:`DEFAULT_SEED_SD`, measured);
    * ``min_gain``: the largest improvement still to come that a converged run may have (the
      convergence gate);
    * ``targets``: the BPD targets of the critical-batch fit's steps-to-target (``None``: the
      default quantiles)."""

    equivalence_margin: float = 0.01
    expected_seed_sd: float = DEFAULT_SEED_SD
    min_gain: float = 0.001
    targets: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for key in ("equivalence_margin", "expected_seed_sd", "min_gain"):
            lib._check_positive(f"report.{key}", getattr(self, key), integer=False)
        if self.targets is not None:
            object.__setattr__(self, "targets", tuple(self.targets))
            if not self.targets or any(t <= 0 for t in self.targets):
                raise lib.ConfigError("report.targets", list(self.targets),
                                      "must be a list of positive BPD values (bits/dim), or null for the default quantiles")


SCHEDULERS = ("asha", "hyperband")
SEARCHERS = ("optuna",)


@dataclass(frozen=True)
class SchedulerSettings:
    """``tune.scheduler`` (Ray backend): trials whose validation BPD falls behind are stopped early
    (pruned). ``kind``: ``asha`` (asynchronous successive halving) or ``hyperband`` (asynchronous
    HyperBand: ``brackets`` ASHA brackets). A trial is first compared after ``grace_epochs`` epochs
    (default 1) — or after ``grace_images`` training images seen, the same data for every batch size
    (time attribute ``samples_seen``; not with ``grace_epochs`` or ``max_epochs``) —, then after
    every ``reduction_factor``× more; ``max_epochs`` caps every trial in epochs (``None``: the
    longest ``train.epochs``; in images there is no cap: every trial ends at its own budget).
    ``group_by``: trial keys whose values are compared separately (``[train.batch_size]``: learning
    rates compete only within a batch size)."""

    kind: str = "asha"
    grace_epochs: float | None = None
    grace_images: int | None = None
    reduction_factor: float = 3.0
    max_epochs: float | None = None
    brackets: int = 3
    group_by: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "group_by", tuple(self.group_by))
        if self.kind not in SCHEDULERS:
            raise lib.ConfigError("tune.scheduler.kind", self.kind, f"must be one of {', '.join(SCHEDULERS)}")
        if self.grace_images is not None:
            lib._check_positive("tune.scheduler.grace_images", self.grace_images)
            for key in ("grace_epochs", "max_epochs"):
                if getattr(self, key) is not None:
                    raise lib.ConfigError(f"tune.scheduler.{key}", getattr(self, key),
                                          "must be null with grace_images (the rungs are in images seen, not epochs)")
        elif self.grace_epochs is None:
            object.__setattr__(self, "grace_epochs", 1.0)
        if self.grace_epochs is not None:
            lib._check_positive("tune.scheduler.grace_epochs", self.grace_epochs, integer=False)
        if self.reduction_factor <= 1:
            raise lib.ConfigError("tune.scheduler.reduction_factor", self.reduction_factor, "must be above 1")
        if self.max_epochs is not None and self.max_epochs < self.grace_epochs:
            raise lib.ConfigError("tune.scheduler.max_epochs", self.max_epochs, "must be at least grace_epochs")
        lib._check_positive("tune.scheduler.brackets", self.brackets)
        for key in self.group_by:
            if key not in config_keys():
                raise lib.ConfigError("tune.scheduler.group_by", key, "must list trial config keys such as train.batch_size")

    @property
    def first_rung(self) -> str:
        """The grace period in words: ``1 epochs`` or ``256,000 images``."""
        return f"{self.grace_images:,} images" if self.grace_images else f"{self.grace_epochs:g} epochs"


@dataclass(frozen=True)
class SearcherSettings:
    """``tune.searcher`` (Ray backend): the sweep's ``axes.random.params`` are searched adaptively
    instead of drawn at random. ``kind``: ``optuna`` (Optuna's TPE sampler); ``num_samples``: trials
    per setting of the other axes; ``seed``: the sampler's seed."""

    kind: str = "optuna"
    num_samples: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SEARCHERS:
            raise lib.ConfigError("tune.searcher.kind", self.kind, f"must be one of {', '.join(SEARCHERS)}")
        lib._check_positive("tune.searcher.num_samples", self.num_samples)


@dataclass(frozen=True)
class TuneSettings:
    """The sweep's ``tune:`` section (Ray backend only): an early-stopping ``scheduler`` and an
    adaptive ``searcher``, each ``None`` when absent. The metric is ``val_bpd``, minimised."""

    scheduler: SchedulerSettings | None = None
    searcher: SearcherSettings | None = None


SETTINGS: dict[str, type] = {
    "resources": Resources, "ray": RaySettings, "slurm": SlurmSettings, "local": LocalSettings,
    "evaluation": EvaluationSettings, "report": ReportSettings,
}
#: The subsections of ``tune:``, each built like a settings section.
TUNE_SECTIONS: dict[str, type] = {"tune.scheduler": SchedulerSettings, "tune.searcher": SearcherSettings}


def _build_settings(section: str, layers: list[tuple[Any, str]]) -> Any:
    cls = SETTINGS.get(section) or TUNE_SECTIONS[section]
    types = _settings_types(cls)
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for raw, origin in layers:
        if raw is None:
            continue
        if not isinstance(raw, dict):
            raise ConfigError(f"{section}: expected a mapping of {section} keys, got {show(raw)} [{origin}]", section, raw)
        for key, value in raw.items():
            dotted = f"{section}.{key}"
            if key not in types:
                raise unknown_key_error(dotted, [f"{section}.{k}" for k in types], origin)
            values[key] = coerce(dotted, value, types[key], origin)
            origins[dotted] = origin
    try:
        return cls(**values)
    except lib.ConfigError as err:
        raise value_error(err.key, err.value, err.rule, origins.get(err.key)) from None


@functools.cache
def _settings_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


# ----------------------------------------------------------------------------------------------
# Axes
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RandomAxis:
    """``samples`` points; each draws every param in ``params`` (key → (distribution, args)) in order.
    ``samples`` is None in a ``tune.searcher`` sweep, where the searcher picks the points."""

    samples: int | None
    seed: int
    params: dict[str, tuple[str, tuple]]

    def draw(self) -> list[dict[str, Any]]:
        """The sample points, reproducible from ``seed`` (Python's Mersenne Twister)."""
        rng = random.Random(self.seed)
        points = []
        for _ in range(self.samples):
            point = {}
            for key, (dist, args) in self.params.items():
                if dist == "uniform":
                    point[key] = rng.uniform(*args)
                elif dist == "loguniform":
                    point[key] = math.exp(rng.uniform(math.log(args[0]), math.log(args[1])))
                else:
                    point[key] = rng.choice(args)
            points.append(point)
        return points


@dataclass(frozen=True)
class LrGrid:
    """``axes.lr_grid``: ``train.lr`` on a log-spaced grid of ``per_decade`` points a decade, per
    setting of the zip and grid axes. Either from ``low`` to ``high`` (a whole number of steps; the
    same LRs for every setting), or ``decades`` wide (``decades × per_decade`` a whole number of
    steps) centred on ``center``: ``sqrt`` (``train.lr × √(train.batch_size / train.reference_batch)``,
    the setting's own values; the default), ``linear`` (``× batch / reference``) or a number. Step
    ``k`` (0 … :attr:`steps`) is the k-th point from the lowest; points are rounded to 4 significant
    digits, so trial ids do not depend on the last bit of a power. ``widen``: the points a study
    may add beyond an edge per group (:func:`jobs.study.widen`); ``extra``: those added so far
    (``{"group": {key: value}, "step": k}``, read from ``record``, the run folder's :data:`WIDEN_RECORD`)."""

    per_decade: int
    low: float | None = None
    high: float | None = None
    center: str | float = "sqrt"
    decades: float | None = None
    widen: int = 0
    extra: tuple[dict[str, Any], ...] = ()
    record: Path | None = None

    @property
    def steps(self) -> int:
        """The highest step of the grid (it has ``steps + 1`` points)."""
        width = math.log10(self.high / self.low) if self.low is not None else self.decades
        return round(width * self.per_decade)

    def value(self, train: lib.TrainConfig, step: int) -> float:
        """The LR at ``step`` for a setting whose other values are ``train``."""
        if self.low is not None:
            lr = self.low * 10 ** (step / self.per_decade)
        else:
            ratio = train.batch_size / train.reference_batch
            center = {"sqrt": train.lr * math.sqrt(ratio), "linear": train.lr * ratio}.get(self.center, self.center)
            lr = center * 10 ** ((step - self.steps / 2) / self.per_decade)
        return float(f"{lr:.4g}")


@dataclass(frozen=True)
class Axes:
    """The effective axes after overrides. ``origins`` labels where each axis key was set."""

    zip: tuple[dict[str, tuple], ...] = ()
    grid: dict[str, tuple] = field(default_factory=dict)
    random: RandomAxis | None = None
    seeds: tuple | None = None
    origins: dict[str, str] = field(default_factory=dict)
    lr_grid: LrGrid | None = None

    @property
    def keys(self) -> list[str]:
        """Varying keys in trial-order nesting (outermost first)."""
        keys = [k for group in self.zip for k in group] + list(self.grid)
        keys += ["train.lr"] if self.lr_grid else []
        keys += list(self.random.params) if self.random else []
        return keys + (["run.seed"] if self.seeds is not None else [])

    def factors(self) -> list[list[dict[str, Any]]]:
        """One list of partial assignments per nesting level; the trials are their product (with
        ``lr_grid``, whose points depend on the setting, between the grid and the random factors:
        :func:`_assignments`)."""
        out = [[{k: v[i] for k, v in group.items()} for i in range(len(next(iter(group.values()))))]
               for group in self.zip]
        out += [[{key: v} for v in values] for key, values in self.grid.items()]
        if self.random:
            out.append(self.random.draw())
        if self.seeds is not None:
            out.append([{"run.seed": s} for s in self.seeds])
        return out


def _trial_key(key: Any, origin: str) -> str:
    if not isinstance(key, str) or key not in config_keys():
        raise unknown_key_error(str(key), config_keys(), origin)
    return key


def _axis_values(key: str, values: Any, origin: str) -> tuple:
    if not isinstance(values, list):
        raise ConfigError(f"{key}={show(values)}: an axis needs a list of values, e.g. [64, 512] [{origin}]", key, values)
    if not values:
        raise ConfigError(f"{key}=[]: an axis needs at least one value [{origin}]", key, values)
    return tuple(values)


def _parse_random(raw: Any, origin: str) -> RandomAxis:
    if not isinstance(raw, dict):
        raise ConfigError(f"axes.random: expected a mapping with samples, seed, params, got {show(raw)} [{origin}]")
    for key in raw:
        if key not in RANDOM_KEYS:
            raise unknown_key_error(f"axes.random.{key}", [f"axes.random.{k}" for k in RANDOM_KEYS], origin)
    samples = coerce("axes.random.samples", raw.get("samples"), int, origin) if "samples" in raw else None
    if samples is not None and samples < 1:
        raise ConfigError(f"axes.random.samples={show(samples)}: must be a positive integer [{origin}]", "axes.random.samples", samples)
    seed = coerce("axes.random.seed", raw.get("seed", 0), int, origin)
    params_raw = raw.get("params")
    if not isinstance(params_raw, dict) or not params_raw:
        raise ConfigError(f"axes.random.params: expected a mapping of keys to {{uniform|loguniform|choice: [...]}}, got {show(params_raw)} [{origin}]")
    params = {}
    for key, spec in params_raw.items():
        key = _trial_key(key, origin)
        if not isinstance(spec, dict) or len(spec) != 1:
            raise ConfigError(f"{key}={show(spec)}: a random param needs exactly one of {{uniform: [lo, hi]}}, {{loguniform: [lo, hi]}}, {{choice: [...]}} [{origin}]", key, spec)
        (dist, args), = spec.items()
        if dist not in DISTRIBUTIONS:
            raise ConfigError(f"{key}: unknown distribution {dist!r}, expected one of {', '.join(DISTRIBUTIONS)}{did_you_mean(str(dist), DISTRIBUTIONS)} [{origin}]", key, dist)
        if dist == "choice":
            params[key] = (dist, _axis_values(key, args, origin))
            continue
        bounds = coerce(key, args, tuple[float, float], origin)
        if not bounds[0] < bounds[1] or (dist == "loguniform" and bounds[0] <= 0):
            rule = "0 < lo < hi" if dist == "loguniform" else "lo < hi"
            raise ConfigError(f"{key}={show(list(bounds))}: {dist} bounds must satisfy {rule} [{origin}]", key, args)
        params[key] = (dist, bounds)
    return RandomAxis(samples, seed, params)


def _parse_lr_grid(raw: Any, origin: str) -> LrGrid:
    where = f"{origin} axes.lr_grid"
    if not isinstance(raw, dict):
        raise ConfigError(f"axes.lr_grid: expected a mapping such as {{center: sqrt, decades: 1.0, per_decade: 4}} or "
                          f"{{low: 1.0e-4, high: 1.0e-2, per_decade: 4}}, got {show(raw)} [{origin}]", "axes.lr_grid")
    for key in raw:
        if key not in LR_GRID_KEYS:
            raise unknown_key_error(f"axes.lr_grid.{key}", [f"axes.lr_grid.{k}" for k in LR_GRID_KEYS], origin)
    values = {k: coerce(f"axes.lr_grid.{k}", raw[k], tp, where) for k, tp in
              (("low", float), ("high", float), ("decades", float), ("per_decade", int), ("widen", int)) if k in raw}
    if values.get("per_decade", 0) < 1:
        raise ConfigError(f"axes.lr_grid.per_decade={show(raw.get('per_decade'))}: required, a positive integer (points "
                          f"per decade) [{origin}]", "axes.lr_grid.per_decade")
    if values.get("widen", 0) < 0:
        raise ConfigError(f"axes.lr_grid.widen={values['widen']}: must be an integer ≥ 0 (points a study may add beyond "
                          f"an edge per group) [{origin}]", "axes.lr_grid.widen")
    bounds = "low" in raw or "high" in raw
    if bounds and ("center" in raw or "decades" in raw):
        raise ConfigError(f"axes.lr_grid: give low and high, or center and decades, not both [{origin}]", "axes.lr_grid")
    center = raw.get("center", "sqrt")
    if isinstance(center, bool) or not (center in LR_CENTERS or isinstance(center, (int, float)) and center > 0):
        raise ConfigError(f"axes.lr_grid.center={show(center)}: must be sqrt, linear or a positive LR [{origin}]",
                          "axes.lr_grid.center")
    grid = LrGrid(center=center if isinstance(center, str) else float(center), **values)
    if bounds and (grid.low is None or grid.high is None or not 0 < grid.low < grid.high):
        raise ConfigError(f"axes.lr_grid: low and high are both required, with 0 < low < high [{origin}]", "axes.lr_grid")
    key, width = ("high", math.log10(grid.high / grid.low)) if bounds else ("decades", grid.decades)
    if width is None or width <= 0 or abs(width * grid.per_decade - round(width * grid.per_decade)) > 1e-6:
        raise ConfigError(f"axes.lr_grid.{key}: the grid must span a positive whole number of steps of 1/per_decade "
                          f"decades (here {show(width)} decades × {grid.per_decade} per decade) [{origin}]",
                          f"axes.lr_grid.{key}")
    return grid


def _parse_axes(raw: Any, origin: str) -> Axes:
    if raw is None:
        return Axes()
    if not isinstance(raw, dict):
        raise ConfigError(f"axes: expected a mapping with {', '.join(AXIS_KINDS)}, got {show(raw)} [{origin}]")
    for kind in raw:
        if kind not in AXIS_KINDS:
            raise unknown_key_error(f"axes.{kind}", [f"axes.{k}" for k in AXIS_KINDS], origin)
    origins: dict[str, str] = {}
    claimed: dict[str, str] = {}

    def claim(key: str, where: str) -> None:
        if key in claimed:
            raise ConfigError(f"{key}: appears in both {claimed[key]} and {where} [{origin}]", key)
        claimed[key] = where
        origins[key] = f"{origin} {where}"

    groups = []
    zips = raw.get("zip") or []
    if not isinstance(zips, list):
        raise ConfigError(f"axes.zip: expected a list of groups (mappings of key: [values]), got {show(zips)} [{origin}]")
    for i, group in enumerate(zips):
        where = f"axes.zip[{i}]"
        if not isinstance(group, dict) or not group:
            raise ConfigError(f"{where}: expected a mapping of key: [values], got {show(group)} [{origin}]")
        parsed = {}
        for key, values in group.items():
            key = _trial_key(key, f"{origin} {where}")
            claim(key, where)
            parsed[key] = _axis_values(key, values, f"{origin} {where}")
        lengths = {len(v) for v in parsed.values()}
        if len(lengths) > 1:
            detail = ", ".join(f"{k}: {len(v)}" for k, v in parsed.items())
            raise ConfigError(f"{where}: lists must have equal lengths ({detail}) [{origin}]")
        groups.append(parsed)
    grid = {}
    grid_raw = raw.get("grid") or {}
    if not isinstance(grid_raw, dict):
        raise ConfigError(f"axes.grid: expected a mapping of key: [values], got {show(grid_raw)} [{origin}]")
    for key, values in grid_raw.items():
        key = _trial_key(key, f"{origin} axes.grid")
        claim(key, "axes.grid")
        grid[key] = _axis_values(key, values, f"{origin} axes.grid")
    lr_grid = _parse_lr_grid(raw["lr_grid"], origin) if raw.get("lr_grid") is not None else None
    if lr_grid:
        claim("train.lr", "axes.lr_grid")
    rand = _parse_random(raw["random"], f"{origin} axes.random") if raw.get("random") is not None else None
    for key in rand.params if rand else ():
        claim(key, "axes.random")
    seeds = None
    if raw.get("seeds") is not None:
        claim("run.seed", "axes.seeds")
        seeds = _axis_values("seeds", raw["seeds"], f"{origin} axes.seeds")
    return Axes(tuple(groups), grid, rand, seeds, origins, lr_grid)


# ----------------------------------------------------------------------------------------------
# The sweep
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Trial:
    """One expanded trial. ``varying``: its axis values (dotted key → resolved value), in axis order;
    ``grid_step``: its step on ``axes.lr_grid`` (None without one)."""

    index: int
    trial_id: str
    config: TrialConfig
    varying: dict[str, Any]
    grid_step: int | None = None


#: The launcher's record of the trials a searcher sampled, in the sweep's run folder.
SEARCH_RECORD = "search.json"
#: A study's record of the points it added beyond the edges of a stage's ``axes.lr_grid``, in its run folder.
WIDEN_RECORD = "lr_grid.json"


@dataclass(frozen=True)
class Search:
    """What a ``tune.searcher`` sweep searches. ``frames``: the assignments of its other axes (zip,
    grid, seeds) in trial order, each searched separately with ``settings.num_samples`` trials;
    ``params``: ``axes.random.params`` (key → (distribution, args)); ``base``/``origins``: the config
    layers every trial is composed from; ``record``: ``<sweep run folder>/search.json``, the trials
    sampled so far (``{"index", "frame", "params"}`` each, written by the launcher)."""

    frames: tuple[dict[str, Any], ...]
    params: dict[str, tuple[str, tuple]]
    settings: SearcherSettings
    base: tuple
    origins: dict[str, str]
    record: Path

    @property
    def budget(self) -> int:
        """Trials the search runs in all."""
        return len(self.frames) * self.settings.num_samples

    def trial(self, index: int, frame: int, values: dict[str, Any]) -> Trial:
        """Trial ``index``: frame ``frame`` with the searched ``values`` (param key → value)."""
        return _make_trial(index, {**self.frames[frame], **values}, list(self.base), self.origins)

    def entries(self) -> list[dict[str, Any]]:
        """The record's entries (``{"index", "frame", "params"}``) in index order; [] before the first launch."""
        try:
            entries = json.loads(self.record.read_text())
            return sorted(entries, key=lambda e: e["index"])
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise ConfigError(f"{self.record}: unreadable search record ({err}); move it away to start the search "
                              "again") from None

    def recorded(self) -> list[tuple[int, Trial]]:
        """(frame, trial) of each trial of the record, in index order (a repeated trial id is kept once)."""
        trials, seen = [], set()
        for entry in self.entries():
            trial = self.trial(entry["index"], entry["frame"], entry["params"])
            if trial.trial_id not in seen:
                seen.add(trial.trial_id)
                trials.append((entry["frame"], trial))
        return trials

    def write(self, entries: list[dict[str, Any]]) -> None:
        """Replace the record with ``entries`` (``{"index", "frame", "params"}``), atomically."""
        from rgflow.atomic import write_json_atomic

        self.record.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.record, entries)


@dataclass(frozen=True)
class Sweep:
    """An expanded sweep: settings plus ``trials`` in the documented order."""

    name: str
    path: Path
    description: str
    trials: list[Trial]
    axes: Axes
    resources: Resources
    backend: str
    ray: RaySettings
    slurm: SlurmSettings
    local: LocalSettings
    evaluation: EvaluationSettings
    sweep_id: str
    overrides: tuple[str, ...] = ()
    report: ReportSettings = ReportSettings()
    max_failures: int = DEFAULT_MAX_FAILURES  #: failed attempts retried per trial, on every backend
    tune: TuneSettings = TuneSettings()  #: Ray Tune's scheduler and searcher (Ray backend only)
    reuse: bool = True  #: link trials finished in other experiments of the store instead of training them (jobs.reuse)
    search: Search | None = None  #: with ``tune.searcher``: what is searched; ``trials`` are those sampled so far
    template: TrialConfig | None = None  #: a trial config of the sweep (where it runs and tracks), even with no trials

    @property
    def first_config(self) -> TrialConfig:
        """A trial config of the sweep, for what all trials share (``run.out_dir``, ``tracking``)."""
        return self.trials[0].config if self.trials else self.template

    @property
    def varying_keys(self) -> list[str]:
        return self.axes.keys

    def trial(self, index: int) -> Trial:
        """Trial ``index``; out of range → ConfigError naming the valid range."""
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(self.trials):
            raise ConfigError(f"trial index {index!r} is out of range: sweep {self.name!r} ({self.path}) has "
                              f"{len(self.trials)} trials, indexes 0-{len(self.trials) - 1}", "trial", index)
        return self.trials[index]


def is_sweep_file(raw: Any) -> bool:
    """Whether a loaded YAML document is a sweep (it has sweep keys) rather than a trial config."""
    return isinstance(raw, dict) and any(k in raw for k in SWEEP_MARKERS)


def load_trial(path: str | Path, overrides: list[str] = (), index: int | None = None) -> tuple[Sweep | None, TrialConfig]:
    """The trial a ``jobs.train`` command line names: ``(None, config)`` for a trial config file,
    ``(sweep, sweep.trial(index).config)`` for a sweep file (``index`` required there, refused for
    a trial config file). A study names its stage with the override ``stage=NAME`` (:func:`jobs.study.load_stage`)."""
    from jobs.study import is_study_file, load_stage

    raw = load_yaml_file(path)
    if is_sweep_file(raw):
        sweep = load_stage(path, list(overrides)) if is_study_file(raw) else load_sweep(path, overrides)
        if index is None:
            raise ConfigError(f"{path} is a sweep with {len(sweep.trials)} trials: run them all with python -m jobs.sweep "
                              f"{path}, or one with --trial N (0-{len(sweep.trials) - 1})")
        return sweep, sweep.trial(index).config
    if index is not None:
        raise ConfigError(f"{path} is a trial config, not a sweep: --trial applies to sweep files only")
    return None, load_trial_config(path, overrides)


def _resolved_value(tree: dict[str, Any], key: str) -> Any:
    section, _, name = key.partition(".")
    return tree[section][name]


def _apply_override(text: str, state: dict[str, Any]) -> None:
    """Fold one command-line override into the sweep ``state`` (see the module docstring)."""
    key, value = parse_override(text)
    origin = f"override {text!r}"
    head, _, rest = key.partition(".")
    axes: Axes = state["axes"]
    if key in SEED_KEYS and any("run.seed" in group for group in (axes.grid, *axes.zip)):
        _apply_trial_override("run.seed", value, origin, state)  # the seed is a grid/zip key here
    elif key in SEED_KEYS and (key != "run.seed" or isinstance(value, list) or axes.seeds is not None):
        values = tuple(value) if isinstance(value, list) else (value,)
        state["axes"] = dataclasses.replace(axes, seeds=_axis_values("seeds", list(values), origin),
                                            origins={**axes.origins, "run.seed": origin})
    elif key in ("backend", "name", "description"):
        state[key] = (_setting_value(text, key, value, str), origin)
    elif key == "max_failures":
        state[key] = (_setting_value(text, key, value, int), origin)
    elif key == "reuse":
        state[key] = (_setting_value(text, key, value, bool), origin)
    elif head == "tune" and rest.partition(".")[0] in ("scheduler", "searcher"):
        sub, _, leaf = rest.partition(".")
        tp = _settings_types(TUNE_SECTIONS[f"tune.{sub}"]).get(leaf)
        state["tune"][sub].append((nest(leaf, _setting_value(text, key, value, tp)) if leaf else value, origin))
    elif head in SETTINGS:
        tp = _settings_types(SETTINGS[head]).get(rest)
        state["settings"][head].append((nest(rest, _setting_value(text, key, value, tp)) if rest else value, origin))
    elif head == "random" and rest in ("samples", "seed"):
        if axes.random is None:
            raise ConfigError(f"{key}: this sweep has no axes.random [{origin}]", key)
        value = _setting_value(text, key, value, int)
        rand = dataclasses.replace(axes.random, **{rest: coerce(key, value, int, origin)})
        if rand.samples < 1:
            raise ConfigError(f"{key}={show(value)}: must be a positive integer [{origin}]", key, value)
        state["axes"] = dataclasses.replace(axes, random=rand)
    elif head in SECTIONS:
        _apply_trial_override(key, value, origin, state)
    else:
        candidates = [*SEED_KEYS[:2], "backend", "name", "description", *SETTINGS, *TUNE_SECTIONS, *config_keys()]
        if head in ("base", "base_config", "axes"):
            raise ConfigError(f"{key}: cannot be overridden; override trial keys (train.epochs=5) or axis keys "
                              f"('train.batch_size=[64,512]') directly [{origin}]", key)
        raise unknown_key_error(key, candidates, origin)


def _setting_value(text: str, key: str, value: Any, tp: Any) -> Any:
    """A multirun ``value`` for a key set once for the whole sweep (type ``tp``; ``None``: unknown
    key, left to the settings check): its text for a string, its list for a list; else an error."""
    if not isinstance(value, Multirun) or tp is None:
        return value
    if is_text_type(tp):
        return value.text
    if is_list_type(tp):
        return list(value)
    raise ConfigError(f"{text!r} is a multirun list, but {key} is set once for the whole sweep, not per trial: "
                      "give one value", key, value)


def _apply_trial_override(key: str, value: Any, origin: str, state: dict[str, Any]) -> None:
    axes: Axes = state["axes"]
    origins = {**axes.origins, key: origin}
    is_axis = key in axes.grid or any(key in g for g in axes.zip) or bool(axes.random and key in axes.random.params)
    if isinstance(value, Multirun) and not is_axis and key in config_keys() and takes_text(key):
        value = value.text  # a path or name with a comma, not a list of them
    if key in axes.grid:
        values = value if isinstance(value, list) else [value]
        state["axes"] = dataclasses.replace(axes, grid={**axes.grid, key: _axis_values(key, values, origin)},
                                            origins=origins)
        return
    for i, group in enumerate(axes.zip):
        if key not in group:
            continue
        if isinstance(value, list):
            if len(value) != len(group[key]):
                raise ConfigError(f"{key}={show(value)}: axes.zip[{i}] has {len(group[key])} positions; give a "
                                  f"list of that length, or one value to keep only its positions [{origin}]", key, value)
            group = {**group, key: _axis_values(key, value, origin)}
        else:
            keep = [j for j, v in enumerate(group[key]) if v == value]
            if not keep:
                raise ConfigError(f"{key}={show(value)}: not among the axes.zip[{i}] values {show(list(group[key]))} "
                                  f"[{origin}]", key, value)
            group = {k: tuple(v[j] for j in keep) for k, v in group.items()}
        zips = axes.zip[:i] + (group,) + axes.zip[i + 1:]
        state["axes"] = dataclasses.replace(axes, zip=zips, origins=origins)
        return
    if axes.random and key in axes.random.params:
        params = {k: v for k, v in axes.random.params.items() if k != key}
        axes = dataclasses.replace(axes, random=dataclasses.replace(axes.random, params=params) if params else None)
        state["axes"] = axes
    if isinstance(value, list) and key in config_keys() and not is_list_key(key):
        state["axes"] = dataclasses.replace(axes, grid={**axes.grid, key: _axis_values(key, value, origin)},
                                            origins={**axes.origins, key: origin})
        return
    state["base"].append((nest(key, value), origin))


def load_sweep(path: str | Path, overrides: list[str] = (), raw: Any = None, where: str | None = None) -> Sweep:
    """Read, override, validate and expand the sweep at ``path`` (see the module docstring).
    ``raw``/``where``: the sweep mapping and its origin label when it is not the file's content (one
    stage of a study, :mod:`jobs.study`; relative paths still resolve against ``path``'s folder)."""
    path = Path(path)
    raw = load_yaml_file(path) if raw is None else raw
    where = where or f"in {path}"
    if isinstance(raw, dict) and "stages" in raw:
        raise ConfigError(f"{path} is a study in stages ({', '.join(map(str, raw['stages'] or {}))}): run it with "
                          f"python -m jobs.sweep {path} (jobs.study.load_study loads it)", "stages")
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a sweep mapping with keys {', '.join(SWEEP_KEYS)}, got {show(raw)} [{where}]")
    for key in raw:
        if key not in SWEEP_KEYS:
            hint = " (trial config keys go under 'base:')" if key in SECTIONS else ""
            raise ConfigError(f"{unknown_key_error(str(key), SWEEP_KEYS)}{hint} [{where}]", str(key))
    base: list[tuple[Any, str]] = []
    if raw.get("base_config") is not None:
        if not isinstance(raw["base_config"], str):
            raise ConfigError(f"base_config={show(raw['base_config'])}: expected a path (relative to the sweep file) [{where}]")
        base_path = path.parent / raw["base_config"]
        base.append((load_yaml_file(base_path), f"in {base_path}"))
    base.append((raw.get("base"), f"{where} base"))
    state: dict[str, Any] = {
        "name": (raw.get("name"), where), "description": (raw.get("description") or "", where),
        "backend": (raw.get("backend", "ray"), where), "max_failures": (raw.get("max_failures"), where), "base": base, "axes": _parse_axes(raw.get("axes"), where),
        "settings": {s: [(raw.get(s), where)] for s in SETTINGS},
        "reuse": (raw.get("reuse"), where),
        "tune": _tune_layers(raw.get("tune"), where),
    }
    for text in overrides:
        _apply_override(text, state)

    name, name_origin = state["name"]
    if name is None:
        raise ConfigError(f"name: required, a short name for the sweep's MLflow experiment and run folder [{where}]", "name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError(f"name={show(name)}: must be letters, digits, '_', '.' or '-' (it names folders) [{name_origin}]", "name", name)
    description, description_origin = state["description"]
    if not isinstance(description, str):
        raise ConfigError(f"description={show(description)}: expected a string [{description_origin}]", "description", description)
    backend, backend_origin = state["backend"]
    if backend not in BACKENDS:
        hint = did_you_mean(backend, BACKENDS) if isinstance(backend, str) else ""
        raise ConfigError(f"backend={show(backend)}: must be one of {', '.join(map(repr, BACKENDS))}{hint} [{backend_origin}]", "backend", backend)
    settings = {s: _build_settings(s, layers) for s, layers in state["settings"].items()}
    max_failures, failures_origin = state["max_failures"]
    if max_failures is None:
        max_failures = DEFAULT_MAX_FAILURES if settings["ray"].max_failures is None else settings["ray"].max_failures
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 0:
        raise ConfigError(f"max_failures={show(max_failures)}: must be an integer ≥ 0 (failed attempts retried per "
                          f"trial) [{failures_origin}]", "max_failures", max_failures)
    reuse, reuse_origin = state["reuse"]
    if reuse is None:
        reuse = True
    if not isinstance(reuse, bool):
        raise ConfigError(f"reuse={show(reuse)}: must be true or false (link trials finished in other sweeps of the "
                          f"tracking store instead of training them) [{reuse_origin}]", "reuse", reuse)
    resources: Resources = settings["resources"]
    slurm: SlurmSettings = settings["slurm"]
    slurm = dataclasses.replace(
        slurm,
        gpus_per_trial=math.ceil(resources.gpus) if slurm.gpus_per_trial is None else slurm.gpus_per_trial,
        cpus_per_trial=resources.cpus if slurm.cpus_per_trial is None else slurm.cpus_per_trial,
        mem_gb=resources.memory_gb if slurm.mem_gb is None else slurm.mem_gb,
        time_min=resources.time_limit_min if slurm.time_min is None else slurm.time_min,
    )
    axes: Axes = state["axes"]
    if axes.lr_grid is not None:
        axes = dataclasses.replace(axes, lr_grid=_widened(axes, name, state["base"]))
    tune = _build_tune(state["tune"], backend, backend_origin, axes, where)
    search = None
    if tune.searcher is None:
        trials = _expand(axes, state["base"])
        template = trials[0].config
        sweep_id = hashlib.sha256(json.dumps([name, [t.trial_id for t in trials]]).encode()).hexdigest()[:12]
    else:
        search, template = _search_of(name, axes, state["base"], tune.searcher)
        trials = [trial for _, trial in search.recorded()]
        identity = [name, list(search.frames), {k: [d, list(a)] for k, (d, a) in search.params.items()},
                    dataclasses.asdict(tune.searcher)]
        sweep_id = hashlib.sha256(json.dumps(identity, default=str).encode()).hexdigest()[:12]
    return Sweep(name, path, description, trials, axes, resources, backend, settings["ray"], slurm,
                 settings["local"], settings["evaluation"], sweep_id, tuple(map(without_credentials, overrides)),
                 settings["report"], max_failures, tune, reuse=reuse, search=search, template=template)


def _widened(axes: Axes, name: str, base: list[tuple[Any, str]]) -> LrGrid:
    """``axes.lr_grid`` with the points a study added beyond its edges (``<run folder>/lr_grid.json``,
    :func:`jobs.study.widen`; none before)."""
    if "train.lr" in axes.grid or any("train.lr" in group for group in axes.zip):
        raise ConfigError(f"train.lr: an axis of its own and axes.lr_grid [{axes.origins.get('train.lr')}]; keep one",
                          "train.lr")
    record = Path(compose(base).run.out_dir).resolve() / name / WIDEN_RECORD
    try:
        extra = json.loads(record.read_text())
        if not all(isinstance(e["group"], dict) and isinstance(e["step"], int) for e in extra):
            raise ValueError("each entry needs a group mapping and an integer step")
    except FileNotFoundError:
        extra = []
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ConfigError(f"{record}: unreadable lr_grid record ({err}); move it away to search the grid without its "
                          "added points") from None
    return dataclasses.replace(axes.lr_grid, extra=tuple(extra), record=record)


def _search_of(name: str, axes: Axes, base: list[tuple[Any, str]], settings: SearcherSettings) -> tuple[Search, TrialConfig]:
    """The :class:`Search` of a searcher sweep and a template trial config (its first frame with
    the first random draw: every searched value checked once)."""
    frame_axes = dataclasses.replace(axes, random=None)
    frames = tuple({k: v for part in parts for k, v in part.items()} for parts in itertools.product(*frame_axes.factors()))
    draw = dataclasses.replace(axes.random, samples=1).draw()[0]
    template = _make_trial(0, {**frames[0], **draw}, base, axes.origins).config
    record = Path(template.run.out_dir).resolve() / name / SEARCH_RECORD
    return Search(frames, dict(axes.random.params), settings, tuple(base), dict(axes.origins), record), template


def _tune_layers(raw: Any, origin: str) -> dict[str, list[tuple[Any, str]]]:
    """The ``tune:`` section of the file as layers per subsection (``scheduler``, ``searcher``)."""
    if raw is None:
        return {"scheduler": [], "searcher": []}
    if not isinstance(raw, dict):
        raise ConfigError(f"tune: expected a mapping with scheduler and/or searcher, got {show(raw)} [{origin}]", "tune", raw)
    for key in raw:
        if key not in ("scheduler", "searcher"):
            raise unknown_key_error(f"tune.{key}", ["tune.scheduler", "tune.searcher"], origin)
    return {sub: [] if raw.get(sub) is None else [(raw[sub], origin)] for sub in ("scheduler", "searcher")}


def _build_tune(layers: dict[str, list[tuple[Any, str]]], backend: str, backend_origin: str, axes: Axes,
                where: str) -> TuneSettings:
    """The typed ``tune:`` section; a scheduler or searcher on another backend than Ray, or a
    searcher without ``axes.random.params`` to search, is an error."""
    built = {sub: _build_settings(f"tune.{sub}", [(raw or {}, o) for raw, o in given]) if given else None
             for sub, given in layers.items()}
    tune = TuneSettings(**built)
    if (tune.scheduler or tune.searcher) and backend != "ray":
        raise ConfigError(f"tune: schedulers and searchers are Ray Tune's: set backend: ray, or remove the tune section "
                          f"(backend={backend} [{backend_origin}])", "tune")
    if tune.searcher and axes.lr_grid is not None:
        raise ConfigError("axes.lr_grid: not with tune.searcher, which searches axes.random.params; use one of them",
                          "axes.lr_grid")
    if tune.searcher and axes.random is None:
        raise ConfigError("tune.searcher: needs axes.random.params, the distributions it searches (e.g. train.lr: "
                          "{loguniform: [1.0e-4, 3.0e-3]})", "tune.searcher")
    if axes.random is not None and tune.searcher is None and axes.random.samples is None:
        raise ConfigError("axes.random.samples=null: must be a positive integer (the number of random draws), or add "
                          f"tune.searcher to search axes.random.params adaptively [{where} axes.random]",
                          "axes.random.samples")
    if axes.random is not None and tune.searcher is not None and axes.random.samples is not None:
        raise ConfigError(f"axes.random.samples={axes.random.samples}: not used with tune.searcher, which samples "
                          "tune.searcher.num_samples trials per setting; remove it", "axes.random.samples")
    return tune


def without_credentials(text: str) -> str:
    """An override as it may be logged and passed on: ``tracking.uri=http://user:pw@host`` becomes
    ``tracking.uri=http://host`` (the credentials go to the environment, see
    :func:`jobs.tracking.uri.take_credentials`); every other override is returned unchanged."""
    key, sep, value = text.partition("=")
    if not sep or key.strip() != "tracking.uri":
        return text
    clean = take_credentials(value.strip())
    return text if clean == value.strip() else f"{key}={clean}"


def _compose(assignment: dict[str, Any], base: list[tuple[Any, str]], origins: dict[str, str]) -> TrialConfig:
    return compose(base + [(nest(k, v), origins.get(k)) for k, v in assignment.items()])


def _make_trial(index: int, assignment: dict[str, Any], base: list[tuple[Any, str]], origins: dict[str, str],
                grid_step: int | None = None) -> Trial:
    """Trial ``index``: the ``base`` layers with the axis values of ``assignment`` on top."""
    config = _compose(assignment, base, origins)
    tree = resolved_dict(config)
    varying = {k: _resolved_value(tree, k) for k in assignment}
    return Trial(index, trial_id(config, tree), config, varying, grid_step)


def _merged(parts) -> dict[str, Any]:
    return {k: v for part in parts for k, v in part.items()}


def _assignments(axes: Axes, base: list[tuple[Any, str]]) -> list[tuple[dict[str, Any], int | None]]:
    """(axis values, lr_grid step) of every trial in trial order. With ``lr_grid``: per setting of
    the zip and grid axes, its grid's points (each times the random draws and seeds); then the
    points a study added beyond the edges (``lr_grid.extra``), each for the settings of its group."""
    factors = axes.factors()
    grid = axes.lr_grid
    if grid is None:
        return [(_merged(parts), None) for parts in itertools.product(*factors)]
    outer, inner = factors[:len(axes.zip) + len(axes.grid)], factors[len(axes.zip) + len(axes.grid):]
    settings = [(row, _compose(row, base, axes.origins)) for row in map(_merged, itertools.product(*outer))]
    for row, config in settings:
        if grid.center in LR_CENTERS and config.train.lr_scaling != "none":
            raise ConfigError(f"train.lr_scaling={config.train.lr_scaling}: axes.lr_grid centred on the {grid.center} "
                              "rule sets the scaled LR itself; set train.lr_scaling: none", "train.lr_scaling")
    points = [(row, config, step) for row, config in settings for step in range(grid.steps + 1)]
    for extra in grid.extra:
        points += [(row, config, extra["step"]) for row, config in settings
                   if all(_value(config, k) == v for k, v in extra["group"].items())]
    return [({**row, "train.lr": grid.value(config.train, step), **_merged(parts)}, step)
            for row, config, step in points for parts in itertools.product(*inner)]


def _value(config: TrialConfig, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(config, section), name)


def _expand(axes: Axes, base: list[tuple[Any, str]]) -> list[Trial]:
    trials: list[Trial] = []
    seen: dict[str, int] = {}
    fix = "remove the duplicate value" + (" or change axes.random (seed, samples, params)" if axes.random else "")
    for index, (assignment, step) in enumerate(_assignments(axes, base)):
        trial = _make_trial(index, assignment, base, axes.origins, step)
        if trial.trial_id in seen:
            first = trials[seen[trial.trial_id]]
            raise ConfigError(f"trials {first.index} and {index} are the same trial (id {trial.trial_id}): axis values "
                              f"{show(first.varying)} and {show(trial.varying)} give the same config; {fix}")
        seen[trial.trial_id] = index
        trials.append(trial)
    return trials


__all__ = [
    "BACKENDS", "Resources", "RaySettings", "SlurmSettings", "LocalSettings", "EvaluationSettings", "RandomAxis",
    "Axes", "Trial", "Sweep", "is_sweep_file", "load_sweep", "load_trial", "without_credentials",
]
