"""Atomic, verified training checkpoints: keep the last K and the best, fall back on corruption.

A checkpoint is a plain ``torch.save`` file (``step-00001234.ckpt``, ``best.ckpt``) next to a
sidecar ``<name>.sha256`` holding the file's SHA-256 and byte size. Writing goes to a temporary
file in the same folder, is fsync'ed, and the sidecar is put in place before the checkpoint is
renamed onto its final name, so a reader never sees a half-written file under a final name. A file
whose bytes do not match its sidecar (truncated, corrupted, or killed between the two renames), or
that has no sidecar, or that ``torch.load(weights_only=True)`` rejects, is *invalid*: the readers
warn naming it and use the previous valid one.

The state saved is a dict of tensors, plain containers, numbers and strings only, so that it loads
with ``weights_only=True`` (no pickled Python objects). :func:`capture_rng_state` /
:func:`restore_rng_state` give the torch CPU and CUDA generator states in that form.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

STEP_PATTERN = re.compile(r"^step-(\d+)(?:\.(\d+))?\.ckpt$")
BEST_NAME = "best.ckpt"
SIDECAR_SUFFIX = ".sha256"


class CheckpointWarning(UserWarning):
    """A checkpoint file was skipped because it is invalid."""


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically with its checksum sidecar; returns the path.

    ``state`` must hold only tensors, dicts/lists/tuples, numbers, strings, bools and ``None``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    _write_atomic(sidecar_path(path), f"{digest} {len(data)}\n".encode())
    _write_atomic(path, data)
    _fsync_dir(path.parent)
    return path


class InvalidCheckpoint(Exception):
    """Raised by :func:`load_checkpoint` for a missing, truncated or corrupted checkpoint."""


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Verify ``path`` against its sidecar and load it with ``torch.load(weights_only=True)``.

    Raises :class:`InvalidCheckpoint` (one line naming the file and the defect) when it is bad.
    """
    path = Path(path)
    try:
        expected = sidecar_path(path).read_text().split()
        data = path.read_bytes()
    except OSError as err:
        raise InvalidCheckpoint(f"{path}: cannot read checkpoint or its {SIDECAR_SUFFIX} sidecar ({err.strerror})") from None
    if len(expected) != 2 or expected[1] != str(len(data)):
        raise InvalidCheckpoint(f"{path}: size {len(data)} bytes does not match its sidecar (truncated?)")
    if hashlib.sha256(data).hexdigest() != expected[0]:
        raise InvalidCheckpoint(f"{path}: SHA-256 does not match its sidecar (corrupted)")
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise InvalidCheckpoint(f"{path}: torch.load failed: {type(err).__name__}: {err}") from None
    if not isinstance(state, dict):
        raise InvalidCheckpoint(f"{path}: holds a {type(state).__name__}, expected a dict")
    return state


def step_checkpoints(directory: str | Path) -> list[Path]:
    """``step-<step>[.<n>].ckpt`` files in ``directory``, newest first (by step, then ``n``)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [((int(m.group(1)), int(m.group(2) or 0)), p) for p in directory.iterdir() if (m := STEP_PATTERN.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def load_latest(directory: str | Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
    """The newest valid step checkpoint in ``directory`` and its state, or ``None`` if there is none.

    Invalid newer files are skipped with a :class:`CheckpointWarning` naming each of them.
    """
    for path in step_checkpoints(directory):
        try:
            return path, load_checkpoint(path, map_location)
        except InvalidCheckpoint as err:
            warnings.warn(f"skipping invalid checkpoint {err}", CheckpointWarning, stacklevel=2)
    return None


def latest_checkpoint(directory: str | Path) -> Path | None:
    """Path of the newest valid step checkpoint in ``directory`` (see :func:`load_latest`)."""
    found = load_latest(directory)
    return found[0] if found else None


class CheckpointManager:
    """Step checkpoints in one folder, keeping the newest ``keep_last``, plus ``best.ckpt``.

    A step checkpoint is ``step-<step>.ckpt``; saving again at a step that already has a file (an
    epoch-end save right after a timed one, or a recomputed step after a crash) writes
    ``step-<step>.<n>.ckpt`` with the next free ``n``, so a file is never overwritten in place.
    """

    def __init__(self, directory: str | Path, keep_last: int):
        if keep_last < 1:
            raise ValueError(f"keep_last must be ≥ 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last
        if self.directory.is_dir():  # temporary files left by a writer that was killed
            for stale in self.directory.glob(".*.tmp-*"):
                stale.unlink(missing_ok=True)

    def path_for(self, step: int) -> Path:
        """The name the next save at ``step`` gets."""
        path = self.directory / f"step-{step:08d}.ckpt"
        n = 0
        while path.exists() or sidecar_path(path).exists():
            n += 1
            path = self.directory / f"step-{step:08d}.{n}.ckpt"
        return path

    @property
    def best_path(self) -> Path:
        return self.directory / BEST_NAME

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Save a step checkpoint, then delete step checkpoints beyond the newest ``keep_last``."""
        path = save_checkpoint(self.path_for(step), state)
        for old in step_checkpoints(self.directory)[self.keep_last:]:
            old.unlink(missing_ok=True)
            sidecar_path(old).unlink(missing_ok=True)
        return path

    def save_best(self, state: dict[str, Any]) -> Path:
        return save_checkpoint(self.best_path, state)

    def load_latest(self, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
        return load_latest(self.directory, map_location)


def capture_rng_state() -> dict[str, Any]:
    """The torch CPU generator state and every CUDA device's state, as tensors."""
    state: dict[str, Any] = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured (CUDA states only when CUDA is present)."""
    torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])


__all__ = [
    "CheckpointManager", "CheckpointWarning", "InvalidCheckpoint", "capture_rng_state", "latest_checkpoint",
    "load_checkpoint", "load_latest", "restore_rng_state", "save_checkpoint", "step_checkpoints",
]
