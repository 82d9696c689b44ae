"""Build a folder completely before it replaces the old one: readers never see a half-written
evaluation or report, and a failure leaves the previous folder untouched.

The folder and its files get the modes a plain ``mkdir`` / ``open`` gives under the umask (0755 /
0644 with the usual 022): the temporary names it is built under (``mkdtemp``, and ``mkstemp`` in
:func:`rgflow.atomic.write_atomic`) are private (0700 / 0600), which is right for checkpoints and
state files but not for reports and evaluations meant to be read by others."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``final``; when the block ends without an exception it
    replaces ``final`` (deleted first if present), otherwise it is removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        yield work
        _shared_modes(work)
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _shared_modes(folder: Path) -> None:
    """``chmod`` ``folder``, its subfolders and files to what the umask allows (0777 / 0666 less it)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
