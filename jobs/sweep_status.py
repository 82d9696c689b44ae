"""The table of ``python -m jobs.sweep status``: one row per trial, from its MLflow run (a
:class:`jobs.tracking.RunSummary`) and its scheduler job, as text, JSON or CSV.

Row fields (the JSON keys; the CSV has one column per axis key in place of ``axes``): ``index``,
``trial_id``, ``axes`` (the sweep's varying keys → this trial's values), ``state``, ``attempts``,
``step`` (optimizer steps done), ``steps`` (steps the trial will make), ``epoch`` (epochs done,
fractional), ``epochs`` (epochs it will make), ``eta_s`` (seconds of training left, running trials
only), ``best_val_bpd`` (bits/dim), ``job_id``. Unknown values are ``null`` (empty in the CSV).

Progress comes from the run's latest ``samples_seen``, ``epoch``, ``wall_s`` and ``val_epoch``
metrics (:mod:`rgflow.train`) and the trial's ``train.batch_size``, ``train.epochs`` and
``train.steps``: steps per epoch = samples_seen / batch size / epoch (one training log); epochs
done = the later of ``epoch`` and ``val_epoch`` (validation also runs at the very end, so a
finished trial shows its last step); training stops after ``train.epochs`` epochs or
``train.steps`` steps, whichever comes first; ETA = epochs left × wall_s / epoch (seconds per
epoch so far, summed over attempts). Evaluation after training is not included. Before the first
training log all of it is unknown.

``running`` means a live attempt holds the trial's run folder (``attempt.lock``), not that a
launcher was handed the trial: a Ray driver running 2 of 4 trials shows 2 running, 2 pending.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.attempt import LIVE_STATES
from jobs.backends.base import best_val_bpd
from jobs.tracking.tags import REASON_TAG
from jobs.config import format_value

AXIS_LABELS = {"run.seed": "seed"}  # short names in the text table
TEXT_COLUMNS = ("index", "trial id", "state", "attempts", "best val_bpd", "job id", "step", "epoch", "ETA", "axes")
CSV_COLUMNS = ("state", "attempts", "step", "steps", "epoch", "epochs", "eta_s", "best_val_bpd", "job_id")


@dataclass(frozen=True)
class TrialProgress:
    """Where a trial's training stands: steps and epochs done and planned, seconds left (None: unknown)."""

    step: int | None = None
    steps: int | None = None
    epoch: float | None = None
    epochs: float | None = None
    eta_s: float | None = None


def progress_of(train, metrics: dict[str, float]) -> TrialProgress:
    """:class:`TrialProgress` from a run's latest metrics and the trial's ``train`` config section."""
    samples, train_epoch, wall, val_epoch = (_finite(metrics.get(k)) for k in ("samples_seen", "epoch", "wall_s",
                                                                               "val_epoch"))
    if samples is None or not train_epoch:
        return TrialProgress()
    per_epoch = samples / train.batch_size / train_epoch  # optimizer steps per epoch
    epoch = max(train_epoch, val_epoch or 0.0)
    steps, epochs = round(train.epochs * per_epoch), float(train.epochs)
    if train.steps is not None and train.steps < steps:
        steps, epochs = train.steps, train.steps / per_epoch
    eta = max(epochs - epoch, 0.0) * wall / train_epoch if wall is not None else None
    return TrialProgress(round(epoch * per_epoch), steps, epoch, epochs, eta)


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


LIVE, FREE, ELSEWHERE, NEVER = "live", "free", "elsewhere", ""  # what a run folder's attempt lock says


def attempt_states(run_dirs: dict[str, str]) -> dict[str, str]:
    """Trial id → what its run folder's ``attempt.lock`` (:mod:`jobs.run_lock`) says: :data:`LIVE`
    (a live attempt holds it), :data:`FREE` (held before, by no one now), :data:`ELSEWHERE` (last
    held on another host: cannot be told from here) or :data:`NEVER` (no attempt ever ran there)."""
    from jobs.run_lock import LOCK_NAME, holder_alive

    return {tid: NEVER if not (Path(folder) / LOCK_NAME).exists()
            else {True: LIVE, False: FREE, None: ELSEWHERE}[holder_alive(folder)]
            for tid, folder in run_dirs.items()}


def _state(run, job_state: str, attempt: str) -> str:
    """A trial's state from its MLflow run (or None), its job's scheduler state ('' if none) and
    its run folder's attempt lock (:func:`attempt_states`). Only a live attempt is running: a trial
    the scheduler or a launcher was handed whose attempt has not started (queued in a live Ray
    driver, a process still starting) is pending. Where the lock cannot be told (another host;
    no attempt ran here while its run says RUNNING) the scheduler's and MLflow's word is taken."""
    if run is None:
        if attempt == ELSEWHERE:
            return "running" if job_state in ("RUNNING", "COMPLETING") else "pending"
        return "running" if attempt == LIVE else "pending"
    if run.status == "FINISHED":
        return "pruned" if run.state == "pruned" else "finished"
    if run.status == "FAILED":
        return f"failed ({run.tags.get(REASON_TAG, 'no reason given')})"
    if run.status == "KILLED":
        if run.state == "preempted":
            return "preempted (requeued)" if job_state in ("PENDING", "REQUEUED") else "preempted"
        return "killed"
    if attempt == LIVE:
        return "running"
    if job_state in ("PENDING", "REQUEUED"):
        return "preempted (requeued)"
    if job_state and job_state not in LIVE_STATES:
        return "interrupted"
    if attempt == FREE:  # no live attempt: queued to resume behind a live launcher, or dead
        return "pending" if job_state else "interrupted"
    return "running"


def trial_rows(sweep, runs: dict, jobs: dict[str, tuple[str, str]],
               attempts: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per trial (fields: module docstring) from ``runs`` (trial id → RunSummary),
    ``jobs`` (trial id → (job id, scheduler state)) and ``attempts`` (:func:`attempt_states`;
    missing: cannot be told, the scheduler's word is taken)."""
    rows = []
    for trial in sweep.trials:
        run = runs.get(trial.trial_id)
        job_id, job_state = jobs.get(trial.trial_id, ("", ""))
        state = _state(run, job_state, (attempts or {}).get(trial.trial_id, ELSEWHERE))
        progress = progress_of(trial.config.train, run.metrics if run else {})
        rows.append({
            "index": trial.index, "trial_id": trial.trial_id, "axes": dict(trial.varying), "state": state,
            "attempts": run.attempt if run else 0, "step": progress.step, "steps": progress.steps,
            "epoch": progress.epoch, "epochs": progress.epochs, "eta_s": progress.eta_s if state == "running" else None,
            "best_val_bpd": _finite(best_val_bpd(run.metrics)) if run else None, "job_id": job_id,
        })
    return rows


def summarize_rows(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per state (first word: ``failed (…)`` counts as failed) and the ETA of the running
    trials: ``eta_longest_s`` (when all of them will be done), ``eta_total_s`` (their sum, s),
    ``eta_unknown`` (running trials without an ETA yet)."""
    counts: dict[str, int] = {}
    for row in rows:
        key = row["state"].split(" ")[0]
        counts[key] = counts.get(key, 0) + 1
    etas = [r["eta_s"] for r in rows if r["state"] == "running"]
    known = [e for e in etas if e is not None]
    return {"sweep": name, "trials": len(rows), "counts": dict(sorted(counts.items())), "running": len(etas),
            "eta_longest_s": max(known, default=None), "eta_total_s": sum(known) if known else None,
            "eta_unknown": len(etas) - len(known)}


def clock(seconds: float) -> str:
    """``3725`` → ``1:02:05``, ``312`` → ``5:12``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _of(done: float | None, total: float | None, show) -> str:
    if done is None:
        return "–"
    return show(done) + (f"/{show(total)}" if total is not None else "")


def axes_text(axes: dict[str, Any]) -> str:
    """``train.batch_size=512 prior.kind=laplace seed=0``."""
    return " ".join(f"{AXIS_LABELS.get(k, k)}={format_value(v)}" for k, v in axes.items())


def format_table(rows: list[dict[str, Any]]) -> str:
    """The table as aligned text (``–``: none yet; ETA ``?``: a running trial without progress)."""
    body = []
    for r in rows:
        eta = (clock(r["eta_s"]) if r["eta_s"] is not None else "?") if r["state"] == "running" else "–"
        body.append([str(r["index"]), r["trial_id"], r["state"], str(r["attempts"]),
                     "–" if r["best_val_bpd"] is None else f"{r['best_val_bpd']:.4f}", r["job_id"] or "–",
                     _of(r["step"], r["steps"], str), _of(r["epoch"], r["epochs"], _number), eta,
                     axes_text(r["axes"]) or "–"])
    widths = [max(len(x) for x in col) for col in zip(TEXT_COLUMNS, *body)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [TEXT_COLUMNS, *body])


def format_summary(summary: dict[str, Any]) -> str:
    """``smoke: 1 finished, 2 running, 1 pending · ETA of the 2 running: longest 5:12, total 9:40``."""
    line = f"{summary['sweep']}: " + ", ".join(f"{n} {k}" for k, n in summary["counts"].items())
    if summary["running"]:
        line += f" · ETA of the {summary['running']} running: "
        if summary["eta_longest_s"] is None:
            return line + "?"
        line += f"longest {clock(summary['eta_longest_s'])}, total {clock(summary['eta_total_s'])}"
        if summary["eta_unknown"]:
            line += f" ({summary['eta_unknown']} unknown)"
    return line


def to_json(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """``{"trials": [row, …], "summary": {…}}`` (see :func:`summarize_rows`)."""
    return json.dumps({"trials": rows, "summary": summary}, indent=1, allow_nan=False)


def to_csv(rows: list[dict[str, Any]]) -> str:
    """Header + one line per trial: index, trial_id, one column per axis key, then :data:`CSV_COLUMNS`."""
    keys = list(rows[0]["axes"]) if rows else []
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["index", "trial_id", *keys, *CSV_COLUMNS])
    for r in rows:
        writer.writerow([r["index"], r["trial_id"], *(format_value(r["axes"][k]) for k in keys),
                         *("" if r[c] is None else r[c] for c in CSV_COLUMNS)])
    return out.getvalue()
