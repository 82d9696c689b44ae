"""Preflight (``jobs.preflight``): each check on real inputs — CelebA folders, FID weights, sqlite and
a real ``mlflow server``, a closed port, the dev Slurm's ``sinfo``, this machine's devices, Ray's
dashboard packages, the estimate against the time limit, free disk space — and through
``python -m jobs.sweep``: every problem listed at once, exit 2 and nothing created."""
from __future__ import annotations

import os
import time
import uuid
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from jobs import preflight as pf
from jobs.dryrun import estimates, flow_parameters
from jobs.preflight import (
    Problem, check_dashboard, check_data, check_disk, check_fid, check_resources, check_time, check_tracking,
    checkpoint_bytes, format_problems, parse_sinfo, preflight, slurm_minutes,
)
from jobs.sweep_spec import load_sweep
from jobs.train import run_dir_for
from tests.fixtures.celeba import make_celeba
from tests.fixtures.mlflow_server import free_port
from tests.fixtures.sweep import REPO, SMOKE

SWEEP = f"""
name: pf
base_config: {REPO / "configs" / "tiny.yaml"}
base: {{run: {{device: cpu, threads: 1}}}}
axes: {{grid: {{train.batch_size: [32, 64]}}}}
resources: {{cpus: 1, gpus: 0}}
backend: local
evaluation: {{fid: false}}
"""
Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def sweep_of(tmp_path, monkeypatch):
    """``sweep_of(*overrides)``: a 2-trial tiny sweep writing only under ``tmp_path`` (data root,
    run folder, sqlite store), with no CelebA or FID weights reachable from the environment."""
    monkeypatch.delenv("RGFLOW_CELEBA_DIR", raising=False)
    monkeypatch.delenv("RGFLOW_FID_WEIGHTS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    path = tmp_path / "pf.yaml"
    path.write_text(SWEEP)

    def load(*overrides: str):
        return load_sweep(path, [f"run.out_dir={tmp_path / 'runs'}", f"data.root={tmp_path / 'data'}",
                                 f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", *overrides])
    return load


def _one(problems: list[Problem], level: str, key: str) -> str:
    assert [(p.level, p.key) for p in problems] == [(level, key)], problems
    assert "\n" not in problems[0].message
    return problems[0].message


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: None], ids=["empty", "missing"])
def test_celeba_folder_empty_or_missing_is_an_error_naming_it_and_the_fix(sweep_of, tmp_path, make):
    folder = tmp_path / "celeba-here"
    make(folder)
    message = _one(check_data(sweep_of("data.name=celeba", f"data.celeba_dir={folder}")), "error", "data")
    assert f"CelebA not found in {folder.resolve()} (from data.celeba_dir)" in message
    assert "img_align_celeba/*.jpg and list_eval_partition.txt" in message
    assert "set data.celeba_dir or RGFLOW_CELEBA_DIR" in message


def test_celeba_folder_from_the_environment_with_images_missing(sweep_of, tmp_path, monkeypatch):
    folder = make_celeba(tmp_path / "celeba")
    (folder / "img_align_celeba" / "000036.jpg").unlink()   # the last listed image
    monkeypatch.setenv("RGFLOW_CELEBA_DIR", str(folder))
    message = _one(check_data(sweep_of("data.name=celeba")), "error", "data")
    assert "CelebA incomplete" in message and "000036.jpg" in message


def test_celeba_folder_present_is_fine(sweep_of, celeba_dir):
    assert check_data(sweep_of("data.name=celeba", f"data.celeba_dir={celeba_dir}")) == []


def test_msds_cache_missing_without_room_is_an_error(sweep_of, tmp_path, monkeypatch):
    sweep = sweep_of()
    assert check_data(sweep) == []   # missing, but data.root is writable with room: the trials build it
    monkeypatch.setattr(pf.shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 10**6, 10**6))
    message = _one(check_data(sweep), "error", "data")
    assert f"the cache {tmp_path / 'data' / 'msds1-seed0'} is missing" in message
    assert "it needs 346 MB, only 1 MB are free" in message
    assert "python -m rgflow.data msds1 --seed 0 --root DIR" in message


def test_msds_cache_present_needs_no_room(sweep_of, tmp_path, monkeypatch):
    from rgflow.data import cache, msds, splits

    counts = dict(msds.SPLIT_COUNTS)

    def builder(tmp: Path) -> None:
        for split in counts:
            np.save(tmp / f"{split}_images.npy", np.zeros((2, 3, 32, 32), np.uint8))

    cache.ensure(tmp_path / "data" / "msds1-seed0", splits.msds_identity("msds1", 0, counts), builder)
    monkeypatch.setattr(pf.shutil, "disk_usage", lambda path: Usage(10**9, 10**9, 0))
    assert check_data(sweep_of()) == []
    (tmp_path / "data" / "msds1-seed0" / "test_images.npy").write_bytes(b"short")
    assert _one(check_data(sweep_of()), "error", "data")   # a damaged cache is rebuilt: no room for it


# ----------------------------------------------------------------------------------------------
# fid
# ----------------------------------------------------------------------------------------------

def test_fid_without_weights_is_an_error_with_both_fixes(sweep_of, tmp_path):
    assert check_fid(sweep_of()) == []   # evaluation.fid=false
    assert check_fid(sweep_of("evaluation.fid=true", "evaluation.enabled=false")) == []
    message = _one(check_fid(sweep_of("evaluation.fid=true")), "error", "fid")
    assert "evaluation.fid=true" in message and "pt_inception-2015-12-05-6726825d.pth not found" in message
    assert "eval.fid_weights or $RGFLOW_FID_WEIGHTS" in message and "evaluation.fid=false" in message
    named = tmp_path / "nope.pth"
    message = _one(check_fid(sweep_of("evaluation.fid=true", f"eval.fid_weights={named}")), "error", "fid")
    assert f"{named} (from eval.fid_weights) does not exist" in message
    named.write_bytes(b"weights")
    assert check_fid(sweep_of("evaluation.fid=true", f"eval.fid_weights={named}")) == []


# ----------------------------------------------------------------------------------------------
# tracking
# ----------------------------------------------------------------------------------------------

def test_sqlite_store_folder_must_exist(sweep_of, tmp_path):
    assert check_tracking(sweep_of()) == []
    missing = tmp_path / "no" / "such" / "mlflow.db"
    message = _one(check_tracking(sweep_of(f"tracking.uri=sqlite:///{missing}")), "error", "tracking")
    assert f"the folder {missing.parent} does not exist" in message and "tracking.uri" in message
    assert not missing.parent.exists()


@pytest.mark.parametrize("overrides, where", [(["backend=slurm"], "backend=slurm"),
                                              (["backend=ray", "ray.address=10.0.0.1:6379"],
                                               "ray.address=10.0.0.1:6379")])
def test_sqlite_with_a_multi_node_backend_warns(sweep_of, overrides, where):
    message = _one(check_tracking(sweep_of(*overrides)), "warning", "tracking")
    assert where in message and "shared filesystem" in message and "tracking.uri=http://HOST:PORT" in message
    assert check_tracking(sweep_of("backend=ray", "ray.address=local")) == []


def test_unreachable_tracking_server_is_an_error_within_seconds(sweep_of, monkeypatch):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, "")   # restored to unset after the test
        monkeypatch.delenv(name)
    port = free_port()   # bound and released: nothing listens there
    started = time.monotonic()
    problems = check_tracking(sweep_of(f"tracking.uri=http://alice:s3cret@127.0.0.1:{port}"))
    assert time.monotonic() - started < 5
    message = _one(problems, "error", "tracking")
    assert f"tracking server http://127.0.0.1:{port} is unreachable (connection refused)" in message
    assert "mlflow/server.sh start" in message and "s3cret" not in message and "alice" not in message
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("alice", "s3cret")


def test_running_tracking_server_passes(sweep_of, mlflow_server):
    assert check_tracking(sweep_of(f"tracking.uri={mlflow_server.uri}")) == []


# ----------------------------------------------------------------------------------------------
# resources
# ----------------------------------------------------------------------------------------------

def test_gpus_asked_for_on_this_machine(sweep_of, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")   # no GPU visible
    assert check_resources(sweep_of()) == []
    message = _one(check_resources(sweep_of("resources.gpus=1")), "error", "resources")
    assert "resources.gpus=1: the local backend finds no GPU here (CUDA_VISIBLE_DEVICES='')" in message
    message = _one(check_resources(sweep_of("backend=ray", "resources.gpus=0.5")), "error", "resources")
    assert "resources.gpus=0.5 but this machine has 0 GPU(s)" in message and "no trial would ever start" in message
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")   # two GPUs, as the local backend sees them
    assert check_resources(sweep_of("resources.gpus=1", "local.parallel=2")) == []
    assert check_resources(sweep_of("backend=ray", "resources.gpus=1")) == []
    assert check_resources(sweep_of("resources.gpus=1", "local.parallel=3")) == []  # 2 trials: 2 at once at most
    three = sweep_of("resources.gpus=1", "local.parallel=3", "train.batch_size=[32,64,128]")
    message = _one(check_resources(three), "error", "resources")
    assert "local.parallel=3: more trials at once than the 2 GPU slots here" in message


def test_ray_here_needs_the_cpus_and_memory_of_a_trial(sweep_of):
    too_many = sweep_of("backend=ray", f"resources.cpus={os.cpu_count() + 1}")
    message = _one(check_resources(too_many), "error", "resources")
    assert f"this machine has {os.cpu_count()} CPUs" in message
    message = _one(check_resources(sweep_of("backend=ray", "resources.memory_gb=100000")), "error", "resources")
    assert "resources.memory_gb=100000 but this machine has" in message


@pytest.mark.parametrize("backend", ["ray", "local"])
def test_cuda_device_without_a_gpu_given(sweep_of, backend):
    message = _one(check_resources(sweep_of(f"backend={backend}", "run.device=cuda")), "error", "resources")
    assert f"run.device=cuda but resources.gpus=0: backend={backend} gives the trials no GPU" in message


def test_ray_cluster_unreachable_is_an_error(sweep_of):
    port = free_port()
    message = _one(check_resources(sweep_of("backend=ray", f"ray.address=127.0.0.1:{port}")), "error", "resources")
    assert f"ray.address=127.0.0.1:{port}: the Ray cluster is unreachable" in message


def _dashboard_installed() -> bool:
    """Ray's own answer (it imports the dashboard's packages)."""
    from ray._private.utils import get_dashboard_dependency_error

    return get_dashboard_dependency_error() is None


def test_dashboard_asked_for_without_its_packages_is_an_error_with_the_fix(sweep_of):
    assert check_dashboard(sweep_of("backend=ray")) == []  # off by default
    asked = sweep_of("backend=ray", "ray.dashboard=true")
    if _dashboard_installed():
        assert check_dashboard(asked) == []
    else:  # a minimal Ray (no ray[default]), as in the dev environment
        message = _one(check_dashboard(asked), "error", "dashboard")
        assert message.startswith("ray.dashboard=true but Ray's dashboard needs packages that are not installed (no "
                                  "module '"), message
        assert message.endswith(": pip install 'ray[default]' or set ray.dashboard=false"), message
    assert check_dashboard(sweep_of("backend=ray", "ray.dashboard=true", "ray.address=auto")) == []  # not started here
    assert check_dashboard(sweep_of("backend=local", "ray.dashboard=true")) == []


def test_dashboard_without_its_packages_stops_the_launch_before_ray_starts(sweep_env):
    if _dashboard_installed():
        pytest.skip("ray[default] is installed: nothing to refuse")
    proc = sweep_env.run(SMOKE, *sweep_env.overrides("ray.dashboard=true"))
    assert proc.returncode == 2, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("preflight error")]
    assert line.startswith("preflight error [dashboard]: ray.dashboard=true but") and "pip install 'ray[default]'" in line
    assert not sweep_env.runs_dir.exists()  # no run folder: no Ray token, no driver log, nothing started
    assert not (sweep_env.root / "mlflow.db").exists()


@pytest.fixture
def ray_head(tmp_path):
    """A real one-node Ray cluster (``ray start --head``: 2 CPUs, no GPU, on 127.0.0.1), stopped by
    killing the processes that run from its own temp folder."""
    import contextlib
    import shutil
    import signal
    import subprocess
    import sys

    temp = Path(f"/tmp/rgf-ray-{uuid.uuid4().hex[:8]}")  # Ray's socket paths must stay short
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    ray = str(Path(sys.executable).parent / "ray")
    subprocess.run([ray, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                    "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=120)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        from jobs.backends.base import is_process

        for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
            if pid != os.getpid() and is_process(pid, str(temp)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_cluster_resources_are_checked_against_a_trial(sweep_of, ray_head, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert check_resources(sweep_of("backend=ray", f"ray.address={ray_head}", "resources.cpus=2")) == []
    message = _one(check_resources(sweep_of("backend=ray", f"ray.address={ray_head}", "resources.gpus=1",
                                            "run.device=auto")), "error", "resources")
    assert f"ray.address={ray_head}: no node of the cluster's 1 has what a trial asks for (cpu 1, gpu 1" in message
    assert "the most any node has: cpu 2, gpu 0" in message
    too_many = _one(check_resources(sweep_of("backend=ray", f"ray.address={ray_head}", "resources.cpus=3")),
                    "error", "resources")
    assert "(cpu 3, gpu 0;" in too_many


def test_sinfo_missing_is_a_warning(sweep_of, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    message = _one(check_resources(sweep_of("backend=slurm", "slurm.partition=gpu")), "warning", "resources")
    assert "sinfo is not on PATH" in message and "slurm.partition=gpu" in message


def test_parse_sinfo_and_slurm_times():
    parts = parse_sinfo("debug*|gpu:2|8|16000|infinite\ngpu|gpu:a100:4(S:0-1),mps:100|64+|512000|1-00:00:00\n"
                        "gpu|(null)|32|256000|2:00:00\ncpu|(null)|16|64000|30\n")
    assert parts["debug"] == pf.Partition("debug", True, 2, 8, 16000, None)
    assert parts["gpu"] == pf.Partition("gpu", False, 4, 64, 512000, 1440)
    assert parts["cpu"].gpus == 0 and parts["cpu"].time_limit_min == 30
    assert [slurm_minutes(t) for t in ("5", "5:30", "2:00:00", "1-12", "1-00:30", "2-00:00:01", "UNLIMITED")] == \
        [5, 6, 120, 2160, 1470, 2881, None]


def _fake_sinfo(tmp_path, monkeypatch, output: str) -> None:
    """An ``sinfo`` first on ``PATH`` that prints ``output``."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "sinfo").write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\n")
    (folder / "sinfo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


def test_slurm_cluster_without_any_gpu_refuses_gpu_trials(sweep_of, tmp_path, monkeypatch):
    _fake_sinfo(tmp_path, monkeypatch, "cpu*|(null)|16|64000|infinite\nbig|(null)|64|512000|2-00:00:00\n")
    assert check_resources(sweep_of("backend=slurm")) == []
    started = time.monotonic()
    message = _one(check_resources(sweep_of("backend=slurm", "resources.gpus=0.5", "run.device=auto")),
                   "error", "resources")
    assert time.monotonic() - started < 30
    assert message == ("trials ask for 1 GPU(s) (slurm.gpus_per_trial) but no node of this cluster has GPUs (no GRES "
                       "gpu in any partition: big, cpu): the jobs would never start; set resources.gpus=0 (and "
                       "run.device=cpu) or use a cluster with GPUs")


def test_sinfo_output_that_does_not_parse_is_an_error(sweep_of, tmp_path, monkeypatch):
    _fake_sinfo(tmp_path, monkeypatch, "sinfo: something unexpected\n")
    message = _one(check_resources(sweep_of("backend=slurm")), "error", "resources")
    assert message == ("backend=slurm: cannot parse the partitions sinfo lists (expected '%P|%G|%c|%m|%l' fields, got "
                       "'sinfo: something unexpected'); check the Slurm client (sinfo --version) and SLURM_CONF")


@pytest.mark.slurm
def test_slurm_partition_and_gpus_on_the_dev_cluster(sweep_of, slurm_cluster):
    message = _one(check_resources(sweep_of("backend=slurm", "slurm.partition=nope")), "error", "resources")
    assert "slurm.partition=nope: no partition nope on this cluster (partitions: debug, urgent)" in message
    assert check_resources(sweep_of("backend=slurm", "resources.gpus=1")) == []   # default partition, gpu:2
    message = _one(check_resources(sweep_of("backend=slurm", "slurm.partition=urgent", "resources.gpus=4")),
                   "error", "resources")
    assert "ask for 4 GPU(s)" in message and "urgent: 2" in message


# ----------------------------------------------------------------------------------------------
# time and disk
# ----------------------------------------------------------------------------------------------

def test_estimate_over_the_time_limit_warns_naming_the_trial(sweep_of, tmp_path):
    sweep = sweep_of("model.preset=msds", "data.train_size=null", "train.epochs=1", "resources.time_limit_min=10")
    found = estimates(sweep, results_dir=tmp_path / "no-results")
    message = _one(check_time(sweep, found), "warning", "time")
    longest = max(found, key=lambda e: e.hours)
    assert "2 trials (0-1) are estimated over resources.time_limit_min=10 min" in message
    assert (f"up to {longest.hours * 60:,.0f} min (assumed (100 GFLOP/s)) for trial {longest.index} "
            f"({longest.trial_id})") in message
    slurm = sweep_of("model.preset=msds", "data.train_size=null", "train.epochs=1", "backend=slurm",
                     "slurm.time_min=10", "train.batch_size=32")
    message = _one(check_time(slurm, estimates(slurm, results_dir=tmp_path)), "warning", "time")
    assert message.startswith(f"trial 0 ({slurm.trials[0].trial_id}) is estimated at")
    assert "slurm.time_min=10 min" in message
    assert check_time(sweep_of("resources.time_limit_min=10"), estimates(sweep_of(), results_dir=tmp_path)) == []


def test_checkpoint_size_from_the_config():
    from jobs.config import load_trial_config
    from jobs.report.header import parameter_count

    for overrides in (["model.preset=celeba32"], ["model.preset=tiny"],
                      ["model.preset=tiny", "model.nmlp=3", "model.kernel=2"]):
        cfg = load_trial_config(None, overrides)
        assert flow_parameters(cfg.model) == parameter_count(cfg.model, cfg.prior)
        assert checkpoint_bytes(cfg) == parameter_count(cfg.model, cfg.prior) * 4 * 3


def test_checkpoints_that_do_not_fit_are_an_error(sweep_of, tmp_path, monkeypatch):
    sweep = sweep_of("train.keep_last=2")
    need = 2 * 3 * checkpoint_bytes(sweep.trials[0].config)
    monkeypatch.setattr(pf.shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - need, need))
    assert check_disk(sweep) == []
    monkeypatch.setattr(pf.shutil, "disk_usage", lambda path: Usage(10**12, 10**12, need - 1))
    message = _one(check_disk(sweep), "error", "disk")
    assert f"run.out_dir={tmp_path / 'runs'}" in message and "2 trials × up to 3 files" in message
    assert "lower train.keep_last" in message
    folder = run_dir_for(sweep.trials[0].config, sweep.name) / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "step-00000001.ckpt").write_bytes(b"\0" * 10)
    assert check_disk(sweep) == []


# ----------------------------------------------------------------------------------------------
# all together, through the command line
# ----------------------------------------------------------------------------------------------

def test_format_lists_errors_first_then_a_summary(sweep_of, tmp_path):
    problems = preflight(sweep_of("backend=ray", "ray.address=auto", "data.name=celeba",
                                  f"data.celeba_dir={tmp_path / 'none'}"))
    assert [p.level for p in problems][:1] == ["error"] and "warning" in [p.level for p in problems]
    text = format_problems(problems, launching=True).splitlines()
    assert text[0].startswith("preflight error [data]: CelebA not found")
    assert text[-1].endswith("nothing was started or created; fix the errors and run again")
    assert format_problems([], launching=False) == "preflight: no problems found"


def _env_without_data(sweep_env, tmp_path):
    for name in ("RGFLOW_CELEBA_DIR", "RGFLOW_FID_WEIGHTS"):
        sweep_env.env.pop(name, None)
    sweep_env.env["TORCH_HOME"] = str(tmp_path / "torch-home")


def test_celeba_and_fid_missing_both_listed_exit_2_nothing_created(sweep_env, tmp_path):
    _env_without_data(sweep_env, tmp_path)
    missing = tmp_path / "none"
    args = [SMOKE, *sweep_env.overrides("data.name=celeba", f"data.celeba_dir={missing}", "evaluation.fid=true")]
    for extra in (["--dry-run"], []):
        proc = sweep_env.run(*args, *extra)
        assert proc.returncode == 2, proc.stderr
        out = proc.stdout if extra else proc.stderr
        assert "preflight error [data]: CelebA not found" in out and "preflight error [fid]:" in out
        assert "2 errors" in out
    assert not (sweep_env.root / "mlflow.db").exists()   # no store, hence no experiment
    assert not sweep_env.runs_dir.exists()


def test_fatal_launch_creates_no_experiment_on_a_server(sweep_env, tmp_path, mlflow_server):
    from mlflow import MlflowClient

    _env_without_data(sweep_env, tmp_path)
    sweep_env.env["MLFLOW_TRACKING_URI"] = mlflow_server.uri
    name = f"preflight-{uuid.uuid4().hex[:8]}"
    proc = sweep_env.run(SMOKE, *sweep_env.overrides(f"name={name}", "evaluation.fid=true"))
    assert proc.returncode == 2 and "preflight error [fid]:" in proc.stderr
    assert MlflowClient(mlflow_server.uri).get_experiment_by_name(name) is None
    assert not sweep_env.runs_dir.exists()


def test_smoke_dry_run_on_this_machine_has_no_fatal_problem(sweep_env):
    proc = sweep_env.run(SMOKE, "--dry-run", *sweep_env.overrides())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "preflight error" not in proc.stdout
    assert not (sweep_env.root / "mlflow.db").exists() and not sweep_env.runs_dir.exists()


def test_a_first_rung_shorter_than_the_warm_up_is_an_error_per_batch_size(tmp_path):
    path = tmp_path / "warm.yaml"
    path.write_text(f"""name: warm
base_config: {REPO}/configs/tiny.yaml
base: {{data: {{train_size: 1000}}, train: {{warmup_steps: 20}}, run: {{out_dir: {tmp_path}}}}}
axes: {{grid: {{train.batch_size: [32, 128]}}, seeds: [0, 1]}}
backend: ray
tune: {{scheduler: {{grace_epochs: 1, group_by: [train.batch_size]}}}}
""")
    problems = pf.check_scheduler(load_sweep(path))
    assert [str(p) for p in problems] == [
        "preflight error [scheduler]: sweep warm, trials 2-3: train.warmup_steps=20 × train.batch_size=128 = 2,560 "
        "images of warm-up, but asha's first rung is at 1,000 images (tune.scheduler.grace_epochs=1): it would prune "
        "them while warming up; set tune.scheduler.grace_images: 2560 or more (or shorten the warm-up)"]
    fixed = load_sweep(path, ["tune.scheduler.grace_epochs=null", "tune.scheduler.grace_images=2560"])
    assert pf.check_scheduler(fixed) == [] and fixed.tune.scheduler.first_rung == "2,560 images"
