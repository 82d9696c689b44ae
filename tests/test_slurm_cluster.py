"""The dev cluster is a real Slurm: GPU requests schedule, accounting records exit codes, signals
reach the batch script, requeue restarts a job, and a higher-priority partition preempts."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm
# Generous: the cluster may be shared with other test sessions' jobs; waits end as soon as done.
TIMEOUT = 180


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\nset -u\n" + body)
    return path


def _wait_file(path: Path, timeout: float = TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        time.sleep(0.2)
    raise AssertionError(f"{path} not written within {timeout} s")


def test_gpu_job_completes_and_exit_codes_are_accounted(slurm_cluster, tmp_path):
    ok = _script(tmp_path / "ok.sh", 'echo "gpus=$SLURM_GPUS_ON_NODE job=$SLURM_JOB_ID"\n')
    bad = _script(tmp_path / "bad.sh", "exit 3\n")
    ok_id = slurm_cluster.sbatch("--gpus=1", "--output", str(tmp_path / "ok.out"), str(ok), cwd=tmp_path)
    bad_id = slurm_cluster.sbatch("--output", str(tmp_path / "bad.out"), str(bad), cwd=tmp_path)

    assert slurm_cluster.wait_job(ok_id, {"COMPLETED"}, timeout=TIMEOUT) == "COMPLETED"
    assert slurm_cluster.wait_job(bad_id, {"FAILED"}, timeout=TIMEOUT) == "FAILED"
    assert (tmp_path / "ok.out").read_text() == f"gpus=1 job={ok_id}\n"
    ok_rows = slurm_cluster.wait_accounted(ok_id, "COMPLETED")
    bad_rows = slurm_cluster.wait_accounted(bad_id, "FAILED")
    assert [(r["State"], r["ExitCode"]) for r in ok_rows] == [("COMPLETED", "0:0")]
    assert [(r["State"], r["ExitCode"]) for r in bad_rows] == [("FAILED", "3:0")]


@pytest.mark.parametrize("scope", ["--batch", "--full"])
def test_scancel_usr2_reaches_batch_script(slurm_cluster, tmp_path, scope):
    script = _script(tmp_path / "trap.sh", f"""
trap 'echo "usr2 at $SECONDS" > {tmp_path}/got-usr2; exit 0' USR2
echo started > {tmp_path}/started
sleep 120 &
wait $!
echo "no signal" > {tmp_path}/got-usr2
exit 1
""")
    job = slurm_cluster.sbatch("--output", str(tmp_path / "trap.out"), str(script), cwd=tmp_path)
    _wait_file(tmp_path / "started")
    slurm_cluster.run("scancel", "--signal=USR2", scope, job)
    assert slurm_cluster.wait_job(job, {"COMPLETED"}, timeout=TIMEOUT) == "COMPLETED"
    assert _wait_file(tmp_path / "got-usr2").startswith("usr2 at ")


def test_scontrol_requeue_restarts_the_job(slurm_cluster, tmp_path):
    # First attempt waits to be requeued; the second (SLURM_RESTART_COUNT=1) finishes at once.
    script = _script(tmp_path / "requeue.sh", f"""
echo "attempt ${{SLURM_RESTART_COUNT:-0}}" >> {tmp_path}/attempts
if [ "${{SLURM_RESTART_COUNT:-0}}" = 0 ]; then sleep 120 & wait $!; exit 1; fi
""")
    job = slurm_cluster.sbatch("--requeue", "--output", str(tmp_path / "requeue.out"), "--open-mode=append",
                               str(script), cwd=tmp_path)
    _wait_file(tmp_path / "attempts")
    slurm_cluster.run("scontrol", "requeue", job)
    assert slurm_cluster.wait_job(job, {"COMPLETED"}, timeout=TIMEOUT) == "COMPLETED"
    assert (tmp_path / "attempts").read_text() == "attempt 0\nattempt 1\n"
    assert slurm_cluster.job_info(job)["Restarts"] == "1"
    assert [r["State"] for r in slurm_cluster.wait_accounted(job, "COMPLETED")] == ["REQUEUED", "COMPLETED"]


def test_urgent_partition_preempts_with_sigterm_and_requeues(slurm_cluster, tmp_path):
    # The low job holds every (fake) GPU; an `urgent` job asking for one preempts it — and only it,
    # whatever else runs on the shared node: the batch script gets SIGTERM (GraceTime), then the
    # job is requeued, not cancelled.
    gres = slurm_cluster.run("sinfo", "-h", "-o", "%G").stdout.split()[0]  # e.g. gpu:2
    gpus = gres.split(":")[-1]
    low = _script(tmp_path / "low.sh", f"""
echo "start ${{SLURM_RESTART_COUNT:-0}}" >> {tmp_path}/low.log
trap 'echo term >> {tmp_path}/low.log; exit 0' TERM
sleep 300 & wait $!
""")
    high = _script(tmp_path / "high.sh", "sleep 1\n")
    low_id = slurm_cluster.sbatch("--partition=debug", f"--gpus={gpus}", "--mem=100M", "--requeue",
                                  "--output", str(tmp_path / "low.out"), str(low), cwd=tmp_path)
    _wait_file(tmp_path / "low.log", timeout=TIMEOUT)
    high_id = slurm_cluster.sbatch("--partition=urgent", "--gpus=1", "--mem=100M",
                                   "--output", str(tmp_path / "high.out"), str(high), cwd=tmp_path)
    try:
        assert slurm_cluster.wait_job(high_id, {"COMPLETED"}, timeout=TIMEOUT) == "COMPLETED"
        assert (tmp_path / "low.log").read_text() == "start 0\nterm\n"
        info = slurm_cluster.job_info(low_id)
        assert (info["JobState"], info["Restarts"]) in {("PENDING", "1"), ("RUNNING", "1")}
    finally:
        slurm_cluster.run("scancel", low_id)
