"""The smoke sweep, shrunk, on the local backend: trial subprocesses (``python -m jobs.train SWEEP
--trial N overrides…``) two at a time, tracked and evaluated like the other backends; a trial rejecting its
input (exit 2) stops the sweep; each trial is pinned to its GPU slot (GPUs faked with the launcher's
``CUDA_VISIBLE_DEVICES``: the trials themselves run on the CPU)."""
from __future__ import annotations

import json

import pytest

from tests.fixtures.sweep import SMOKE

pytestmark = pytest.mark.slow


def test_local_sweep_completes(sweep_env):
    overrides = sweep_env.overrides("backend=local", "local.parallel=2", "prior.kind=laplace",
                                    "evaluation.samples=false", "evaluation.receptive_fields=false")
    proc = sweep_env.run(SMOKE, *overrides)
    assert proc.returncode == 0, proc.stderr
    assert all(line.startswith(("sweep smoke:", "smoke:")) for line in proc.stderr.splitlines() if line.strip())
    parents = sweep_env.parent_runs()
    trials = sweep_env.trial_runs()
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(trials) == 2 and {r.info.status for r in trials} == {"FINISHED"}
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.tags["rgflow.backend"] == "local"
        assert {"train_bpd", "val_bpd", "test_bpd"} <= set(run.data.metrics)  # evaluated after training
    sweep_dir = sweep_env.runs_dir / "smoke"
    state = json.loads((sweep_dir / "sweep-state.json").read_text())
    assert state["backend"] == "local" and state["driver_pid"] is None and len(state["trials"]) == 2
    for index in (0, 1):
        assert "[" in (sweep_dir / "logs" / f"trial-{index:04d}.log").read_text()  # the trial's own output

    again = sweep_env.run(SMOKE, *overrides)
    assert again.returncode == 0 and "2 already finished, 0 skipped, 0 to run" in again.stderr


def test_local_trial_rejecting_its_input_stops_the_sweep(sweep_env):
    # a batch larger than the 256 training images: found by the trial when it loads its data
    proc = sweep_env.run(SMOKE, *sweep_env.overrides("backend=local", "local.parallel=1", "prior.kind=laplace",
                                                     "train.batch_size=512"))
    assert proc.returncode == 1, proc.stderr
    assert "trial 0 rejected its input (exit 2)" in proc.stderr
    assert "more than the 256 training images" in (sweep_env.runs_dir / "smoke" / "logs" / "trial-0000.log").read_text()
    assert not (sweep_env.runs_dir / "smoke" / "logs" / "trial-0001.log").exists()  # the sweep stopped
    assert sweep_env.trial_runs() == []
    parent = sweep_env.parent_runs()[0]
    assert parent.info.status == "FAILED"
    assert "rejected its input" in parent.data.tags["rgflow.failure_reason"]


def test_local_trials_are_pinned_to_gpu_slots(sweep_env):
    sweep_env.env["CUDA_VISIBLE_DEVICES"] = "0,1"
    logs = sweep_env.runs_dir / "smoke" / "logs"
    common = ("backend=local", "resources.gpus=1", "prior.kind=laplace", "evaluation.enabled=false")
    refused = sweep_env.run(SMOKE, *sweep_env.overrides(*common, "local.parallel=3", "train.batch_size=[32,64,128]"))
    assert refused.returncode == 2
    assert ("local.parallel=3: more trials at once than the 2 GPU slots here (2 GPUs from CUDA_VISIBLE_DEVICES='0,1', "
            "resources.gpus=1 per trial)") in refused.stderr
    assert not list(logs.glob("trial-*.log")) and sweep_env.trial_runs() == []  # no trial started

    proc = sweep_env.run(SMOKE, *sweep_env.overrides(*common, "local.parallel=2"))
    assert proc.returncode == 0, proc.stderr
    firsts = sorted((logs / f"trial-{i:04d}.log").read_text().splitlines()[0] for i in (0, 1))
    assert firsts == ["local backend: trial 0 starts with CUDA_VISIBLE_DEVICES=0 (GPU slot 0 of 2)",
                      "local backend: trial 1 starts with CUDA_VISIBLE_DEVICES=1 (GPU slot 1 of 2)"]
    assert {r.info.status for r in sweep_env.trial_runs()} == {"FINISHED"}
