"""MLflow tracking for trials and sweeps (contract: docs/ARCHITECTURE.md, "MLflow layout").

Public API:

* :func:`resolve_tracking_uri` — ``uri.py``; :class:`RunSummary`, :data:`END_STATES`,
  :class:`TrackingError` — ``layout.py``;
* every tag name: ``tags.py`` (``from jobs.tracking.tags import STATE_TAG``; no mlflow);
* named store operations — ``store.py``: :func:`ensure_experiment`, :func:`find_experiment`,
  :func:`ensure_sweep_run`, :func:`find_sweep_run`, :func:`find_trial_runs` (→ :class:`RunSummary`),
  :func:`find_run`, :func:`find_run_by_trial_id`, :func:`read_metric_history`, :func:`list_artifacts`,
  :func:`download_artifact`, :func:`log_evaluation`, :func:`log_report`, :func:`log_parent_tags`,
  :func:`end_run` (close or reap a run with a reason), :func:`mark_killed`, ``close_sweep_run`` (the
  parent's summary metrics, then its end state); reuse across sweeps: ``find_reusable_runs``,
  ``link_trial_run``, ``delete_link_run`` (``jobs.reuse``);
  :func:`flatten_params`; the trained model: :func:`resolve_model_ref`, :func:`download_model` (a run
  id, ``runs:/…`` or ``models:/…``), :func:`logged_model_id` (the run's MLflow LoggedModel),
  :func:`register_model` (Model Registry); the MLflow model format: ``pyfunc_io.py``, ``rgflow_pyfunc.py``; :func:`get_client` (the raw client: for ``jobs/tracking/`` and tests only);
* :func:`open_trial_run` → :class:`TrialRun` (non-blocking metrics, offline spool and replay,
  true end states), :func:`replay_run_dir` — ``trial.py``; spool format in ``spool.py``;
* :func:`environment_tags` — ``env.py``;
* fast read-only lookups without mlflow for sqlite and HTTP stores — ``fast_read.py``;
* ``python -m jobs.tracking replay RUN_DIR…`` delivers what run folders still hold.

The names of ``store.py`` and ``trial.py`` are imported on first use: importing this package (or
``fast_read``) does not import mlflow.
"""
import importlib
import os

from .env import environment_tags
from .layout import END_STATES, RunSummary, TrackingError
from .record import RECORD_NAME
from .spool import CURSOR_NAME, SPOOL_NAME
from .uri import resolve_tracking_uri

# MLflow draws a tqdm bar on stderr for every artifact download (the model, the report's inputs)
# when tqdm is importable; the CLIs' stderr is for one-line messages.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

_LAZY = {
    **dict.fromkeys(("download_artifact", "end_run", "ensure_experiment", "ensure_sweep_run",
                     "find_experiment", "find_run", "find_run_by_trial_id", "find_sweep_run", "find_trial_runs",
                     "flatten_params", "get_client", "list_artifacts", "log_evaluation", "log_parent_tags",
                     "log_report", "logged_model_id", "mark_killed", "read_metric_history", "download_model",
                     "register_model", "resolve_model_ref"), ".store"),
    **dict.fromkeys(("TrialRun", "open_trial_run", "replay_run_dir"), ".trial"),
}

__all__ = [
    "CURSOR_NAME", "END_STATES", "RECORD_NAME", "SPOOL_NAME", "RunSummary", "TrackingError", "TrialRun",
    "download_artifact", "download_model", "end_run", "ensure_experiment", "ensure_sweep_run",
    "environment_tags", "find_experiment", "find_run", "find_run_by_trial_id", "find_sweep_run", "find_trial_runs", "flatten_params",
    "get_client", "list_artifacts", "log_evaluation", "log_parent_tags", "log_report", "logged_model_id", "mark_killed",
    "open_trial_run", "read_metric_history", "register_model", "replay_run_dir", "resolve_model_ref",
    "resolve_tracking_uri",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'jobs.tracking' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value
