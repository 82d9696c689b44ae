"""The metric spool of a run folder: every logged metric, appended before anything is sent.

Files in the trial's run folder:

* ``metrics-spool.jsonl`` — one JSON object per line and per metric value:
  ``{"key": "train_bpd", "value": 3.91, "step": 1200, "timestamp": 1764419405123}``
  (``timestamp`` in ms since the epoch, fixed when the value is logged; non-finite values as
  JSON ``NaN``/``Infinity``/``-Infinity``, which Python's ``json`` reads back).
* ``metrics-spool.cursor`` — ``{"offset": N}``: the byte offset up to which the tracking store has
  acknowledged every line. It only moves forward, and only after a successful ``log_batch``.

Durability: appends are flushed to the OS at once (a killed process loses nothing) and fsynced by
:meth:`MetricSpool.sync` — which the trainer calls before every checkpoint, so a power loss never
leaves a checkpoint newer than the spooled metrics — by every :meth:`~MetricSpool.acknowledge`,
before the cursor moves (so the cursor never points past what a crash keeps of the spool), and by
:meth:`~MetricSpool.close`. The cursor is replaced atomically and durably
(:func:`rgflow.atomic.write_json_atomic`). On open, a cursor the file cannot back — beyond its end,
inside a line, or unreadable (a spool truncated or replaced behind the tracker's back) — is not
trusted: a warning names the file and sending restarts from the last line boundary at or before it
(0 for an unreadable one). Re-sending is safe (next paragraph).

Why replay cannot double-log: a value's identity (key, step, timestamp, value) is fixed in the
spool, and MLflow's SQL stores (sqlite, PostgreSQL, and servers backed by them) have exactly that
as the metric table's primary key and skip rows that already exist. So the at-least-once edge case
— a batch stored but the process killed before the cursor was written — re-sends that batch and
the store drops it (tested in ``tests/test_tracking.py``).

Re-logged steps: steps must increase per key within a run. A (key, step) at or below the highest
step already spooled for that key — a resumed trainer repeating the steps between its last
checkpoint and the interruption — is dropped, so the run's history has neither gaps nor duplicates.
The highest steps are those of the lines the file holds once a partial last line is cut, so steps
lost with a truncated tail are spooled again when the resumed trainer repeats them. (Had the store
acknowledged them before the truncation, they now appear twice in its history with different
timestamps: a duplicate, never a gap. With the fsync order above only outside tampering truncates.)
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rgflow.atomic import fsync_dir, write_json_atomic

log = logging.getLogger(__name__)

SPOOL_NAME = "metrics-spool.jsonl"
CURSOR_NAME = "metrics-spool.cursor"
_KEY = re.compile(r"^[/\w.\- :]{1,250}$")  # MLflow's metric-name rule (and JSON-safe as is)
_READ_BYTES = 1 << 20


@dataclass(frozen=True)
class SpooledMetric:
    key: str
    value: float
    step: int
    timestamp: int  # ms since epoch


def _number(value: float) -> str:
    if math.isfinite(value):
        return repr(value)
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


class MetricSpool:
    """Append-only metric log plus acknowledged-offset cursor (see module docstring).

    ``append`` runs in the training thread; ``pending``/``acknowledge`` in whichever thread pushes
    to the store. All methods are thread-safe (re-entrant, so a signal handler may call them).
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / SPOOL_NAME
        self.cursor_path = Path(run_dir) / CURSOR_NAME
        self._lock = threading.RLock()
        self._drop_partial_tail()
        self.high_water: dict[str, int] = {}
        for item, _ in self._iter_lines(0):
            self.high_water[item.key] = max(item.step, self.high_water.get(item.key, item.step))
        self._open()
        self._check_cursor()
        self.dropped = 0  # (key, step) pairs refused as re-logs of spooled steps
        self._valid_keys: set[str] = set()

    def _drop_partial_tail(self) -> None:
        """A crash mid-write can leave a last line without newline: cut it so appends stay valid."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            log.warning("%s: dropping a partial last line (%d bytes)", self.path, len(data) - keep)
            with open(self.path, "r+b") as fh:
                fh.truncate(keep)
                os.fsync(fh.fileno())

    def _open(self) -> None:
        """Open the spool for appending; a new file's folder entry (and any rename before) is made durable."""
        created = not self.path.exists()
        self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for the run's lifetime
        if created:
            fsync_dir(self.path.parent)

    def _check_cursor(self) -> None:
        """Distrust a cursor that the file cannot back (module docstring); rewrite it if so."""
        try:
            offset = self.cursor()
        except (ValueError, KeyError, TypeError) as err:
            log.warning("%s: unreadable (%s: %s); re-sending %s from its start",
                        self.cursor_path, type(err).__name__, err, self.path)
            write_json_atomic(self.cursor_path, {"offset": 0})
            return
        size = self.size()
        start = self._line_start(min(offset, size))
        if start != offset:
            where = f"beyond the end ({size} bytes)" if offset > size else "not at a line boundary"
            log.warning("%s: offset %d is %s of %s; re-sending from byte %d (the store drops what it has)",
                        self.cursor_path, offset, where, self.path, start)
            write_json_atomic(self.cursor_path, {"offset": start})

    def _line_start(self, offset: int) -> int:
        """The last line boundary (0, or just after a newline) at or before byte ``offset``."""
        with open(self.path, "rb") as fh:
            end = offset
            while end > 0:
                begin = max(0, end - _READ_BYTES)
                fh.seek(begin)
                newline = fh.read(end - begin).rfind(b"\n")
                if newline >= 0:
                    return begin + newline + 1
                end = begin
        return 0

    def append(self, metrics: Mapping[str, float], step: int, timestamp: int) -> int:
        """Spool ``metrics`` at ``step``; returns how many were kept (re-logged steps are dropped).

        Raises ``ValueError`` for a bad key or a non-numeric value, naming it.
        """
        if isinstance(step, bool) or not isinstance(step, int):
            raise ValueError(f"step={step!r}: must be an integer (the optimizer step)")
        parts = []
        with self._lock:
            for key, value in metrics.items():
                if key not in self._valid_keys:
                    if not isinstance(key, str) or not _KEY.match(key):
                        raise ValueError(f"metric name {key!r}: use letters, digits, _ - . / : and spaces (≤ 250)")
                    self._valid_keys.add(key)
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    raise ValueError(f"metric {key}={value!r}: must be a number") from None
                if step <= self.high_water.get(key, step - 1):
                    self.dropped += 1
                    continue
                self.high_water[key] = step
                parts.append(f'{{"key":"{key}","value":{_number(number)},"step":{step},"timestamp":{timestamp}}}\n')
            if parts:
                self._file.write("".join(parts).encode())
                self._file.flush()
        return len(parts)

    def sync(self) -> None:
        """fsync the spool: every line appended so far survives a crash or power loss."""
        with self._lock:
            self._file.flush()
            os.fsync(self._file.fileno())

    def size(self) -> int:
        with self._lock:
            return self._file.tell()

    def cursor(self) -> int:
        """The acknowledged byte offset (0 without a cursor file)."""
        try:
            return int(json.loads(self.cursor_path.read_text())["offset"])
        except FileNotFoundError:
            return 0

    def acknowledge(self, offset: int) -> None:
        """Record that every line before byte ``offset`` is stored (never moves backwards); the
        spool is fsynced first, so the durable cursor never points past the durable spool."""
        with self._lock:
            if offset > self.cursor():
                self.sync()
                write_json_atomic(self.cursor_path, {"offset": offset})

    def pending(self, max_items: int) -> tuple[list[SpooledMetric], int]:
        """Up to ``max_items`` unacknowledged metrics and the offset just after the last of them."""
        items: list[SpooledMetric] = []
        end = self.cursor()
        for item, after in self._iter_lines(end):
            items.append(item)
            end = after
            if len(items) >= max_items:
                break
        return items, end

    def pending_count(self) -> int:
        return sum(1 for _ in self._iter_lines(self.cursor()))

    def _iter_lines(self, offset: int):
        """Yield ``(SpooledMetric, offset after its line)`` for complete lines from ``offset``."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            buffer = b""
            while chunk := fh.read(_READ_BYTES):
                buffer += chunk
                lines = buffer.split(b"\n")
                buffer = lines.pop()
                for line in lines:
                    offset += len(line) + 1
                    try:
                        obj = json.loads(line)
                        item = SpooledMetric(obj["key"], float(obj["value"]), int(obj["step"]), int(obj["timestamp"]))
                    except (ValueError, KeyError, TypeError):
                        log.error("%s: skipping an unreadable line before byte %d", self.path, offset)
                        continue
                    yield item, offset

    def close(self) -> None:
        """fsync and close the spool (idempotent)."""
        with self._lock:
            if not self._file.closed:
                self.sync()
                self._file.close()

    def rotate(self, label: str) -> None:
        """Move this spool and its cursor aside as ``metrics-spool.<label>.*`` (kept, not replayed)."""
        with self._lock:
            self.close()
            for path in (self.path, self.cursor_path):
                if path.exists():
                    os.replace(path, path.with_name(path.name.replace("metrics-spool", f"metrics-spool.{label}")))
            self.high_water.clear()
            self._open()
