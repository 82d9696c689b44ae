"""Preemption and resume of ``python -m jobs.train`` as real processes: SIGKILL (no warning),
SIGTERM (checkpoint, exit 75) and SIGINT (checkpoint, exit 130). A resumed trial ends with the
bitwise-same weights and metric series as an uninterrupted one, in one MLflow run, with no
duplicated or missing metric steps."""
from __future__ import annotations

import json
import signal

import pytest
import torch
from mlflow import MlflowClient

from jobs.config import load_trial_config, trial_id
from rgflow.checkpoint import load_checkpoint
from tests.fixtures.trial import run_train, start_train, tiny_trial

TIMING = {"wall_s", "images_per_s"}  # the only metrics allowed to differ after a resume


def _config(tmp_path, data_root, uri, name):
    return tiny_trial(tmp_path / f"{name}.yaml", data_root, tmp_path / name, uri, tracking={"experiment": name})


def _state(cfg_path, name, tmp_path):
    tid = trial_id(load_trial_config(cfg_path))
    run_dir = tmp_path / name / "single" / tid
    return run_dir, json.loads((run_dir / "state.json").read_text())


def _histories(uri, run_id):
    client = MlflowClient(uri)
    keys = client.get_run(run_id).data.metrics
    return {key: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
            for key in keys}


def _interrupt(cfg_path, after: str, signum: int) -> tuple[int, str]:
    """Start the trial, send ``signum`` once a stdout line contains ``after``; (exit code, stdout)."""
    proc = start_train(cfg_path)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if after in line:
                proc.send_signal(signum)
                break
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert any(after in line for line in seen), "".join(seen) + err
    return proc.returncode, "".join(seen) + out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, trial_data_root, trial_sqlite_uri):
    """The uninterrupted run: final checkpoint state and metric histories.

    Every run here is a fresh process: inside a long pytest session, an in-process trial was seen
    to differ from fresh processes after ≈8 steps (some earlier test changes process-wide
    floating-point state), while fresh processes agree bitwise."""
    tmp_path = tmp_path_factory.mktemp("reference")
    cfg = _config(tmp_path, trial_data_root, trial_sqlite_uri, "reference")
    done = run_train(cfg)
    assert done.returncode == 0, done.stderr
    _, state = _state(cfg, "reference", tmp_path)
    return load_checkpoint(state["checkpoint"]), _histories(trial_sqlite_uri, state["run_id"])


def _assert_same_as_reference(reference, state, uri):
    ref_ckpt, ref_hist = reference
    ckpt = load_checkpoint(state["checkpoint"])
    assert ckpt["loop"]["step"] == ref_ckpt["loop"]["step"] == 16
    for key, value in ref_ckpt["model"].items():
        assert torch.equal(ckpt["model"][key], value), key
    for index, slots in ref_ckpt["optimizer"]["state"].items():
        for name, value in slots.items():
            assert torch.equal(ckpt["optimizer"]["state"][index][name], value), (index, name)
    hist = _histories(uri, state["run_id"])
    assert set(hist) == set(ref_hist)
    for key, points in hist.items():
        steps = [s for s, _ in points]
        assert steps == sorted(set(steps)) == [s for s, _ in ref_hist[key]], key  # no gaps, no duplicates
        if key not in TIMING:
            assert points == ref_hist[key], key  # bitwise: float equality of every value


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(tmp_path, trial_data_root, trial_sqlite_uri, reference):
    cfg = _config(tmp_path, trial_data_root, trial_sqlite_uri, "killed")
    code, out = _interrupt(cfg, "step 12 · epoch 1.50 · train", signal.SIGKILL)
    assert code == -signal.SIGKILL
    run_dir, state = _state(cfg, "killed", tmp_path)
    assert state["state"] == "running"  # a hard kill leaves no trace but the last checkpoint (step 8)
    assert MlflowClient(trial_sqlite_uri).get_run(state["run_id"]).info.status == "RUNNING"

    done = run_train(cfg)  # the restart
    assert done.returncode == 0, done.stderr
    assert "resuming from step-00000008" in done.stdout and "attempt 2" in done.stdout
    _, state = _state(cfg, "killed", tmp_path)
    assert (state["state"], state["attempt"]) == ("finished", 2)
    run = MlflowClient(trial_sqlite_uri).get_run(state["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["rgflow.attempt"] == "2"
    _assert_same_as_reference(reference, state, trial_sqlite_uri)


@pytest.mark.slow
def test_sigterm_preempts_with_exit_75_then_resume_finishes_identically(tmp_path, trial_data_root, trial_sqlite_uri,
                                                                        reference):
    cfg = _config(tmp_path, trial_data_root, trial_sqlite_uri, "preempted")
    code, out = _interrupt(cfg, "step 12 · epoch 1.50 · train", signal.SIGTERM)
    assert code == 75, out
    assert "preempted: received SIGTERM" in out
    run_dir, state = _state(cfg, "preempted", tmp_path)
    assert (state["state"], state["reason"]) == ("preempted", "received SIGTERM")
    run = MlflowClient(trial_sqlite_uri).get_run(state["run_id"])
    assert run.info.status == "KILLED" and run.data.tags["rgflow.state"] == "preempted"
    stopped_at = load_checkpoint(sorted((run_dir / "checkpoints").glob("step-*.ckpt"))[-1])["loop"]["step"]
    assert 12 <= stopped_at < 16  # checkpointed at once, mid-epoch

    done = run_train(cfg)  # the requeued attempt
    assert done.returncode == 0, done.stderr
    assert f"resuming from step-{stopped_at:08d}" in done.stdout
    _, state = _state(cfg, "preempted", tmp_path)
    run = MlflowClient(trial_sqlite_uri).get_run(state["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["rgflow.attempt"] == "2"
    assert run.data.tags["rgflow.state"] == "finished"
    _assert_same_as_reference(reference, state, trial_sqlite_uri)


@pytest.mark.slow
def test_sigint_checkpoints_and_exits_130_as_killed(tmp_path, trial_data_root, trial_sqlite_uri):
    cfg = _config(tmp_path, trial_data_root, trial_sqlite_uri, "interrupted")
    code, out = _interrupt(cfg, "step 4 · epoch 0.50 · train", signal.SIGINT)
    assert code == 130, out
    run_dir, state = _state(cfg, "interrupted", tmp_path)
    assert state["state"] == "killed"
    run = MlflowClient(trial_sqlite_uri).get_run(state["run_id"])
    assert run.info.status == "KILLED" and run.data.tags["rgflow.state"] == "killed"
    assert list((run_dir / "checkpoints").glob("step-*.ckpt"))  # checkpointed before exiting
