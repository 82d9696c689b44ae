"""jobs.tracking on a real sqlite MLflow store: run content, true end states, reopen, parent
linkage, batching, idempotent replay, sweep/parent helpers; plus unit tests of the pure parts.

Tests against a real ``mlflow server`` (including stopping it mid-run) are in
``tests/test_mlflow_server.py``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter

import pytest
from mlflow import MlflowClient

from jobs import tracking as T
from jobs.tracking.spool import MetricSpool

PARAMS = {"train": {"batch_size": 64, "lr": 0.001}, "model": {"preset": "tiny", "nlayers": (2, 2)}, "prior": {"kind": "laplace"}}
KEYS = [f"m{i}" for i in range(10)]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One sqlite store for this module (creating one costs ≈6 s)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture
def exp(store, request) -> str:
    return T.ensure_experiment(store, request.node.name)


def _open(store, exp, run_dir, trial_id="t0", parent=None, run_name=None, **kw) -> T.TrialRun:
    return T.open_trial_run(store, exp, trial_id, run_name or f"trial-{trial_id}", parent, PARAMS, {"rgflow.sweep": "s"},
                            run_dir, flush_interval_s=0.1, **kw)


def _histories(store, run_id, keys=KEYS) -> dict[str, list[int]]:
    client = T.get_client(store)
    return {k: sorted(m.step for m in client.get_metric_history(run_id, k)) for k in keys}


def test_finished_run_content(store, exp, tmp_path):
    trial = _open(store, exp, tmp_path / "run")
    for step in range(1, 31):
        trial.log_metrics({k: step + i / 10 for i, k in enumerate(KEYS)}, step)
    trial.log_text("seed: 0\n", "config.yaml")
    trial.set_tags({"rgflow.backend": "local"})
    assert trial.end("finished") is True
    run = T.get_client(store).get_run(trial.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"train.batch_size": "64", "train.lr": "0.001", "model.preset": "tiny",
                               "model.nlayers": "[2, 2]", "prior.kind": "laplace"}
    tags = run.data.tags
    assert (tags["rgflow.role"], tags["rgflow.trial_id"], tags["rgflow.attempt"], tags["rgflow.state"]) == (
        "trial", "t0", "1", "finished")
    assert tags["rgflow.backend"] == "local" and tags["rgflow.sweep"] == "s"
    assert tags["rgflow.run_dir"] == str((tmp_path / "run").resolve())
    assert "rgflow.failure_reason" not in tags
    assert len(tags["rgflow.git_commit"]) == 40 and tags["rgflow.version.mlflow"].startswith("3.")
    assert _histories(store, trial.run_id) == {k: list(range(1, 31)) for k in KEYS}
    assert run.data.metrics["m3"] == pytest.approx(30.3)
    assert [f.path for f in T.get_client(store).list_artifacts(trial.run_id)] == ["config.yaml"]
    assert trial.pending_metrics() == 0


@pytest.mark.parametrize(("state", "status"), [("failed", "FAILED"), ("preempted", "KILLED"), ("killed", "KILLED")])
def test_end_states(store, exp, tmp_path, state, status):
    trial = _open(store, exp, tmp_path / "run")
    trial.log_metrics({"train_bpd": 5.0}, 1)
    assert trial.end(state, reason=f"because {state}") is True
    assert trial.end("finished") is True  # second call: no effect
    run = T.get_client(store).get_run(trial.run_id)
    assert run.info.status == status
    assert run.data.tags["rgflow.state"] == state
    assert run.data.tags["rgflow.failure_reason"] == f"because {state}"
    with pytest.raises(RuntimeError, match="after end"):
        trial.log_metrics({"train_bpd": 1.0}, 2)


def test_bad_end_state_and_metric_name(store, exp, tmp_path):
    trial = _open(store, exp, tmp_path / "run")
    with pytest.raises(ValueError, match="metric name 'bad\"key'"):
        trial.log_metrics({'bad"key': 1.0}, 1)
    with pytest.raises(ValueError, match="metric loss='x': must be a number"):
        trial.log_metrics({"loss": "x"}, 1)
    with pytest.raises(ValueError, match="state='done': must be one of finished, pruned, failed, preempted, killed"):
        trial.end("done")
    assert trial.end("finished")


def test_reopen_bumps_attempt_keeps_one_run_and_drops_repeated_steps(store, exp, tmp_path):
    client = T.get_client(store)
    sweep = T.ensure_sweep_run(store, exp, "s", "sid-reopen", {"sweep": {"axes": "bs"}})
    first = _open(store, exp, tmp_path / "run", parent=sweep)
    for step in range(1, 21):
        first.log_metrics({"train_bpd": 10.0 - step / 10}, step)
    assert first.end("preempted", reason="SIGTERM")
    # resume from a checkpoint at step 15 (explicit run id, as stored in the checkpoint)
    second = _open(store, exp, tmp_path / "run", parent=sweep, existing_run_id=first.run_id)
    assert (second.run_id, second.attempt) == (first.run_id, 2)
    run = client.get_run(first.run_id)
    assert run.info.status == "RUNNING" and run.data.tags["rgflow.state"] == "running"
    assert "rgflow.failure_reason" not in run.data.tags
    for step in range(16, 31):
        second.log_metrics({"train_bpd": 99.0}, step)  # 16..20 repeat spooled steps: dropped
    assert second.dropped == 5
    assert second.end("finished")
    # a third attempt without the id finds the run through run_dir/tracking.json
    third = _open(store, exp, tmp_path / "run", parent=sweep)
    assert (third.run_id, third.attempt) == (first.run_id, 3)
    assert third.end("finished")
    history = client.get_metric_history(first.run_id, "train_bpd")
    assert sorted(m.step for m in history) == list(range(1, 31))
    assert {m.step for m in history if m.value == 99.0} == set(range(21, 31))
    runs = T.find_trial_runs(store, exp, parent_run_id=sweep)
    assert list(runs) == ["t0"]
    summary = runs["t0"]
    assert (summary.run_id, summary.status, summary.state, summary.attempt) == (first.run_id, "FINISHED", "finished", 3)
    assert summary.metrics["train_bpd"] == 99.0 and summary.params["train.batch_size"] == "64"


def test_parent_is_explicit_even_with_bogus_mlflow_run_id(store, exp, tmp_path, monkeypatch):
    sweep = T.ensure_sweep_run(store, exp, "s", "sid-parent", {})
    monkeypatch.setenv("MLFLOW_RUN_ID", "0123456789abcdef0123456789abcdef")
    trial = _open(store, exp, tmp_path / "run", parent=sweep)
    assert trial.end("finished")
    run = T.get_client(store).get_run(trial.run_id)
    assert run.data.tags["mlflow.parentRunId"] == sweep
    assert trial.run_id != os.environ["MLFLOW_RUN_ID"]


def test_background_batching_delivers_everything_exactly_once(store, exp, tmp_path):
    client = T.get_client(store)
    calls: list[int] = []
    original = client.log_batch

    def counting_log_batch(run_id, metrics=(), params=(), tags=(), synchronous=None):
        if metrics:
            calls.append(len(metrics))
        return original(run_id, metrics=metrics, params=params, tags=tags, synchronous=synchronous)

    client.log_batch = counting_log_batch
    try:
        trial = _open(store, exp, tmp_path / "run")
        steps = 1500
        for step in range(1, steps + 1):
            trial.log_metrics({k: float(step) for k in KEYS}, step)
            if step == steps // 2:  # let the flusher deliver part of it while training "runs"
                trial._stop.wait(0.5)
        assert calls, "the background flusher sent nothing while logging"
        assert trial.end("finished")
    finally:
        del client.log_batch
    assert max(calls) <= 1000 and sum(calls) == steps * len(KEYS)
    assert _histories(store, trial.run_id) == {k: list(range(1, steps + 1)) for k in KEYS}


def test_replay_after_lost_cursor_does_not_duplicate(store, exp, tmp_path):
    """At-least-once edge case: the batch was stored but the cursor write was lost; replayed by the CLI."""
    run_dir = tmp_path / "run"
    trial = _open(store, exp, run_dir)
    for step in range(1, 101):
        trial.log_metrics({"a": step, "b": -step}, step)
    assert trial.end("finished")
    (run_dir / T.CURSOR_NAME).unlink()
    done = subprocess.run([sys.executable, "-m", "jobs.tracking", "replay", str(run_dir)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{run_dir}: delivered"
    assert _histories(store, trial.run_id, ["a", "b"]) == {"a": list(range(1, 101)), "b": list(range(1, 101))}
    assert T.get_client(store).get_run(trial.run_id).info.status == "FINISHED"


def test_unknown_experiment_is_a_clear_error(store, tmp_path):
    with pytest.raises(T.TrackingError, match="trial t0: tracking store .* refused the run"):
        _open(store, "987654", tmp_path / "run", connect_timeout_s=5)


def test_foreign_spool_is_moved_aside(store, exp, tmp_path):
    run_dir = tmp_path / "run"
    first = _open(store, exp, run_dir, trial_id="old")
    first.log_metrics({"a": 1.0}, 1)
    assert first.end("finished")
    second = _open(store, exp, run_dir, trial_id="new")
    assert second.run_id != first.run_id
    assert (run_dir / f"metrics-spool.{first.run_id}.jsonl").exists()
    second.log_metrics({"a": 1.0}, 1)  # not refused: the old spool's steps are not this run's
    assert second.end("finished")
    assert _histories(store, second.run_id, ["a"]) == {"a": [1]}


def _race(create, n: int) -> tuple[list, list]:
    """Call ``create`` from ``n`` threads released together; ``(results, errors)``."""
    results, errors = [], []
    barrier = threading.Barrier(n)

    def worker():
        try:
            barrier.wait()
            results.append(create())
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def test_experiment_creation_is_race_safe(store):
    results, errors = _race(lambda: T.ensure_experiment(store, "raced"), 4)
    assert not errors and len(results) == 4 and len(set(results)) == 1
    tags = MlflowClient(tracking_uri=store).get_experiment(results[0]).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's training-runs view


def test_sweep_run_creation_is_race_safe(store, exp):
    results, errors = _race(lambda: T.ensure_sweep_run(store, exp, "raced", "sid-race", {}), 3)
    assert not errors and len(results) == 3 and len(set(results)) == 1
    live = T.get_client(store).search_runs([exp], "tags.`rgflow.sweep_id` = 'sid-race'")
    assert [r.info.run_id for r in live] == results[:1]


def test_sweep_run_lifecycle_and_mark_killed(store, exp, tmp_path):
    client = T.get_client(store)
    sweep = T.ensure_sweep_run(store, exp, "bs", "sid-1", {"grid": {"batch_size": [64, 512]}})
    assert T.ensure_sweep_run(store, exp, "bs", "sid-1", {}) == sweep
    run = client.get_run(sweep)
    assert run.info.status == "RUNNING"
    assert (run.data.tags["rgflow.role"], run.data.tags["rgflow.sweep"], run.data.tags["rgflow.sweep_id"]) == (
        "sweep", "bs", "sid-1")
    assert run.data.params == {"grid.batch_size": "[64, 512]"}
    done = _open(store, exp, tmp_path / "a", trial_id="a", parent=sweep)
    assert done.end("finished")
    live = _open(store, exp, tmp_path / "b", trial_id="b", parent=sweep)
    assert T.mark_killed(store, [done.run_id, live.run_id], "cancelled by user") == [live.run_id]
    killed = client.get_run(live.run_id)
    assert (killed.info.status, killed.data.tags["rgflow.state"], killed.data.tags["rgflow.failure_reason"]) == (
        "KILLED", "killed", "cancelled by user")
    assert client.get_run(done.run_id).info.status == "FINISHED"
    assert set(T.find_trial_runs(store, exp, sweep, trial_ids=["b", "zzz"])) == {"b"}
    live.end("killed", "cancelled by user")
    T.end_run(store, sweep, "finished")
    assert client.get_run(sweep).info.status == "FINISHED"
    assert T.ensure_sweep_run(store, exp, "bs", "sid-1", {}) == sweep  # a re-run reopens it
    assert client.get_run(sweep).info.status == "RUNNING"


def test_named_operations_for_code_outside_jobs_tracking(store, exp, tmp_path, request):
    from jobs.tracking.tags import BACKEND_TAG, EVAL_PROTOCOL_TAG

    assert T.find_experiment(store, request.node.name) == exp == T.ensure_experiment(store, request.node.name,
                                                                                      timeout_s=0.0)
    assert T.find_experiment(store, "no such experiment") is None
    sweep = T.ensure_sweep_run(store, exp, "ops", "sid-ops", {}, timeout_s=0.0)
    assert T.find_sweep_run(store, exp, "sid-ops").run_id == sweep == T.find_sweep_run(store, exp).run_id
    assert T.find_sweep_run(store, exp, "sid-other") is None
    T.log_parent_tags(store, sweep, {BACKEND_TAG: "local"})
    assert T.find_run(store, sweep).tags[BACKEND_TAG] == "local"
    assert T.find_run(store, "0" * 32) is None

    trial = _open(store, exp, tmp_path / "run", trial_id="tops", parent=sweep)
    trial.log_metrics({"val_bpd": 3.0}, 5)
    assert trial.end("failed", reason="nan loss")
    found = T.find_run_by_trial_id(store, "tops")
    assert (found.run_id, found.status, found.state, found.metrics) == (trial.run_id, "FAILED", "failed", {"val_bpd": 3.0})
    assert T.find_run_by_trial_id(store, "nothere") is None

    out = tmp_path / "eval-out"
    out.mkdir()
    (out / "a.txt").write_text("a")
    tags = {"rgflow.eval.seed": "1", EVAL_PROTOCOL_TAG: "h"}
    assert T.log_evaluation(store, trial.run_id, {"val_bpd": 3.0, "test_bpd": 2.5}, 5, tags, out, "eval") == ["test_bpd"]
    assert T.log_evaluation(store, trial.run_id, {"test_bpd": 2.5}, 5, tags) == []  # same value at that step
    assert [(s, v) for s, _, v in T.read_metric_history(store, trial.run_id, "test_bpd")] == [(5, 2.5)]
    assert T.read_metric_history(store, trial.run_id, "no_such_metric") == []
    after = T.find_run(store, trial.run_id)
    assert after.status == "FAILED" and after.tags[EVAL_PROTOCOL_TAG] == "h"  # status unchanged
    assert T.list_artifacts(store, trial.run_id, "eval") == ["eval/a.txt"]
    (tmp_path / "dl").mkdir()
    assert T.download_artifact(store, trial.run_id, "eval/a.txt", tmp_path / "dl").read_text() == "a"
    with pytest.raises(ValueError, match="at most 100 tags"):
        T.log_evaluation(store, trial.run_id, {}, 5, {f"k{i}": "v" for i in range(101)})

    T.log_report(store, sweep, out)
    assert T.list_artifacts(store, sweep, "report") == ["report/a.txt"]
    T.end_run(store, sweep, "killed", "cancelled")
    closed = T.find_run(store, sweep)
    assert (closed.status, closed.state, closed.tags["rgflow.failure_reason"]) == ("KILLED", "killed", "cancelled")


# ---- pure logic ------------------------------------------------------------------------------

def test_resolve_tracking_uri(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert T.resolve_tracking_uri(None) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert T.resolve_tracking_uri(None) == "http://127.0.0.1:5000"
    assert T.resolve_tracking_uri("sqlite:///sub/x.db") == f"sqlite:///{tmp_path.resolve()}/sub/x.db"
    assert T.resolve_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"


def test_flatten_params():
    assert T.flatten_params(PARAMS) == {"train.batch_size": "64", "train.lr": "0.001", "model.preset": "tiny",
                                        "model.nlayers": "[2, 2]", "prior.kind": "laplace"}
    with pytest.raises(ValueError, match="param 'a.b' is 6001 characters long"):
        T.flatten_params({"a": {"b": "x" * 6001}})


def test_spool_format_partial_tail_and_high_water(tmp_path):
    spool = MetricSpool(tmp_path)
    assert spool.append({"a": 1.5, "b": float("nan"), "c": float("-inf")}, 3, 1000) == 3
    spool.close()
    lines = (tmp_path / T.SPOOL_NAME).read_text().splitlines()
    assert json.loads(lines[0]) == {"key": "a", "value": 1.5, "step": 3, "timestamp": 1000}
    assert lines[2] == '{"key":"c","value":-Infinity,"step":3,"timestamp":1000}'
    with open(tmp_path / T.SPOOL_NAME, "ab") as fh:
        fh.write(b'{"key":"a","val')  # a crash mid-write
    spool = MetricSpool(tmp_path)
    assert spool.high_water == {"a": 3, "b": 3, "c": 3}
    assert spool.append({"a": 2.0, "b": 2.0}, 3, 2000) == 0 and spool.dropped == 2
    assert spool.append({"a": 2.0}, 4, 2000) == 1
    items, end = spool.pending(2)
    assert [(m.key, m.step) for m in items] == [("a", 3), ("b", 3)]
    spool.acknowledge(end)
    spool.acknowledge(0)  # never moves backwards
    assert spool.cursor() == end and spool.pending_count() == 2
    spool.close()


def test_environment_tags(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    tags = T.environment_tags("cpu")
    assert tags["rgflow.slurm_job_id"] == "77" and tags["rgflow.slurm_array_task_id"] == "3"
    assert "rgflow.slurm_array_job_id" not in tags
    assert tags["rgflow.git_dirty"] in ("true", "false") and len(tags["rgflow.git_commit"]) == 40
    assert tags["rgflow.device"] and tags["rgflow.host"]
    assert set(Counter(k.split(".")[2] for k in tags if k.startswith("rgflow.version."))) >= {"python", "torch", "mlflow"}
    monkeypatch.setenv("PATH", "/nonexistent")  # no git: tolerated
    tags = T.environment_tags("cpu")
    assert (tags["rgflow.git_commit"], tags["rgflow.git_dirty"]) == ("unknown", "unknown")


def test_transient_classification():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

    from jobs.tracking.store import is_transient

    assert is_transient(MlflowException("API request to http://x failed with exception ConnectionError"))
    assert is_transient(MlflowException("database is locked", TEMPORARILY_UNAVAILABLE))
    assert is_transient(ConnectionRefusedError())
    assert not is_transient(MlflowException("bad", INVALID_PARAMETER_VALUE))
    assert not is_transient(MlflowException("gone", RESOURCE_DOES_NOT_EXIST))
    assert not is_transient(ValueError("x"))


def test_log_text_rejects_paths_outside_the_run(store, exp, tmp_path):
    trial = _open(store, exp, tmp_path / "run")
    with pytest.raises(ValueError, match=r"artifact_file='../x.txt': must be a relative path inside the run"):
        trial.log_text("x", "../x.txt")
    assert trial.end("finished")


def test_process_killed_before_delivery_then_next_attempt_replays(store, exp, tmp_path):
    """SIGKILL leaves spooled-but-unsent metrics and a RUNNING run; the next attempt delivers them."""
    run_dir = tmp_path / "run"
    child = f"""
import os, signal
from jobs import tracking as T
trial = T.open_trial_run({store!r}, {exp!r}, "t0", "trial-t0", None, {{}}, {{}}, {str(run_dir)!r},
                         flush_interval_s=3600)
print(trial.run_id, flush=True)
for step in range(1, 41):
    trial.log_metrics({{"train_bpd": 1.0 / step}}, step)
os.kill(os.getpid(), signal.SIGKILL)
"""
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr
    run_id = done.stdout.split()[0]
    client = T.get_client(store)
    assert client.get_run(run_id).info.status == "RUNNING"
    assert client.get_metric_history(run_id, "train_bpd") == []
    trial = _open(store, exp, run_dir)
    assert (trial.run_id, trial.attempt) == (run_id, 2)
    trial.log_metrics({"train_bpd": 0.5}, 41)
    assert trial.end("finished")
    assert _histories(store, run_id, ["train_bpd"]) == {"train_bpd": list(range(1, 42))}


def test_standard_mlflow_tags_and_run_name(store, exp, tmp_path):
    import getpass

    from jobs.tracking import tags as TG

    env = T.environment_tags("cpu")
    assert env[TG.SOURCE_GIT_COMMIT_TAG] == env[TG.GIT_COMMIT_TAG]
    assert (env[TG.SOURCE_NAME_TAG], env[TG.SOURCE_TYPE_TAG], env[TG.USER_TAG]) == ("jobs.train", "JOB",
                                                                                     getpass.getuser())
    trial = _open(store, exp, tmp_path / "run")
    assert trial.end("finished") is True
    run = T.get_client(store).get_run(trial.run_id)
    assert run.info.run_name == run.data.tags[TG.RUN_NAME_TAG] == "trial-t0"
    assert run.info.user_id == run.data.tags[TG.USER_TAG] == getpass.getuser()
    assert run.data.tags[TG.SOURCE_TYPE_TAG] == "JOB" and run.data.tags[TG.SOURCE_NAME_TAG] == "jobs.train"
    # a reopened run takes the name of the new attempt
    again = T.open_trial_run(store, exp, "t0", "bs64-laplace-s0", None, PARAMS, {}, tmp_path / "run",
                             flush_interval_s=0.1)
    assert again.run_id == trial.run_id and again.end("finished") is True
    assert T.get_client(store).get_run(trial.run_id).info.run_name == "bs64-laplace-s0"


def test_log_params_after_open_are_delivered_once(store, exp, tmp_path):
    trial = _open(store, exp, tmp_path / "run")
    trial.log_params({"model": {"num_params": 1234}})
    assert trial.flush() is True
    assert T.get_client(store).get_run(trial.run_id).data.params["model.num_params"] == "1234"
    trial.log_params({"model.num_params": 999})  # MLflow keeps the first value: kept, reported, not blocking
    trial.log_metrics({"m0": 1.0}, 1)
    assert trial.end("finished") is True
    run = T.get_client(store).get_run(trial.run_id)
    assert run.data.params["model.num_params"] == "1234" and run.data.metrics["m0"] == 1.0


def test_sweep_description_and_summary(store, exp, tmp_path):
    from jobs.tracking.store import log_sweep_summary
    from jobs.tracking.tags import NOTE_TAG

    parent = T.ensure_sweep_run(store, exp, "s", "desc0123", {}, description="batch 32 vs 128")
    client = T.get_client(store)
    assert client.get_run(parent).data.tags[NOTE_TAG] == "batch 32 vs 128"
    assert client.get_experiment(exp).tags[NOTE_TAG] == "batch 32 vs 128"
    assert T.ensure_sweep_run(store, exp, "s", "desc0123", {}, description="edited") == parent
    assert client.get_run(parent).data.tags[NOTE_TAG] == "edited" and client.get_experiment(exp).tags[NOTE_TAG] == "edited"
    trials = (("a", [3.0, 2.5, 2.7], "finished", "bs32-s0", 2.6), ("b", [2.9], "failed", "bs32-s1", None),
              ("c", [2.8], "finished", "bs32-s2", 2.55), ("d", [2.7], "finished", "bs64-s0", 2.9),
              ("e", [2.4], "pruned", "bs64-s1", None))
    for tid, vals, state, name, test in trials:
        trial = _open(store, exp, tmp_path / tid, trial_id=tid, parent=parent, run_name=name)
        for step, v in enumerate(vals, 1):
            trial.log_metrics({"val_bpd": v}, step)
        if test is not None:
            trial.log_metrics({"test_bpd": test}, 10)
        trial.end(state)
    runs = T.find_trial_runs(store, exp, parent_run_id=parent)
    summary = log_sweep_summary(store, parent, 6, runs)
    assert summary == {"trials": 6, "trials_finished": 3, "trials_pruned": 1, "trials_failed": 1, "best_val_bpd": 2.4,
                       "best_test_bpd": 2.55, "best_test_bpd/bs32": 2.55, "best_test_bpd/bs64": 2.9}
    assert client.get_run(parent).data.metrics == summary
