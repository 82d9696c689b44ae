"""MLflow tracking for trials and sweeps (contract: docs/ARCHITECTURE.md, "MLflow layout").

Public API:

* :func:`resolve_tracking_uri` — ``uri.py``; :class:`RunSummary`, :data:`END_STATES`,
  :class:`TrackingError` — ``layout.py``;
* :func:`ensure_experiment`, :func:`ensure_sweep_run`, :func:`find_trial_runs` (→ :class:`RunSummary`),
  :func:`end_run`, :func:`mark_killed`, :func:`flatten_params`, :func:`get_client` — ``store.py``;
* :func:`open_trial_run` → :class:`TrialRun` (non-blocking metrics, offline spool and replay,
  true end states), :func:`replay_run_dir` — ``trial.py``; spool format in ``spool.py``;
* :func:`environment_tags` — ``env.py``;
* fast read-only lookups without mlflow for sqlite and HTTP stores — ``fast_read.py``;
* ``python -m jobs.tracking replay RUN_DIR…`` delivers what run folders still hold.

The names of ``store.py`` and ``trial.py`` are imported on first use: importing this package (or
``fast_read``) does not import mlflow.
"""
import importlib

from .env import environment_tags
from .layout import END_STATES, RunSummary, TrackingError
from .record import RECORD_NAME
from .spool import CURSOR_NAME, SPOOL_NAME
from .uri import resolve_tracking_uri

_LAZY = {
    **dict.fromkeys(("end_run", "ensure_experiment", "ensure_sweep_run", "find_trial_runs", "flatten_params",
                     "get_client", "mark_killed"), ".store"),
    **dict.fromkeys(("TrialRun", "open_trial_run", "replay_run_dir"), ".trial"),
}

__all__ = [
    "CURSOR_NAME", "END_STATES", "RECORD_NAME", "SPOOL_NAME", "RunSummary", "TrackingError", "TrialRun",
    "end_run", "ensure_experiment", "ensure_sweep_run", "environment_tags", "find_trial_runs", "flatten_params",
    "get_client", "mark_killed", "open_trial_run", "replay_run_dir", "resolve_tracking_uri",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'jobs.tracking' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value
