"""The on-disk data cache: a folder of uint8/float32 ``.npy`` arrays plus ``manifest.json``.

A cache folder ``<root>/<name>/`` holds one ``.npy`` per array and a manifest::

    {"format": 1, "identity": {...what was built: dataset, generator version, seed, counts...},
     "files": {"train_images.npy": {"sha256": "...", "bytes": N, "shape": [...], "dtype": "uint8"}},
     "build_seconds": 12.3, "created": "2026-11-29T12:00:00Z"}

It is built in a temporary sibling folder and renamed into place (atomic on POSIX), under an
exclusive lock so concurrent trials build it once. A cache whose identity differs from what is
asked for, or whose files are missing, resized or fail their sha256, is never used: it is rebuilt
and the reason is reported (:class:`CacheReport`).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

FORMAT = 1
MANIFEST = "manifest.json"


class CacheInvalid(Exception):
    """A cache folder cannot be used; ``str(err)`` says why, in a few words."""


@dataclass(frozen=True)
class CacheReport:
    """What :func:`ensure` did: ``action`` is ``built``, ``rebuilt``, ``verified`` or ``invalid``."""

    action: str
    path: Path
    seconds: float
    nbytes: int
    reason: str = ""

    def line(self) -> str:
        """One human-readable line, e.g. ``built data/msds1-seed0 (307.2 MB) in 14.1 s``."""
        why = f" because {self.reason}" if self.reason else ""
        return f"{self.action} {self.path} ({self.nbytes / 1e6:.1f} MB) in {self.seconds:.1f} s{why}"


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        with open(path / MANIFEST) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CacheInvalid("it has no manifest") from None
    except (OSError, ValueError) as err:
        raise CacheInvalid(f"its manifest is unreadable ({err})") from None


# (path, identity) → (files' (size, mtime_ns)) of caches already checksummed by this process
_VERIFIED: dict[tuple[str, str], tuple] = {}


def _stat_key(path: Path, files: dict[str, Any]) -> tuple:
    return tuple((name, (path / name).stat().st_size, (path / name).stat().st_mtime_ns) for name in sorted(files))


def verify(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """Check a cache folder against ``identity`` and its checksums; return its manifest.

    Raises :class:`CacheInvalid` naming the first problem. Full checksums are computed once per
    process for unchanged files (size and mtime), then trusted.
    """
    if not path.is_dir():
        raise CacheInvalid("it does not exist")
    manifest = read_manifest(path)
    if manifest.get("format") != FORMAT:
        raise CacheInvalid(f"its format is {manifest.get('format')!r}, not {FORMAT}")
    if manifest.get("identity") != identity:
        have = manifest.get("identity") or {}
        diff = [k for k in sorted(set(have) | set(identity)) if have.get(k) != identity.get(k)]
        raise CacheInvalid("it was built for " + ", ".join(f"{k}={have.get(k)!r} (want {identity.get(k)!r})" for k in diff))
    files = manifest.get("files") or {}
    for name, info in files.items():
        file = path / name
        if not file.is_file():
            raise CacheInvalid(f"{name} is missing")
        if file.stat().st_size != info["bytes"]:
            raise CacheInvalid(f"{name} has {file.stat().st_size} bytes, the manifest says {info['bytes']}")
    key = (str(path.resolve()), json.dumps(identity, sort_keys=True))
    stat = _stat_key(path, files)
    if _VERIFIED.get(key) != stat:
        for name, info in files.items():
            if sha256_file(path / name) != info["sha256"]:
                raise CacheInvalid(f"{name} fails its sha256 checksum (corrupt)")
        _VERIFIED[key] = stat
    return manifest


def load_array(path: Path, name: str, manifest: dict[str, Any], rows: slice | None = None) -> np.ndarray:
    """Rows ``rows`` (default all; step 1) of a verified cache array, read into memory with one
    sequential read (no memory map, so nothing stays tied to the file)."""
    info = manifest["files"][name]
    with open(path / name, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if list(shape) != info["shape"] or str(dtype) != info["dtype"] or fortran:
            raise CacheInvalid(f"{name} has shape {list(shape)} {dtype}, the manifest says {info['shape']} {info['dtype']}")
        start, stop, _ = (rows or slice(None)).indices(shape[0])
        row = int(np.prod(shape[1:], dtype=np.int64))
        f.seek(start * row * dtype.itemsize, os.SEEK_CUR)
        data = np.fromfile(f, dtype=dtype, count=max(stop - start, 0) * row)
    return data.reshape((max(stop - start, 0), *shape[1:]))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _nbytes(manifest: dict[str, Any]) -> int:
    return sum(info["bytes"] for info in manifest.get("files", {}).values())


def _build(path: Path, identity: dict[str, Any], builder: Callable[[Path], None]) -> dict[str, Any]:
    """Run ``builder(tmp)`` (writes ``.npy`` files into ``tmp``), write the manifest, swap in."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):   # left by a killed build (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True)
    try:
        start = time.perf_counter()
        builder(tmp)
        files = {}
        for file in sorted(tmp.glob("*.npy")):
            array = np.load(file, mmap_mode="r", allow_pickle=False)
            files[file.name] = {"sha256": sha256_file(file), "bytes": file.stat().st_size,
                                "shape": list(array.shape), "dtype": str(array.dtype)}
            del array
        manifest = {"format": FORMAT, "identity": identity, "files": files,
                    "build_seconds": round(time.perf_counter() - start, 3),
                    "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, path)
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure(path: Path, identity: dict[str, Any], builder: Callable[[Path], None] | None,
           *, build: bool = True) -> tuple[dict[str, Any], CacheReport]:
    """Return ``(manifest, report)`` of a valid cache at ``path``, building it if needed.

    ``builder(tmp)`` writes the ``.npy`` files into a temporary folder. With ``build=False`` (or
    no builder) an invalid cache raises :class:`CacheInvalid` instead of being rebuilt.
    """
    start = time.perf_counter()
    try:
        manifest = verify(path, identity)
        return manifest, CacheReport("verified", path, time.perf_counter() - start, _nbytes(manifest))
    except CacheInvalid:
        if not build or builder is None:
            raise
    with _locked(path):
        try:   # another process may have built it while we waited for the lock
            manifest = verify(path, identity)
            return manifest, CacheReport("verified", path, time.perf_counter() - start, _nbytes(manifest))
        except CacheInvalid as err:
            reason = str(err)
        existed = path.exists()
        manifest = _build(path, identity, builder)
        key = (str(path.resolve()), json.dumps(identity, sort_keys=True))
        _VERIFIED[key] = _stat_key(path, manifest["files"])
        action = "rebuilt" if existed else "built"
        return manifest, CacheReport(action, path, time.perf_counter() - start, _nbytes(manifest),
                                     reason if existed else "")
