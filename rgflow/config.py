"""Typed configuration of the science library: model, prior, data and training.

Every dataclass validates itself in ``__post_init__`` and raises :class:`ConfigError`, whose
message names the field, the bad value and the rule, on one line. ``jobs.config`` composes these
into a trial config and adds YAML loading and command-line overrides; nothing here knows about
YAML, MLflow or schedulers.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A configuration value breaks a rule. ``str(err)`` is a single line naming the key."""

    def __init__(self, key: str, value: Any, rule: str):
        self.key, self.value, self.rule = key, value, rule
        super().__init__(f"{key}={value!r}: {rule}")


def _check_choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(key, value, f"must be one of {', '.join(map(repr, allowed))}")


def _check_positive(key: str, value: Any, *, allow_zero: bool = False, integer: bool = True) -> None:
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        what = "a non-negative" if allow_zero else "a positive"
        raise ConfigError(key, value, f"must be {what} {'integer' if integer else 'number'}")


#: Seeds are integers in ``[0, SEED_LIMIT)``: ``torch.manual_seed`` takes up to 2^64 − 1 and numpy's
#: ``SeedSequence`` any non-negative integer, but ``jobs.report`` reads seeds back from MLflow params
#: as 64-bit signed integers (pandas ``int64``), so a seed must fit in one.
SEED_LIMIT = 2**63


def _check_seed(key: str, value: Any) -> None:
    """``value`` is a seed: an integer with ``0 ≤ value < 2^63`` (see :data:`SEED_LIMIT`)."""
    _check_positive(key, value, allow_zero=True)
    if value >= SEED_LIMIT:
        raise ConfigError(key, value, "must be below 2^63 (a seed is an integer 0 ≤ seed < 2^63: it is stored as a "
                                      "signed 64-bit integer); pick a smaller seed")


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------

PRECISIONS = ("fp32", "tf32", "bf16")
RECEPTIVE_FIELD_SPACES = ("image", "logit")  # what rgflow.receptive differentiates the generator into


@dataclass(frozen=True)
class ModelConfig:
    """Structure of an RG-Flow (spec §1–§4) plus execution options.

    ``nlayers`` holds the number of coupling layers per RG level, one entry per level
    (data→latent order, finest first) or a single entry used for every level. Each level's entry
    is used for both of its sub-layers (disentangler and decimator).
    """

    preset: str = "custom"
    channels: int = 3
    size: int = 32
    kernel: int = 4
    nlayers: tuple[int, ...] = (8, 6, 4, 2)
    nhidden: int = 512
    nmlp: int = 2
    nresblocks: int = 4
    checkpointing: bool = True
    precision: str = "fp32"
    compile: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "nlayers", tuple(self.nlayers))
        for key in ("channels", "kernel", "nhidden", "nmlp", "nresblocks"):
            _check_positive(f"model.{key}", getattr(self, key))
        if self.kernel % 2:
            raise ConfigError("model.kernel", self.kernel, "must be even (the decimator offset is kernel·2^h/2)")
        _check_positive("model.size", self.size)
        ratio = self.size / self.kernel
        if ratio < 1 or ratio != int(ratio) or int(ratio) & (int(ratio) - 1):
            raise ConfigError("model.size", self.size, f"must be kernel·2^k for an integer k ≥ 0 (kernel={self.kernel})")
        if not self.nlayers or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in self.nlayers):
            raise ConfigError("model.nlayers", list(self.nlayers), "must be positive integers")
        if len(self.nlayers) not in (1, self.levels):
            raise ConfigError(
                "model.nlayers", list(self.nlayers),
                f"must have one entry per level ({self.levels} for size {self.size}, kernel {self.kernel}) or one entry for all",
            )
        _check_choice("model.precision", self.precision, PRECISIONS)
        for key in ("checkpointing", "compile"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"model.{key}", getattr(self, key), "must be true or false")

    @property
    def levels(self) -> int:
        """Number of RG levels H = log2(L/m) + 1."""
        return int(math.log2(self.size // self.kernel)) + 1

    @property
    def couplings_per_sublayer(self) -> tuple[int, ...]:
        """Coupling layers of each of the 2·H sub-layers, data→latent order."""
        per_level = self.nlayers * self.levels if len(self.nlayers) == 1 else self.nlayers
        return tuple(n for n in per_level for _ in range(2))

    @property
    def patch_dim(self) -> int:
        """C·m², the length of a flattened patch."""
        return self.channels * self.kernel**2

    @property
    def dims(self) -> int:
        """D = C·L·L, the dimension of an image and of its latent."""
        return self.channels * self.size**2


MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # The authors' CelebA 32×32 model: 100,647,680 parameters.
    "celeba32": dict(nlayers=(8, 6, 4, 2)),
    # The authors' MSDS model: 80,518,144 parameters.
    "msds": dict(nlayers=(4,)),
    # A small model with the full 32×32 pyramid, for CPU tests and demos.
    "tiny": dict(nlayers=(1,), nhidden=32, nresblocks=1),
}


def model_preset(name: str, **overrides: Any) -> ModelConfig:
    """The named preset with ``overrides`` applied on top."""
    if name not in MODEL_PRESETS:
        raise ConfigError("model.preset", name, f"must be one of {', '.join(map(repr, MODEL_PRESETS))}")
    return ModelConfig(preset=name, **{**MODEL_PRESETS[name], **overrides})


# ----------------------------------------------------------------------------------------------
# Prior
# ----------------------------------------------------------------------------------------------

PRIOR_KINDS = ("laplace", "gaussian")
LAPLACE_SCALES = ("reference", "seed")


@dataclass(frozen=True)
class PriorConfig:
    """Factorised prior over all latent dims (spec §5).

    ``temperature`` multiplies the standard deviation during training. ``laplace_scale`` is
    ``reference`` (scale T/√2, variance T²) or ``seed`` (scale T, variance 2T², the 2025
    reproduction's convention).
    """

    kind: str = "laplace"
    temperature: float = 1.0
    laplace_scale: str = "reference"

    def __post_init__(self) -> None:
        _check_choice("prior.kind", self.kind, PRIOR_KINDS)
        _check_positive("prior.temperature", self.temperature, integer=False)
        _check_choice("prior.laplace_scale", self.laplace_scale, LAPLACE_SCALES)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

DATASETS = ("msds1", "msds2", "celeba")
INTERPOLATIONS = ("bicubic", "bilinear")
#: (channels, image size) of each data set's images: MSDS is rendered at 3×32×32
#: (``rgflow.data.msds``), CelebA cropped and resized to 3×32×32 (``rgflow.data.celeba.SIZE``).
DATA_SHAPES: dict[str, tuple[int, int]] = {"msds1": (3, 32), "msds2": (3, 32), "celeba": (3, 32)}


@dataclass(frozen=True)
class DataConfig:
    """Which images to train and evaluate on (spec §9).

    ``seed`` is the generation seed of MSDS (not the run seed). ``train_size``/``valid_size``/
    ``test_size`` take the first N images of each split (``None``: all). MSDS has no validation
    split of its own: the last ``msds_valid_holdout`` of its 90,000 training images are held out
    as validation. ``hflip`` (``None``: on for CelebA, off for MSDS) flips training batches with
    p = 0.5. ``celeba_dir`` (or env ``RGFLOW_CELEBA_DIR``) is the folder holding
    ``img_align_celeba/`` and ``list_eval_partition.txt``.
    """

    name: str = "msds1"
    root: str = "data"
    seed: int = 0
    train_size: int | None = None
    valid_size: int | None = None
    test_size: int | None = None
    msds_valid_holdout: int = 5000
    hflip: bool | None = None
    celeba_dir: str | None = None
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        _check_choice("data.name", self.name, DATASETS)
        _check_choice("data.interpolation", self.interpolation, INTERPOLATIONS)
        _check_seed("data.seed", self.seed)
        _check_positive("data.msds_valid_holdout", self.msds_valid_holdout)
        for key in ("train_size", "valid_size", "test_size"):
            if getattr(self, key) is not None:
                _check_positive(f"data.{key}", getattr(self, key))

    @property
    def flip_train(self) -> bool:
        return self.name == "celeba" if self.hflip is None else self.hflip


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------

LR_SCALINGS = ("none", "linear", "sqrt")
LR_SCHEDULES = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and the training loop's cadence. Defaults are the reference recipe (spec §7).

    The effective learning rate is ``lr`` scaled by ``batch_size / reference_batch`` according to
    ``lr_scaling`` (``none``, ``linear`` or ``sqrt``): the peak LR, reached after ``warmup_steps``
    optimizer steps of linear warm-up; then ``lr_schedule`` holds it (``constant``) or decays it
    (``cosine``, ``linear``) over the remaining steps to ``min_lr_ratio`` × peak at the last step
    (:func:`rgflow.train.lr_at`). Training stops after ``epochs`` epochs or ``steps`` optimizer
    steps, whichever comes first (``steps: null`` means no step cap): that last step ends the decay.
    Validation runs every ``val_every_epochs`` epochs or, when ``val_every_images`` (images) is
    set, on a sample clock instead, at the first step whose images seen (step × ``batch_size``)
    reach each multiple of it (:func:`rgflow.train.validation_due`). ``noise_scale_ema_steps`` is
    the time constant, in optimizer steps, of the moving average of the logged gradient noise scale
    (:mod:`rgflow.noise_scale`); it does not affect training.
    """

    batch_size: int = 64
    epochs: int = 500
    steps: int | None = None
    lr: float = 1e-3
    weight_decay: float = 5e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad_norm: float = 1.0
    lr_scaling: str = "none"
    reference_batch: int = 64
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    min_lr_ratio: float = 0.0
    log_every: int = 50
    val_every_epochs: int = 1
    val_every_images: int | None = None
    val_draws: int = 4
    sample_every_epochs: int = 5
    sample_temperatures: tuple[float, ...] = (0.5, 0.75, 1.0)
    sample_count: int = 64
    checkpoint_minutes: float = 10.0
    keep_last: int = 2
    noise_scale_ema_steps: int = 500

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        object.__setattr__(self, "sample_temperatures", tuple(self.sample_temperatures))
        for key in ("batch_size", "epochs", "reference_batch", "log_every", "val_every_epochs",
                    "val_draws", "sample_every_epochs", "sample_count", "keep_last", "noise_scale_ema_steps"):
            _check_positive(f"train.{key}", getattr(self, key))
        for key in ("steps", "val_every_images"):
            if getattr(self, key) is not None:
                _check_positive(f"train.{key}", getattr(self, key))
        _check_positive("train.warmup_steps", self.warmup_steps, allow_zero=True)
        _check_choice("train.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        ratio = self.min_lr_ratio
        if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 <= ratio <= 1:
            raise ConfigError("train.min_lr_ratio", ratio, "must be a number in [0, 1] (the final LR as a fraction "
                                                           "of the peak LR)")
        for key in ("lr", "eps", "clip_grad_norm", "checkpoint_minutes"):
            _check_positive(f"train.{key}", getattr(self, key), integer=False)
        _check_positive("train.weight_decay", self.weight_decay, allow_zero=True, integer=False)
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas):
            raise ConfigError("train.betas", list(self.betas), "must be two numbers in [0, 1)")
        _check_choice("train.lr_scaling", self.lr_scaling, LR_SCALINGS)
        for t in self.sample_temperatures:
            _check_positive("train.sample_temperatures", t, integer=False)

    @property
    def effective_lr(self) -> float:
        """``lr`` after the batch-size scaling rule (before warm-up)."""
        ratio = self.batch_size / self.reference_batch
        return self.lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[self.lr_scaling]


def check_model_fits_data(model: ModelConfig, data: DataConfig) -> None:
    """``model.channels`` and ``model.size`` are those of ``data``'s images (:data:`DATA_SHAPES`);
    otherwise the flow would only fail at its first batch."""
    channels, size = DATA_SHAPES[data.name]
    shape = f"data.name={data.name!r} has {channels}×{size}×{size} images (channels×height×width)"
    if model.channels != channels:
        raise ConfigError("model.channels", model.channels, f"must be {channels}: {shape}; set model.channels={channels}")
    if model.size != size:
        raise ConfigError("model.size", model.size, f"must be {size}: {shape}; set model.size={size}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-serialisable dict of a config dataclass (tuples become lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value

    return plain(cfg)


__all__ = [
    "ConfigError", "ModelConfig", "MODEL_PRESETS", "model_preset", "PriorConfig", "DataConfig",
    "TrainConfig", "to_dict", "DATA_SHAPES", "SEED_LIMIT", "check_model_fits_data",
]
