"""Settle trials whose attempt is gone: deliver what their run folder still holds, close dead runs.

Called by every ``jobs.sweep`` launch (before planning) and by ``status``. For each trial whose
MLflow run is RUNNING or whose run folder holds undelivered data, and whose run folder no live
attempt holds (:func:`jobs.run_lock.holder_alive`; a holder on another host is judged by its
scheduler job):

1. pending metrics, tags, artifacts and an end state are replayed first (an attempt that ended but
   could not reach the store);
2. a run still RUNNING after that belonged to an attempt that died (SIGKILL, out of memory, node
   failure): it is closed FAILED with the reason and counted toward ``max_failures``
   (:func:`jobs.run_folder.reap_dead_attempt`) — except a Ray trial whose launcher is gone: Ray
   takes a driver's trials down with it, so it is closed KILLED and not counted.
"""
from __future__ import annotations

from jobs.attempt import LIVE_STATES, SLURM_DEATHS
from jobs.run_lock import RunFolderLock, RunFolderLocked, holder_alive, read_holder

GONE = "its attempt is gone without ending the run (killed by a signal, out of memory or node failure?)"


def death_of(run_dir: str, job_state: str | None) -> str:
    """The reason a dead attempt's run is closed with (the scheduler's word when there is one)."""
    holder = read_holder(run_dir)
    where = f" ({holder.describe()})" if holder else ""
    if job_state in SLURM_DEATHS:
        return f"{SLURM_DEATHS[job_state]}{where}"
    return f"{GONE}{where}"


def _dead(task, job_state: str | None) -> bool:
    """Whether no live attempt holds ``task``'s run folder, as far as this host can tell."""
    if job_state in LIVE_STATES:
        return False
    alive = holder_alive(task.run_dir)
    return alive is False or (alive is None and job_state is not None)


def needs_settling(task, run, job_state: str | None) -> bool:
    """Whether :func:`settle` has anything to do for ``task`` (files only; no store traffic)."""
    from jobs.run_folder import read_state
    from jobs.tracking.record import UnreadableRecord, has_pending

    if not _dead(task, job_state):
        return False
    running = run is not None and run.status == "RUNNING" and (read_state(task.run_dir) or {}).get("state") == "running"
    try:
        return running or has_pending(task.run_dir)
    except UnreadableRecord:  # settle says so, in one line
        return True


def settle(uri: str, tasks: dict, runs: dict, jobs: dict[str, tuple[str, str]], backend: str | None) -> list[str]:
    """Settle the trials of ``tasks`` (trial id → ``TrialTask``) given their ``runs`` (trial id →
    ``RunSummary``) and the scheduler's ``jobs`` (trial id → (job id, state)) of the launch that
    ran them on ``backend``; returns one line per trial settled (empty when nothing changed)."""
    from jobs.run_folder import adopt_run_id, reap_dead_attempt
    from jobs.tracking.record import UnreadableRecord, has_pending

    done = []
    for tid, task in tasks.items():
        run = runs.get(tid)
        job_state = jobs.get(tid, ("", None))[1]
        if not needs_settling(task, run, job_state):
            continue
        try:
            pending = has_pending(task.run_dir)
        except UnreadableRecord as err:
            done.append(f"trial {task.index}: {err}")
            continue
        if pending:
            from jobs.tracking.trial import replay_run_dir

            try:
                with RunFolderLock(task.run_dir):
                    delivered = replay_run_dir(task.run_dir, timeout_s=15.0)
                    adopt_run_id(task.run_dir)
            except RunFolderLocked:
                continue
            done.append(f"trial {task.index}: delivered pending tracking data" if delivered else
                        f"trial {task.index}: tracking store unreachable; pending data kept")
        if run is not None and run.status == "RUNNING":
            if backend == "ray" and job_state == "EXITED":
                job_id = jobs[tid][0]
                reason, state = f"its Ray launcher ({job_id}) died and took the trial down", "killed"
            else:
                reason, state = death_of(task.run_dir, job_state), "failed"
            failures = reap_dead_attempt(task.run_dir, reason, state)
            if failures is not None:
                done.append(f"trial {task.index}: run {run.run_id} closed {state.upper()} ({reason})"
                            + (f"; failure {failures}" if state == "failed" else ""))
    return done
