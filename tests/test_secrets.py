"""Credentials in a tracking URI (``http://user:password@host:port``) never land anywhere.

``jobs.tracking.uri.take_credentials`` moves them to ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` and everything downstream sees the clean URI. End to end: a real
``mlflow server`` (fixture ``mlflow_server``) behind a small HTTP proxy that answers 401 to any
request without the right basic-auth header — so the trials must really send the credentials from
the environment — and a real trial and a real local sweep, after which every file of the run
folder, the server's folder (store, artifacts, log), the runs' params and tags and the captured
output are searched for the password and the user name.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from jobs.config import flatten, load_trial_config, to_yaml
from jobs.sweep_spec import load_sweep, without_credentials
from jobs.tracking.uri import redact_uri, resolve_tracking_uri, take_credentials

REPO = Path(__file__).resolve().parents[1]
CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI")
TINY = ("run.device=cpu", "run.threads=1", "data.train_size=256", "data.valid_size=64", "train.epochs=1",
        "train.steps=2", "train.log_every=1", "train.val_draws=1", "train.sample_count=4")


@pytest.fixture
def no_credentials(monkeypatch):
    """The credential variables unset in this process, and unset again after the test (whatever
    the code under test put there)."""
    for name in CREDENTIAL_VARS:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


# ----------------------------------------------------------------------------------------------
# Units
# ----------------------------------------------------------------------------------------------

def test_take_credentials_moves_them_to_the_environment():
    env: dict[str, str] = {}
    assert take_credentials("https://al%40ice:s%3Acret@mlflow.example.org:5000/prefix?x=1", env) == \
        "https://mlflow.example.org:5000/prefix?x=1"
    assert env == {"MLFLOW_TRACKING_USERNAME": "al@ice", "MLFLOW_TRACKING_PASSWORD": "s:cret"}
    assert take_credentials("http://bob:other@h:1", env) == "http://h:1"   # already set: the environment wins
    assert env["MLFLOW_TRACKING_PASSWORD"] == "s:cret"
    for uri in ("http://h:5000", "sqlite:////tmp/a@b.db", "file:///x@y", "databricks://me@profile"):
        assert take_credentials(uri, env) == uri
    token: dict[str, str] = {}
    assert take_credentials("http://tok@h:1", token) == "http://h:1" and token == {"MLFLOW_TRACKING_USERNAME": "tok"}


def test_resolve_tracking_uri_cleans_the_argument_and_the_environment(no_credentials, monkeypatch):
    assert resolve_tracking_uri("http://u:pw@127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("u", "pw")
    for name in CREDENTIAL_VARS[:2]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://v:pw2@127.0.0.1:5001")
    assert resolve_tracking_uri(None) == "http://127.0.0.1:5001"
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5001"   # children inherit it clean
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "pw2"
    assert redact_uri("http://v:pw2@127.0.0.1:5001") == "http://***@127.0.0.1:5001"   # display of a raw URI


def test_config_params_and_yaml_hold_the_clean_uri(no_credentials):
    cfg = load_trial_config(None, ["tracking.uri=http://u:pw-9@127.0.0.1:5000/"])
    assert cfg.tracking.uri == "http://127.0.0.1:5000/" and cfg.tracking.resolved_uri == "http://127.0.0.1:5000/"
    assert flatten(cfg)["tracking.uri"] == "http://127.0.0.1:5000/"
    assert "pw-9" not in to_yaml(cfg) and "u:" not in to_yaml(cfg)
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "pw-9"


def test_sweep_overrides_are_passed_on_without_credentials(no_credentials, tmp_path):
    assert without_credentials("tracking.uri=https://u:pw@h:1/p") == "tracking.uri=https://h:1/p"
    assert without_credentials("train.epochs=5") == "train.epochs=5"
    assert without_credentials("data.root=/a:b@c") == "data.root=/a:b@c"
    path = tmp_path / "s.yaml"
    path.write_text("name: s\naxes: {seeds: [0]}\n")
    sweep = load_sweep(path, ["tracking.uri=http://u:pw-7@127.0.0.1:5000", "train.epochs=1"])
    assert sweep.overrides == ("tracking.uri=http://127.0.0.1:5000", "train.epochs=1")
    assert sweep.trials[0].config.tracking.uri == "http://127.0.0.1:5000"


# ----------------------------------------------------------------------------------------------
# End to end, through a proxy that demands the credentials
# ----------------------------------------------------------------------------------------------

class AuthProxy(ThreadingHTTPServer):
    """``127.0.0.1:port`` → ``upstream``, answering 401 without ``Authorization: Basic user:password``.
    ``requests`` records ``(method, path, authorized)`` of every request."""

    daemon_threads = True

    def __init__(self, upstream: str, user: str, password: str):
        self.upstream = urlsplit(upstream)
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.requests: list[tuple[str, str, bool]] = []
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.port = self.server_address[1]


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    HOP = ("authorization", "host", "connection", "transfer-encoding", "content-length", "keep-alive")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for key, value in headers:
            if key.lower() not in self.HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _forward(self) -> None:
        proxy: AuthProxy = self.server
        body = self._body()
        authorized = self.headers.get("Authorization") == proxy.expected
        proxy.requests.append((self.command, self.path, authorized))
        if not authorized:
            self._reply(401, [("WWW-Authenticate", 'Basic realm="test"')], b"")
            return
        upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=120)
        try:
            upstream.request(self.command, self.path, body=body,
                             headers={k: v for k, v in self.headers.items() if k.lower() not in self.HOP})
            answer = upstream.getresponse()
            self._reply(answer.status, answer.getheaders(), answer.read())
        finally:
            upstream.close()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def secret_server(mlflow_server):
    """``(proxy, user, password)``: fresh credentials, demanded by a proxy in front of the server."""
    user, password = f"user-{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    proxy = AuthProxy(mlflow_server.uri, user, password)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy, user, password
    finally:
        proxy.shutdown()
        proxy.server_close()


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARS and k != "MLFLOW_RUN_ID"}
    return {**env, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_AUTH_MODE": "disabled",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}


def _assert_absent(words: tuple[str, ...], done: subprocess.CompletedProcess, *folders: Path) -> int:
    """None of ``words`` in the output or in any file under ``folders``; returns the files searched."""
    for word in words:
        assert word not in done.stdout and word not in done.stderr
    searched = 0
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                searched += 1
                for word in words:
                    assert word.encode() not in data, f"{word!r} in {path}"
    return searched


def _assert_runs_clean(mlflow_server, experiment: str, words: tuple[str, ...], clean_uri: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert runs
    for run in runs:
        values = [*run.data.params.values(), *run.data.tags.values(), *run.data.params, *run.data.tags]
        assert not [v for v in values for w in words if w in v], run.info.run_id
        if "tracking.uri" in run.data.params:
            assert run.data.params["tracking.uri"] == clean_uri
    return runs


@pytest.mark.slow
def test_a_trial_leaks_its_tracking_credentials_nowhere(secret_server, mlflow_server, tmp_path, no_credentials):
    proxy, user, password = secret_server
    experiment = f"secrets-{uuid.uuid4().hex[:8]}"
    clean = f"http://127.0.0.1:{proxy.port}"
    runs = tmp_path / "runs"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "jobs.train", str(REPO / "configs" / "tiny.yaml"), *TINY, f"run.out_dir={runs}",
         f"data.root={REPO / 'data'}", f"tracking.uri=http://{user}:{password}@127.0.0.1:{proxy.port}",
         f"tracking.experiment={experiment}"],
        cwd=cwd, env=_clean_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert proxy.requests and all(ok for _, _, ok in proxy.requests), [r for r in proxy.requests if not r[2]]
    assert _assert_absent((password, user), done, runs, cwd, mlflow_server.root) > 10
    (trial,) = _assert_runs_clean(mlflow_server, experiment, (password, user), clean)
    assert trial.info.status == "FINISHED"
    record = json.loads(next(runs.rglob("tracking.json")).read_text())
    assert record["tracking_uri"] == clean and record["params"]["tracking.uri"] == clean


@pytest.mark.slow
def test_a_local_sweep_leaks_its_tracking_credentials_nowhere(secret_server, mlflow_server, tmp_path, no_credentials):
    proxy, user, password = secret_server
    name = f"secrets-{uuid.uuid4().hex[:8]}"
    clean = f"http://127.0.0.1:{proxy.port}"
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"name: {name}\nbase_config: {REPO / 'configs' / 'tiny.yaml'}\naxes: {{seeds: [0]}}\n"
                     "resources: {cpus: 1, gpus: 0}\nbackend: local\nevaluation: {enabled: false}\n"
                     "reuse: false\n")  # the shared server may hold this trial from another test: train it here
    runs = tmp_path / "runs"
    done = subprocess.run(
        [sys.executable, "-m", "jobs.sweep", str(sweep), *TINY, f"run.out_dir={runs}", f"data.root={REPO / 'data'}",
         f"tracking.uri=http://{user}:{password}@127.0.0.1:{proxy.port}", "--quiet"],
        cwd=tmp_path, env=_clean_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert proxy.requests and all(ok for _, _, ok in proxy.requests)
    sweep_dir = runs / name
    assert (sweep_dir / "sweep-state.json").is_file()
    assert clean in (sweep_dir / "sweep-state.json").read_text()
    assert _assert_absent((password, user), done, runs, mlflow_server.root) > 10
    found = _assert_runs_clean(mlflow_server, name, (password, user), clean)
    overrides = [r.data.tags["rgflow.sweep_overrides"] for r in found if "rgflow.sweep_overrides" in r.data.tags]
    assert overrides and f"tracking.uri={clean}" in overrides[0]
