"""Read a sweep back from MLflow with a bounded number of queries.

One paged ``search_runs`` for the trial summaries (params, tags, latest metrics: ``find_trial_runs``
of ``jobs.tracking``), one for the sweep's parent run, and ``get_metric_history`` only for the
metrics that are plotted (:data:`HISTORY_KEYS`), run in a thread pool. Nothing is fetched per run
besides those histories, so 1,000 trials cost 2 searches plus 11,000 small history reads.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pandas as pd
from mlflow.entities import ViewType

from jobs.tracking import find_trial_runs, get_client, resolve_tracking_uri
from jobs.tracking.store import ROLE_TAG, SWEEP_ID_TAG, RunSummary, filter_literal, retry_transient

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
    """What a report is made of. ``histories[run_id][key]`` is a DataFrame ``(step, value)`` sorted by step."""

    uri: str
    experiment_id: str
    experiment_name: str
    parent_run_id: str | None
    parent_params: dict[str, str]
    runs: list[RunSummary]
    histories: dict[str, dict[str, pd.DataFrame]] = field(default_factory=dict)


def find_parent_run(client, experiment_id: str, sweep_id: str | None):
    """The sweep's parent run (tag ``rgflow.role=sweep``; the given ``sweep_id`` if any), newest first."""
    query = f"tags.`{ROLE_TAG}` = 'sweep'"
    if sweep_id:
        query += f" and tags.`{SWEEP_ID_TAG}` = '{filter_literal(sweep_id)}'"
    runs = retry_transient(
        lambda: client.search_runs([experiment_id], query, ViewType.ACTIVE_ONLY, max_results=1,
                                   order_by=["attributes.start_time DESC"]),
        timeout_s=60.0, what="search sweep run")
    return runs[0] if runs else None


def metric_history(client, run_id: str, key: str) -> pd.DataFrame:
    """``(step, value)`` of one metric, sorted by step; the last value wins at a repeated step."""
    metrics = retry_transient(lambda: client.get_metric_history(run_id, key), timeout_s=60.0,
                              what=f"history {key} of {run_id}")
    frame = pd.DataFrame([(m.step, m.timestamp, m.value) for m in metrics], columns=["step", "timestamp", "value"])
    frame = frame.sort_values(["step", "timestamp"]).drop_duplicates("step", keep="last")
    return frame[["step", "value"]].reset_index(drop=True)


def fetch_histories(client, run_ids: list[str], keys=HISTORY_KEYS,
                    threads: int = HISTORY_THREADS) -> dict[str, dict[str, pd.DataFrame]]:
    """``{run_id: {key: (step, value) frame}}`` for every run and key, read in parallel."""
    jobs = [(rid, key) for rid in run_ids for key in keys]
    if not jobs:
        return {}
    with ThreadPoolExecutor(max_workers=min(threads, len(jobs))) as pool:
        frames = list(pool.map(lambda job: metric_history(client, *job), jobs))
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
    client = get_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ReportInputError(f"no MLflow experiment {experiment!r} at {uri}: run the sweep first, or pass "
                               "--tracking-uri / set MLFLOW_TRACKING_URI to the store that holds it")
    found = find_trial_runs(uri, exp.experiment_id, trial_ids=trial_ids)
    if not found:
        raise ReportInputError(f"experiment {experiment!r} at {uri} has no trial runs (tag {ROLE_TAG}=trial)"
                               + (" of this sweep file's trials" if trial_ids is not None else ""))
    runs = sorted(found.values(), key=_trial_order)
    parent = find_parent_run(client, exp.experiment_id, sweep_id) or (
        find_parent_run(client, exp.experiment_id, None) if sweep_id else None)
    histories = fetch_histories(client, [r.run_id for r in runs]) if with_histories else {}
    return SweepRuns(uri, exp.experiment_id, experiment, parent.info.run_id if parent else None,
                     dict(parent.data.params) if parent else {}, runs, histories)


def _trial_order(run: RunSummary) -> tuple:
    index = run.tags.get("rgflow.trial_index", "")
    return (int(index) if index.isdigit() else math.inf, run.trial_id)


__all__ = ["HISTORY_KEYS", "NOISE_KEYS", "ReportInputError", "SweepRuns", "find_parent_run", "metric_history",
           "fetch_histories", "load_sweep_runs"]
