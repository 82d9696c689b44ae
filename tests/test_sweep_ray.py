"""The smoke sweep, shrunk to a few optimizer steps, on a real embedded Ray with sqlite MLflow:
trial runs under one parent, idempotent re-runs, a changed axis running only the new trial, and a
driver killed mid-sweep then continued with no duplicate run and none left RUNNING. Tune's own tools
(``ExperimentAnalysis``, ``ResultGrid``) open the sweep's one Tune experiment folder, as
sweeps/README.md says, with each trial's axis values in its config and its project trial id as its
name; a later launch adds to that folder."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.sweep import SMOKE

pytestmark = pytest.mark.slow

TWO = ("prior.kind=laplace",)  # the grid's batch sizes 32 and 128: two trials


def every_trial(experiment: Path):
    """Tune's analysis of every trial of the sweep's experiment folder, the latest launch's for a trial
    that several launches ran: the recipe of sweeps/README.md ("Opening a sweep's results with Ray Tune")."""
    from ray.tune import ExperimentAnalysis

    latest = {}
    for state in sorted(experiment.glob("experiment_state-*.json")):  # one per launch, oldest first
        for trial in ExperimentAnalysis(str(state)).trials:
            latest[str(trial)] = trial
    return ExperimentAnalysis(str(experiment), trials=list(latest.values()), default_metric="val_bpd",
                              default_mode="min")


def _console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def _assert_quiet(stderr: str) -> None:
    """Only the launcher's own lines reach the console: no Ray, Tune or MLflow logging."""
    for line in _console_lines(stderr):
        assert line.startswith(("sweep smoke:", "smoke:", "  skip ")), f"console spam: {line!r}"


def test_ray_sweep_runs_skips_and_adds_only_new_trials(sweep_env):
    overrides = sweep_env.overrides(*TWO, "evaluation.samples=false", "evaluation.receptive_fields=false")
    first = sweep_env.run(SMOKE, *overrides)
    assert first.returncode == 0, first.stderr
    _assert_quiet(first.stderr)
    assert "smoke: 2/2 done" in first.stderr

    parents = sweep_env.parent_runs()
    trials = sweep_env.trial_runs()
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.params["resources.cpus"] == "1"  # GPU/CPU-hours for a report by name
    assert len(trials) == 2
    for run in trials:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.tags["rgflow.backend"] == "ray" and run.data.tags["rgflow.sweep"] == "smoke"
        assert run.data.params["prior.kind"] == "laplace" and run.data.params["train.steps"] == "4"
        assert {"train_bpd", "val_bpd", "test_bpd"} <= set(run.data.metrics)  # test_bpd: evaluation chained
        assert 0 < run.data.metrics["val_bpd"] < 20
    assert sorted(int(r.data.params["train.batch_size"]) for r in trials) == [32, 128]
    sweep_dir = sweep_env.runs_dir / "smoke"
    assert (sweep_dir / "logs" / "driver.log").stat().st_size > 0
    launches = sorted(p.name for p in (sweep_dir / "tune").iterdir())
    assert launches == ["smoke"]  # one Tune experiment per sweep, named after it

    from ray.tune import ExperimentAnalysis, ResultGrid

    experiment = sweep_dir / "tune" / "smoke"
    analysis = ExperimentAnalysis(str(experiment), default_metric="val_bpd", default_mode="min")
    by_id = {r.data.tags["rgflow.trial_id"]: r for r in trials}
    configs = {str(t): t.config for t in analysis.trials}  # Tune's trial names: the project's trial ids
    assert set(configs) == set(by_id)
    for tid, config in configs.items():
        run = by_id[tid]
        assert config["trial_id"] == tid and config["index"] == int(run.data.tags["rgflow.trial_index"])
        assert config["train.batch_size"] == int(run.data.params["train.batch_size"])
        assert config["prior.kind"] == "laplace" and config["run.seed"] == 0
    assert sorted(d.name for d in experiment.iterdir() if d.is_dir()) == sorted(by_id)  # folders named so too
    frame = analysis.dataframe()
    assert sorted(frame["config/train.batch_size"]) == [32, 128] and (frame["val_bpd"] > 0).all()
    grid = ResultGrid(analysis)
    assert sorted(r.config["train.batch_size"] for r in grid) == [32, 128] and not grid.errors
    assert grid.get_best_result().config["trial_id"] in by_id

    again = sweep_env.run(SMOKE, *overrides)
    assert again.returncode == 0, again.stderr
    assert "2 already finished, 0 skipped, 0 to run" in again.stderr
    assert sorted(p.name for p in (sweep_dir / "tune").iterdir()) == launches  # Ray was not even started
    assert {(r.info.run_id, r.info.end_time) for r in sweep_env.trial_runs()} == {
        (r.info.run_id, r.info.end_time) for r in trials}

    wider = sweep_env.run(SMOKE, *overrides, "train.batch_size=[32,64]")
    assert wider.returncode == 0, wider.stderr
    assert "1 already finished, 0 skipped, 1 to run" in wider.stderr
    after = sweep_env.trial_runs()
    assert len(after) == 3
    new = [r for r in after if r.info.run_id not in {t.info.run_id for t in trials}]
    assert len(new) == 1 and new[0].data.params["train.batch_size"] == "64" and new[0].info.status == "FINISHED"
    old = {r.info.run_id: r.info.end_time for r in trials}
    assert all(old[r.info.run_id] == r.info.end_time for r in after if r.info.run_id in old)
    assert sorted(p.name for p in (sweep_dir / "tune").iterdir()) == launches  # the same experiment folder…
    assert len(list(experiment.glob("experiment_state-*.json"))) == 2  # …with a second launch in it
    latest = ExperimentAnalysis(str(experiment))  # the folder opens on the newest launch: the new trial
    assert [(str(t), t.config["train.batch_size"]) for t in latest.trials] == [
        (new[0].data.tags["rgflow.trial_id"], 64)]
    every = every_trial(experiment)
    assert sorted(str(t) for t in every.trials) == sorted(r.data.tags["rgflow.trial_id"] for r in after)
    assert sorted(every.dataframe()["config/train.batch_size"]) == [32, 64, 128]
    new_parent = new[0].data.tags["mlflow.parentRunId"]
    assert new_parent != parents[0].info.run_id  # a different set of trials is a different sweep run
    assert sweep_env.client().get_run(new_parent).info.status == "FINISHED"


def test_killed_driver_then_rerun_completes_without_duplicates(sweep_env):
    overrides = sweep_env.overrides(*TWO, "ray.max_concurrent_trials=1", "evaluation.enabled=false")
    console = sweep_env.root / "driver-console.txt"
    driver = sweep_env.popen(SMOKE, *overrides, stdout=subprocess.DEVNULL, stderr=console.open("w"))
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            if "to run on ray" not in console.read_text():  # MLflow store not created yet: do not race it
                time.sleep(0.5)
                continue
            if any(r.info.status == "FINISHED" for r in sweep_env.trial_runs()):
                break
            time.sleep(0.5)
        assert driver.poll() is None, f"the sweep ended before it could be killed: {console.read_text()}"
        assert sum(r.info.status == "FINISHED" for r in sweep_env.trial_runs()) == 1
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        sweep_env.kill_leftovers()  # Ray's raylet, GCS and agents left by the killed driver
    parents_before = sweep_env.parent_runs()
    assert [p.info.status for p in parents_before] == ["RUNNING"]  # SIGKILL left it open
    status = sweep_env.run("status", SMOKE, *overrides)  # the driver is gone: status closes the parent
    assert status.returncode == 0, status.stderr
    states = [line.split()[2] for line in status.stdout.splitlines() if line[:1].isdigit()]
    # the second trial never started (pending), started without a state yet (interrupted), or status reaped it:
    # its Ray launcher died (killed)
    assert sorted(states)[0] == "finished" and sorted(states)[1] in ("interrupted", "killed", "pending"), status.stdout
    assert [p.info.status for p in sweep_env.parent_runs()] == ["KILLED"]

    rerun = sweep_env.run(SMOKE, *overrides)
    assert rerun.returncode == 0, rerun.stderr
    assert "1 already finished, 0 skipped, 1 to run" in rerun.stderr
    trials = sweep_env.trial_runs()
    ids = [r.data.tags["rgflow.trial_id"] for r in trials]
    assert len(ids) == 2 and len(set(ids)) == 2, ids  # no duplicate run for the interrupted trial
    assert all(r.info.status == "FINISHED" for r in trials)
    parents = sweep_env.parent_runs()
    assert [p.info.run_id for p in parents] == [parents_before[0].info.run_id]
    assert parents[0].info.status == "FINISHED"
    assert not [r for r in sweep_env.all_runs() if r.info.status == "RUNNING"]
