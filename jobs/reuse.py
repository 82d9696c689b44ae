"""Reuse of trials across sweeps: a trial that another sweep of the same tracking store trained is
linked into this sweep instead of being trained again.

The trial id (:func:`jobs.config.trial_id`) hashes what is trained, so one id in two experiments is
one training. When ``python -m jobs.sweep SWEEP.yaml`` launches, every trial it would start that
has no FINISHED run in the sweep's experiment but has a *reusable* run in another experiment of the
store (FINISHED and ``rgflow.state=finished``, not pruned, not itself a link, and evaluated —
``rgflow.eval.protocol`` — when the sweep evaluates: :func:`jobs.tracking.store.find_reusable_runs`)
gets a *link run* under this launch's parent run instead of an attempt
(:func:`jobs.tracking.store.link_trial_run`): a FINISHED copy of the original's params, metric
histories, tags and artifacts (``model/``, ``eval/``, ``train.log``) with this sweep's run name,
trial index and sweep tags, and ``rgflow.reused_from`` / ``rgflow.reused_from_experiment`` naming
the original. ``status``, the report, :func:`jobs.model_io.load_model` and ``jobs.evaluate`` treat
it as any finished trial run; a re-run finds it FINISHED and links nothing more.

``reuse: false`` in the sweep file (or the override ``reuse=false``) trains every trial here:
nothing is linked, and a trial an earlier launch linked is trained again (its link run is deleted —
MLflow's soft delete, restorable from the UI's trash — so the trained run takes its place). Only
``jobs.sweep`` links: ``jobs.train SWEEP.yaml --trial N`` and ``sbatch --array slurm/train.sh``
always train, and so does a launch while the store is unreachable.
"""
from __future__ import annotations

from jobs.tracking import RunSummary
from jobs.tracking.tags import (
    PARENT_TAG, REUSED_FROM_EXPERIMENT_TAG, REUSED_FROM_TAG, RUN_NAME_TAG, SWEEP_ID_TAG, SWEEP_TAG, TRIAL_INDEX_TAG,
)


def reusable(sweep, uri: str, experiment_id: str | None, runs: dict[str, RunSummary],
             todo: list[str]) -> dict[str, RunSummary]:
    """Trial id → the run of another experiment to link, for each trial of ``todo`` (the trials a
    launch would start) without a FINISHED run in this sweep's experiment (``runs``: trial id →
    its run there; ``experiment_id`` None: none yet). Empty with ``reuse: false``."""
    wanted = [tid for tid in todo if tid not in runs or runs[tid].status != "FINISHED"]
    if not sweep.reuse or not wanted:
        return {}
    from jobs.tracking.store import find_reusable_runs

    return find_reusable_runs(uri, experiment_id or "", wanted, evaluated=bool(sweep.evaluation.selected))


def apply_reuse(sweep, uri: str, experiment_id: str, parent_run_id: str, runs: dict[str, RunSummary],
                states: dict[str, str], todo: list[str], notes: dict[str, str]) -> tuple[list[str], int]:
    """Fold reuse into a launch's plan (:func:`jobs.sweep.plan`): link each :func:`reusable` trial of
    ``todo`` under ``parent_run_id`` (it leaves ``todo``; its state becomes finished, its run in
    ``runs`` the link, and ``notes`` says from where), or, with ``reuse: false``, delete this
    sweep's link runs and put their trials back into ``todo`` (their runs leave ``runs``). A link
    that cannot be created leaves its trial to train, with a note. Returns (the new ``todo`` in
    trial order, the number of trials linked)."""
    from jobs.tracking.store import delete_incomplete_links, delete_link_run, link_trial_run
    from jobs.train import trial_run_names

    for run_id in delete_incomplete_links(uri, experiment_id):
        notes[f"link {run_id}"] = "deleted: a link left half-made by an earlier launch (the store failed mid-way)"
    chosen, linked = set(todo), 0
    names = dict(zip((t.trial_id for t in sweep.trials), trial_run_names(sweep)))
    index = {t.trial_id: t.index for t in sweep.trials}
    for tid, original in reusable(sweep, uri, experiment_id, runs, todo).items():
        tags = {PARENT_TAG: parent_run_id, RUN_NAME_TAG: names[tid], SWEEP_TAG: sweep.name,
                SWEEP_ID_TAG: sweep.sweep_id, TRIAL_INDEX_TAG: str(index[tid])}
        try:
            link = link_trial_run(uri, experiment_id, original.run_id, tags, {"tracking.experiment": sweep.name})
        except Exception as err:  # noqa: BLE001 - training it is always possible
            why = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
            notes[tid] = f"not reused: linking run {original.run_id} failed ({why}); training it"
            continue
        chosen.discard(tid)
        runs[tid], states[tid], linked = link, "finished", linked + 1
        notes[tid] = (f"reused: finished run {original.run_id} of experiment "
                      f"{link.tags[REUSED_FROM_EXPERIMENT_TAG]} linked as run {link.run_id}")
    if not sweep.reuse:
        for tid, run in [(tid, run) for tid, run in runs.items() if REUSED_FROM_TAG in run.tags]:
            delete_link_run(uri, run.run_id)
            del runs[tid]
            chosen.add(tid)
            states[tid] = "pending"
            notes[tid] = (f"reuse=false: training it here; its link run {run.run_id} (to run "
                          f"{run.tags[REUSED_FROM_TAG]}) is deleted")
    return [t.trial_id for t in sweep.trials if t.trial_id in chosen], linked


def reused_lines(sweep, runs: dict[str, RunSummary]) -> list[str]:
    """One line per trial of ``sweep`` whose run (``runs``: trial id → run) is a link, for ``status``."""
    links = [(t.index, runs[t.trial_id]) for t in sweep.trials
             if t.trial_id in runs and REUSED_FROM_TAG in runs[t.trial_id].tags]
    return [f"trial {index} reused: run {run.run_id} links run {run.tags[REUSED_FROM_TAG]} of experiment "
            f"{run.tags[REUSED_FROM_EXPERIMENT_TAG]}" for index, run in links]
