"""jobs.tracking against a real ``mlflow server`` (fixture ``mlflow_server``): the same run content
as on sqlite, an outage in the middle of a run, and a run that starts while the server is down.
"""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from jobs import tracking as T
from tests.test_tracking import KEYS, PARAMS, _histories

pytestmark = pytest.mark.slow


@pytest.fixture
def fast_failures(monkeypatch):
    """No HTTP-level retries: an outage shows up in one request instead of ≈3 s of urllib3 backoff."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def _open(uri, exp, trial_id, run_dir, **kw) -> T.TrialRun:
    return T.open_trial_run(uri, exp, trial_id, f"trial-{trial_id}", None, PARAMS, {}, run_dir,
                            flush_interval_s=0.2, **kw)


def _log(trial, steps):
    for step in steps:
        trial.log_metrics({k: step + i / 100 for i, k in enumerate(KEYS)}, step)


def test_run_content_on_server(mlflow_server, tmp_path):
    uri = mlflow_server.uri
    exp = T.ensure_experiment(uri, "content")
    sweep = T.ensure_sweep_run(uri, exp, "content", "sid", {"grid": {"train.batch_size": [64]}})
    trial = T.open_trial_run(uri, exp, "t0", "trial-t0", sweep, PARAMS, {"rgflow.backend": "local"},
                             tmp_path / "run", flush_interval_s=0.2)
    _log(trial, range(1, 301))
    trial.log_text("seed: 0\n", "config.yaml")
    assert trial.end("failed", reason="non-finite loss at step 300") is True
    client = T.get_client(uri)
    run = client.get_run(trial.run_id)
    assert (run.info.status, run.data.tags["rgflow.state"], run.data.tags["rgflow.failure_reason"]) == (
        "FAILED", "failed", "non-finite loss at step 300")
    assert run.data.tags["mlflow.parentRunId"] == sweep and run.data.tags["rgflow.backend"] == "local"
    assert run.data.params["model.nlayers"] == "[2, 2]" and len(run.data.params) == 5
    assert _histories(uri, trial.run_id) == {k: list(range(1, 301)) for k in KEYS}
    assert [f.path for f in client.list_artifacts(trial.run_id)] == ["config.yaml"]
    summary = T.find_trial_runs(uri, exp, parent_run_id=sweep)["t0"]
    assert (summary.run_id, summary.status, summary.attempt) == (trial.run_id, "FAILED", 1)


def test_outage_loses_and_doubles_nothing(mlflow_server, tmp_path, fast_failures):
    """One outage (server killed, then restarted on the same port and store) seen by three trials:
    ``live`` was running when the server died; ``a`` and ``b`` start while it is down."""
    uri = mlflow_server.uri
    exp = T.ensure_experiment(uri, "outage")
    live = _open(uri, exp, "live", tmp_path / "live")
    _log(live, range(1, 101))
    assert live.flush(timeout_s=30)
    mlflow_server.stop(crash=True)
    try:
        assert mlflow_server.script("status").returncode == 1
        _log(live, range(101, 201))
        deadline = time.monotonic() + 20
        while live.error is None and time.monotonic() < deadline:  # the flusher notices the outage
            time.sleep(0.1)
        assert not live.online
        assert live.pending_metrics() == 100 * len(KEYS)
        assert live.flush(timeout_s=1) is False

        first = _open(uri, exp, "a", tmp_path / "a", connect_timeout_s=1)
        assert first.run_id is None and not first.online
        _log(first, range(1, 51))
        assert first.end("preempted", reason="SIGTERM", timeout_s=1) is False
        record = json.loads((tmp_path / "a" / T.RECORD_NAME).read_text())
        assert record["run_id"] is None and record["pending_end"]["state"] == "preempted"

        other = _open(uri, exp, "b", tmp_path / "b", connect_timeout_s=1)
        _log(other, range(1, 51))
    finally:
        mlflow_server.start()
    # the run that lived through the outage: everything exactly once
    _log(live, range(201, 301))
    assert live.end("finished", timeout_s=60) is True
    assert live.online and live.pending_metrics() == 0
    assert _histories(uri, live.run_id) == {k: list(range(1, 301)) for k in KEYS}
    # a later flush of the same process creates the run and replays the spool
    assert other.flush(timeout_s=60) is True and other.run_id is not None
    _log(other, range(51, 61))
    assert other.end("finished")
    assert _histories(uri, other.run_id) == {k: list(range(1, 61)) for k in KEYS}
    # the next attempt of the trial that ran offline creates its run, replays attempt 1, goes on
    second = _open(uri, exp, "a", tmp_path / "a")
    assert second.run_id is not None and second.attempt == 2
    _log(second, range(51, 101))
    assert second.end("finished")
    assert _histories(uri, second.run_id) == {k: list(range(1, 101)) for k in KEYS}
    runs = T.find_trial_runs(uri, exp)
    assert set(runs) == {"live", "a", "b"}
    assert {t: (r.status, r.attempt) for t, r in runs.items()} == {
        "live": ("FINISHED", 1), "a": ("FINISHED", 2), "b": ("FINISHED", 1)}
    assert runs["a"].run_id == second.run_id


def test_server_script_status_start_is_idempotent(mlflow_server):
    status = mlflow_server.script("status")
    assert status.returncode == 0
    assert f"export MLFLOW_TRACKING_URI={mlflow_server.uri}" in status.stdout.splitlines()
    again = mlflow_server.script("start")
    assert again.returncode == 0 and "already running" in again.stderr
    assert again.stdout.strip() == f"export MLFLOW_TRACKING_URI={mlflow_server.uri}"


def test_server_script_rejects_bad_settings(tmp_path):
    from tests.fixtures.mlflow_server import SCRIPT

    done = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, MLFLOW_SERVER_DIR=str(tmp_path), MLFLOW_PORT="50OO"))
    assert done.returncode == 2
    assert done.stderr.strip() == "mlflow/server.sh: MLFLOW_PORT=50OO: must be a port number"
    assert not (tmp_path / "server.pid").exists()
    usage = subprocess.run(["bash", str(SCRIPT), "restart"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: mlflow/server.sh start|stop|status")


def test_server_folder_is_readable_by_its_owner_only(mlflow_server, tmp_path):
    """A folder the script creates is mode 0700 (umask 077), and so is what the server writes in it.
    The new folder is made by a start refused after the folder exists (basic auth without its secret
    key), so no second server is needed; the running server's store, log and artifacts are checked."""
    from tests.fixtures.mlflow_server import SCRIPT

    folder = tmp_path / "new" / "server"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=60,
                          env=dict(env, MLFLOW_SERVER_DIR=str(folder), MLFLOW_AUTH="1", MLFLOW_PORT="1"))
    assert done.returncode == 2 and "MLFLOW_AUTH=1 needs" in done.stderr
    assert (folder.stat().st_mode & 0o777, (folder / "artifacts").stat().st_mode & 0o777) == (0o700, 0o700)
    assert (tmp_path / "new").stat().st_mode & 0o077 == 0
    root = mlflow_server.root
    assert (root / "artifacts").stat().st_mode & 0o777 == 0o700
    for name in ("mlflow.db", "server.log", "server.pid"):
        assert (root / name).stat().st_mode & 0o077 == 0, name
