"""The smoke sweep, shrunk to a few optimizer steps, on a real embedded Ray with sqlite MLflow:
trial runs under one parent, idempotent re-runs, a changed axis running only the new trial, and a
driver killed mid-sweep then continued with no duplicate run and none left RUNNING."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.fixtures.sweep import SMOKE

pytestmark = pytest.mark.slow

TWO = ("prior.kind=laplace",)  # the grid's batch sizes 32 and 128: two trials


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
    assert len(launches) == 1

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
