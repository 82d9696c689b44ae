"""The one atomic file write of the project: readers see the old file or the new one, never half.

:func:`write_atomic` writes to a temporary file in the target's folder (``.<name>.<random>``),
fsyncs it, renames it onto the target and fsyncs the folder, so the new content survives a crash
or power loss once the call returns. On any failure the temporary file is removed and the target
is untouched. Used by checkpoints, run-folder state, the metric spool's cursor, the sweep state
and reports.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def fsync_dir(directory: str | os.PathLike) -> None:
    """fsync a folder, so that renames and new files in it are durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Replace ``path`` with ``data`` (``str`` is written as UTF-8) atomically and durably; returns the path."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """:func:`write_atomic` of ``obj`` as indented, key-sorted JSON with a final newline."""
    return write_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")
