"""Worker processes for the one-off data builds (MSDS rendering, CelebA decoding), and their
progress bar."""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def usable_cpus() -> int:
    """CPUs this process may run on (Slurm/taskset affinity), not all of the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _keep_freed_memory() -> None:
    """Worker initializer: stop glibc from returning freed memory to the OS after every numpy
    temporary (M_TRIM_THRESHOLD, M_MMAP_THRESHOLD); that page-faulting otherwise costs as much
    system time as the rendering itself. Short-lived workers only; a no-op off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)
        libc.mallopt(-3, 1 << 28)
    except (OSError, AttributeError):
        pass


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes. On Linux they are forked, which avoids re-importing torch
    (``rgflow/__init__``) in each; the workers run numpy/PIL code only, never torch or CUDA."""
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                               initializer=_keep_freed_memory)


def progress(items: Iterable[T], total: int, what: str) -> Iterator[T]:
    """``items`` (chunks of a build, as they complete) with a tqdm bar on stderr saying ``what``;
    drawn only when stderr is a terminal, so that logs, pipes and tests stay clean."""
    return iter(tqdm(items, total=total, desc=what, unit="chunk", disable=None, leave=False))
