"""The sweep's aggregates reach its parent run whoever closes it (:func:`jobs.tracking.store.close_sweep_run`):
the last task of a bare ``sbatch --array`` sweep (``jobs.train SWEEP --trial N`` without
``jobs.sweep``: no sweep state), a ``jobs.sweep`` launch, and ``jobs.sweep status`` finding the
parent RUNNING with its launcher and jobs gone — real processes, a real sqlite store."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.fixtures.sweep import REPO, SMOKE

pytestmark = pytest.mark.slow
ONE = ("backend=local", "prior.kind=laplace", "train.batch_size=[32]", "evaluation.samples=false",
       "evaluation.receptive_fields=false", "name=summary")


def _train(env, *args: str) -> subprocess.CompletedProcess:
    """``python -m jobs.train SMOKE --trial 0 ARGS…`` as a Slurm array task runs it (no launcher)."""
    return subprocess.run([sys.executable, "-m", "jobs.train", SMOKE, "--trial", "0", *args], cwd=REPO, env=env.env,
                          capture_output=True, text=True, timeout=600)


def test_parent_gets_the_summary_from_a_bare_array_task_a_launch_and_status(sweep_env):
    overrides = sweep_env.overrides(*ONE)
    client = sweep_env.client()

    def summary_history(parent_id: str) -> dict[str, list[float]]:
        return {k: [m.value for m in client.get_metric_history(parent_id, k)]
                for k in client.get_run(parent_id).data.metrics}

    bare = _train(sweep_env, "--evaluate", *overrides)  # the last (only) task of a bare array sweep
    assert bare.returncode == 0, bare.stderr
    [parent] = sweep_env.parent_runs("summary")
    [trial] = sweep_env.trial_runs("summary")
    best_val = min(m.value for m in client.get_metric_history(trial.info.run_id, "val_bpd"))
    setting = re.sub(r"-s\d+$", "", trial.info.run_name)  # the seed's part of the run name
    expected = {"trials": 1.0, "trials_finished": 1.0, "trials_pruned": 0.0, "trials_failed": 0.0,
                "best_val_bpd": best_val, "best_test_bpd": trial.data.metrics["test_bpd"],
                f"best_test_bpd/{setting}": trial.data.metrics["test_bpd"]}
    assert parent.info.status == "FINISHED" and parent.data.metrics == expected
    assert summary_history(parent.info.run_id) == {k: [v] for k, v in expected.items()}

    launch = sweep_env.run(SMOKE, *overrides)  # jobs.sweep finds it finished and closes the parent
    assert launch.returncode == 0, launch.stderr
    assert "1 already finished, 0 skipped, 0 to run" in launch.stderr
    assert summary_history(parent.info.run_id) == {k: [v] * 2 for k, v in expected.items()}

    again = _train(sweep_env, *overrides)  # reopens the parent; a jobs.sweep sweep is closed by its driver or status
    assert again.returncode == 0, again.stderr
    assert client.get_run(parent.info.run_id).info.status == "RUNNING"
    status = sweep_env.run("status", SMOKE, *overrides)
    assert status.returncode == 0, status.stderr
    assert f"summary: all jobs ended; parent run {parent.info.run_id} is now FINISHED" in status.stdout
    closed = client.get_run(parent.info.run_id)
    assert closed.info.status == "FINISHED" and closed.data.metrics == expected
    assert summary_history(parent.info.run_id) == {k: [v] * 3 for k, v in expected.items()}
