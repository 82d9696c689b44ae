"""Tracking URIs: which store a command talks to, and how to name it without its credentials.

**Credentials never travel inside a URI.** An ``http(s)://user:password@host:port`` URI (from
``tracking.uri`` or ``MLFLOW_TRACKING_URI``) is split by :func:`take_credentials`: the user name and
password go to the environment variables MLflow's own REST client reads on every request
(``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, HTTP basic auth,
``mlflow.utils.credentials.get_default_host_creds``), unless either is set already (then the
environment wins, as it does in MLflow), and the URI goes on without them. ``jobs.config``'s
``TrackingConfig`` and :func:`resolve_tracking_uri` both do this, so MLflow params and tags, the
resolved ``config.yaml``, checkpoint metadata, ``state.json`` / ``tracking.json`` /
``sweep-state.json``, logs and error messages only ever hold the clean URI; child processes
(local trials, Ray workers started here, Slurm jobs, which export the submitting environment)
inherit the two variables. :func:`redact_uri` is for display of a URI that may still carry them.
"""
from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

_SQLITE = "sqlite:///"
USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"
URI_ENV = "MLFLOW_TRACKING_URI"


def take_credentials(uri: str, environ: MutableMapping[str, str] | None = None) -> str:
    """``uri`` without the ``user:password@`` of an ``http(s)`` URI, which are moved (``%xx``
    decoded) to ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` in ``environ``
    (default ``os.environ``) unless one of them is set already. Other URIs are returned as given."""
    parts = urlsplit(uri)
    if parts.scheme.lower() not in ("http", "https") or "@" not in parts.netloc:
        return uri
    environ = os.environ if environ is None else environ
    userinfo, _, host = parts.netloc.rpartition("@")
    user, has_password, password = userinfo.partition(":")
    if USERNAME_ENV not in environ and PASSWORD_ENV not in environ:
        if user:
            environ[USERNAME_ENV] = unquote(user)
        if has_password:
            environ[PASSWORD_ENV] = unquote(password)
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def resolve_tracking_uri(uri: str | None) -> str:
    """Explicit ``uri`` > env ``MLFLOW_TRACKING_URI`` > ``sqlite:///<absolute path of ./mlflow.db>``,
    without credentials (:func:`take_credentials`; an ``MLFLOW_TRACKING_URI`` that held them is
    rewritten clean in ``os.environ`` too, so that child processes never see them in a URI).

    A relative ``sqlite:///rel/path.db`` is made absolute (against the current directory) so that
    the same string works from any working directory a backend starts the trial in.
    """
    chosen = take_credentials(uri) if uri else take_credentials(os.environ.get(URI_ENV) or "")
    if not uri and chosen and chosen != os.environ[URI_ENV]:
        os.environ[URI_ENV] = chosen
    if not chosen:
        return f"{_SQLITE}{Path('mlflow.db').resolve()}"
    if chosen.startswith(_SQLITE) and not chosen.startswith(_SQLITE + "/") and chosen != _SQLITE + ":memory:":
        return f"{_SQLITE}{Path(chosen[len(_SQLITE):]).resolve()}"
    return chosen


def read_uri(configured: str | None, recorded: str | None) -> str:
    """The store a command uses (``jobs.sweep`` run/status/cancel, ``jobs.report``, ``jobs.evaluate``):
    ``configured`` (``tracking.uri`` / ``--tracking-uri``) > env ``MLFLOW_TRACKING_URI`` > ``recorded``
    (the URI a sweep's launch saved in its run folder, :mod:`jobs.sweep_state`: found from any
    working directory) > ``./mlflow.db``, as :func:`resolve_tracking_uri` resolves it."""
    if configured or os.environ.get(URI_ENV) or not recorded:
        return resolve_tracking_uri(configured)
    return recorded


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH[?options]`` URI (``%xx`` escapes decoded, as
    SQLAlchemy does); None for other URIs and in-memory stores."""
    if not uri.startswith(_SQLITE):
        return None
    path = unquote(uri[len(_SQLITE):].partition("?")[0])
    return None if path in ("", ":memory:") else Path(path)


def redact_uri(uri: str) -> str:
    """``uri`` safe to print: a user name and password in it become ``***``; query strings are dropped."""
    parts = urlsplit(uri)
    if not parts.netloc:
        return uri.partition("?")[0]
    host = parts.netloc.rpartition("@")[2]
    netloc = f"***@{host}" if "@" in parts.netloc else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
