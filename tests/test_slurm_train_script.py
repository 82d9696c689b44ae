"""``slurm/train.sh`` on the real dev cluster.

The first tests check the script's own logic — arguments, array index, signal forwarding, the
exit-code contract of ``jobs.train`` (75 → requeue, anything else → no requeue) — with a stand-in
trainer given through ``RGFLOW_PYTHON`` (a script that logs its arguments and exits as told), in a
scratch folder laid out like the repository. The end-to-end tests run the real ``jobs.train`` on a
tiny trial and check the MLflow run after requeues.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAIN_SH = REPO / "slurm" / "train.sh"
SMALL = ("--cpus-per-task=1", "--mem=500M", "--time=10")
# Generous: the cluster may be shared with other test sessions' jobs; waits end as soon as done.
TIMEOUT = 180

# Logs one JSON line per event to $FAKE_LOG. FAKE_MODE=exit:N exits N at once; FAKE_MODE=wait
# (first attempt) sleeps until SIGUSR2/SIGTERM, then "checkpoints" and exits 75; a requeued
# attempt (SLURM_RESTART_COUNT > 0) exits 0.
STAND_IN = f"""#!{sys.executable}
import json, os, signal, sys, time
restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
def note(**event):
    with open(os.environ["FAKE_LOG"], "a") as fh:
        fh.write(json.dumps(dict(restart=restart, **event)) + "\\n")
def interrupted(signum, frame):
    for s in (signal.SIGUSR2, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    note(event="signal", signal=signal.Signals(signum).name)
    sys.exit(75)
signal.signal(signal.SIGUSR2, interrupted)
signal.signal(signal.SIGTERM, interrupted)
note(event="start", argv=sys.argv[1:], omp=os.environ.get("OMP_NUM_THREADS"))
mode = os.environ["FAKE_MODE"]
if mode.startswith("exit:"):
    sys.exit(int(mode[5:]))
if restart == 0:
    time.sleep(300)
    sys.exit(1)
"""


@pytest.fixture
def scratch_repo(tmp_path):
    """A folder laid out like the repository root (``jobs/train.py``, ``slurm-logs/``) with the
    stand-in trainer; returns ``(root, env)`` for sbatch."""
    root = tmp_path / "repo"
    (root / "jobs").mkdir(parents=True)
    (root / "jobs" / "train.py").write_text("")
    (root / "slurm-logs").mkdir()
    (root / "trial.yaml").write_text("train: {epochs: 1}\n")
    stand_in = tmp_path / "stand_in.py"
    stand_in.write_text(STAND_IN)
    stand_in.chmod(0o755)
    return root, {"RGFLOW_PYTHON": str(stand_in)}


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_events(path: Path, n: int, timeout: float = TIMEOUT) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = _events(path)
        if len(events) >= n:
            return events
        time.sleep(0.2)
    raise AssertionError(f"{path}: fewer than {n} events after {timeout} s: {_events(path)}")


def _log_of(root: Path, job: str) -> str:
    return (root / "slurm-logs" / f"rgflow-train-{job}.out").read_text()


@pytest.mark.slurm
def test_arguments_trial_index_and_exit_codes(slurm_cluster, scratch_repo):
    root, env = scratch_repo
    jobs = {}
    for name, mode, args in [
        ("array", "exit:0", ["--array=0-1", str(TRAIN_SH), "trial.yaml", "y=a b", "x=1"]),
        ("explicit", "exit:0", [str(TRAIN_SH), "trial.yaml", "3", "x=1"]),
        ("failed", "exit:1", [str(TRAIN_SH), "trial.yaml"]),
        ("bad_input", "exit:2", [str(TRAIN_SH), "trial.yaml"]),
        ("user_interrupt", "exit:130", [str(TRAIN_SH), "trial.yaml"]),
    ]:
        log = root / f"{name}.jsonl"
        jobs[name] = (slurm_cluster.sbatch(*SMALL, *args, cwd=root,
                                           env={**env, "FAKE_MODE": mode, "FAKE_LOG": str(log)}), log)

    array_job = jobs["array"][0]
    for task in (0, 1):
        assert slurm_cluster.wait_job(f"{array_job}_{task}", {"COMPLETED"}, timeout=TIMEOUT) == "COMPLETED"
    assert slurm_cluster.wait_job(jobs["explicit"][0], {"COMPLETED"}, timeout=TIMEOUT) == "COMPLETED"
    for name, code in [("failed", 1), ("bad_input", 2), ("user_interrupt", 130)]:
        job = jobs[name][0]
        assert slurm_cluster.wait_job(job, {"FAILED"}, timeout=TIMEOUT) == "FAILED"
        assert slurm_cluster.job_info(job)["ExitCode"] == f"{code}:0"
        assert slurm_cluster.job_info(job)["Restarts"] == "0"
        assert f"trainer exited with {code}" in _log_of(root, job)

    array_argv = sorted(e["argv"] for e in _events(jobs["array"][1]))
    assert array_argv == [["-m", "jobs.train", "--trial", str(t), "trial.yaml", "y=a b", "x=1"] for t in (0, 1)]
    [explicit] = _events(jobs["explicit"][1])
    assert explicit["argv"] == ["-m", "jobs.train", "--trial", "3", "trial.yaml", "x=1"]
    assert explicit["omp"] == "1"  # from --cpus-per-task
    [failed] = _events(jobs["failed"][1])
    assert failed["argv"] == ["-m", "jobs.train", "trial.yaml"]


@pytest.mark.slurm
def test_interrupted_trainer_is_requeued_once_and_resumes(slurm_cluster, scratch_repo):
    # Three interruptions, run side by side: USR2 to the batch shell (what --signal=B:USR2@120
    # does before the time limit), USR2 to every process of the step, and an admin requeue (SIGTERM
    # to the step; Slurm requeues by itself, the script must not requeue a second time).
    root, env = scratch_repo
    actions = {
        "usr2_batch": ["scancel", "--signal=USR2", "--batch"],
        "usr2_full": ["scancel", "--signal=USR2", "--full"],
        "admin_requeue": ["scontrol", "requeue"],
    }
    jobs = {}
    for name in actions:
        log = root / f"{name}.jsonl"
        jobs[name] = (slurm_cluster.sbatch(*SMALL, str(TRAIN_SH), "trial.yaml", cwd=root,
                                           env={**env, "FAKE_MODE": "wait", "FAKE_LOG": str(log)}), log)
    for name, action in actions.items():
        job, log = jobs[name]
        _wait_events(log, 1)
        slurm_cluster.run(*action, job)
    # A user's scancel also sends SIGTERM and the trainer exits 75, but a cancelled job stays
    # cancelled.
    cancel_log = root / "cancel.jsonl"
    cancelled = slurm_cluster.sbatch(*SMALL, str(TRAIN_SH), "trial.yaml", cwd=root,
                                     env={**env, "FAKE_MODE": "wait", "FAKE_LOG": str(cancel_log)})
    _wait_events(cancel_log, 1)
    slurm_cluster.run("scancel", cancelled)
    assert slurm_cluster.wait_job(cancelled, {"CANCELLED"}, timeout=TIMEOUT) == "CANCELLED"
    _wait_events(cancel_log, 2)
    time.sleep(3)  # a wrong requeue would show up by now
    assert [(e["restart"], e["event"]) for e in _events(cancel_log)] == [(0, "start"), (0, "signal")]
    assert slurm_cluster.job_info(cancelled)["JobState"] == "CANCELLED"
    assert slurm_cluster.job_info(cancelled)["Restarts"] == "0"
    assert "leaving it to Slurm" in _log_of(root, cancelled)

    for name in actions:
        job, log = jobs[name]
        assert slurm_cluster.wait_job(job, {"COMPLETED"}, timeout=TIMEOUT) == "COMPLETED", name
        events = [(e["restart"], e["event"], e.get("signal")) for e in _events(log)]
        signal = "TERM" if name == "admin_requeue" else "USR2"
        assert events == [(0, "start", None), (0, "signal", f"SIG{signal}"), (1, "start", None)], name
        assert slurm_cluster.job_info(job)["Restarts"] == "1", name
        assert [r["State"] for r in slurm_cluster.wait_accounted(job, "COMPLETED")] == ["REQUEUED", "COMPLETED"]
        text = _log_of(root, job)
        assert "trainer exited with 75" in text, name
        assert ("requeued job" in text) == (name != "admin_requeue"), name


def _run_directly(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return subprocess.run(["bash", str(TRAIN_SH), *args], cwd=cwd, env={**clean, **env},
                          capture_output=True, text=True, timeout=30)


def test_bad_submissions_exit_2_with_one_clear_line(scratch_repo, tmp_path):
    root, env = scratch_repo
    env = {**env, "FAKE_MODE": "exit:0", "FAKE_LOG": str(tmp_path / "direct.jsonl")}
    outside = _run_directly("trial.yaml", cwd=tmp_path, env=env)
    assert outside.returncode == 2
    assert "is not the repository root" in outside.stderr
    missing = _run_directly("nope.yaml", cwd=root, env=env)
    assert missing.returncode == 2
    assert "nope.yaml: no such file" in missing.stderr
    both = _run_directly("trial.yaml", "4", cwd=root, env={**env, "SLURM_ARRAY_TASK_ID": "1"})
    assert both.returncode == 2
    assert "use either N or --array" in both.stderr
    assert not (tmp_path / "direct.jsonl").exists()


def test_outside_slurm_exit_75_is_passed_through(scratch_repo, tmp_path):
    root, env = scratch_repo
    log = tmp_path / "direct.jsonl"
    proc = _run_directly("trial.yaml", "x=1", cwd=root, env={**env, "FAKE_MODE": "exit:75", "FAKE_LOG": str(log)})
    assert proc.returncode == 75
    assert "not inside a Slurm job: nothing to requeue" in proc.stderr
    assert [e["argv"] for e in _events(log)] == [["-m", "jobs.train", "trial.yaml", "x=1"]]


# ---------------------------------------------------------------------------------------------
# End to end: the real jobs.train on a tiny trial (8 steps per epoch, 32 steps, checkpoints at
# epoch ends), tracked in a sqlite MLflow store under tmp_path.
# ---------------------------------------------------------------------------------------------

STEPS, LOG_EVERY, STEPS_PER_EPOCH = 32, 4, 8
TINY_TRIAL = (
    "configs/tiny.yaml", "data.train_size=256", "data.valid_size=64", "data.test_size=64",
    "train.batch_size=32", "train.epochs=100", f"train.steps={STEPS}", f"train.log_every={LOG_EVERY}",
    "train.sample_every_epochs=100", "train.checkpoint_minutes=0.05", "run.threads=1",
)


def _submit_tiny_trial(cluster, out: Path, data_root: Path) -> str:
    return cluster.sbatch("--cpus-per-task=1", "--mem=4G", "--time=15", f"--output={out}/job.out",
                          str(TRAIN_SH), *TINY_TRIAL, f"data.root={data_root}", f"run.out_dir={out}/runs",
                          f"tracking.uri=sqlite:///{out}/mlflow.db", cwd=REPO)


def _wait_first_checkpoint(out: Path, job: str, cluster, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list((out / "runs").glob("single/*/checkpoints/step-*.ckpt")):
            return
        assert cluster.job_state(job) in {"PENDING", "RUNNING"}, (out / "job.out").read_text()
        time.sleep(0.5)
    raise AssertionError(f"no checkpoint after {timeout} s: {(out / 'job.out').read_text()}")


def _the_run(out: Path):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments)
    assert len(runs) == 1, [r.info.run_id for r in runs]
    run = runs[0]
    history = {key: [m.step for m in client.get_metric_history(run.info.run_id, key)]
               for key in ("train_bpd", "samples_seen", "val_bpd")}
    return run, history


@pytest.mark.slurm
@pytest.mark.slow
def test_real_trial_requeued_two_ways_finishes_in_one_run(slurm_cluster, trial_data_root, tmp_path):
    actions = {
        "usr2_batch": ["scancel", "--signal=USR2", "--batch"],  # what --signal=B:USR2@120 does
        "admin_requeue": ["scontrol", "requeue"],  # SIGTERM to the step, Slurm requeues
    }
    jobs = {}
    for name in actions:
        (tmp_path / name).mkdir()
        jobs[name] = _submit_tiny_trial(slurm_cluster, tmp_path / name, trial_data_root)
    for name, action in actions.items():
        _wait_first_checkpoint(tmp_path / name, jobs[name], slurm_cluster)
        slurm_cluster.run(*action, jobs[name])

    for name, job in jobs.items():
        out = tmp_path / name
        state = slurm_cluster.wait_job(job, {"COMPLETED"}, timeout=300)
        assert state == "COMPLETED", (out / "job.out").read_text()
        log = (out / "job.out").read_text()
        assert "trainer exited with 75" in log and "trainer exited with 0" in log, log
        assert slurm_cluster.job_info(job)["Restarts"] == "1", name

        run, history = _the_run(out)
        assert run.info.status == "FINISHED", name
        assert run.data.tags["rgflow.state"] == "finished"
        assert int(run.data.tags["rgflow.attempt"]) == 2, name
        assert run.data.tags["rgflow.slurm_job_id"] == job
        expected = list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
        assert history["train_bpd"] == expected, (name, history)  # no gap, no duplicate, in order
        assert history["samples_seen"] == expected, (name, history)
        assert history["val_bpd"] == list(range(STEPS_PER_EPOCH, STEPS + 1, STEPS_PER_EPOCH)), (name, history)
