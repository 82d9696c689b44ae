"""The smoke sweep through submitit on the real single-node Slurm: job arrays with chained
evaluation arrays, the same trial ids and MLflow layout as on Ray, re-runs that leave live jobs
alone, ``status`` finalising the parent run, a preempted array task (``scancel --signal=USR2``)
requeued and resumed into the same run, and ``cancel``."""
from __future__ import annotations

import json
import time

import pytest

from jobs.sweep_spec import load_sweep
from tests.fixtures.sweep import REPO, SMOKE

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SLURM = ("backend=slurm", "prior.kind=laplace", "resources.time_limit_min=20")


def _state(sweep_env, folder: str = "runs") -> dict:
    return json.loads((sweep_env.root / folder / "smoke" / "sweep-state.json").read_text())


def _wait_for(predicate, timeout: float, what: str, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def slurm_sweep(sweep_env, slurm_cluster):
    sweep_env.env.update(slurm_cluster.env)
    return sweep_env


def test_slurm_sweep_arrays_rerun_status(slurm_sweep, slurm_cluster):
    env = slurm_sweep
    overrides = env.overrides(*SLURM, "evaluation.samples=false", "evaluation.receptive_fields=false")
    first = env.run(SMOKE, *overrides, "slurm.extra_sbatch=[--hold]")  # held: still queued at the re-run
    assert first.returncode == 0, first.stderr
    assert "2 trials submitted" in first.stderr
    state = _state(env)
    expected = {t.trial_id: t.index for t in load_sweep(REPO / SMOKE, overrides).trials}
    assert {tid: job["index"] for tid, job in state["trials"].items()} == expected
    train_ids = {tid: job["job_id"] for tid, job in state["trials"].items()}
    eval_ids = {tid: job["eval_job_id"] for tid, job in state["trials"].items()}
    arrays = {j.split("_")[0] for j in train_ids.values()}
    eval_arrays = {j.split("_")[0] for j in eval_ids.values()}
    assert len(arrays) == 1 and sorted(j.split("_")[1] for j in train_ids.values()) == ["0", "1"]
    assert len(eval_arrays) == 1 and eval_arrays != arrays
    info = slurm_cluster.job_info(next(iter(eval_ids.values())))
    assert info is not None and f"aftercorr:{next(iter(arrays))}" in info.get("Dependency", "")
    assert [p.info.status for p in env.parent_runs()] == ["RUNNING"]

    rerun = env.run(SMOKE, *overrides)  # jobs still queued: nothing resubmitted, parent left RUNNING
    assert rerun.returncode == 0, rerun.stderr
    assert "0 to run" in rerun.stderr and rerun.stderr.count("still alive") == 2
    assert {tid: job["job_id"] for tid, job in _state(env)["trials"].items()} == train_ids
    assert [p.info.status for p in env.parent_runs()] == ["RUNNING"]
    slurm_cluster.run("scontrol", "release", *arrays, *eval_arrays)

    for job in [*train_ids.values(), *eval_ids.values()]:
        slurm_cluster.wait_job(job, timeout=400)
    status = env.run("status", SMOKE, *overrides)
    assert status.returncode == 0, status.stderr
    rows = [line.split() for line in status.stdout.splitlines() if line[:1].isdigit()]
    assert [(r[1], r[2], r[5]) for r in rows] == [(tid, "finished", train_ids[tid]) for tid in expected]
    assert "parent run" in status.stdout and "FINISHED" in status.stdout

    parent = env.parent_runs()[0]
    assert parent.info.status == "FINISHED"
    trials = env.trial_runs()
    assert sorted(r.data.tags["rgflow.trial_id"] for r in trials) == sorted(expected)
    for run in trials:  # the layout the Ray backend writes (tests/test_sweep_ray.py)
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["rgflow.backend"] == "slurm"
        assert run.data.tags["rgflow.slurm_array_task_id"] == train_ids[run.data.tags["rgflow.trial_id"]].split("_")[1]
        assert {"train_bpd", "val_bpd", "test_bpd"} <= set(run.data.metrics)


def test_slurm_preempted_task_resumes_and_cancel(slurm_sweep, slurm_cluster):
    env = slurm_sweep
    long_trial = ("train.batch_size=32", "train.epochs=30", "train.steps=200", "evaluation.enabled=false")
    overrides = env.overrides(*SLURM, *long_trial)
    assert env.run(SMOKE, *overrides).returncode == 0
    job = next(iter(_state(env)["trials"].values()))["job_id"]

    def trial_started():
        runs = env.trial_runs()
        return runs and runs[0].data.metrics.get("train_bpd") is not None and runs[0]

    run = _wait_for(trial_started, 300, "the trial's first metrics")
    slurm_cluster.run("scancel", "--signal=USR2", job)
    slurm_cluster.wait_job(job, timeout=600)
    assert slurm_cluster.wait_accounted(job, "COMPLETED")[0]["State"] == "REQUEUED"
    runs = env.trial_runs()
    assert [r.info.run_id for r in runs] == [run.info.run_id]  # resumed into the same run
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags["rgflow.attempt"] == "2"
    history = env.client().get_metric_history(run.info.run_id, "train_bpd")
    steps = [m.step for m in history]
    assert len(steps) == len(set(steps)) and max(steps) >= 198  # no duplicates, trained to the end

    endless = env.overrides(*SLURM, "train.batch_size=128", "train.epochs=500", "train.steps=5000",
                            "evaluation.enabled=false", f"run.out_dir={env.root / 'cancel'}")
    assert env.run(SMOKE, *endless).returncode == 0
    job = next(iter(_state(env, "cancel")["trials"].values()))["job_id"]
    _wait_for(lambda: any(r.data.tags.get("rgflow.trial_id") and r.data.params.get("train.batch_size") == "128"
                          and r.info.status == "RUNNING" for r in env.trial_runs()), 300, "the second trial to run")
    cancel = env.run("cancel", SMOKE, *endless)
    assert cancel.returncode == 0, cancel.stderr
    assert "cancelled 1 job(s)" in cancel.stdout
    assert slurm_cluster.wait_accounted(job, "CANCELLED")[-1]["State"] == "CANCELLED"
    cancelled = [r for r in env.trial_runs() if r.data.params.get("train.batch_size") == "128"]
    assert len(cancelled) == 1 and cancelled[0].info.status == "KILLED"
    assert cancelled[0].data.tags["rgflow.state"] == "killed"
    parents = {p.data.tags["rgflow.sweep_id"]: p for p in env.parent_runs()}
    endless_id = load_sweep(REPO / SMOKE, endless).sweep_id
    assert parents[endless_id].info.status == "KILLED"
    time.sleep(3)
    assert slurm_cluster.job_state(job) == "CANCELLED"  # not requeued by the trial's SIGTERM handling
