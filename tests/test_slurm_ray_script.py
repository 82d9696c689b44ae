"""``slurm/ray-cluster.sh`` on the real dev cluster (one node, so a Ray head and no workers): the
head starts inside the allocation, on loopback, ``jobs.sweep`` runs a one-trial sweep against it (not
an embedded Ray), the trial's MLflow run finishes, and nothing of that Ray is left afterwards."""
from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RAY_SH = REPO / "slurm" / "ray-cluster.sh"

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and text in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_sweep_runs_on_a_ray_head_started_in_the_allocation(slurm_cluster, trial_data_root, tmp_path):
    from mlflow import MlflowClient

    port = _free_port()
    job = slurm_cluster.sbatch(
        "--nodes=1", "--cpus-per-task=2", "--gpus-per-task=1", "--mem=6G", "--time=10",
        f"--output={tmp_path}/ray.out", str(RAY_SH), "sweeps/smoke.yaml",
        "train.batch_size=[32]", "prior.kind=[laplace]", "train.steps=4", "data.train_size=256",
        "data.valid_size=64", "data.test_size=64", f"data.root={trial_data_root}", "evaluation.enabled=false",
        f"run.out_dir={tmp_path}/runs", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        cwd=REPO, env={"RGFLOW_RAY_PORT": str(port)})
    try:
        state = slurm_cluster.wait_job(job, {"COMPLETED"}, timeout=400)
    except Exception as err:  # the job's own output says why (a flake under load is otherwise opaque)
        raise AssertionError(f"{err}\n--- ray.out:\n{(tmp_path / 'ray.out').read_text(errors='replace')[-6000:]}") from err
    out = (tmp_path / "ray.out").read_text()
    assert state == "COMPLETED", out
    assert "Ray head is up" in out and "jobs.sweep exited with 0" in out, out

    driver_log = (tmp_path / "runs" / "smoke" / "logs" / "driver.log").read_text()
    # one node: Ray stays on loopback (local-only mode), so nothing here talks to the host's address
    assert re.search(rf"Ray 127\.0\.0\.1:{port} at 127\.0\.0\.1:{port}, resources", driver_log), driver_log
    assert "'CPU': 2.0" in driver_log, driver_log  # the head's --num-cpus = the task's CPUs

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    trials = [r for r in runs if r.data.tags.get("rgflow.role") == "trial"]
    assert [(r.info.status, r.data.tags["rgflow.backend"]) for r in trials] == [("FINISHED", "ray")]

    assert not (REPO / "slurm-logs" / f".ray-token-{job}").exists()
    assert _processes_mentioning(f"/tmp/ray-{job}") == []
