"""The metric spool against crashes and damage: fsync order (spool before cursor), a cursor that the
file cannot back (past the end after a truncation, inside a line, unreadable) and the steps a
resumed trainer repeats after its spool lost its tail: none is lost, none spooled twice."""
from __future__ import annotations

import json
import logging
import os
from collections import Counter

import pytest

from jobs.tracking.spool import CURSOR_NAME, SPOOL_NAME, MetricSpool

KEYS = ("train_bpd", "grad_norm")


def _metrics(step: int, resumed: bool) -> dict[str, float]:
    """The values at ``step``; a resumed (non-deterministic) trainer's have shorter lines."""
    if resumed:
        return {"train_bpd": round(4.0 - step / 1000, 2), "grad_norm": 1.0}
    return {"train_bpd": 4.0 - step / 1000 + 1 / 3, "grad_norm": 1.0 + step / 7}


def _lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / SPOOL_NAME).read_bytes().splitlines()]


def _deliver(spool: MetricSpool, store: set) -> None:
    """What the flusher does, into ``store``: a set of MLflow's metric primary key (key, step, ts, value)."""
    items, end = spool.pending(100_000)
    store.update((m.key, m.step, m.timestamp, m.value) for m in items)
    spool.acknowledge(end)


def test_truncated_spool_resumed_trainer_relogs_lost_steps_once_and_all_reach_the_store(tmp_path, caplog):
    """Spool steps 0..120 (the store acknowledged up to step 110), lose the last 3000 bytes, reopen and
    repeat steps 60..120 as a trainer resumed from its step-60 checkpoint does: the spool holds every
    step exactly once, and the store every step (the old cursor, past the end, is not trusted)."""
    spool, store = MetricSpool(tmp_path), set()
    for step in range(111):
        spool.append(_metrics(step, resumed=False), step, 1_000_000 + step)
    _deliver(spool, store)
    for step in range(111, 121):
        spool.append(_metrics(step, resumed=False), step, 1_000_000 + step)
    spool.close()
    path = tmp_path / SPOOL_NAME
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 3000)
    data = path.read_bytes()
    kept = max(json.loads(line)["step"] for line in data[: data.rfind(b"\n") + 1].splitlines())  # whole lines

    with caplog.at_level(logging.WARNING, logger="jobs.tracking.spool"):
        spool = MetricSpool(tmp_path)
    assert f"{tmp_path / CURSOR_NAME}: offset" in caplog.text and "beyond the end" in caplog.text
    data = path.read_bytes()
    assert spool.cursor() == len(data) and data.endswith(b"\n")
    assert spool.high_water == dict.fromkeys(KEYS, kept)
    for step in range(60, 121):
        spool.append(_metrics(step, resumed=True), step, 2_000_000 + step)
    assert spool.dropped == 2 * (kept - 59)
    pending, _ = spool.pending(100_000)
    assert sorted({m.step for m in pending}) == list(range(kept + 1, 121))
    _deliver(spool, store)
    spool.close()

    counts = Counter((line["key"], line["step"]) for line in _lines(tmp_path))
    assert counts == Counter({(key, step): 1 for key in KEYS for step in range(121)})
    assert {(key, step) for key, step, _, _ in store} == set(counts)  # no gap in the store's history


def test_cursor_inside_a_line_resends_that_line(tmp_path, caplog):
    spool = MetricSpool(tmp_path)
    for step in range(5):
        spool.append({"a": float(step)}, step, 1000 + step)
    spool.close()
    starts = [0]
    for line in (tmp_path / SPOOL_NAME).read_bytes().splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    (tmp_path / CURSOR_NAME).write_text(json.dumps({"offset": starts[2] + 7}))
    with caplog.at_level(logging.WARNING, logger="jobs.tracking.spool"):
        spool = MetricSpool(tmp_path)
    assert "not at a line boundary" in caplog.text and str(tmp_path / SPOOL_NAME) in caplog.text
    assert spool.cursor() == starts[2]
    items, _ = spool.pending(10)
    assert [m.step for m in items] == [2, 3, 4]  # step 2 again: same (key, step, timestamp, value)
    spool.close()


@pytest.mark.parametrize("text", ["", "{\"offset\": ", "{\"position\": 3}", "[1, 2]"])
def test_unreadable_cursor_resends_everything(tmp_path, caplog, text):
    spool = MetricSpool(tmp_path)
    spool.append({"a": 1.0}, 1, 1000)
    spool.append({"a": 2.0}, 2, 1000)
    spool.close()
    (tmp_path / CURSOR_NAME).write_text(text)
    with caplog.at_level(logging.WARNING, logger="jobs.tracking.spool"):
        spool = MetricSpool(tmp_path)
    assert f"{tmp_path / CURSOR_NAME}: unreadable" in caplog.text
    assert spool.cursor() == 0 and spool.pending_count() == 2
    spool.close()


def test_sync_acknowledge_and_close_fsync_the_spool_before_the_cursor(tmp_path, monkeypatch):
    """A power loss keeps only what was fsynced: the spool must be durable before the cursor that
    points into it, and the cursor itself must be fsynced (file and folder) when it is replaced."""
    spool = MetricSpool(tmp_path)
    spool.append({"a": 1.0}, 1, 1000)
    events: list[tuple[str, object]] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.fstat(fd).st_ino)), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda src, dst: (events.append(("replace", os.path.basename(dst))),
                                                          real_replace(src, dst))[1])
    spool_ino = (tmp_path / SPOOL_NAME).stat().st_ino
    spool.sync()
    assert events == [("fsync", spool_ino)]

    events.clear()
    _, end = spool.pending(10)
    spool.acknowledge(end)
    cursor_ino, dir_ino = (tmp_path / CURSOR_NAME).stat().st_ino, tmp_path.stat().st_ino
    assert events == [("fsync", spool_ino), ("fsync", cursor_ino), ("replace", CURSOR_NAME), ("fsync", dir_ino)]
    assert json.loads((tmp_path / CURSOR_NAME).read_text()) == {"offset": end}

    events.clear()
    spool.append({"a": 2.0}, 2, 1000)
    spool.close()
    spool.close()  # idempotent
    assert events == [("fsync", spool_ino)]
