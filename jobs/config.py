"""The trial config tree: YAML + Hydra-style overrides → a validated, frozen :class:`TrialConfig`.

A trial config file holds up to seven sections; every key is optional (defaults below)::

    model:    {preset: msds, nhidden: 512, ...}   # rgflow.config.ModelConfig, built by model_preset
    prior:    {kind: laplace, temperature: 1.0, laplace_scale: reference}
    data:     {name: msds1, train_size: null, ...}          # rgflow.config.DataConfig
    train:    {batch_size: 64, epochs: 500, lr: 1.0e-3, ...} # rgflow.config.TrainConfig
    run:      {seed: 0, device: auto, out_dir: runs, deterministic: false, threads: null}
    tracking: {uri: null, experiment: rgflow, enabled: true}
    eval:     {temperatures: [0.5, 0.75, 1.0], test_draws: 4, fid_samples: 10000, ...}

``model.preset`` (default ``msds``, the reference MSDS model, to match the default dataset
``msds1``: with no file at all the tree is the reference MSDS recipe of spec §7; CPU users start
from ``configs/tiny.yaml``) picks a base from ``rgflow.config.MODEL_PRESETS`` and the other model
keys override its fields.

Overrides (``load_trial_config(path, ["train.batch_size=64", "train.betas=[0.9,0.99]",
"data.train_size=null"])``) are applied after the file, in order. A multirun value
(``train.lr=1e-3,2e-3``, ``run.seed=range(0,3)``; :mod:`jobs.overrides`) is one trial's value only
where one value can be written that way: the list of a list key (``train.betas=0.9,0.99`` is
``[0.9,0.99]``) or the text of a free-text key (:func:`takes_text`: ``data.root=/a,b`` is the
path ``'/a,b'``); for any other key it is an error pointing to ``jobs.sweep``.

Validation is strict: unknown keys are errors with a did-you-mean; values must have the field's
type (an integer is accepted where a number is expected, nothing else is converted: ``true`` is not
an integer, ``"64"`` is not an integer); choices name the allowed values. Every error is one :class:`ConfigError` line naming
the key, the value, the rule and where the value came from (``[in FILE]`` or
``[override 'k=v']``), e.g.::

    train.batchsize: unknown key (did you mean 'train.batch_size'?) [override 'train.batchsize=64']
    prior.kind='lapalce': must be one of 'laplace', 'gaussian' (did you mean 'laplace'?) [in configs/x.yaml]

The **trial id** (:func:`trial_id`) is the first 12 hex digits of the SHA-256 of the canonical
JSON (sorted keys, no spaces) of the resolved config without the keys in :data:`ID_EXCLUDED` (and
the keys of :data:`ID_UNLESS_DEFAULT` while at their default, so that adding such a key changes no id):
those say where, on what and how fast a trial runs, or what is done with it afterwards, not what
is trained — so moving a trial to another machine, folder, tracking server or GPU, or changing its
evaluation settings, keeps its id (and therefore its run folder, checkpoints and MLflow run).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

import yaml

from rgflow import config as lib
from rgflow.config import DataConfig, ModelConfig, PriorConfig, TrainConfig, model_preset
from jobs.overrides import ConfigError, Multirun, did_you_mean, load_yaml_file, nest, parse_override
from jobs.tracking.uri import take_credentials

DEFAULT_PRESET = "msds"
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:[0-9]+)?)$")
EVAL_CHECKPOINTS = ("best", "last")
RECEPTIVE_FIELD_SPACES = lib.RECEPTIVE_FIELD_SPACES
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
SWEEP_MARKERS = ("name", "axes", "base", "base_config")  # top-level keys only a sweep file has
ARMS = (None, "control")  # run.arm


@dataclass(frozen=True)
class RunConfig:
    """Where and how a trial runs.

    ``seed`` (0 ≤ seed < 2^63, ``rgflow.config.SEED_LIMIT``) seeds initialisation, batch order and
    the training dequantisation noise (validation noise: one fixed seed for every trial,
    ``jobs.train.VALIDATION_NOISE_SEED``; test noise:
    ``eval.noise_seed``; ``data.seed`` is the MSDS generation seed). ``device``:
    ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``. ``out_dir`` is the
    root of run folders ``<out_dir>/<sweep or single>/<trial id>/``. ``deterministic`` asks for
    deterministic kernels (bitwise resume on CPU). ``threads``: torch intra-op threads (``None``:
    torch's default). ``arm``: ``control`` for a fixed arm of a study stage (``best_of.controls``,
    :mod:`jobs.study`), which the report keeps apart from the tuned arm of the same setting; ``None``
    otherwise (and then not part of the trial id, :data:`ID_UNLESS_DEFAULT`).
    """

    seed: int = 0
    device: str = "auto"
    out_dir: str = "runs"
    deterministic: bool = False
    threads: int | None = None
    arm: str | None = None

    def __post_init__(self) -> None:
        lib._check_seed("run.seed", self.seed)
        if self.arm not in ARMS:
            raise lib.ConfigError("run.arm", self.arm, "must be null (an ordinary trial) or 'control' (a study's control arm)")
        if not DEVICE_PATTERN.match(self.device):
            raise lib.ConfigError("run.device", self.device, "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if not self.out_dir:
            raise lib.ConfigError("run.out_dir", self.out_dir, "must be a non-empty path")
        if self.threads is not None:
            lib._check_positive("run.threads", self.threads)


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking. ``uri`` ``None`` means env ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``
    (see :attr:`resolved_uri`). ``experiment`` names the experiment of single trials (a sweep's
    trials go to the sweep's experiment). ``enabled: false`` trains without MLflow.

    A ``user:password@`` in an ``http(s)`` ``uri`` is moved to ``MLFLOW_TRACKING_USERNAME`` /
    ``MLFLOW_TRACKING_PASSWORD`` when the config is built (:func:`jobs.tracking.uri.take_credentials`):
    ``uri`` holds the URI without them, so params, ``config.yaml`` and logs never show them.

    ``log_model``: which checkpoint's weights a finished trial logs under the run's ``model/``
    artifacts (``model/weights.pt``, ``model/config.yaml``, ``model/model.json``; loaded back by
    :func:`jobs.model_io.load_model`): ``best`` (the lowest validation BPD; the last when there is
    no best), ``last``, or ``none``.

    ``system_metrics``: log MLflow's system metrics (``system/…``: CPU, memory, disk, network; GPU
    through ``pynvml`` when present) every ``system_metrics_interval_s`` seconds (1–300)."""

    uri: str | None = None
    experiment: str = "rgflow"
    enabled: bool = True
    log_model: str = "best"
    system_metrics: bool = True
    system_metrics_interval_s: float = 15.0

    def __post_init__(self) -> None:
        if self.uri is not None and not self.uri:
            raise lib.ConfigError("tracking.uri", self.uri, "must be a non-empty URI or null")
        if self.uri:
            object.__setattr__(self, "uri", take_credentials(self.uri))
        if not self.experiment:
            raise lib.ConfigError("tracking.experiment", self.experiment, "must be a non-empty name")
        if self.log_model not in ("best", "last", "none"):
            raise lib.ConfigError("tracking.log_model", self.log_model, "must be one of best, last, none")
        if not 1 <= self.system_metrics_interval_s <= 300:
            raise lib.ConfigError("tracking.system_metrics_interval_s", self.system_metrics_interval_s,
                                  "must be from 1 to 300 (seconds)")

    @property
    def resolved_uri(self) -> str:
        """The tracking URI to use now: ``uri``, else env ``MLFLOW_TRACKING_URI``, else local sqlite
        (without credentials: :func:`jobs.tracking.uri.take_credentials`)."""
        return self.uri or take_credentials(os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)


@dataclass(frozen=True)
class EvalConfig:
    """What ``jobs.evaluate`` computes for a trained trial.

    ``temperatures``: sampling temperatures for sample grids and FID. ``test_draws``: dequantisation
    draws averaged for the test BPD (mean; standard errors over images and over draws);
    ``test_size``: first N test images (``None``: ``data.test_size``, else all). ``noise_seed``: seed
    of the dequantisation noise of the test BPD, one value for every trial so that trials are
    compared on identical noise image by image (validation uses a fixed seed of its own). ``fid_samples`` generated images per temperature, in batches of ``fid_batch``;
    ``fid_weights``: path of the pytorch-fid Inception weights (``None``: env
    ``RGFLOW_FID_WEIGHTS``, else the torch hub cache; resolved by ``jobs.fid``, never downloaded).
    ``receptive_field_samples``: prior samples averaged per receptive field (spec §8);
    ``receptive_field_space``: differentiate the generator into ``image`` space (the paper's ``G``,
    through the logit inverse) or into ``logit`` space. ``mixed_levels``: also draw
    mixed-temperature samples at every level. ``checkpoint``: evaluate the ``best`` (lowest
    validation BPD) or the ``last`` checkpoint.
    """

    temperatures: tuple[float, ...] = (0.5, 0.75, 1.0)
    test_draws: int = 4
    test_size: int | None = None
    noise_seed: int = 0
    fid_samples: int = 10000
    fid_weights: str | None = None
    fid_batch: int = 200
    receptive_field_samples: int = 8
    receptive_field_space: str = "image"
    mixed_levels: bool = True
    checkpoint: str = "best"

    def __post_init__(self) -> None:
        object.__setattr__(self, "temperatures", tuple(self.temperatures))
        if not self.temperatures:
            raise lib.ConfigError("eval.temperatures", [], "must list at least one temperature")
        for t in self.temperatures:
            lib._check_positive("eval.temperatures", t, integer=False)
        for key in ("test_draws", "fid_samples", "fid_batch", "receptive_field_samples"):
            lib._check_positive(f"eval.{key}", getattr(self, key))
        if self.test_size is not None:
            lib._check_positive("eval.test_size", self.test_size)
        lib._check_seed("eval.noise_seed", self.noise_seed)
        lib._check_choice("eval.checkpoint", self.checkpoint, EVAL_CHECKPOINTS)
        lib._check_choice("eval.receptive_field_space", self.receptive_field_space, RECEPTIVE_FIELD_SPACES)


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs. Build with :func:`load_trial_config` or :func:`build_trial_config`."""

    model: ModelConfig
    prior: PriorConfig
    data: DataConfig
    train: TrainConfig
    run: RunConfig
    tracking: TrackingConfig
    eval: EvalConfig

    def __post_init__(self) -> None:
        lib.check_model_fits_data(self.model, self.data)


SECTIONS: dict[str, type] = {
    "model": ModelConfig, "prior": PriorConfig, "data": DataConfig, "train": TrainConfig,
    "run": RunConfig, "tracking": TrackingConfig, "eval": EvalConfig,
}

# Keys left out of the trial id, and why: none of them changes the trained weights or metrics.
ID_EXCLUDED: dict[str, str] = {
    "tracking": "where metrics are sent",
    "eval": "what is computed after training",
    "run.out_dir": "where the run folder lives",
    "run.device": "which accelerator runs the same computation",
    "run.threads": "CPU parallelism (a backend may set it from the trial's resources)",
    "data.root": "where the data cache lives on this machine",
    "data.celeba_dir": "where CelebA lives on this machine",
    "model.checkpointing": "recompute-in-backward trades memory for time, same gradients",
    "model.compile": "torch.compile speeds up the same computation",
}

#: Keys in the trial id only when they differ from this value (their default), so that the ids of
#: trials from before the keys existed stay the same.
ID_UNLESS_DEFAULT: dict[str, Any] = {"run.arm": None, "train.val_every_images": None, "train.lr_schedule": "constant",
                                     "train.min_lr_ratio": 0.0}

# Allowed values of choice keys, for did-you-mean on a misspelt value.
CHOICES: dict[str, tuple[str, ...]] = {
    "model.preset": tuple(lib.MODEL_PRESETS), "model.precision": lib.PRECISIONS,
    "prior.kind": lib.PRIOR_KINDS, "prior.laplace_scale": lib.LAPLACE_SCALES,
    "data.name": lib.DATASETS, "data.interpolation": lib.INTERPOLATIONS,
    "train.lr_scaling": lib.LR_SCALINGS, "train.lr_schedule": lib.LR_SCHEDULES, "eval.checkpoint": EVAL_CHECKPOINTS,
    "eval.receptive_field_space": RECEPTIVE_FIELD_SPACES,
}


@functools.cache
def field_types(section: str) -> dict[str, Any]:
    """``{field: type}`` of one section's dataclass (evaluated annotations)."""
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


@functools.cache
def config_keys() -> tuple[str, ...]:
    """Every valid dotted key, ``model.preset`` … ``eval.checkpoint``."""
    return tuple(f"{s}.{k}" for s in SECTIONS for k in field_types(s))


def _alternatives(tp: Any) -> list[Any]:
    """The types a field of type ``tp`` takes besides null: ``str | None`` → ``[str]``."""
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    return [a for a in (typing.get_args(tp) if union else (tp,)) if a is not type(None)]


def is_list_type(tp: Any) -> bool:
    """Whether a field of type ``tp`` holds a list (``tuple[float, ...]``, optionally or null)."""
    return any(typing.get_origin(a) is tuple for a in _alternatives(tp))


def is_text_type(tp: Any) -> bool:
    """Whether a field of type ``tp`` holds a string (or null) and nothing else."""
    return _alternatives(tp) == [str]


def is_list_key(key: str) -> bool:
    """Whether the trial key's value is itself a list (``train.betas``), so a list override is its value."""
    section, _, name = key.partition(".")
    return is_list_type(field_types(section)[name])


def takes_text(key: str) -> bool:
    """Whether the trial key is free text: a string (or null) without a fixed set of choices —
    paths, URIs, names (not ``run.device``, whose values never hold a comma: ``run.device=cpu,cuda``
    is an axis). A comma in its override value is part of the text."""
    section, _, name = key.partition(".")
    return key not in CHOICES and key != "run.device" and is_text_type(field_types(section)[name])


def _origin(origin: str | None) -> str:
    return f" [{origin}]" if origin else ""


def show(value: Any) -> str:
    """A value as it would be written in YAML: strings quoted, ``true``, ``null``, ``[0.9, 0.99]``."""
    return repr(value) if isinstance(value, str) else json.dumps(value, default=str)


def value_error(key: str, value: Any, rule: str, origin: str | None = None) -> ConfigError:
    """The one-line error for a bad value: ``key=value: rule (did you mean …?) [origin]``."""
    hint = did_you_mean(value, CHOICES[key]) if isinstance(value, str) and key in CHOICES else ""
    return ConfigError(f"{key}={show(value)}: {rule}{hint}{_origin(origin)}", key, value)


def unknown_key_error(key: str, candidates: typing.Iterable[str], origin: str | None = None) -> ConfigError:
    """``key: unknown key (did you mean …?) [origin]``; a key that exists under another parent
    (``model.batch_size``) suggests that one, otherwise the closest candidate by spelling."""
    candidates = list(candidates)
    parent, _, leaf = key.rpartition(".")
    same_leaf = [c for c in candidates if c.rpartition(".")[2] == leaf and c != key]
    siblings = [c for c in candidates if parent and c.rpartition(".")[0] == parent]
    if len(same_leaf) == 1:
        hint = f" (did you mean {same_leaf[0]!r}?)"
    elif siblings:  # compare leaves only: a shared 'train.' prefix must not make everything similar
        hint = did_you_mean(leaf, [c.rpartition(".")[2] for c in siblings]).replace(" '", f" '{parent}.", 1)
    else:
        hint = did_you_mean(key, candidates)
    return ConfigError(f"{key}: unknown key{hint}{_origin(origin)}", key)


# ----------------------------------------------------------------------------------------------
# Types
# ----------------------------------------------------------------------------------------------

def _describe(tp: Any) -> str:
    args = typing.get_args(tp)
    if type(None) in args:
        return f"{_describe(next(a for a in args if a is not type(None)))} or null"
    if typing.get_origin(tp) is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0]).split(' ', 1)[1]}s"
        return f"a list of {len(args)} {_describe(args[0]).split(' ', 1)[1]}s"
    return {int: "an integer", float: "a number", bool: "a boolean (true/false)", str: "a string"}[tp]


def _yaml_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a decimal number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def coerce(key: str, value: Any, tp: Any, origin: str | None = None) -> Any:
    """``value`` checked against the field type ``tp``; ints become floats where floats are expected."""

    def fail() -> ConfigError:
        return value_error(key, value, f"expected {_describe(tp)}, got {_yaml_type(value)}", origin)

    def check(v: Any, t: Any) -> Any:
        args = typing.get_args(t)
        if type(None) in args:
            return None if v is None else check(v, next(a for a in args if a is not type(None)))
        if typing.get_origin(t) is tuple:
            if not isinstance(v, (list, tuple)):
                raise fail()
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(check(x, args[0]) for x in v)
            if len(v) != len(args):
                raise fail()
            return tuple(check(x, a) for x, a in zip(v, args))
        if t is float and isinstance(v, int) and not isinstance(v, bool):
            return float(v)
        if t is int and isinstance(v, bool):
            raise fail()
        if not isinstance(v, t):
            raise fail()
        if t is float and not math.isfinite(v):
            raise value_error(key, value, "must be a finite number", origin)
        return v

    return check(value, tp)


# ----------------------------------------------------------------------------------------------
# Composition: layers of raw dicts → TrialConfig
# ----------------------------------------------------------------------------------------------

def _checked_layer(raw: Any, origin: str | None) -> dict[str, dict[str, Any]]:
    """One layer (file, inline dict or override) with its keys checked and its values coerced."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping of sections ({', '.join(SECTIONS)}), got {_yaml_type(raw)}{_origin(origin)}")
    out: dict[str, dict[str, Any]] = {}
    for section, body in raw.items():
        if section not in SECTIONS:
            if isinstance(body, dict) and body:
                raise unknown_key_error(f"{section}.{next(iter(body))}", config_keys(), origin)
            raise unknown_key_error(str(section), SECTIONS, origin)
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{section}: expected a mapping of {section} keys, got {_yaml_type(body)}{_origin(origin)}", section, body)
        types = field_types(section)
        for key, value in body.items():
            dotted = f"{section}.{key}"
            if key not in types:
                raise unknown_key_error(dotted, config_keys(), origin)
            out.setdefault(section, {})[key] = coerce(dotted, value, types[key], origin)
    return out


def compose(layers: list[tuple[Any, str | None]]) -> TrialConfig:
    """Merge ``(raw dict, origin label)`` layers in order (later keys win) and build the config.

    Each layer is checked on its own (unknown keys, types), so errors name the layer they come
    from; value rules (ranges, choices) are checked on the merged tree and name the layer that
    set the offending key.
    """
    tree: dict[str, dict[str, Any]] = {}
    origins: dict[str, str | None] = {}
    for raw, origin in layers:
        for section, body in _checked_layer(raw, origin).items():
            tree.setdefault(section, {}).update(body)
            origins.update({f"{section}.{k}": origin for k in body})
    try:
        model = dict(tree.get("model", {}))
        parts = {"model": model_preset(model.pop("preset", DEFAULT_PRESET), **model)}
        for section, cls in SECTIONS.items():
            if section != "model":
                parts[section] = cls(**tree.get(section, {}))
        return TrialConfig(**parts)
    except lib.ConfigError as err:
        if isinstance(err, ConfigError):
            raise
        origin = origins.get(err.key)
        if origin is None and err.key in ("model.size", "model.channels"):  # set by the preset: blame the data
            origin = origins.get("data.name")
        raise value_error(err.key, err.value, err.rule, origin) from None


def build_trial_config(raw: dict[str, Any] | None, origin: str | None = None) -> TrialConfig:
    """A :class:`TrialConfig` from one plain (e.g. YAML-loaded) dict; missing keys take defaults."""
    return compose([(raw, origin)])


def _one_trial_value(text: str, key: str, value: Any, program: str) -> Any:
    """A multirun ``value`` as one trial's value: the list of a list key, the text of a free-text
    key; an error for any other trial key (unknown keys pass through, :func:`compose` names them)."""
    if not isinstance(value, Multirun) or key not in config_keys():
        return value
    if is_list_key(key):
        return list(value)
    if takes_text(key):
        return value.text
    raise ConfigError(f"{text!r} is a multirun list: {program} runs one trial — use jobs.sweep with a sweep file, "
                      "or pick one value", key, value)


def override_layers(overrides: list[str], program: str = "jobs.train") -> list[tuple[dict[str, Any], str]]:
    """``["train.epochs=5", …]`` → layers for :func:`compose`, labelled ``override 'k=v'``;
    ``program`` is the command named when a multirun list is refused (see the module docstring)."""
    layers = []
    for text in overrides:
        key, value = parse_override(text)
        layers.append((nest(key, _one_trial_value(text, key, value, program)), f"override {text!r}"))
    return layers


def load_trial_config(path: str | os.PathLike | None, overrides: list[str] = (), program: str = "jobs.train") -> TrialConfig:
    """Defaults ← the YAML file at ``path`` (if any) ← each override in order; ``program``: the
    command named when a multirun override is refused."""
    layers: list[tuple[Any, str | None]] = []
    if path is not None:
        raw = load_yaml_file(path)
        if isinstance(raw, dict) and any(k in raw for k in SWEEP_MARKERS):
            raise ConfigError(f"{path} is a sweep file, not a trial config: run it with python -m jobs.sweep {path}, "
                              f"or one of its trials with python -m jobs.train {path} --trial N")
        layers.append((raw, f"in {path}"))
    return compose(layers + override_layers(list(overrides), program))


# ----------------------------------------------------------------------------------------------
# Outputs: resolved dict, YAML, flat params, trial id
# ----------------------------------------------------------------------------------------------

def resolved_dict(cfg: TrialConfig) -> dict[str, Any]:
    """The full resolved tree as plain dicts/lists/scalars; ``build_trial_config`` of it gives ``cfg`` back.

    The same as ``rgflow.config.to_dict(cfg)``, written out for the two-level tree (sweeps call it
    once per trial)."""
    def plain(value: Any) -> Any:
        return [plain(v) for v in value] if isinstance(value, tuple) else value

    return {s: {k: plain(getattr(getattr(cfg, s), k)) for k in field_types(s)} for s in SECTIONS}


def to_yaml(cfg: TrialConfig) -> str:
    """The resolved config as YAML (for ``config.yaml`` in the run folder), sections in tree order."""
    return yaml.safe_dump(resolved_dict(cfg), sort_keys=False, default_flow_style=None)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def format_value(value: Any) -> str:
    """A value as override syntax: strings bare, everything else JSON (``null``, ``true``, ``[0.9, 0.999]``)."""
    return value if isinstance(value, str) else json.dumps(value)


def flatten(cfg: TrialConfig) -> dict[str, str]:
    """``{"train.batch_size": "64", "train.betas": "[0.9, 0.999]", "data.train_size": "null", …}``.

    For MLflow params; every value is valid override syntax, so a param can be pasted back as
    ``key=value``.
    """
    return {k: format_value(v) for k, v in _flat(resolved_dict(cfg)).items()}


def identity_dict(cfg: TrialConfig, tree: dict[str, Any] | None = None) -> dict[str, Any]:
    """The resolved tree without :data:`ID_EXCLUDED` keys and :data:`ID_UNLESS_DEFAULT` keys at their default: what
    the trial id hashes.
    ``tree``: ``resolved_dict(cfg)`` when the caller has it already (it is modified)."""
    tree = resolved_dict(cfg) if tree is None else tree
    for key in ID_EXCLUDED:
        section, _, field = key.partition(".")
        if field:
            del tree[section][field]
        else:
            del tree[section]
    for key, default in ID_UNLESS_DEFAULT.items():
        section, _, field = key.partition(".")
        if tree[section][field] == default:
            del tree[section][field]
    return tree


def trial_id(cfg: TrialConfig, tree: dict[str, Any] | None = None) -> str:
    """12 hex digits: SHA-256 of the canonical JSON of :func:`identity_dict` (see module docstring).
    ``tree``: ``resolved_dict(cfg)`` when the caller has it already (it is modified)."""
    canonical = json.dumps(identity_dict(cfg, tree), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


__all__ = [
    "ConfigError", "RunConfig", "TrackingConfig", "EvalConfig", "TrialConfig", "SECTIONS", "ID_EXCLUDED", "ID_UNLESS_DEFAULT",
    "ARMS", "SWEEP_MARKERS",
    "DEFAULT_PRESET", "config_keys", "field_types", "is_list_key", "takes_text", "is_list_type", "is_text_type",
    "coerce", "show", "compose", "build_trial_config",
    "override_layers", "load_trial_config", "resolved_dict", "to_yaml", "flatten", "format_value",
    "identity_dict", "trial_id", "value_error", "unknown_key_error",
]
