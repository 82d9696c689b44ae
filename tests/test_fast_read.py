"""``jobs.tracking.fast_read`` returns exactly what the mlflow client path returns
(``find_trial_runs``, ``get_experiment_by_name``, ``get_run``) on a real sqlite store and on a real
``mlflow server`` — without importing mlflow — and never writes, never prints credentials."""
from __future__ import annotations

import base64
import http.server
import json
import math
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from jobs.tracking import TrackingError, fast_read, find_trial_runs, rest_read
from jobs.tracking.uri import redact_uri, sqlite_path
from tests.fixtures.mlflow_server import free_port
from tests.fixtures.sweep import REPO

NAN_METRIC = "grad_norm"


def _populate(client: MlflowClient, name: str) -> dict[str, str]:
    """Runs covering every rule of the trial search; returns the ids the tests refer to."""
    exp = client.create_experiment(name)
    ids = {"exp": exp}

    def run(trial: str | None, start: int, parent: str, status: str | None = None, **extra) -> str:
        tags = {"rgflow.role": "trial", "mlflow.parentRunId": parent, "rgflow.attempt": extra.pop("attempt", "1"),
                "rgflow.state": (status or "running").lower(), **extra.pop("tags", {})}
        if trial is not None:
            tags["rgflow.trial_id"] = trial
        run_id = client.create_run(exp, start_time=start, tags=tags).info.run_id
        client.log_batch(run_id, synchronous=True, params=[Param("train.batch_size", "64"), Param("note", "")],
                         metrics=[Metric("epoch", 0.5, 1, 10), Metric("epoch", 9.0, 2, 3),  # latest = highest step
                                  Metric("zero", 0.0, 1, 0), Metric("val_bpd", 5.25, 1, 10)],
                         tags=[RunTag("empty", "")])
        if status:
            client.set_terminated(run_id, status)
        return run_id

    for parent in ("a", "b"):
        ids[parent] = client.create_run(exp, tags={"rgflow.role": "sweep"}).info.run_id
    ids["t1_old"] = run("t1", 1000, ids["a"], "FINISHED")
    ids["t1_new"] = run("t1", 2000, ids["a"])  # the most recently started run of a trial wins
    ids["t2_x"], ids["t2_y"] = run("t2", 3000, ids["a"], "KILLED"), run("t2", 3000, ids["a"], "FINISHED")  # tie
    ids["t3"] = run("t3", 4000, ids["a"], "FINISHED")
    client.delete_run(run("t3", 5000, ids["a"]))  # deleted runs are not searched
    ids["t4"] = run("t4", 6000, ids["b"], "FAILED", attempt="2", tags={"rgflow.failure_reason": "nan loss"})
    client.log_metric(ids["t4"], NAN_METRIC, math.nan, step=20)
    ids["no_id"] = run(None, 7000, ids["b"], "FINISHED")  # a trial run without a trial id tag
    deleted = client.create_experiment(f"{name}-deleted")
    client.delete_experiment(deleted)
    return ids


def _comparable(runs: dict) -> dict:
    """NaN ≠ NaN: compare NaN metrics by name."""
    return {tid: (r.__class__.__name__, {**r.__dict__, "metrics": {k: "NaN" if math.isnan(v) else v
                                                                    for k, v in r.metrics.items()}})
            for tid, r in runs.items()}


def _assert_same_as_client(uri: str, name: str, ids: dict[str, str]) -> None:
    exp = ids["exp"]
    for query in ({}, {"parent_run_id": ids["a"]}, {"parent_run_id": ids["b"]},
                  {"trial_ids": ["t1", "t4", "missing"]}, {"parent_run_id": ids["a"], "trial_ids": ["t2"]}):
        assert _comparable(fast_read.trial_runs(uri, exp, **query)) == _comparable(find_trial_runs(uri, exp, **query))
    runs = fast_read.trial_runs(uri, exp)
    assert sorted(runs) == ["", "t1", "t2", "t3", "t4"]
    assert runs["t1"].run_id == ids["t1_new"] and runs["t1"].status == "RUNNING" and runs["t1"].end_time is None
    assert runs["t2"].run_id == min(ids["t2_x"], ids["t2_y"])
    assert runs["t3"].run_id == ids["t3"]
    t4 = runs["t4"]
    assert (t4.status, t4.state, t4.attempt, t4.tags["rgflow.failure_reason"]) == ("FAILED", "failed", 2, "nan loss")
    assert t4.metrics["epoch"] == 0.5 and t4.metrics["zero"] == 0.0 and math.isnan(t4.metrics[NAN_METRIC])
    assert t4.params == {"train.batch_size": "64", "note": ""} and t4.tags["empty"] == ""
    assert t4.end_time >= t4.start_time == 6000

    client = MlflowClient(uri)
    assert fast_read.experiment_id(uri, name) == exp == client.get_experiment_by_name(name).experiment_id
    assert fast_read.experiment_id(uri, f"{name}-deleted") is None
    assert fast_read.experiment_id(uri, "no such experiment") is None
    for run_id in (ids["a"], ids["t1_old"], ids["t4"]):
        assert fast_read.run_status(uri, run_id) == client.get_run(run_id).info.status
    assert fast_read.run_status(uri, "0" * 32) is None


def _imports_after(uri: str, name: str) -> list[str]:
    """Heavy modules loaded by a fresh process that reads the experiment through fast_read."""
    code = (f"import sys, json; from jobs.tracking import fast_read as f; e = f.experiment_id({uri!r}, {name!r}); "
            f"assert len(f.trial_runs({uri!r}, e)) == 5; "
            "print(json.dumps([m for m in ('mlflow', 'sqlalchemy', 'requests', 'torch', 'pandas') "
            "if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_sqlite_reads_what_the_client_reads(tmp_path):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    ids = _populate(MlflowClient(uri), "fast")
    _assert_same_as_client(uri, "fast", ids)
    assert _imports_after(uri, "fast") == []
    mtime = db.stat().st_mtime_ns
    fast_read.trial_runs(uri, ids["exp"])
    assert db.stat().st_mtime_ns == mtime and sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]


def test_sqlite_missing_or_empty_store_reads_as_empty_and_is_not_created(tmp_path):
    missing = tmp_path / "none.db"
    uri = f"sqlite:///{missing}"
    assert fast_read.experiment_id(uri, "x") is None and fast_read.trial_runs(uri, "1") == {}
    assert fast_read.run_status(uri, "0" * 32) is None and not missing.exists()
    empty = tmp_path / "empty.db"
    empty.touch()
    assert fast_read.experiment_id(f"sqlite:///{empty}", "x") is None
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    with pytest.raises(TrackingError, match="garbage.db: not a readable MLflow database"):
        fast_read.experiment_id(f"sqlite:///{garbage}", "x")


@pytest.mark.slow  # the session's mlflow server takes ≈ 1 min to start
def test_server_reads_what_the_client_reads_across_pages(mlflow_server, monkeypatch):
    uri = mlflow_server.uri
    ids = _populate(MlflowClient(uri), "fast-rest")
    _assert_same_as_client(uri, "fast-rest", ids)
    monkeypatch.setattr(rest_read, "SEARCH_PAGE", 2)  # 7 trial runs → 4 pages
    assert _comparable(fast_read.trial_runs(uri, ids["exp"])) == _comparable(find_trial_runs(uri, ids["exp"]))
    assert _imports_after(uri, "fast-rest") == []


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every request with MLflow's 404 and remembers its path and headers."""

    seen: list[tuple[str, dict]] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        _Recorder.seen.append((self.path, dict(self.headers)))
        body = json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no"}).encode()
        self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_credentials_go_in_a_header_and_never_into_messages(monkeypatch):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        assert fast_read.experiment_id(f"http://alice:s%3Acret@127.0.0.1:{port}/prefix/", "my exp") is None
    finally:
        server.shutdown()
        server.server_close()
    path, headers = _Recorder.seen[-1]
    assert path == "/prefix/api/2.0/mlflow/experiments/get-by-name?experiment_name=my+exp"
    assert base64.b64decode(headers["Authorization"].split()[1]).decode() == "alice:s:cret"

    monkeypatch.setattr(rest_read, "ATTEMPTS", 1)
    with pytest.raises(TrackingError) as err:
        fast_read.trial_runs(f"https://alice:s3cret@127.0.0.1:{free_port()}", "1")
    message = str(err.value)
    assert "s3cret" not in message and "alice" not in message and len(message.splitlines()) == 1
    assert message.startswith("tracking server https://***@127.0.0.1:") and "runs/search: unreachable" in message


def test_uris_name_the_store_without_credentials():
    assert sqlite_path("sqlite:////tmp/a%20b/mlflow.db?timeout=5") == Path("/tmp/a b/mlflow.db")
    assert sqlite_path("sqlite:///:memory:") is None and sqlite_path("postgresql://u:p@db/mlflow") is None
    assert redact_uri("https://alice:s3cret@mlflow.example.org:5000/prefix?token=x") == \
        "https://***@mlflow.example.org:5000/prefix"
    assert redact_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert redact_uri("postgresql://u:p@db:5432/mlflow") == "postgresql://***@db:5432/mlflow"


def test_store_line_and_missing_store_name_the_store_without_credentials(tmp_path, monkeypatch):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    assert fast_read.store_line(uri) == f"MLflow store {uri} (does not exist)"
    assert fast_read.missing_store(uri).startswith(f"no MLflow store at {db}: run from the folder the sweep ran in")
    db.touch()
    assert fast_read.store_line(uri) == f"MLflow store {uri}" and fast_read.missing_store(uri) is None
    assert fast_read.store_line("https://bob:s3cret@mlflow.example:5000/?token=x") == \
        "MLflow store https://***@mlflow.example:5000/"
    assert fast_read.missing_store("http://127.0.0.1:1") is None


def test_read_uri_prefers_the_given_then_the_environment_then_the_recorded_store(tmp_path, monkeypatch):
    from jobs.tracking.uri import read_uri

    recorded = f"sqlite:///{tmp_path / 'recorded.db'}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert read_uri(None, None) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert read_uri(None, recorded) == recorded
    assert read_uri("sqlite:///given.db", recorded) == f"sqlite:///{tmp_path / 'given.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert read_uri(None, recorded) == "http://127.0.0.1:5000"
