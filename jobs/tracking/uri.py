"""Tracking URIs: which store a command talks to, and how to name it without its credentials."""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

_SQLITE = "sqlite:///"


def resolve_tracking_uri(uri: str | None) -> str:
    """Explicit ``uri`` > env ``MLFLOW_TRACKING_URI`` > ``sqlite:///<absolute path of ./mlflow.db>``.

    A relative ``sqlite:///rel/path.db`` is made absolute (against the current directory) so that
    the same string works from any working directory a backend starts the trial in.
    """
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not chosen:
        return f"{_SQLITE}{Path('mlflow.db').resolve()}"
    if chosen.startswith(_SQLITE) and not chosen.startswith(_SQLITE + "/") and chosen != _SQLITE + ":memory:":
        return f"{_SQLITE}{Path(chosen[len(_SQLITE):]).resolve()}"
    return chosen


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
