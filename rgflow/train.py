"""The training loop: dequantise → log-likelihood → loss (nats/dim) → backward → clip → AdamW.

:func:`train` runs one trial from scratch or from a checkpoint and reports through a
:class:`TrainHooks` object (metrics, artifacts, checkpoints, stop requests); it never imports a
tracking library. Metric names and units (``step`` = optimizer steps completed):

every ``train.log_every`` steps
    ``train_bpd`` (bits/dim, mean of the per-step training-batch BPD over the steps since the last
    log), ``grad_norm`` (global L2 norm of the gradient of the loss in nats/dim, before clipping, at
    this step), ``lr``, ``images_per_s`` (training images per second of step time since the last
    log), ``samples_seen`` (step × batch size), ``wall_s`` (seconds of wall time in the loop,
    summed over attempts: a resumed run continues from the value in its checkpoint), ``epoch``
    (epochs completed, fractional); the gradient noise scale of this step's batch
    (:mod:`rgflow.noise_scale`, measured before clipping): ``noise_grad_sq`` and ``noise_trace``
    (the unbiased single estimates of |G|² and tr(Σ), (nats/dim)² as squared parameter-space norms
    of the loss gradient; |G|² may be negative), ``noise_scale_raw`` (their ratio, B_simple in
    images) and ``noise_scale`` (ratio of their moving averages, time constant
    ``train.noise_scale_ema_steps`` steps), and the same four in Adam's preconditioned metric
    ``noise_grad_sq_adam``, ``noise_trace_adam`` (dimensionless), ``noise_scale_adam_raw``,
    ``noise_scale_adam`` (images; not at the first step, before the optimizer has state). A ratio
    is omitted while undefined (its |G|² estimate not positive); the B_simple of a run is
    Σ ``noise_trace`` / Σ ``noise_grad_sq`` over a late window;
every ``train.val_every_epochs`` epochs (or ``train.val_every_images`` images: :func:`validation_due`), and at the end
    ``val_bpd`` (bits/dim on the N held-out images, mean over images and ``train.val_draws``
    dequantisation draws), ``val_bpd_se`` (its standard error over images: sample s.d. over the
    images of the per-image BPD averaged over the draws, / √N — the precision of ``val_bpd`` given
    the finite held-out set; omitted for N = 1), ``val_bpd_se_draws`` (standard error over draws:
    sample s.d. of the per-draw means / √draws — the dequantisation Monte-Carlo noise only, usually
    orders of magnitude smaller; omitted with one draw), ``val_epoch`` (epochs completed). The noise
    of image ``i`` in draw ``d`` depends on (the validation batcher's seed, ``d``, ``i``) only
    (:meth:`~rgflow.data.batching.EpochBatcher.eval_noise`): every validation sees the same noise
    (common random numbers), so successive values differ only through the weights, and runs whose
    validation batchers share a seed are paired image by image.

Sample grids at ``train.sample_temperatures`` are written every ``train.sample_every_epochs`` epochs
and at the end to ``run_dir/samples/step-<step>_T<t>.png`` (same latent noise every time).

Checkpoints (``run_dir/checkpoints``, :mod:`rgflow.checkpoint`): every ``train.checkpoint_minutes``,
at every epoch end, on a stop request and at the end (``loop.finished``), each after
``hooks.before_checkpoint``; ``best.ckpt`` whenever ``val_bpd`` improves. A checkpoint holds everything the loop's future depends on, so resuming
reproduces the uninterrupted run bitwise under deterministic settings (fixed threads,
``torch.use_deterministic_algorithms``): the batch order and dequantisation noise come from
``(seed, epoch, index)`` (:class:`rgflow.data.batching.EpochBatcher`), the learning rate and the
sample-clock validations are functions of the step (state: the step; a validation a stop request
cut short is run on resume), and the partial sums of the current log window are saved.
Only the timing metrics (``wall_s``, ``images_per_s``) differ between a resumed and an
uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torchvision.utils import save_image

from rgflow.checkpoint import CheckpointManager, capture_rng_state, restore_rng_state
from rgflow.config import TrainConfig
from rgflow.data.batching import Batch, EpochBatcher, derive_seed
from rgflow.logit import dequantize
from rgflow.model import RGFlowModel
from rgflow.noise_scale import GradientNorms, NoiseScaleEstimator, adam_weights, backward_two_halves

_LOG2 = math.log(2.0)
_SAMPLE_STREAM = 1000  # derive_seed tag of the sample-grid latents (distinct from the data streams)
CHECKPOINT_FORMAT = 2  # 2: noise-scale estimators keyed by optimizer steps, plain and Adam


class NonFiniteError(RuntimeError):
    """The loss or the gradient norm became NaN/inf at optimizer step ``step`` (the step being
    attempted; the weights are those after ``step − 1`` and were not updated)."""

    def __init__(self, step: int, reason: str):
        self.step, self.reason = step, reason
        super().__init__(f"step {step}: {reason}")


class Interrupted(Exception):
    """Training stopped on request after writing the checkpoint ``checkpoint`` at ``step``."""

    def __init__(self, reason: str, step: int, checkpoint: Path):
        self.reason, self.step, self.checkpoint = reason, step, checkpoint
        super().__init__(f"interrupted at step {step} ({reason}); checkpoint {checkpoint}")


class TrainHooks:
    """What the loop reports to, and asks, its caller. The defaults do nothing; subclass it."""

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Scalar metrics at optimizer step ``step`` (names and units: module docstring)."""

    def on_artifact(self, path: Path, artifact_path: str) -> None:
        """A file written under the run folder, to be stored under ``artifact_path``."""

    def before_checkpoint(self, step: int) -> None:
        """A step checkpoint at ``step`` is about to be written: make what was reported so far
        durable (e.g. fsync the metric spool), so that no crash leaves a checkpoint newer than the
        reports — a resumed run repeats only the steps after its checkpoint."""

    def on_checkpoint(self, path: Path, step: int) -> None:
        """A checkpoint was written (atomically) at ``step``."""

    def should_stop(self) -> str | None:
        """A reason to stop (checked before every step), or ``None`` to go on."""
        return None


@dataclass
class TrainResult:
    """How a call to :func:`train` ended: optimizer steps, epochs completed (fractional), the last
    validation BPD and its standard error over images, the best validation BPD (bits/dim), the
    final and the best checkpoint."""

    step: int
    epoch: float
    val_bpd: float | None
    val_bpd_se: float | None
    best_val_bpd: float | None
    checkpoint: Path
    best_checkpoint: Path | None


@dataclass
class LoopState:
    """The loop's position and running sums; saved in every checkpoint under ``loop``.

    ``epoch``/``index``: the next batch to train (``index == batches_per_epoch``: the epoch's
    batches are done, its end-of-epoch work is not). ``wall_s``: loop wall time up to the
    checkpoint. ``window_*``: sums over the steps since the last log.
    """

    step: int = 0
    epoch: int = 0
    index: int = 0
    wall_s: float = 0.0
    window_loss: float = 0.0
    window_steps: int = 0
    best_val_bpd: float = math.inf
    val_bpd: float = math.nan
    val_bpd_se: float = math.nan
    last_val_step: int = -1
    last_sample_step: int = -1
    finished: bool = False


def total_steps(cfg: TrainConfig, batches_per_epoch: int) -> int:
    """Optimizer steps of the whole run: ``cfg.epochs`` × ``batches_per_epoch``, at most ``cfg.steps``."""
    steps = cfg.epochs * batches_per_epoch
    return steps if cfg.steps is None else min(steps, cfg.steps)


def lr_at(step: int, cfg: TrainConfig, total: int) -> float:
    """Learning rate of optimizer step n = ``step + 1`` ≤ ``total`` (the run's steps), a pure function
    of the step. With W = ``cfg.warmup_steps`` and peak = ``cfg.effective_lr``: peak · n / W for
    n ≤ W (linear warm-up); then ``constant``: peak; ``cosine`` / ``linear``: low + (peak − low) · f
    with low = ``cfg.min_lr_ratio`` · peak, p = (n − W) / (total − W) and f = (1 + cos πp) / 2 or
    1 − p, so that the last step (n = total) trains at low."""
    peak, n = cfg.effective_lr, step + 1
    if n <= cfg.warmup_steps:
        return peak * n / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return peak
    p = (n - cfg.warmup_steps) / (total - cfg.warmup_steps)
    low = cfg.min_lr_ratio * peak
    return low + (peak - low) * ((1 + math.cos(math.pi * p)) / 2 if cfg.lr_schedule == "cosine" else 1 - p)


def validation_due(step: int, cfg: TrainConfig) -> bool:
    """Whether the sample clock validates after optimizer step ``step``: K = ``cfg.val_every_images``
    is set and the images seen, step × B (B = ``cfg.batch_size``), reached a multiple of K at this
    step. At batch B the validation steps are ⌈n·K/B⌉, n = 1, 2, … (once where a step passes several)."""
    k, b = cfg.val_every_images, cfg.batch_size
    return k is not None and step > 0 and step * b // k > (step - 1) * b // k


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over all parameters, weight decay on all of them (as the reference does), as one
    fused kernel over all parameters (CPU and CUDA). Its LR is set before every step (:func:`lr_at`)."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.effective_lr, betas=cfg.betas, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, fused=True)


@dataclass(frozen=True)
class HeldOutBpd:
    """BPD (bits/dim) of N held-out images over ``draws`` dequantisation draws.

    ``per_image``: float64 ``(N,)`` in image order, each image's BPD averaged over the draws;
    ``per_draw``: float64 ``(draws,)``, each draw's mean over the images; ``mean``: the mean over
    images and draws. ``se_images``: sample s.d. of ``per_image`` / √N, the standard error of
    ``mean`` as an estimate of the expected BPD given the finite set of images (NaN for N = 1);
    ``se_draws``: sample s.d. of ``per_draw`` / √draws, the Monte-Carlo noise of the
    dequantisation only (NaN for one draw).
    """

    mean: float
    se_images: float
    se_draws: float
    per_image: np.ndarray
    per_draw: np.ndarray


def _standard_error(values: np.ndarray) -> float:
    """Sample s.d. (ddof 1) / √n of ``values`` ``(n,)``; NaN for n = 1."""
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan


@torch.no_grad()
def validation_bpd(model: RGFlowModel, batcher: EpochBatcher, draws: int, batch_size: int,
                   should_stop: Callable[[], str | None] | None = None) -> HeldOutBpd | None:
    """BPD (bits/dim) of ``batcher``'s images, image by image, over ``draws`` dequantisation draws.

    Draw ``d`` dequantises image ``i`` with :meth:`EpochBatcher.eval_noise` noise ``(seed, d, i)``,
    whatever ``batch_size`` (images per forward pass). Returns a :class:`HeldOutBpd`, or ``None``
    if ``should_stop()`` asks to stop part-way (checked before every batch).
    """
    was_training = model.training
    model.eval()
    try:
        rows = []
        for draw in range(draws):
            row = torch.empty(len(batcher), dtype=torch.float64, device=batcher.device)
            for batch in batcher.eval_batches(batch_size, draw=draw):
                if should_stop is not None and should_stop():
                    return None
                row[batch.start:batch.start + len(batch.x)] = model.bpd(dequantize(batch.x, noise=batch.noise))
            rows.append(row)
    finally:
        model.train(was_training)
    table = torch.stack(rows).cpu().numpy()  # (draws, N)
    per_image, per_draw = table.mean(0), table.mean(1)
    return HeldOutBpd(float(per_image.mean()), _standard_error(per_image), _standard_error(per_draw),
                      per_image, per_draw)


class _Trainer:
    def __init__(self, model: RGFlowModel, batcher: EpochBatcher, valid: EpochBatcher, cfg: TrainConfig,
                 run_dir: Path, hooks: TrainHooks, seed: int, meta: dict[str, Any]):
        self.model, self.batcher, self.valid, self.cfg = model, batcher, valid, cfg
        self.run_dir, self.hooks, self.seed, self.meta = run_dir, hooks, seed, meta
        self.device = next(model.parameters()).device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(model, cfg)
        self.total_steps = total_steps(cfg, batcher.batches_per_epoch)
        self.noise = NoiseScaleEstimator(cfg.noise_scale_ema_steps)
        self.noise_adam = NoiseScaleEstimator(cfg.noise_scale_ema_steps)
        self.state = LoopState()
        self.checkpoints = CheckpointManager(run_dir / "checkpoints", cfg.keep_last)
        self.samples_dir = run_dir / "samples"
        self.saved_loop: tuple | None = None  # the loop state of the newest checkpoint (minus wall time)
        self.stop_reason: str | None = None
        self.last_checkpoint: Path | None = None
        self.best_checkpoint: Path | None = None
        self.started = time.monotonic()
        self.last_save_time = self.started
        self.window_time = 0.0
        self.window_images = 0

    # -- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        loop = dataclasses.asdict(self.state)
        loop["wall_s"] = self.wall_s()
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": {"effective_lr": self.cfg.effective_lr, "warmup_steps": self.cfg.warmup_steps,
                            "schedule": self.cfg.lr_schedule, "min_lr_ratio": self.cfg.min_lr_ratio,
                            "total_steps": self.total_steps},
            "rng": capture_rng_state(),
            "noise_scale": self.noise.state_dict(),
            "noise_scale_adam": self.noise_adam.state_dict(),
            "loop": loop,
            "meta": self.meta,
        }

    def load_state_dict(self, path: Path, state: dict[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: checkpoint format {state.get('format')!r} is not {CHECKPOINT_FORMAT}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        restore_rng_state(state["rng"])
        self.noise.load_state_dict(state["noise_scale"])
        self.noise_adam.load_state_dict(state["noise_scale_adam"])
        self.state = LoopState(**state["loop"])
        self.meta = {**state.get("meta", {}), **self.meta}
        self.last_checkpoint, self.saved_loop = path, self.loop_key()
        if self.checkpoints.best_path.exists():
            self.best_checkpoint = self.checkpoints.best_path

    def loop_key(self) -> tuple:
        return dataclasses.astuple(dataclasses.replace(self.state, wall_s=0.0))

    def save(self) -> Path:
        """Checkpoint now, unless the newest checkpoint already holds this exact loop state."""
        if self.loop_key() != self.saved_loop or self.last_checkpoint is None:
            self.hooks.before_checkpoint(self.state.step)
            self.last_checkpoint = self.checkpoints.save(self.state_dict(), self.state.step)
            self.saved_loop = self.loop_key()
            self.hooks.on_checkpoint(self.last_checkpoint, self.state.step)
        self.last_save_time = time.monotonic()
        return self.last_checkpoint

    def should_stop(self) -> str | None:
        if self.stop_reason is None:
            self.stop_reason = self.hooks.should_stop() or None
        return self.stop_reason

    def stop_if_asked(self) -> None:
        if self.should_stop():
            path = self.save()
            raise Interrupted(self.stop_reason, self.state.step, path)

    def wall_s(self) -> float:
        return self.state.wall_s + (time.monotonic() - self.started)

    # -- one step -------------------------------------------------------------------------------

    def train_step(self, batch: Batch) -> None:
        st, cfg = self.state, self.cfg
        attempt = st.step + 1
        t0 = time.perf_counter()
        x = dequantize(batch.x, batch.generator)
        lr = lr_at(st.step, cfg, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        log_now = attempt % cfg.log_every == 0
        if log_now and len(x) >= 2:
            loss, norms, norms_adam = backward_two_halves(lambda sl: self.model.nll_per_dim(x[sl]), len(x),
                                                          self.params, adam_weights(self.optimizer, self.params))
        else:
            loss_t = self.model.nll_per_dim(x)
            loss = loss_t.item()
            if math.isfinite(loss):
                loss_t.backward()
            norms = norms_adam = None
        if not math.isfinite(loss):
            raise NonFiniteError(attempt, f"training loss is {loss} (nats/dim)")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_grad_norm).item()
        if not math.isfinite(grad_norm):
            raise NonFiniteError(attempt, f"gradient norm is {grad_norm} before clipping")
        self.optimizer.step()
        self.window_time += time.perf_counter() - t0
        self.window_images += len(x)
        st.step = attempt
        st.index = batch.index + 1
        st.window_loss += loss
        st.window_steps += 1
        if log_now:
            self.log_train(lr, grad_norm, norms, norms_adam)

    def log_train(self, lr: float, grad_norm: float, norms: GradientNorms | None,
                  norms_adam: GradientNorms | None) -> None:
        st = self.state
        metrics = {
            "train_bpd": st.window_loss / st.window_steps / _LOG2 + 8.0,
            "grad_norm": grad_norm,
            "lr": lr,
            "images_per_s": self.window_images / self.window_time if self.window_time > 0 else math.nan,
            "samples_seen": float(st.step * self.cfg.batch_size),
            "wall_s": self.wall_s(),
            "epoch": st.epoch + st.index / self.batcher.batches_per_epoch,
        }
        for estimator, measured, suffix in ((self.noise, norms, ""), (self.noise_adam, norms_adam, "_adam")):
            if measured is None:
                continue
            estimate = estimator.update(measured, st.step)
            for name, value in ((f"noise_grad_sq{suffix}", estimate.grad_sq),
                                (f"noise_trace{suffix}", estimate.trace),
                                (f"noise_scale{suffix}_raw", estimate.raw),
                                (f"noise_scale{suffix}", estimate.smoothed)):
                if math.isfinite(value):
                    metrics[name] = value
        st.window_loss, st.window_steps = 0.0, 0
        self.window_time, self.window_images = 0.0, 0
        self.hooks.on_metrics(st.step, metrics)

    # -- validation and samples ---------------------------------------------------------------------

    def validate(self) -> bool:
        """Validation BPD at the current step; ``False`` if a stop request cut it short."""
        st = self.state
        result = validation_bpd(self.model, self.valid, self.cfg.val_draws, self.cfg.batch_size, self.should_stop)
        if result is None:
            return False
        st.val_bpd, st.val_bpd_se = result.mean, result.se_images
        st.last_val_step = st.step
        metrics = {"val_bpd": st.val_bpd, "val_epoch": st.epoch + st.index / self.batcher.batches_per_epoch}
        for name, value in (("val_bpd_se", result.se_images), ("val_bpd_se_draws", result.se_draws)):
            if math.isfinite(value):
                metrics[name] = value
        self.hooks.on_metrics(st.step, metrics)
        if st.val_bpd < st.best_val_bpd:
            st.best_val_bpd = st.val_bpd
            self.best_checkpoint = self.checkpoints.save_best(self.state_dict())
        return True

    @torch.no_grad()
    def write_samples(self) -> None:
        st, cfg = self.state, self.cfg
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        nrow = math.ceil(math.sqrt(cfg.sample_count))
        for t in cfg.sample_temperatures:
            generator = torch.Generator(device=self.device).manual_seed(derive_seed(self.seed, _SAMPLE_STREAM))
            images = self.model.sample(cfg.sample_count, t, generator)
            path = self.samples_dir / f"step-{st.step:08d}_T{t:g}.png"
            save_image(images.float().cpu(), path, nrow=nrow)
            self.hooks.on_artifact(path, "samples")
        st.last_sample_step = st.step

    def end_of_period(self, validate: bool, sample: bool) -> None:
        """Validation and sample grids as asked; on a stop request: checkpoint and raise."""
        if validate and self.state.last_val_step != self.state.step and not self.validate():
            self.stop_if_asked()
        if sample and self.state.last_sample_step != self.state.step:
            self.write_samples()

    # -- the loop -------------------------------------------------------------------------------

    def done(self) -> bool:
        st, cfg = self.state, self.cfg
        return st.epoch >= cfg.epochs or (cfg.steps is not None and st.step >= cfg.steps)

    def run(self) -> TrainResult:
        st, cfg = self.state, self.cfg
        per_epoch = self.batcher.batches_per_epoch
        self.model.train()
        while not st.finished and not self.done():
            if validation_due(st.step, cfg):  # on resume: the one a stop request cut short (else done already)
                self.end_of_period(True, False)
            if st.index < per_epoch:
                for batch in self.batcher.batches(st.epoch, start=st.index):
                    self.stop_if_asked()
                    self.train_step(batch)
                    if validation_due(st.step, cfg):
                        self.end_of_period(True, False)
                    if time.monotonic() - self.last_save_time >= cfg.checkpoint_minutes * 60:
                        self.save()
                    if self.done():
                        break
            if st.index == per_epoch:
                epochs_done = st.epoch + 1
                by_epoch = cfg.val_every_images is None and epochs_done % cfg.val_every_epochs == 0
                self.end_of_period(by_epoch, epochs_done % cfg.sample_every_epochs == 0)
                st.epoch, st.index = epochs_done, 0
                self.save()
        if not st.finished:
            self.end_of_period(True, True)
            st.finished = True
            self.save()
        return TrainResult(
            step=st.step,
            epoch=st.epoch + st.index / per_epoch,
            val_bpd=st.val_bpd if math.isfinite(st.val_bpd) else None,
            val_bpd_se=st.val_bpd_se if math.isfinite(st.val_bpd_se) else None,
            best_val_bpd=st.best_val_bpd if math.isfinite(st.best_val_bpd) else None,
            checkpoint=self.last_checkpoint,
            best_checkpoint=self.best_checkpoint,
        )


def train(model: RGFlowModel, batcher: EpochBatcher, valid: EpochBatcher, cfg: TrainConfig, run_dir: str | Path,
          hooks: TrainHooks | None = None, *, seed: int, resume: tuple[Path, dict[str, Any]] | None = None,
          meta: dict[str, Any] | None = None) -> TrainResult:
    """Train ``model`` (already on its device, initialised from ``seed`` by the caller).

    ``batcher``: the training :class:`EpochBatcher` (its seed fixes the batch order and the
    dequantisation noise); ``valid``: an :class:`EpochBatcher` of the held-out images (only
    :meth:`~EpochBatcher.eval_batches` is used; its seed fixes the validation noise).
    ``run_dir``: the trial's folder, which receives ``checkpoints/`` and ``samples/``. ``seed``:
    the run seed (sample-grid latents). ``resume``:
    ``(path, state)`` of a checkpoint (as :func:`rgflow.checkpoint.load_latest` returns it) to
    continue from, ``None`` to start afresh; a finished checkpoint returns at once. ``meta``: plain
    data (str/number/list/dict) stored in every checkpoint under ``meta`` (e.g. the tracking run id
    and the resolved config); on resume it updates the checkpoint's own ``meta``.

    Returns a :class:`TrainResult`. Raises :class:`NonFiniteError` (no checkpoint is written for the
    failing step, earlier ones are kept) or :class:`Interrupted` (after a checkpoint) when
    ``hooks.should_stop()`` returns a reason.
    """
    trainer = _Trainer(model, batcher, valid, cfg, Path(run_dir), hooks or TrainHooks(), seed, dict(meta or {}))
    if resume is not None:
        trainer.load_state_dict(*resume)
    return trainer.run()


__all__ = [
    "CHECKPOINT_FORMAT", "HeldOutBpd", "Interrupted", "LoopState", "NonFiniteError", "TrainHooks", "TrainResult",
    "lr_at", "make_optimizer", "total_steps", "train", "validation_bpd", "validation_due",
]
