"""Atomic checkpoints: round trip, keep-last-K, corruption detection and fallback."""
from __future__ import annotations

import warnings

import pytest
import torch

from rgflow.checkpoint import (
    CheckpointManager, CheckpointWarning, InvalidCheckpoint, capture_rng_state, latest_checkpoint,
    load_checkpoint, load_latest, restore_rng_state, save_checkpoint, sidecar_path,
)


def _state(step: int) -> dict:
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return {
        "model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "position": [1, 7],
        "rng": capture_rng_state(), "best": float("inf"), "run_id": "abc", "config": {"train": {"betas": [0.9, 0.999]}},
    }


def test_round_trip_with_weights_only(tmp_path):
    state = _state(5)
    path = save_checkpoint(tmp_path / "x.ckpt", state)
    back = load_checkpoint(path)
    assert back["step"] == 5 and back["position"] == [1, 7] and back["run_id"] == "abc"
    assert back["best"] == float("inf")
    for key, value in state["model"].items():
        assert torch.equal(back["model"][key], value)
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


def test_rng_state_restores_the_stream():
    torch.manual_seed(3)
    saved = capture_rng_state()
    first = torch.rand(5)
    restore_rng_state(saved)
    assert torch.equal(torch.rand(5), first)


def test_keep_last_k_and_best(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (10, 20, 30, 40):
        manager.save(_state(step), step)
    manager.save_best(_state(20))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best.ckpt", "best.ckpt.sha256", "step-00000030.ckpt", "step-00000030.ckpt.sha256",
                     "step-00000040.ckpt", "step-00000040.ckpt.sha256"]
    path, state = manager.load_latest()
    assert path.name == "step-00000040.ckpt" and state["step"] == 40
    assert load_checkpoint(manager.best_path)["step"] == 20


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_sidecar", "empty"])
def test_damaged_newest_falls_back_to_previous_with_warning(tmp_path, damage):
    manager = CheckpointManager(tmp_path, keep_last=3)
    manager.save(_state(1), 1)
    newest = manager.save(_state(2), 2)
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # same size, one byte changed inside the tensor data
        i = len(data) // 2
        newest.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    elif damage == "no_sidecar":  # killed between the sidecar and the checkpoint renames of a re-save
        sidecar_path(newest).unlink()
    else:
        newest.write_bytes(b"")
    with pytest.raises(InvalidCheckpoint, match="step-00000002.ckpt"):
        load_checkpoint(newest)
    with pytest.warns(CheckpointWarning, match="step-00000002.ckpt"):
        path, state = load_latest(tmp_path)
    assert path.name == "step-00000001.ckpt" and state["step"] == 1


def test_valid_file_that_is_not_a_torch_file_is_rejected(tmp_path):
    path = tmp_path / "step-00000003.ckpt"
    save_checkpoint(path, _state(3))
    garbage = b"not a zip archive at all"
    path.write_bytes(garbage)
    import hashlib
    sidecar_path(path).write_text(f"{hashlib.sha256(garbage).hexdigest()} {len(garbage)}\n")
    with pytest.raises(InvalidCheckpoint, match="torch.load failed"):
        load_checkpoint(path)


def test_no_checkpoint_and_stale_temp_files(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "missing") is None
    (tmp_path / ".step-00000009.ckpt.tmp-123").write_bytes(b"partial")
    CheckpointManager(tmp_path, keep_last=1)
    assert not list(tmp_path.iterdir())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_latest(tmp_path) is None


def test_saving_twice_at_one_step_never_overwrites(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    manager.save(_state(5), 5)
    second = manager.save({**_state(5), "position": [2, 0]}, 5)
    assert second.name == "step-00000005.1.ckpt"
    third = manager.save({**_state(5), "position": [2, 1]}, 5)
    assert third.name == "step-00000005.2.ckpt"
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["step-00000005.1.ckpt", "step-00000005.2.ckpt"]
    path, state = manager.load_latest()
    assert path == third and state["position"] == [2, 1]
    manager.save(_state(6), 6)
    assert manager.load_latest()[0].name == "step-00000006.ckpt"
