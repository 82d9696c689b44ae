"""Atomic, verified training checkpoints: keep the last K and the best, fall back on corruption.

A checkpoint is a plain ``torch.save`` file (``step-00001234.ckpt``, ``best.ckpt``) next to a
sidecar ``<name>.sha256`` with one line ``<SHA-256 hex> <size in bytes>`` per content it accepts.
Both are written with :func:`rgflow.atomic.write_atomic` (temporary file, fsync, rename, folder
fsync), so a reader never sees half a file under a final name. A file whose bytes match no line of
its sidecar (truncated, corrupted), or that has no sidecar, or that ``torch.load(weights_only=True)``
rejects, is *invalid*: the readers warn naming it and use the previous valid one.

Crash safety of a rewrite in place (``best.ckpt``, at every improvement): the sidecar first lists
the old and the new content, then the new file replaces the old one, then the sidecar lists the new
content only. A SIGKILL or power loss at any instant leaves the old or the new file under the name,
and the sidecar accepts either, so a valid best always exists once one was written. A new name
(every step checkpoint) gets its sidecar, then its file: killed between the two, it has no file
and is not listed.

The state saved is a dict of tensors, plain containers, numbers and strings only, so that it loads
with ``weights_only=True`` (no pickled Python objects). :func:`capture_rng_state` /
:func:`restore_rng_state` give the torch CPU and CUDA generator states in that form.
:func:`load_latest` can also skip checkpoints written for another trial or config (``expect``).
"""
from __future__ import annotations

import hashlib
import io
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rgflow.atomic import write_atomic

STEP_PATTERN = re.compile(r"^step-(\d+)(?:\.(\d+))?\.ckpt$")
BEST_NAME = "best.ckpt"
SIDECAR_SUFFIX = ".sha256"
_MISSING = object()  # a key absent from a checkpoint's ``meta``
_MAX_DIFFERENCES = 5  # mismatching ``meta`` keys named in one warning


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (invalid, or written for something else) or restored only in part."""


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _sidecar_lines(path: Path) -> list[str]:
    """The well-formed ``<sha256> <size>`` lines of the sidecar of ``path`` ([] without one; bytes
    that are not text, e.g. a garbled sidecar, make no line: the checkpoint is then unverifiable)."""
    try:
        text = sidecar_path(path).read_bytes().decode("ascii", errors="replace")
    except FileNotFoundError:
        return []
    return [" ".join(f) for line in text.splitlines() if len(f := line.split()) == 2]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` with its checksum sidecar, crash-safely (module docstring);
    returns the path.

    ``state`` must hold only tensors, dicts/lists/tuples, numbers, strings, bools and ``None``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    new = f"{hashlib.sha256(data).hexdigest()} {len(data)}"
    old = [line for line in _sidecar_lines(path) if line != new] if path.exists() else []
    write_atomic(sidecar_path(path), "".join(f"{line}\n" for line in [*old, new]))
    write_atomic(path, data)
    if old:
        write_atomic(sidecar_path(path), f"{new}\n")
    return path


class InvalidCheckpoint(Exception):
    """Raised by :func:`load_checkpoint` for a missing, truncated or corrupted checkpoint."""


def _verified_bytes(path: Path) -> tuple[bytes, str]:
    """The bytes of ``path`` and their SHA-256 (hex), when a line of its sidecar accepts them."""
    try:
        accepted = _sidecar_lines(path)
        data = path.read_bytes()
    except OSError as err:
        raise InvalidCheckpoint(f"{path}: cannot read checkpoint or its {SIDECAR_SUFFIX} sidecar ({err.strerror})") from None
    if not accepted:
        raise InvalidCheckpoint(f"{path}: no {SIDECAR_SUFFIX} sidecar (or an empty one)")
    if str(len(data)) not in {line.split()[1] for line in accepted}:
        raise InvalidCheckpoint(f"{path}: size {len(data)} bytes does not match its sidecar (truncated?)")
    digest = hashlib.sha256(data).hexdigest()
    if f"{digest} {len(data)}" not in accepted:
        raise InvalidCheckpoint(f"{path}: SHA-256 does not match its sidecar (corrupted)")
    return data, digest


def checkpoint_sha256(path: str | Path) -> str:
    """The SHA-256 (hex) of a valid checkpoint's bytes; raises :class:`InvalidCheckpoint`.

    Use it rather than the sidecar's first word: after a crash mid-rewrite the sidecar may hold
    two lines, of which the file matches one.
    """
    return _verified_bytes(Path(path))[1]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Verify ``path`` against its sidecar and load it with ``torch.load(weights_only=True)``.

    Raises :class:`InvalidCheckpoint` (one line naming the file and the defect) when it is bad.
    """
    path = Path(path)
    data, _ = _verified_bytes(path)
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


def _show(value: Any) -> str:
    if value is _MISSING:
        return "missing"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _differences(name: str, got: Any, want: Any) -> list[str]:
    """``name is <got>, expected <want>`` for ``got`` ≠ ``want``, per dotted key inside dicts."""
    if isinstance(got, dict) and isinstance(want, dict):
        keys = sorted(set(got) | set(want), key=str)
        return [d for k in keys for d in _differences(f"{name}.{k}", got.get(k, _MISSING), want.get(k, _MISSING))]
    return [] if got == want else [f"{name} is {_show(got)}, expected {_show(want)}"]


def _meta_mismatch(state: dict[str, Any], expect: Mapping[str, Any]) -> str:
    """Where ``state["meta"]`` differs from ``expect`` ('' when it holds every expected value)."""
    meta = state.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    found = [d for key, want in expect.items() for d in _differences(f"meta.{key}", meta.get(key, _MISSING), want)]
    more = f" (and {len(found) - _MAX_DIFFERENCES} more)" if len(found) > _MAX_DIFFERENCES else ""
    return "; ".join(found[:_MAX_DIFFERENCES]) + more


def load_latest(directory: str | Path, map_location: str | torch.device = "cpu", *,
                expect: Mapping[str, Any] | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The newest valid step checkpoint in ``directory`` and its state, or ``None`` if there is none.

    ``expect``: values its ``state["meta"]`` must hold, compared with ``==`` (dicts key by key), e.g.
    ``{"trial_id": tid}``; a checkpoint written for another trial or config (a copied or reused
    folder) is skipped. Every skipped newer file — invalid or not matching — gets a
    :class:`CheckpointWarning` naming it and the defect or the mismatching keys.
    """
    for path in step_checkpoints(directory):
        try:
            state = load_checkpoint(path, map_location)
        except InvalidCheckpoint as err:
            warnings.warn(f"skipping invalid checkpoint {err}", CheckpointWarning, stacklevel=2)
            continue
        if mismatch := _meta_mismatch(state, expect or {}):
            warnings.warn(f"skipping checkpoint {path}: written for something else: {mismatch}", CheckpointWarning,
                          stacklevel=2)
            continue
        return path, state
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
        if self.directory.is_dir():  # temporary files (.<name>.<random>) left by a writer that was killed
            for stale in self.directory.glob(".*.ckpt*"):
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
        """Rewrite ``best.ckpt``; a crash at any point leaves the old or the new one valid."""
        return save_checkpoint(self.best_path, state)

    def load_latest(self, map_location: str | torch.device = "cpu", *,
                    expect: Mapping[str, Any] | None = None) -> tuple[Path, dict[str, Any]] | None:
        return load_latest(self.directory, map_location, expect=expect)


def capture_rng_state() -> dict[str, Any]:
    """The torch CPU generator state and every CUDA device's state, as tensors."""
    state: dict[str, Any] = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured.

    CUDA device ``i`` gets the state saved for device ``i``; the states of devices that this
    process cannot see (fewer GPUs, or none, than at save time) are skipped with a
    :class:`CheckpointWarning`.
    """
    torch.set_rng_state(state["torch_cpu"])
    saved = list(state.get("torch_cuda", ()))
    visible = torch.cuda.device_count() if saved and torch.cuda.is_available() else 0
    for index, cuda_state in enumerate(saved[:visible]):
        torch.cuda.set_rng_state(cuda_state, index)
    if len(saved) > visible:
        warnings.warn(f"checkpoint holds the RNG states of {len(saved)} CUDA device(s) but {visible} are visible: "
                      f"the states of devices {visible}..{len(saved) - 1} are not restored", CheckpointWarning,
                      stacklevel=2)


__all__ = [
    "CheckpointManager", "CheckpointWarning", "InvalidCheckpoint", "capture_rng_state", "checkpoint_sha256",
    "latest_checkpoint", "load_checkpoint", "load_latest", "restore_rng_state", "save_checkpoint",
    "step_checkpoints",
]
