"""Read a sweep back from MLflow with a bounded number of queries.

One paged ``search_runs`` for the trial summaries (params, tags, latest metrics: ``find_trial_runs``
of ``jobs.tracking``), one for the sweep's parent run (``find_sweep_run``), and
``get_metric_history`` (``read_metric_history``) only for the metrics that are plotted
(:data:`HISTORY_KEYS`), run in a thread pool. Nothing is fetched per run
besides those histories, so 1,000 trials cost 2 searches plus 11,000 small history reads.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pandas as pd
from tqdm import tqdm

from jobs import tracking
from jobs.tracking import RunSummary, fast_read, resolve_tracking_uri
from jobs.tracking.tags import ROLE_TAG, TRIAL_INDEX_TAG
from jobs.tracking.uri import redact_uri

#: Gradient-noise histories (see ``rgflow.train``): B_simple (images), the raw estimates of |G|² and
#: tr(Σ) ((nats/dim)²), and the same in Adam's preconditioned metric (dimensionless; B in images).
NOISE_KEYS = ("noise_scale", "noise_grad_sq", "noise_trace", "noise_scale_adam", "noise_grad_sq_adam",
              "noise_trace_adam")
#: Metric histories read per trial: validation curve, its epoch axis, the gradient noise, the
#: learning rate and the per-step axes (samples seen, wall-clock seconds).
HISTORY_KEYS = ("val_bpd", "val_epoch", *NOISE_KEYS, "lr", "samples_seen", "wall_s")
HISTORY_THREADS = 16


class ReportInputError(ValueError):
    """The sweep or experiment to report on does not exist or holds no trials (one-line message)."""


@dataclass
class SweepRuns:
    """What a report is made of. ``histories[run_id][key]`` is a DataFrame ``(step, value)`` sorted by step;
    ``parent_params`` / ``parent_tags``: the sweep's parent run's."""

    uri: str
    experiment_id: str
    experiment_name: str
    parent_run_id: str | None
    parent_params: dict[str, str]
    runs: list[RunSummary]
    histories: dict[str, dict[str, pd.DataFrame]] = field(default_factory=dict)
    parent_tags: dict[str, str] = field(default_factory=dict)


def find_parent_run(uri: str, experiment_id: str, sweep_id: str | None) -> RunSummary | None:
    """The sweep's parent run (tag ``rgflow.role=sweep``; the given ``sweep_id`` if any), newest first."""
    return tracking.find_sweep_run(uri, experiment_id, sweep_id)


def metric_history(uri: str, run_id: str, key: str) -> pd.DataFrame:
    """``(step, value)`` of one metric, sorted by step; the last value wins at a repeated step."""
    points = tracking.read_metric_history(uri, run_id, key)
    frame = pd.DataFrame(points, columns=["step", "timestamp", "value"])
    frame = frame.sort_values(["step", "timestamp"]).drop_duplicates("step", keep="last")
    return frame[["step", "value"]].reset_index(drop=True)


def fetch_histories(uri: str, run_ids: list[str], keys=HISTORY_KEYS,
                    threads: int = HISTORY_THREADS) -> dict[str, dict[str, pd.DataFrame]]:
    """``{run_id: {key: (step, value) frame}}`` for every run and key, read in parallel."""
    jobs = [(rid, key) for rid in run_ids for key in keys]
    if not jobs:
        return {}
    with ThreadPoolExecutor(max_workers=min(threads, len(jobs))) as pool:
        frames = list(tqdm(pool.map(lambda job: metric_history(uri, *job), jobs), total=len(jobs), unit="history",
                           desc="jobs.report: metric histories", disable=None, leave=False))  # on terminals only
    out: dict[str, dict[str, pd.DataFrame]] = {rid: {} for rid in run_ids}
    for (rid, key), frame in zip(jobs, frames):
        out[rid][key] = frame
    return out


def load_sweep_runs(uri: str | None, experiment: str, sweep_id: str | None = None,
                    trial_ids: list[str] | None = None, with_histories: bool = True) -> SweepRuns:
    """Trial runs of ``experiment`` (only ``trial_ids`` when given), their parent and histories.

    Raises :class:`ReportInputError` when the experiment is missing or has no matching trial runs.
    """
    uri = resolve_tracking_uri(uri)
    exp = experiment_id(uri, experiment)
    found = tracking.find_trial_runs(uri, exp, trial_ids=trial_ids)
    if not found:
        raise ReportInputError(f"experiment {experiment!r} at {redact_uri(uri)} has no trial runs (tag {ROLE_TAG}=trial)"
                               + (" of this sweep file's trials" if trial_ids is not None else ""))
    runs = sorted(found.values(), key=_trial_order)
    parent = find_parent_run(uri, exp, sweep_id) or (find_parent_run(uri, exp, None) if sweep_id else None)
    histories = fetch_histories(uri, [r.run_id for r in runs]) if with_histories else {}
    return SweepRuns(uri, exp, experiment, parent.run_id if parent else None,
                     dict(parent.params) if parent else {}, runs, histories, dict(parent.tags) if parent else {})


def experiment_id(uri: str, experiment: str) -> str:
    """The id of ``experiment`` in the store ``uri``, read without mlflow where the store allows
    (:mod:`jobs.tracking.fast_read`) and creating nothing: :class:`ReportInputError` (one line, with
    the fix) when the store or the experiment does not exist."""
    missing = fast_read.missing_store(uri)
    if missing:
        raise ReportInputError(missing)
    found = fast_read.experiment_id(uri, experiment)
    if found is None:
        raise ReportInputError(f"no MLflow experiment {experiment!r} at {redact_uri(uri)}: run the sweep first, or "
                               "pass --tracking-uri / set MLFLOW_TRACKING_URI to the store that holds it")
    return found


def _trial_order(run: RunSummary) -> tuple:
    index = run.tags.get(TRIAL_INDEX_TAG, "")
    return (int(index) if index.isdigit() else math.inf, run.trial_id)


__all__ = ["HISTORY_KEYS", "NOISE_KEYS", "ReportInputError", "SweepRuns", "experiment_id", "find_parent_run",
           "metric_history", "fetch_histories", "load_sweep_runs"]
