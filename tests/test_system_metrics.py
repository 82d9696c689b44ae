"""MLflow's system metrics on a trial's run (``tracking.system_metrics``), read back from a real
sqlite store: sampled while the trial runs, continued by a resumed attempt without repeating a
step, never on the console, none when switched off, none after the run ended, and silent while
the store is down."""
from __future__ import annotations

import json
import threading
import time

import pytest
from mlflow import MlflowClient

from jobs.config import load_trial_config, trial_id
from jobs.tracking import ensure_experiment, open_trial_run
from jobs.train import run_trial
from tests.fixtures.mlflow_server import free_port
from tests.fixtures.trial import start_train, tiny_trial

CPU, MEMORY = "system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"
ON = {"system_metrics": True, "system_metrics_interval_s": 1}  # 1 s: the shortest interval allowed


def _spooled(run_dir, key: str = CPU) -> list[int]:
    """The steps of ``key`` in the run folder's metric spool."""
    path = run_dir / "metrics-spool.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [item["step"] for item in map(json.loads, lines) if item["key"] == key]


def _system_history(client: MlflowClient, run_id: str) -> dict[str, list]:
    keys = [k for k in client.get_run(run_id).data.metrics if k.startswith("system/")]
    return {k: sorted(client.get_metric_history(run_id, k), key=lambda m: m.step) for k in keys}


def _monitor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]


@pytest.mark.slow
def test_a_preempted_trial_keeps_sampling_into_the_same_run(tmp_path, trial_data_root, trial_sqlite_uri, capfd):
    """Attempt 1 (``python -m jobs.train``) is preempted by SIGTERM once it has spooled two
    samples; attempt 2 (in this process) resumes the run and goes on from the next step: one
    sample series 0…n−1."""
    cfg = tiny_trial(tmp_path / "t.yaml", trial_data_root, tmp_path / "runs", trial_sqlite_uri,
                     train={"epochs": 4}, tracking=ON)
    run_dir = tmp_path / "runs" / "single" / trial_id(load_trial_config(cfg))
    first = start_train(cfg)
    try:
        deadline = time.monotonic() + 120
        while len(_spooled(run_dir)) < 2 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        samples = len(_spooled(run_dir))
        first.terminate()  # SIGTERM: checkpoint, run KILLED (preempted), exit 75
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert samples >= 2, f"attempt 1 spooled {samples} system metric samples before it ended:\n{out}{err}"
    assert first.returncode == 75, f"attempt 1 ended with {first.returncode} before its fault:\n{out}{err}"
    state = json.loads((run_dir / "state.json").read_text())
    client = MlflowClient(trial_sqlite_uri)
    first_steps = [m.step for m in _system_history(client, state["run_id"])[CPU]]
    assert len(first_steps) >= 2 and first_steps == list(range(len(first_steps)))

    second = run_trial(load_trial_config(cfg))
    assert (second.state, second.run_id) == ("finished", state["run_id"]) and not _monitor_threads()
    run = client.get_run(state["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["rgflow.attempt"] == "2"
    history = _system_history(client, run.info.run_id)
    steps = [m.step for m in history[CPU]]
    assert len(steps) > len(first_steps) and steps == list(range(len(steps)))  # continued, no step twice
    assert {k: [m.step for m in v] for k, v in history.items()} == dict.fromkeys(history, steps)  # every key
    assert {"system/disk_usage_percentage", "system/network_receive_megabytes"} <= set(history)
    stamps = [m.timestamp for m in history[CPU]]
    assert stamps == sorted(stamps) and run.info.start_time <= stamps[0] and stamps[-1] <= run.info.end_time
    assert all(0 <= m.value <= 100 for m in history[CPU])
    assert all(m.value > 0 for m in history[MEMORY])
    captured = capfd.readouterr()
    for console in (out + err, captured.out + captured.err):  # the trainer's console stays clean
        assert "system metrics" not in console.lower() and "GPU" not in console and "Traceback" not in console


@pytest.mark.slow
def test_switched_off_logs_no_system_metrics(tmp_path, trial_data_root, trial_sqlite_uri):
    cfg = load_trial_config(tiny_trial(tmp_path / "t.yaml", trial_data_root, tmp_path / "runs", trial_sqlite_uri,
                                       train={"epochs": 6}, tracking={**ON, "system_metrics": False}))
    started = time.monotonic()
    outcome = run_trial(cfg)
    assert outcome.state == "finished" and time.monotonic() - started > 2  # long enough for 1 s samples
    assert _system_history(MlflowClient(trial_sqlite_uri), outcome.run_id) == {}
    assert _spooled(outcome.run_dir) == [] and not _monitor_threads()


def test_an_ended_run_gets_no_more_system_metrics(tmp_path, trial_sqlite_uri):
    experiment = ensure_experiment(trial_sqlite_uri, "system-metrics")
    trial = open_trial_run(trial_sqlite_uri, experiment, "ended", "ended", None, {}, {}, tmp_path / "run",
                           system_metrics_interval_s=1)
    deadline = time.monotonic() + 30
    while len(_spooled(tmp_path / "run")) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert trial.end("finished") and not _monitor_threads()
    client = MlflowClient(trial_sqlite_uri)
    before = _system_history(client, trial.run_id)
    size = (tmp_path / "run" / "metrics-spool.jsonl").stat().st_size
    time.sleep(2.5)  # two intervals and a half
    assert _system_history(client, trial.run_id) == before and len(before[CPU]) >= 2
    assert (tmp_path / "run" / "metrics-spool.jsonl").stat().st_size == size


def test_store_down_is_silent_and_bounded(tmp_path, capfd, monkeypatch):
    """No store answering: the samples wait in the spool, no traceback or monitor line reaches the
    console, and ``end`` takes no longer than its timeout plus the one store request in flight
    (the monitor itself never calls the store)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail each request at once
    started = time.monotonic()
    trial = open_trial_run(f"http://127.0.0.1:{free_port()}", None, "offline", "offline", None, {}, {},
                           tmp_path / "run", connect_timeout_s=0.0, experiment_name="system-metrics",
                           system_metrics_interval_s=1)
    request_s = time.monotonic() - started  # one refused request
    assert trial.run_id is None  # offline
    deadline = time.monotonic() + 30
    while len(_spooled(tmp_path / "run")) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    started = time.monotonic()
    assert not trial.end("finished", timeout_s=2.0)
    assert time.monotonic() - started < 2.0 + request_s + 1.0 and not _monitor_threads()
    steps = _spooled(tmp_path / "run")
    assert len(steps) >= 2 and steps == list(range(len(steps))) and _spooled(tmp_path / "run", MEMORY) == steps
    console = capfd.readouterr()
    assert "Traceback" not in console.err and "system metrics" not in (console.out + console.err).lower()


def test_a_trial_shorter_than_the_interval_has_system_metrics(tmp_path, trial_sqlite_uri):
    """At the 15 s default interval a 2-second trial still gets a sample near its start (≤ 1 s in)
    and one at its end, in the store, within the run's time."""
    experiment = ensure_experiment(trial_sqlite_uri, "system-metrics")
    trial = open_trial_run(trial_sqlite_uri, experiment, "short", "short", None, {}, {}, tmp_path / "run",
                           system_metrics_interval_s=15)
    time.sleep(2.0)
    assert trial.end("finished") and not _monitor_threads()
    client = MlflowClient(trial_sqlite_uri)
    run = client.get_run(trial.run_id)
    history = _system_history(client, trial.run_id)
    assert [m.step for m in history[CPU]] == [0, 1] and [m.step for m in history[MEMORY]] == [0, 1]
    start, end = (m.timestamp for m in history[CPU])
    assert run.info.start_time <= start <= run.info.start_time + 1500 and start + 700 <= end <= run.info.end_time
    assert all(0 <= m.value <= 100 for m in history[CPU]) and all(m.value > 0 for m in history[MEMORY])
