"""The live progress line of a running sweep, on stderr.

``smoke: 3/8 done · 2 running · 1 failed · 2 pending · best val_bpd 5.412 · 0:42``

On a terminal the line is redrawn in place (carriage return + erase); otherwise (a log file, a
pipe, a test) a new line is written only when the counts or the best value change, so logs stay
short. Backends call :meth:`Progress.update` whenever they learn something; redraws are limited
to one per ``min_interval_s`` unless the counts changed.

:func:`console_to_file` keeps the console clean while a sweep runs: Ray, MLflow and anything else
writing to stdout/stderr goes to a log file in the sweep's run folder instead.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TextIO

STATES = ("finished", "running", "failed", "pending")


@dataclass(frozen=True)
class Counts:
    """Trials per state. ``finished`` includes trials skipped because they had already finished."""

    finished: int = 0
    running: int = 0
    failed: int = 0
    pending: int = 0

    @property
    def total(self) -> int:
        return self.finished + self.running + self.failed + self.pending


def count_states(states: dict[str, str]) -> Counts:
    """``{trial_id: state}`` → :class:`Counts`; ``pruned`` counts as finished (done for good),
    ``preempted`` as running (it will resume), ``killed`` as pending (a re-run starts it again)."""
    tally = dict.fromkeys(STATES, 0)
    for state in states.values():
        tally[{"pruned": "finished", "preempted": "running", "killed": "pending"}.get(state, state)] += 1
    return Counts(**tally)


def format_line(name: str, counts: Counts, best_val_bpd: float | None, elapsed_s: float) -> str:
    """The progress line (no newline). ``best_val_bpd`` in bits/dim, ``None`` until one is known."""
    minutes, seconds = divmod(int(elapsed_s), 60)
    hours, minutes = divmod(minutes, 60)
    clock = f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
    best = "–" if best_val_bpd is None or not math.isfinite(best_val_bpd) else f"{best_val_bpd:.4f}"
    return (
        f"{name}: {counts.finished}/{counts.total} done · {counts.running} running · "
        f"{counts.failed} failed · {counts.pending} pending · best val_bpd {best} · {clock}"
    )


class Progress:
    """A live line for one sweep; use as a context manager so the line is terminated."""

    def __init__(self, name: str, stream: TextIO | None = None, min_interval_s: float = 1.0, enabled: bool = True):
        self.name = name
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval_s = min_interval_s
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self._last_key: tuple | None = None
        self._last_draw = 0.0
        self._drawn = False

    def update(self, counts: Counts, best_val_bpd: float | None) -> None:
        """Redraw if something changed (or, on a terminal, to advance the clock)."""
        if not self.enabled:
            return
        key = (counts, None if best_val_bpd is None else round(best_val_bpd, 4))
        now = time.monotonic()
        changed = key != self._last_key
        if not changed and (not self.tty or now - self._last_draw < self.min_interval_s):
            return
        line = format_line(self.name, counts, best_val_bpd, now - self.started)
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._last_key, self._last_draw, self._drawn = key, now, True

    def __getstate__(self) -> dict:
        """Pickled copies (Ray Tune saves its callbacks with the experiment) draw nothing."""
        return {**self.__dict__, "stream": None, "enabled": False}

    def close(self) -> None:
        """End the live line so that later output starts on a fresh line."""
        if self.enabled and self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
        self._drawn = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def console_to_file(path: str | os.PathLike, enabled: bool = True) -> Iterator[TextIO]:
    """Send everything written to this process's stdout and stderr — Python prints, logging, and
    the C++ core of Ray writing straight to file descriptors 1 and 2 — to ``path`` (appended);
    yields a stream on the real stderr for the progress line and the launcher's own messages.

    Child processes started inside the block inherit the redirected descriptors. With
    ``enabled=False`` nothing is redirected and the real ``sys.stderr`` is yielded.
    """
    if not enabled:
        yield sys.stderr
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    console = os.fdopen(os.dup(saved_err), "w", buffering=1, encoding="utf-8", errors="replace")
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        yield console
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for fd in (saved_out, saved_err, log_fd):
            os.close(fd)
        console.close()
