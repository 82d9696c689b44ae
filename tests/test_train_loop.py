"""The training loop in-process on CPU: it learns, reports the contract's metrics, checkpoints,
stops on request and on non-finite values, and resumes bitwise."""
from __future__ import annotations

import math

import pytest
import torch

from rgflow.checkpoint import load_checkpoint, load_latest, step_checkpoints
from rgflow.config import PriorConfig, TrainConfig, model_preset
from rgflow.data import EpochBatcher
from rgflow.data.msds import generate
from rgflow.device import configure_runtime, seed_everything
from rgflow.model import RGFlowModel
from rgflow.train import (Interrupted, NonFiniteError, TrainHooks, lr_at, total_steps, train, validation_bpd,
                          validation_due)

TRAIN_KEYS = {"train_bpd", "grad_norm", "lr", "images_per_s", "samples_seen", "wall_s", "epoch",
              "noise_grad_sq", "noise_trace", "noise_scale_raw", "noise_scale",
              "noise_grad_sq_adam", "noise_trace_adam", "noise_scale_adam_raw", "noise_scale_adam"}
TIMING_KEYS = {"images_per_s", "wall_s"}
N_TRAIN, PER_EPOCH = 128, 8  # batch 16
CFG = TrainConfig(batch_size=16, epochs=2, lr=2e-3, weight_decay=5e-5, log_every=4, val_every_epochs=1, val_draws=3,
                  sample_every_epochs=2, sample_temperatures=(0.5, 1.0), sample_count=4, checkpoint_minutes=60.0,
                  keep_last=2, warmup_steps=3)


@pytest.fixture(scope="module")
def images():
    imgs, _ = generate("msds1", 0, "train", N_TRAIN + 48, workers=1)
    return torch.from_numpy(imgs)


class Recorder(TrainHooks):
    """Collects what the loop reports; asks to stop from the ``stop_at_poll``-th ``should_stop`` call
    on (the loop polls once before every step and once before every validation batch)."""

    def __init__(self, stop_at_poll: int | None = None):
        self.metrics: list[tuple[int, dict]] = []
        self.artifacts: list[tuple[str, str]] = []
        self.checkpoints: list[tuple[str, int]] = []
        self.checkpoint_calls: list[tuple[str, int]] = []  # ("before" | "after", step), in order
        self.stop_at_poll = stop_at_poll
        self.polls = 0

    def on_metrics(self, step, metrics):
        self.metrics.append((step, dict(metrics)))

    def on_artifact(self, path, artifact_path):
        self.artifacts.append((path.name, artifact_path))

    def before_checkpoint(self, step):
        self.checkpoint_calls.append(("before", step))

    def on_checkpoint(self, path, step):
        self.checkpoints.append((path.name, step))
        self.checkpoint_calls.append(("after", step))

    def should_stop(self):
        self.polls += 1
        return "test stop" if self.stop_at_poll is not None and self.polls >= self.stop_at_poll else None

    def series(self, skip=TIMING_KEYS):
        return [(step, {k: v for k, v in m.items() if k not in skip}) for step, m in self.metrics]


def _run(images, run_dir, hooks, cfg=CFG, resume=None, model_seed=0):
    configure_runtime(deterministic=True, threads=1)
    seed_everything(model_seed)
    model = RGFlowModel(model_preset("tiny"), PriorConfig())
    batcher = EpochBatcher(images[:N_TRAIN], cfg.batch_size, 7, "cpu")
    valid = EpochBatcher(images[N_TRAIN:], cfg.batch_size, 7, "cpu", drop_last=False)
    try:
        result = train(model, batcher, valid, cfg, run_dir, hooks, seed=7, resume=resume, meta={"run_id": "r1"})
    finally:
        torch.use_deterministic_algorithms(False)
    return model, result


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory):
    """One uninterrupted run, shared by the tests that compare against it."""
    run_dir = tmp_path_factory.mktemp("reference")
    hooks = Recorder()
    model, result = _run(images, run_dir, hooks)
    return run_dir, hooks, model, result


def test_bpd_falls_and_metrics_follow_the_contract(images, reference):
    run_dir, hooks, model, result = reference
    assert result.step == 2 * PER_EPOCH and result.epoch == 2.0
    train_points = [(s, m) for s, m in hooks.metrics if "train_bpd" in m]
    assert [s for s, _ in train_points] == [4, 8, 12, 16]
    for step, m in train_points:
        assert set(m) == TRAIN_KEYS, step
        assert m["samples_seen"] == step * 16 and m["epoch"] == pytest.approx(step / PER_EPOCH)
        assert all(math.isfinite(v) for v in m.values())
        assert m["noise_scale"] > 0
        for s in ("", "_adam"):
            assert m[f"noise_scale{s}_raw"] == pytest.approx(m[f"noise_trace{s}"] / m[f"noise_grad_sq{s}"], rel=1e-12)
    first = train_points[0][1]  # the average of a single measurement is that measurement
    assert first["noise_scale"] == first["noise_scale_raw"]
    assert first["noise_scale_adam"] == first["noise_scale_adam_raw"]
    assert [m["lr"] for _, m in train_points] == [2e-3] * 4  # warm-up (3 steps) is over by step 4
    assert train_points[-1][1]["wall_s"] > train_points[0][1]["wall_s"] > 0
    first, last = train_points[0][1]["train_bpd"], train_points[-1][1]["train_bpd"]
    assert 8.0 < last < first - 0.05, (first, last)

    vals = [(s, m) for s, m in hooks.metrics if "val_bpd" in m]
    assert [(s, m["val_epoch"]) for s, m in vals] == [(8, 1.0), (16, 2.0)]
    assert vals[1][1]["val_bpd"] < vals[0][1]["val_bpd"]
    # the s.e. over the 48 images is far larger than the dequantisation noise (s.e. over 3 draws)
    assert all(0 < 20 * m["val_bpd_se_draws"] < m["val_bpd_se"] < 0.5 for _, m in vals)
    assert result.val_bpd_se == vals[1][1]["val_bpd_se"]
    assert result.val_bpd == vals[1][1]["val_bpd"] == result.best_val_bpd

    # The untrained model (the identity flow at init) is worse than the trained one on the same draws.
    configure_runtime(deterministic=True, threads=1)
    seed_everything(0)
    fresh = RGFlowModel(model_preset("tiny"), PriorConfig())
    valid = EpochBatcher(images[N_TRAIN:], 16, 7, "cpu", drop_last=False)
    held = validation_bpd(fresh, valid, 3, 16)
    assert held.mean > result.val_bpd + 0.05 and held.per_image.shape == (48,) and held.per_draw.shape == (3,)
    assert held.se_draws == pytest.approx(held.per_draw.std(ddof=1) / math.sqrt(3), rel=1e-9)
    assert held.se_images == pytest.approx(held.per_image.std(ddof=1) / math.sqrt(48), rel=1e-9)
    # the trained model's validation, recomputed from the last weights on the same noise
    again = validation_bpd(model, valid, 3, 16)
    assert again.mean == pytest.approx(result.val_bpd, rel=1e-9)
    assert again.se_images == pytest.approx(result.val_bpd_se, rel=1e-9)

    assert sorted(hooks.artifacts) == [("step-00000016_T0.5.png", "samples"), ("step-00000016_T1.png", "samples")]
    assert (run_dir / "samples" / "step-00000016_T1.png").stat().st_size > 100
    names = [p.name for p in step_checkpoints(run_dir / "checkpoints")]
    assert len(names) == 2 and names[0].startswith("step-00000016")
    path, state = load_latest(run_dir / "checkpoints")
    assert path == result.checkpoint and state["loop"]["finished"] and state["meta"] == {"run_id": "r1"}
    for key, value in model.state_dict().items():
        assert torch.equal(state["model"][key], value)
    assert load_checkpoint(result.best_checkpoint)["loop"]["val_bpd"] == result.best_val_bpd


def test_before_checkpoint_precedes_every_step_checkpoint(reference):
    """The caller makes its reports durable (the metric spool's fsync) before each checkpoint is written."""
    _, hooks, _, _ = reference
    steps = [s for _, s in hooks.checkpoints]
    assert steps and hooks.checkpoint_calls == [(when, s) for s in steps for when in ("before", "after")]


def test_warmup_is_linear():
    assert [lr_at(s, CFG, 16) for s in range(5)] == pytest.approx([2e-3 / 3, 4e-3 / 3, 2e-3, 2e-3, 2e-3])


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decay_runs_from_the_peak_after_warm_up_to_min_lr_ratio_at_the_last_step(schedule):
    cfg = TrainConfig(**{**CFG.__dict__, "lr_schedule": schedule, "min_lr_ratio": 0.1, "steps": 13})
    total = total_steps(cfg, PER_EPOCH)
    assert total == 13 and total_steps(CFG, PER_EPOCH) == 2 * PER_EPOCH  # the step cap, else epochs × batches
    lrs = [lr_at(s, cfg, total) for s in range(total)]
    assert lrs[:3] == pytest.approx([2e-3 / 3, 4e-3 / 3, 2e-3])  # warm-up to the peak at step 3
    assert lrs[-1] == pytest.approx(2e-4, rel=1e-12)  # the last step trains at 0.1 × peak
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:]))  # strictly decreasing after warm-up
    middle = lrs[2 + 5]  # half-way through the 10 decay steps
    assert middle == pytest.approx(2e-4 + 1.8e-3 / 2)  # both shapes pass the mid-point


def test_sample_clock_validates_where_images_seen_cross_each_multiple():
    """At batch B, every K images: steps ⌈n·K/B⌉, the same images seen whatever the batch size."""
    for batch, expected in ((5, [8, 16]), (16, [3, 5, 8, 10, 13, 15]), (32, [2, 3, 4, 5, 7, 8, 9, 10, 12, 13, 14, 15]),
                            (64, list(range(1, 17)))):
        cfg = TrainConfig(**{**CFG.__dict__, "batch_size": batch, "val_every_images": 40})
        due = [s for s in range(17) if validation_due(s, cfg)]
        assert due == expected == sorted({math.ceil(n * 40 / batch) for n in range(1, 100)} & set(range(1, 17)))
    assert not any(validation_due(s, CFG) for s in range(17))  # default: epoch validation only


@pytest.mark.parametrize("stop_step", [5, PER_EPOCH])
def test_stop_request_checkpoints_and_resume_is_bitwise(images, reference, tmp_path, stop_step):
    """Stop mid-epoch (step 5) and during the first epoch-end validation; resume in a fresh
    model object: identical weights and metric series."""
    _, ref_hooks, ref_model, ref_result = reference

    # Poll k + 1 comes before step k + 1; polls PER_EPOCH + 1… are the first validation's batches.
    first = Recorder(stop_at_poll=stop_step + 1 if stop_step != PER_EPOCH else PER_EPOCH + 2)
    with pytest.raises(Interrupted) as info:
        _run(images, tmp_path, first)
    assert info.value.reason == "test stop" and info.value.step == stop_step
    path, state = load_latest(tmp_path / "checkpoints")
    assert path == info.value.checkpoint and state["loop"]["step"] == stop_step
    if stop_step == PER_EPOCH:  # cut inside validation: the epoch's batches are done, its end work is not
        assert (state["loop"]["epoch"], state["loop"]["index"]) == (0, PER_EPOCH)
        assert not any("val_bpd" in m for _, m in first.metrics)

    second = Recorder()
    model, result = _run(images, tmp_path, second, resume=(path, state), model_seed=123)
    assert result.step == ref_result.step and result.val_bpd == ref_result.val_bpd
    for key, value in ref_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    combined = first.series() + second.series()
    assert combined == ref_hooks.series()


CLOCK = TrainConfig(**{**CFG.__dict__, "lr_schedule": "cosine", "min_lr_ratio": 0.1, "val_every_images": 40})
CLOCK_VAL_STEPS = [3, 5, 8, 10, 13, 15, 16]  # ⌈40n/16⌉, then the final validation


@pytest.fixture(scope="module")
def clock_reference(images, tmp_path_factory):
    """An uninterrupted run with a cosine schedule and validation every 40 images."""
    run_dir = tmp_path_factory.mktemp("clock")
    hooks = Recorder()
    model, result = _run(images, run_dir, hooks, cfg=CLOCK)
    return run_dir, hooks, model, result


def test_sample_clock_validation_and_cosine_lr_in_the_loop(clock_reference):
    run_dir, hooks, _, result = clock_reference
    vals = [(s, m) for s, m in hooks.metrics if "val_bpd" in m]
    assert [s for s, _ in vals] == CLOCK_VAL_STEPS and result.step == 16
    assert [m["val_epoch"] for _, m in vals] == pytest.approx([s / PER_EPOCH for s in CLOCK_VAL_STEPS])
    lrs = {s: m["lr"] for s, m in hooks.metrics if "lr" in m}
    assert lrs == {s: lr_at(s - 1, CLOCK, 16) for s in (4, 8, 12, 16)} and lrs[16] == pytest.approx(2e-4, rel=1e-12)
    best = load_checkpoint(run_dir / "checkpoints" / "best.ckpt")["loop"]
    assert best["val_bpd"] == result.best_val_bpd == min(m["val_bpd"] for _, m in vals)
    assert best["last_val_step"] in CLOCK_VAL_STEPS


@pytest.mark.parametrize("stop_poll, stop_step", [
    (25, 6),   # before step 7, between validations (polls: 1 per step, 9 per validation)
    (16, 5),   # inside the sample-clock validation of step 5, mid-epoch
    (28, 8),   # inside the one of step 8, the last step of the epoch
])
def test_resume_mid_schedule_with_sample_clock_is_bitwise(images, clock_reference, tmp_path, stop_poll, stop_step):
    """Interrupted at step k (checkpoint), resumed in a fresh model object: the same weights,
    optimizer state, validations (steps, values, best checkpoint) and LRs as the uninterrupted run."""
    _, ref_hooks, ref_model, ref_result = clock_reference
    first = Recorder(stop_at_poll=stop_poll)
    with pytest.raises(Interrupted) as info:
        _run(images, tmp_path, first, cfg=CLOCK)
    assert info.value.step == stop_step
    resume = load_latest(tmp_path / "checkpoints")
    assert resume[1]["lr_schedule"]["total_steps"] == 16
    second = Recorder()
    model, result = _run(images, tmp_path, second, cfg=CLOCK, resume=resume, model_seed=123)
    assert (result.step, result.val_bpd, result.best_val_bpd) == (16, ref_result.val_bpd, ref_result.best_val_bpd)
    for key, value in ref_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    ref_opt, opt = (load_checkpoint(r.checkpoint)["optimizer"] for r in (ref_result, result))
    assert opt["param_groups"] == ref_opt["param_groups"]
    for index, slots in ref_opt["state"].items():
        for name, value in slots.items():
            assert torch.equal(opt["state"][index][name], value), (index, name)
    assert first.series() + second.series() == ref_hooks.series()


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(images, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = RGFlowModel.nll_per_dim

    def poisoned(self, x):
        calls["n"] += 1
        loss = original(self, x)
        return loss * float("nan") if calls["n"] == 11 else loss  # 1 call per step, 2 on log steps: step 9

    monkeypatch.setattr(RGFlowModel, "nll_per_dim", poisoned)
    hooks = Recorder()
    with pytest.raises(NonFiniteError) as info:
        _run(images, tmp_path, hooks)
    assert info.value.step == 9 and "nan" in info.value.reason
    assert str(info.value).startswith("step 9:")
    path, state = load_latest(tmp_path / "checkpoints")
    assert state["loop"]["step"] == 8 and not state["loop"]["finished"]  # the epoch-end checkpoint
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert max(s for s, _ in hooks.metrics) == 8


def test_step_cap_and_timed_checkpoints(images, tmp_path):
    cfg = TrainConfig(**{**CFG.__dict__, "steps": 6, "checkpoint_minutes": 1e-6, "keep_last": 3})
    hooks = Recorder()
    _, result = _run(images, tmp_path, hooks, cfg=cfg)
    assert result.step == 6 and result.epoch == pytest.approx(6 / PER_EPOCH)
    assert [s for _, s in hooks.checkpoints][:6] == [1, 2, 3, 4, 5, 6]  # one per step, then the final one
    vals = [(s, m) for s, m in hooks.metrics if "val_bpd" in m]
    assert [(s, m["val_epoch"]) for s, m in vals] == [(6, pytest.approx(6 / PER_EPOCH))]  # a final validation
    assert len(step_checkpoints(tmp_path / "checkpoints")) == 3
    again = Recorder()
    _, same = _run(images, tmp_path, again, cfg=cfg, resume=load_latest(tmp_path / "checkpoints"))
    assert same.step == 6 and again.metrics == [] and again.checkpoints == []  # finished: nothing to do


def test_resume_skips_a_truncated_newest_checkpoint_and_still_matches(images, reference, tmp_path):
    """Checkpoints after every step; stop after step 5, truncate step 5's file (a crash mid-write
    of the storage): resuming warns, continues from step 4 and still ends bitwise identical."""
    from rgflow.checkpoint import CheckpointWarning

    _, ref_hooks, ref_model, _ = reference
    cfg = TrainConfig(**{**CFG.__dict__, "checkpoint_minutes": 1e-9})
    first = Recorder(stop_at_poll=6)
    with pytest.raises(Interrupted):
        _run(images, tmp_path, first, cfg=cfg)
    newest = step_checkpoints(tmp_path / "checkpoints")[0]
    assert newest.name == "step-00000005.ckpt"
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.warns(CheckpointWarning, match="step-00000005.ckpt"):
        resume = load_latest(tmp_path / "checkpoints")
    assert resume[1]["loop"]["step"] == 4
    second = Recorder()
    model, _ = _run(images, tmp_path, second, cfg=cfg, resume=resume, model_seed=99)
    for key, value in ref_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert [p for p in first.series() if p[0] <= 4] + second.series() == ref_hooks.series()
