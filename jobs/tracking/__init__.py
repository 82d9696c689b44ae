"""MLflow tracking for trials and sweeps (contract: docs/ARCHITECTURE.md, "MLflow layout").

Public API:

* :func:`resolve_tracking_uri`, :func:`ensure_experiment`, :func:`ensure_sweep_run`,
  :func:`find_trial_runs` (→ :class:`RunSummary`), :func:`end_run`, :func:`mark_killed`,
  :func:`flatten_params` — ``store.py``;
* :func:`open_trial_run` → :class:`TrialRun` (non-blocking metrics, offline spool and replay,
  true end states), :func:`replay_run_dir` — ``trial.py``; spool format in ``spool.py``;
* :func:`environment_tags` — ``env.py``;
* ``python -m jobs.tracking replay RUN_DIR…`` delivers what run folders still hold.
"""
from .env import environment_tags
from .spool import CURSOR_NAME, SPOOL_NAME
from .record import RECORD_NAME
from .store import (
    END_STATES, RunSummary, TrackingError, end_run, ensure_experiment, ensure_sweep_run, find_trial_runs,
    flatten_params, get_client, mark_killed, resolve_tracking_uri,
)
from .trial import TrialRun, open_trial_run, replay_run_dir

__all__ = [
    "CURSOR_NAME", "END_STATES", "RECORD_NAME", "SPOOL_NAME", "RunSummary", "TrackingError", "TrialRun",
    "end_run", "ensure_experiment", "ensure_sweep_run", "environment_tags", "find_trial_runs", "flatten_params",
    "get_client", "mark_killed", "open_trial_run", "replay_run_dir", "resolve_tracking_uri",
]
