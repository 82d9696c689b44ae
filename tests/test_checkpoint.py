"""Atomic checkpoints: round trip, keep-last-K, corruption detection and fallback, crash-safe
rewrites of best.ckpt (real SIGKILLs), checkpoints of another trial, RNG states of missing GPUs."""
from __future__ import annotations

import hashlib
import os
import random
import signal
import time
import warnings
from pathlib import Path

import pytest
import torch

import rgflow.checkpoint as ckpt
from rgflow.checkpoint import (
    CheckpointManager, CheckpointWarning, InvalidCheckpoint, capture_rng_state, checkpoint_sha256,
    latest_checkpoint, load_checkpoint, load_latest, restore_rng_state, save_checkpoint, sidecar_path,
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
    elif damage == "no_sidecar":  # the sidecar lost (deleted, or never copied with the file)
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
    sidecar_path(path).write_text(f"{hashlib.sha256(garbage).hexdigest()} {len(garbage)}\n")
    with pytest.raises(InvalidCheckpoint, match="torch.load failed"):
        load_checkpoint(path)


def test_no_checkpoint_and_stale_temp_files(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "missing") is None
    (tmp_path / ".step-00000009.ckpt.tmp-123").write_bytes(b"partial")  # an older writer's name
    (tmp_path / ".best.ckpt.k3j_x8qz").write_bytes(b"partial")  # rgflow.atomic's temporary name
    (tmp_path / ".best.ckpt.sha256.a1b2c3d4").write_bytes(b"partial")
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


# -- crash safety of best.ckpt -----------------------------------------------------------------

class _Killed(BaseException):
    """Stands for a SIGKILL between two writes."""


@pytest.mark.parametrize("writes_done", [0, 1, 2])
def test_rewrite_of_best_interrupted_after_each_write_leaves_old_or_new(tmp_path, monkeypatch, writes_done):
    """Stop the rewrite of a valid best.ckpt after each of its file writes: old or new loads, never neither."""
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save_best(_state(1))
    real_write, calls = ckpt.write_atomic, []

    def write_then_die(path, data):
        if len(calls) == writes_done:
            raise _Killed
        calls.append(path.name)
        return real_write(path, data)

    monkeypatch.setattr(ckpt, "write_atomic", write_then_die)
    with pytest.raises(_Killed):
        manager.save_best(_state(2))
    monkeypatch.undo()
    assert calls == ["best.ckpt.sha256", "best.ckpt"][:writes_done]
    state = load_checkpoint(manager.best_path)
    assert state["step"] == (2 if writes_done == 2 else 1)
    assert checkpoint_sha256(manager.best_path) == hashlib.sha256(manager.best_path.read_bytes()).hexdigest()
    manager.save_best(_state(3))  # the next rewrite starts from the left-over state
    assert load_checkpoint(manager.best_path)["step"] == 3
    assert len(sidecar_path(manager.best_path).read_text().splitlines()) == 1


KILLS = 25  # the old sidecar-then-file rewrite lost best.ckpt in ≈ 20–40 % of them
_CONTENTS = 4  # distinct tensors the rewriter cycles through


def _rewrite_best_forever(folder: Path, first: int, contents: list[torch.Tensor], ready: int) -> None:
    """The child: rewrite best.ckpt with n = first, first + 1, …; one byte on ``ready`` after the first."""
    manager = CheckpointManager(folder, keep_last=1)
    n = first
    while True:
        manager.save_best({"n": n, "x": contents[n % _CONTENTS]})
        if n == first:
            os.write(ready, b"!")
        n += 1


def test_best_survives_sigkill_at_random_moments(tmp_path):
    """A real process (forked: no interpreter start-up per kill) rewrites a 4 MiB best.ckpt in a
    loop; SIGKILL it at random moments: every time a valid best (the old or the new one) remains."""
    folder = tmp_path / "checkpoints"
    base = torch.arange(1 << 20, dtype=torch.float32)
    contents = [base + k for k in range(_CONTENTS)]  # built here: the child does no tensor arithmetic
    draw, last = random.Random(1), 0
    for kill in range(KILLS):
        ready, signal_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            try:
                os.close(ready)
                _rewrite_best_forever(folder, last + 1, contents, signal_end)
            finally:
                os._exit(1)
        os.close(signal_end)
        try:
            assert os.read(ready, 1) == b"!", "the rewriter died before its first save"
            time.sleep(draw.uniform(0.0, 0.1))
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(ready)
        best = load_checkpoint(folder / "best.ckpt")
        assert best["n"] > last and torch.equal(best["x"], contents[best["n"] % _CONTENTS]), kill
        last = best["n"]


def test_sidecar_with_two_lines_accepts_either_content(tmp_path):
    path = save_checkpoint(tmp_path / "best.ckpt", _state(1))
    first = sidecar_path(path).read_text()
    data = path.read_bytes()
    other = b"x" * 10
    sidecar_path(path).write_text(f"{hashlib.sha256(other).hexdigest()} {len(other)}\n{first}")
    assert load_checkpoint(path)["step"] == 1
    assert checkpoint_sha256(path) == hashlib.sha256(data).hexdigest()  # not the sidecar's first word
    path.write_bytes(data[:-1])
    with pytest.raises(InvalidCheckpoint, match="truncated"):
        checkpoint_sha256(path)


# -- checkpoints of another trial or config ----------------------------------------------------

def _meta_state(step: int, trial_id: str, lr: float = 1e-3) -> dict:
    return {"step": step, "meta": {"run_id": "r", "trial_id": trial_id, "config": {"train": {"lr": lr, "epochs": 2}}}}


def test_load_latest_skips_checkpoints_of_another_trial_or_config(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=5)
    manager.save(_meta_state(1, "aaa"), 1)
    manager.save(_meta_state(2, "aaa", lr=2e-3), 2)
    manager.save(_meta_state(3, "bbb"), 3)
    with pytest.warns(CheckpointWarning, match=r"step-00000003\.ckpt.*meta\.trial_id is 'bbb', expected 'aaa'"):
        path, state = manager.load_latest(expect={"trial_id": "aaa"})
    assert path.name == "step-00000002.ckpt" and state["step"] == 2
    want = {"trial_id": "aaa", "config": {"train": {"lr": 1e-3, "epochs": 2}}}
    with pytest.warns(CheckpointWarning) as caught:
        path, state = load_latest(tmp_path, expect=want)
    assert path.name == "step-00000001.ckpt"
    messages = [str(w.message) for w in caught]
    assert "step-00000002.ckpt" in messages[1] and "meta.config.train.lr is 0.002, expected 0.001" in messages[1]
    with pytest.warns(CheckpointWarning) as caught:
        assert load_latest(tmp_path, expect={"trial_id": "ccc", "missing_key": 1}) is None
    assert [str(w.message).split(": ", 2)[2] for w in caught] == [
        f"meta.trial_id is '{t}', expected 'ccc'; meta.missing_key is missing, expected 1" for t in ("bbb", "aaa", "aaa")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_latest(tmp_path)[0].name == "step-00000003.ckpt"  # no expectation: the newest


# -- RNG states of more GPUs than are visible --------------------------------------------------

def test_restore_rng_with_fewer_cuda_devices_restores_those_that_exist(monkeypatch):
    cuda_states = [torch.full((16,), i, dtype=torch.uint8) for i in range(3)]
    state = {"torch_cpu": torch.get_rng_state(), "torch_cuda": cuda_states}
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((int(s[0]), device)))
    with pytest.warns(CheckpointWarning, match=r"3 CUDA device\(s\) but 1 are visible.*devices 1\.\.2"):
        restore_rng_state(state)
    assert restored == [(0, 0)]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restore_rng_state(state)
    assert restored[1:] == [(0, 0), (1, 1), (2, 2)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(CheckpointWarning, match="but 0 are visible"):
        restore_rng_state(state)
    assert len(restored) == 4
