"""Read trial runs from an MLflow tracking server through its REST API, with :mod:`urllib` only.

Endpoints (MLflow REST API 2.0): ``GET experiments/get-by-name``, ``GET runs/get`` and
``POST runs/search`` (paged by :data:`~jobs.tracking.layout.SEARCH_PAGE` runs, ordered by start
time, newest first, as ``MlflowClient.search_runs``), so :func:`trial_runs` returns what
:func:`jobs.tracking.store.find_trial_runs` does.

Authentication is MLflow's: a user and password in the URI or ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` (HTTP basic), or ``MLFLOW_TRACKING_TOKEN`` (bearer);
``MLFLOW_TRACKING_INSECURE_TLS=true`` and ``MLFLOW_TRACKING_SERVER_CERT_PATH`` as in MLflow.
Credentials are sent in headers only and never appear in a message (:func:`redact_uri`).
"""
from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

from .layout import SEARCH_PAGE, RunSummary, TrackingError, keep_trial, run_summary, trial_filter, wanted_ids
from .uri import redact_uri

ATTEMPTS = 3  # per request: connection errors, HTTP 5xx and 429 are retried after 1 s, then 2 s
DEFAULT_TIMEOUT_S = 30.0  # per request, unless MLFLOW_HTTP_REQUEST_TIMEOUT says otherwise


@dataclass(frozen=True)
class Server:
    """A tracking server: ``base`` URL without credentials, the request headers, the TLS context."""

    base: str
    name: str
    headers: dict[str, str]
    tls: ssl.SSLContext | None
    timeout_s: float


def server(uri: str) -> Server:
    """The :class:`Server` of an ``http(s)://[user:password@]host[:port][/prefix]`` URI."""
    parts = urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    user = unquote(parts.username) if parts.username else os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = unquote(parts.password or "") if parts.username else os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if user:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    elif token:
        headers["Authorization"] = f"Bearer {token}"
    tls = None
    if parts.scheme == "https":
        if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
            tls = ssl._create_unverified_context()
        else:
            tls = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)
    timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or DEFAULT_TIMEOUT_S)
    base = urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))
    return Server(base, redact_uri(uri), headers, tls, timeout)


def _call(srv: Server, endpoint: str, query: dict | None = None, body: dict | None = None) -> dict | None:
    """One API call (GET with ``query``, or POST with a JSON ``body``); None for HTTP 404.
    Transient failures are retried :data:`ATTEMPTS` times; then, or for any other error, a
    one-line :class:`TrackingError` naming the server without its credentials."""
    url = f"{srv.base}/api/2.0/mlflow/{endpoint}" + (f"?{urlencode(query)}" if query else "")
    data = None if body is None else json.dumps(body).encode()
    attempt = 1
    while True:
        request = urllib.request.Request(url, data=data, headers=srv.headers, method="GET" if data is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=srv.timeout_s, context=srv.tls) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            problem = f"HTTP {err.code} {err.reason}: {_error_message(err)}"
            transient = err.code >= 500 or err.code == 429
        except (urllib.error.URLError, OSError) as err:
            problem, transient = f"unreachable ({getattr(err, 'reason', err)})", True
        if not transient or attempt == ATTEMPTS:
            raise TrackingError(f"tracking server {srv.name}: {endpoint}: {problem}")
        time.sleep(float(attempt))
        attempt += 1


def _error_message(err: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(err.read()).get("message", ""))[:200]
    except (ValueError, OSError, AttributeError):
        return ""


def experiment_id(srv: Server, name: str) -> str | None:
    """The id of the active experiment ``name``; None if it does not exist or is deleted."""
    found = _call(srv, "experiments/get-by-name", query={"experiment_name": name})
    experiment = (found or {}).get("experiment")
    return experiment["experiment_id"] if experiment and experiment.get("lifecycle_stage") == "active" else None


def run_status(srv: Server, run_id: str) -> str | None:
    """``RUNNING``/``FINISHED``/… of a run; None if there is no such run."""
    found = _call(srv, "runs/get", query={"run_id": run_id})
    return found["run"]["info"]["status"] if found else None


def trial_runs(srv: Server, experiment: str, parent_run_id: str | None = None,
               trial_ids: Iterable[str] | None = None) -> dict[str, RunSummary]:
    """Trial runs of an experiment keyed by trial id, as :func:`jobs.tracking.store.find_trial_runs`."""
    body = {"experiment_ids": [experiment], "filter": trial_filter(parent_run_id), "run_view_type": "ACTIVE_ONLY",
            "max_results": SEARCH_PAGE, "order_by": ["attributes.start_time DESC"]}
    wanted = wanted_ids(trial_ids)
    found: dict[str, RunSummary] = {}
    while True:
        page = _call(srv, "runs/search", body=body) or {}
        for run in page.get("runs", []):
            summary = _summary(run)
            if keep_trial(found, summary.trial_id, wanted):
                found[summary.trial_id] = summary
        if not page.get("next_page_token"):
            return found
        body["page_token"] = page["next_page_token"]


def _summary(run: dict) -> RunSummary:
    """A run of the REST API's JSON (int64 fields as numbers or strings, NaN as ``"NaN"``, fields
    at their default value left out; an end time of 0 means none, as in ``RunInfo.from_proto``)."""
    info, data = run["info"], run.get("data", {})
    return run_summary(
        info["run_id"], info["status"], int(info.get("start_time", 0)), int(info.get("end_time", 0)) or None,
        {t["key"]: t.get("value", "") for t in data.get("tags", [])},
        {p["key"]: p.get("value", "") for p in data.get("params", [])},
        {m["key"]: float(m.get("value", 0.0)) for m in data.get("metrics", [])},
    )


def health(uri: str, timeout_s: float) -> str | None:
    """Why the MLflow server at ``uri`` does not answer ``GET /health`` within ``timeout_s``
    (one phrase, no credentials), or ``None`` when it does."""
    srv = server(uri)
    request = urllib.request.Request(f"{srv.base}/health", headers=srv.headers, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=srv.tls) as response:
            response.read(64)
        return None
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            return (f"refused the credentials (HTTP {err.code}); set MLFLOW_TRACKING_USERNAME and "
                    "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)")
        return f"answered GET /health with HTTP {err.code}: is it an MLflow tracking server?"
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, (TimeoutError, socket.timeout)):
            reason = f"no answer within {timeout_s:g} s"
        elif isinstance(reason, ConnectionRefusedError):
            reason = "connection refused"
        return f"is unreachable ({reason})"
