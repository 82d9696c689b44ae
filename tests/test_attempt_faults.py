"""Holes between attempts, closed and proven with real processes: two attempts at one run folder,
an end state the store missed, a tracking store down at the start, a trial killed by a signal,
a dead launcher, a second launch, ``cancel``, and a finished trial whose evaluation never ran."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from jobs.config import load_trial_config, trial_id
from tests.fixtures.mlflow_server import MlflowServer, free_port
from tests.fixtures.sweep import REPO, SMOKE
from tests.fixtures.trial import run_train, start_train, tiny_trial

pytestmark = pytest.mark.slow
ONE = ("backend=local", "local.parallel=1", "prior.kind=laplace", "train.batch_size=32", "evaluation.enabled=false")


def _run_dir(cfg: Path, out: Path) -> Path:
    return out / "single" / trial_id(load_trial_config(cfg))


def _wait_for(path: Path, text: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in {path} after {timeout} s:\n{path.read_text() if path.exists() else '-'}")


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_a_second_attempt_at_a_busy_run_folder_exits_3_and_touches_nothing(tmp_path, trial_data_root, trial_sqlite_uri):
    from mlflow import MlflowClient

    cfg = tiny_trial(tmp_path / "t.yaml", trial_data_root, tmp_path / "out", trial_sqlite_uri, train={"epochs": 4})
    first = start_train(cfg)
    try:
        for line in first.stdout:
            if "step 4 · epoch" in line:
                break
        run_dir = _run_dir(cfg, tmp_path / "out")
        second = run_train(cfg, timeout=120)
        assert second.returncode == 3, second.stderr
        assert f"pid {first.pid}" in second.stderr and "did nothing" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0
    state = json.loads((run_dir / "state.json").read_text())
    assert state["attempt"] == 1 and state["state"] == "finished"  # the second attempt never counted
    client = MlflowClient(trial_sqlite_uri)
    assert client.get_run(state["run_id"]).data.tags["rgflow.attempt"] == "1"
    assert _steps(client, state["run_id"], "train_bpd") == list(range(4, 33, 4))  # one writer: no duplicates


def test_offline_start_and_missed_end_state_are_delivered_by_the_next_attempt(tmp_path, trial_data_root):
    from mlflow import MlflowClient

    port = free_port()
    server = MlflowServer(tmp_path / "server", port)
    cfg = tiny_trial(tmp_path / "t.yaml", trial_data_root, tmp_path / "out", server.uri)
    offline = run_train(cfg, timeout=300)  # nothing listens on the port yet
    assert offline.returncode == 0, offline.stderr
    assert "training offline" in offline.stderr
    run_dir = _run_dir(cfg, tmp_path / "out")
    record = json.loads((run_dir / "tracking.json").read_text())
    assert record["run_id"] is None and record["pending_end"]["state"] == "finished"
    server.start()
    try:
        again = run_train(cfg, timeout=300)
        assert again.returncode == 0, again.stderr
        assert "delivered the run's pending end state" in again.stdout
        client = MlflowClient(server.uri)
        runs = client.search_runs([client.get_experiment_by_name("trial-tests").experiment_id])
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        assert runs[0].data.tags["rgflow.state"] == "finished"
        assert _steps(client, runs[0].info.run_id, "train_bpd") == [4, 8, 12, 16]
        assert _steps(client, runs[0].info.run_id, "val_bpd") == [8, 16]
        assert json.loads((run_dir / "state.json").read_text())["run_id"] == runs[0].info.run_id  # for jobs.evaluate
    finally:
        server.stop()


def test_a_trial_killed_by_sigkill_is_reaped_counted_and_retried(sweep_env):
    proc = sweep_env.popen(SMOKE, *sweep_env.overrides(*ONE, "train.epochs=5", "train.steps=40", "max_failures=1"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs = sweep_env.runs_dir / "smoke" / "logs"
    try:
        _wait_for(logs / "trial-0000.log", "step 10 ·")
        pid = int(json.loads((sweep_env.runs_dir / "smoke" / "sweep-state.json").read_text())["trials"].popitem()[1]["job_id"])
        subprocess.run(["kill", "-9", str(pid)], check=True)
        out, err = proc.communicate(timeout=400)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    log = (logs / "trial-0000.log").read_text()
    assert "killed by SIGKILL (signal 9) — out of memory?; failure 1" in log
    assert "resuming from step-" in log
    [run] = sweep_env.trial_runs()
    assert run.info.status == "FINISHED" and run.data.tags["rgflow.failures"] == "1"
    assert run.data.tags["rgflow.attempt"] == "2"
    assert _steps(sweep_env.client(), run.info.run_id, "train_bpd") == list(range(2, 41, 2))


def test_status_reaps_runs_of_a_dead_launcher_and_a_rerun_finishes_them(sweep_env):
    proc = sweep_env.popen(SMOKE, *sweep_env.overrides(*ONE, "train.epochs=5", "train.steps=40"))
    logs = sweep_env.runs_dir / "smoke" / "logs"
    try:
        _wait_for(logs / "trial-0000.log", "step 10 ·")
    finally:
        assert sweep_env.kill_leftovers()  # SIGKILL: the launcher and its trial, no warning
        proc.wait()
    [run] = sweep_env.trial_runs()
    assert run.info.status == "RUNNING"
    status = sweep_env.run("status", SMOKE, *sweep_env.overrides(*ONE, "train.epochs=5", "train.steps=40"))
    assert status.returncode == 0, status.stderr
    assert "closed FAILED (its attempt is gone without ending the run" in status.stdout
    [run] = sweep_env.trial_runs()
    assert run.info.status == "FAILED" and run.data.tags["rgflow.failures"] == "1"
    assert "host" in run.data.tags["rgflow.failure_reason"]
    assert sweep_env.parent_runs()[0].info.status == "FAILED"  # the launcher is gone: status closed it
    rerun = sweep_env.run(SMOKE, *sweep_env.overrides(*ONE, "train.epochs=5", "train.steps=40"))
    assert rerun.returncode == 0, rerun.stderr
    [run] = sweep_env.trial_runs()
    assert run.info.status == "FINISHED"
    assert _steps(sweep_env.client(), run.info.run_id, "train_bpd") == list(range(2, 41, 2))


def test_a_second_launch_leaves_the_driver_and_cancel_signals_each_trial_once(sweep_env):
    args = (SMOKE, *sweep_env.overrides(*ONE, "train.epochs=50", "train.steps=400"))
    proc = sweep_env.popen(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state_file = sweep_env.runs_dir / "smoke" / "sweep-state.json"
    try:
        _wait_for(sweep_env.runs_dir / "smoke" / "logs" / "trial-0000.log", "step 4 ·")
        second = sweep_env.run(*args)
        assert second.returncode == 3, second.stderr
        assert f"pid {proc.pid}" in second.stderr and "jobs.sweep cancel" in second.stderr
        assert json.loads(state_file.read_text())["driver_pid"] == proc.pid
        cancel = sweep_env.run("cancel", *args)
        assert cancel.returncode == 0, cancel.stderr
        assert "and the launcher" in cancel.stdout
        proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130
    [run] = sweep_env.trial_runs()
    assert run.info.status == "KILLED" and run.data.tags["rgflow.state"] == "killed"
    assert run.data.tags["rgflow.failure_reason"] == "received SIGINT"  # one SIGINT: a checkpoint, not "twice"
    assert sweep_env.parent_runs()[0].info.status == "KILLED"


def test_a_rerun_evaluates_finished_trials_whose_evaluation_never_ran(sweep_env):
    base = ("backend=local", "local.parallel=1", "prior.kind=laplace", "train.batch_size=32",
            "evaluation.samples=false", "evaluation.receptive_fields=false")
    first = sweep_env.run(SMOKE, *sweep_env.overrides(*base, "evaluation.enabled=false"))
    assert first.returncode == 0, first.stderr
    [run] = sweep_env.trial_runs()
    assert "rgflow.eval.protocol" not in run.data.tags and "test_bpd" not in run.data.metrics
    again = sweep_env.run(SMOKE, *sweep_env.overrides(*base))
    assert again.returncode == 0, again.stderr
    assert "finished but not evaluated: evaluating" in again.stderr
    [run] = sweep_env.trial_runs()
    assert "rgflow.eval.protocol" in run.data.tags and "test_bpd" in run.data.metrics
    assert run.data.tags["rgflow.attempt"] == "1"  # evaluated, not trained again


def test_trials_outliving_a_killed_launcher_are_awaited_and_end_evaluated(sweep_env):
    base = ("backend=local", "local.parallel=1", "prior.kind=laplace", "train.batch_size=32",
            "evaluation.samples=false", "evaluation.receptive_fields=false", "train.epochs=5", "train.steps=40")
    proc = sweep_env.popen(SMOKE, *sweep_env.overrides(*base))
    try:
        _wait_for(sweep_env.runs_dir / "smoke" / "logs" / "trial-0000.log", "step 10 ·")
        proc.send_signal(signal.SIGKILL)  # the launcher only: its trial runs in its own session
        proc.wait()
        rerun = sweep_env.run(SMOKE, *sweep_env.overrides(*base))
    finally:
        sweep_env.kill_leftovers()
    assert rerun.returncode == 0, rerun.stderr
    assert "waiting for 1 trial process(es) left running by an earlier launch" in rerun.stderr
    [run] = sweep_env.trial_runs()
    assert run.info.status == "FINISHED" and "test_bpd" in run.data.metrics  # evaluated by the trial itself
    assert run.data.tags["rgflow.attempt"] == "1"
    assert sweep_env.parent_runs()[0].info.status == "FINISHED"


def _trial_dir(sweep_env, *overrides: str) -> Path:
    from jobs.sweep_spec import load_sweep

    [trial] = load_sweep(REPO / SMOKE, sweep_env.overrides(*overrides)).trials
    return sweep_env.runs_dir / "smoke" / trial.trial_id


def test_a_garbled_file_of_the_run_folder_counts_as_a_failure_and_never_loops(sweep_env):
    """Random bytes in the trial's tracking record: each attempt fails before training with one line
    naming the file and the fix, counted under max_failures, so the launcher gives up after 2."""
    overrides = (*ONE, "max_failures=1")
    record = _trial_dir(sweep_env, *overrides) / "tracking.json"
    record.parent.mkdir(parents=True)
    record.write_bytes(bytes(range(256)) * 4)
    done = sweep_env.run(SMOKE, *sweep_env.overrides(*overrides), timeout=300)
    assert done.returncode != 0
    log = (sweep_env.runs_dir / "smoke" / "logs" / "trial-0000.log").read_text()
    failed = [line for line in log.splitlines() if "] failed before training:" in line]
    assert len(failed) == 2, log  # the first attempt and one retry (max_failures=1), no more
    assert all(f"{record}: not valid JSON" in line and "delete it to start the run's tracking over" in line
               for line in failed)
    state = json.loads((record.parent / "state.json").read_text())
    assert state["state"] == "failed" and state["failures"] == 2 and str(record) in state["reason"]
    assert "Traceback" not in done.stderr


def test_a_garbled_checkpoint_sidecar_is_skipped_by_name_and_the_trial_finishes(sweep_env):
    overrides = (*ONE, "max_failures=1")
    checkpoints = _trial_dir(sweep_env, *overrides) / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "step-00000002.ckpt").write_bytes(b"not a checkpoint")
    (checkpoints / "step-00000002.ckpt.sha256").write_bytes(bytes(range(128, 256)) * 8)  # not even text
    done = sweep_env.run(SMOKE, *sweep_env.overrides(*overrides), timeout=300)
    assert done.returncode == 0, done.stderr
    log = (sweep_env.runs_dir / "smoke" / "logs" / "trial-0000.log").read_text()
    assert f"skipping invalid checkpoint {checkpoints / 'step-00000002.ckpt'}" in log, log
    [run] = sweep_env.trial_runs()
    assert run.info.status == "FINISHED" and run.data.tags["rgflow.attempt"] == "1"
