"""One attempt per run folder, one driver per sweep: exclusive locks held for a process's lifetime.

``<run dir>/attempt.lock`` is locked with ``flock(LOCK_EX | LOCK_NB)`` by the attempt that trains
the trial and holds one JSON line naming the holder (:class:`Holder`: host, pid, boot id, Slurm
job id, start time). The kernel drops the lock when the holder dies, however it dies, so

* a second attempt (two launches racing, a resubmitted ``sbatch``, a requeue while the old process
  still writes) fails to take it and exits at once naming the holder (exit 3, nothing created);
* on the holder's host, :func:`holder_alive` tells a live attempt from a dead one without trusting
  PIDs (which are reused) — the reaper uses it for runs left RUNNING.

``flock`` is per host on most network file systems, so another host's holder is judged by its
scheduler job (Slurm) or, for Ray, by its driver.

The sweep launcher takes the same kind of lock on its sweep folder (:data:`DRIVER_LOCK`), so a
second ``jobs.sweep`` of a sweep that is running says who runs it and exits instead of taking over.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

LOCK_NAME = "attempt.lock"
DRIVER_LOCK = "driver.lock"


def boot_id() -> str:
    """This host's boot id (a PID is only meaningful within one boot)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class Holder:
    """Who holds a run folder: ``started`` in UNIX seconds; ``job_id`` the Slurm job, if any."""

    host: str
    pid: int
    boot_id: str
    job_id: str | None
    started: float

    @classmethod
    def me(cls) -> Holder:
        job = os.environ.get("SLURM_JOB_ID")
        if job and os.environ.get("SLURM_ARRAY_TASK_ID"):
            job = f"{os.environ.get('SLURM_ARRAY_JOB_ID', job)}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        return cls(socket.gethostname(), os.getpid(), boot_id(), job, time.time())

    def describe(self) -> str:
        job = f", Slurm job {self.job_id}" if self.job_id else ""
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"host {self.host}, pid {self.pid}{job}, since {since}"

    def on_this_boot(self) -> bool:
        return self.host == socket.gethostname() and self.boot_id == boot_id()


class RunFolderLocked(Exception):
    """Another live process holds the folder; ``holder`` says who (None if unreadable)."""

    def __init__(self, folder: Path, holder: Holder | None, name: str = LOCK_NAME):
        who = holder.describe() if holder else "an unknown process"
        what = "being run by another jobs.sweep" if name == DRIVER_LOCK else "being trained by another attempt"
        super().__init__(f"{folder} is {what} ({who}); this one did nothing")
        self.holder = holder


def read_holder(folder: str | os.PathLike, name: str = LOCK_NAME) -> Holder | None:
    """The last holder of lock ``name`` recorded in ``folder`` (alive or not), or None."""
    try:
        return Holder(**json.loads((Path(folder) / name).read_text()))
    except (OSError, ValueError, TypeError):
        return None


class RunFolderLock:
    """``with RunFolderLock(folder):`` holds the folder (created if missing) for the block;
    raises :class:`RunFolderLocked` at once if another process holds it. ``name``: the lock file,
    :data:`LOCK_NAME` for a trial's run folder, :data:`DRIVER_LOCK` for a sweep folder."""

    def __init__(self, folder: str | os.PathLike, name: str = LOCK_NAME):
        self.path = Path(folder) / name
        self.name = name
        self._fd: int | None = None

    def acquire(self, tries: int = 5) -> None:
        """Take the lock; a few quick tries ride out a reaper's momentary probe (:func:`holder_alive`)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        for left in range(tries - 1, -1, -1):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not left:
                    os.close(fd)
                    raise RunFolderLocked(self.path.parent, read_holder(self.path.parent, self.name), self.name) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(asdict(Holder.me())) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> RunFolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder_alive(folder: str | os.PathLike, name: str = LOCK_NAME) -> bool | None:
    """Whether a process holds lock ``name`` of ``folder`` now: True/False when that can be told
    from this host (its holder ran on this host and boot, or nobody ever held it), None when not."""
    holder = read_holder(folder, name)
    path = Path(folder) / name
    if holder is not None and not holder.on_this_boot():
        return False if holder.host == socket.gethostname() else None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
