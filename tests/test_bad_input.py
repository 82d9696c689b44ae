"""Bad input refused up front by the real command lines (``python -m jobs.train`` and
``python -m jobs.sweep`` as subprocesses): exit 2, one line naming the key or file and the fix, and
nothing created — no run folder, no MLflow store (hence no experiment or run), nothing in the
working directory.

Covered: a seed outside ``0 ≤ seed < 2^63``, a model that does not fit the data's images, a key
written twice in a YAML file, a CelebA partition file or ``sinfo`` listing that does not parse, and
a GPU sweep where no GPU is (this machine for the local backend and Ray started here; a Slurm
cluster without GPU GRES, faked by an ``sinfo`` on ``PATH``; the real dev cluster, too few GPUs).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.celeba import make_celeba

REPO = Path(__file__).resolve().parents[1]
BIG_SEED = 2**64 + 1
SWEEP = """name: bad
base_config: {tiny}
base: {{run: {{device: cpu, threads: 1}}, data: {{root: {data}, train_size: 256, valid_size: 64}}}}
axes: {{seeds: [0]}}
resources: {{cpus: 1, gpus: 0}}
backend: local
evaluation: {{fid: false}}
"""
PREFLIGHT_LIMIT_S = 30.0


class Cli:
    """Runs the CLIs from an empty working directory with a private sqlite store and run folder."""

    def __init__(self, root: Path):
        self.root = root
        self.cwd = root / "cwd"
        self.cwd.mkdir()
        self.runs = root / "runs"
        self.store = root / "mlflow.db"
        self.env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{self.store}", "MLFLOW_DISABLE_TELEMETRY": "true",
                    "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
        for name in ("MLFLOW_RUN_ID", "RGFLOW_CELEBA_DIR", "RGFLOW_FID_WEIGHTS"):
            self.env.pop(name, None)
        self.config = root / "trial.yaml"
        self.config.write_text(f"model: {{preset: tiny}}\ndata: {{root: {REPO / 'data'}, train_size: 256}}\n"
                               "run: {device: cpu}\n")
        self.sweep = root / "bad.yaml"
        self.sweep.write_text(SWEEP.format(tiny=REPO / "configs" / "tiny.yaml", data=REPO / "data"))

    def run(self, module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", module, *args, f"run.out_dir={self.runs}"], cwd=self.cwd,
                              env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=300)
        return done

    def train(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run("jobs.train", *args, **kw)

    def launch(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run("jobs.sweep", *args, **kw)

    def assert_nothing_created(self, group_folder_ok: bool = False) -> None:
        """No run folder, store or file in the working directory. ``group_folder_ok``: an empty
        ``<run.out_dir>/<sweep or single>/`` may be left by a check made once ``jobs.train`` holds
        the run folder's lock (the trial's own folder is removed)."""
        if group_folder_ok and self.runs.exists():
            assert all(p.is_dir() and p.parent == self.runs and not any(p.iterdir()) for p in self.runs.iterdir())
        else:
            assert not self.runs.exists(), sorted(self.runs.rglob("*"))
        assert not self.store.exists(), "an MLflow store (and experiment) was created"
        assert list(self.cwd.iterdir()) == []


@pytest.fixture
def cli(tmp_path) -> Cli:
    return Cli(tmp_path)


def refused(done: subprocess.CompletedProcess) -> str:
    """The one error line of a command that exited 2 (``error: …`` of a config error)."""
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def preflight_refused(done: subprocess.CompletedProcess) -> str:
    """The one fatal preflight line of a ``jobs.sweep`` launch that exited 2."""
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("preflight error")]
    assert len(errors) == 1, done.stderr
    assert "nothing was started or created" in done.stderr
    return errors[0]


# ----------------------------------------------------------------------------------------------
# seeds
# ----------------------------------------------------------------------------------------------

def test_seed_beyond_int64_is_refused_by_both_clis(cli):
    line = refused(cli.train(str(cli.config), f"run.seed={BIG_SEED}"))
    assert line.startswith(f"error: run.seed={BIG_SEED}: must be below 2^63")
    assert "0 ≤ seed < 2^63" in line and f"[override 'run.seed={BIG_SEED}']" in line
    line = refused(cli.launch(str(cli.sweep), f"seeds=[0,{BIG_SEED}]"))
    assert line.startswith(f"error: run.seed={BIG_SEED}: must be below 2^63")
    assert line.endswith(f"[override 'seeds=[0,{BIG_SEED}]']")
    line = refused(cli.train(str(cli.sweep), "--trial", "0", f"eval.noise_seed={2**63}"))
    assert line.startswith(f"error: eval.noise_seed={2**63}: must be below 2^63")
    cli.assert_nothing_created()


def test_negative_seed_is_refused(cli):
    line = refused(cli.train(str(cli.config), "run.seed=-1"))
    assert line == "error: run.seed=-1: must be a non-negative integer [override 'run.seed=-1']"
    cli.assert_nothing_created()


# ----------------------------------------------------------------------------------------------
# model against data
# ----------------------------------------------------------------------------------------------

def test_model_size_that_is_not_the_image_size_is_refused(cli):
    line = refused(cli.train(str(cli.config), "model.size=16"))
    assert line == ("error: model.size=16: must be 32: data.name='msds1' has 3×32×32 images (channels×height×width); "
                    "set model.size=32 [override 'model.size=16']")
    line = refused(cli.launch(str(cli.sweep), "model.size=64"))
    assert line.startswith("error: model.size=64: must be 32: data.name='msds1' has 3×32×32 images")
    cli.assert_nothing_created()


def test_model_channels_that_do_not_match_the_data_are_refused(cli):
    config = cli.root / "gray.yaml"
    config.write_text("model: {preset: tiny, channels: 1}\ndata: {name: celeba}\n")
    line = refused(cli.train(str(config)))
    assert line == ("error: model.channels=1: must be 3: data.name='celeba' has 3×32×32 images "
                    f"(channels×height×width); set model.channels=3 [in {config}]")
    line = refused(cli.train(str(cli.sweep), "--trial", "0", "model.channels=2"))
    assert line.startswith("error: model.channels=2: must be 3")
    cli.assert_nothing_created()


# ----------------------------------------------------------------------------------------------
# duplicate YAML keys
# ----------------------------------------------------------------------------------------------

def test_duplicate_key_in_a_trial_config_names_file_line_and_key(cli):
    config = cli.root / "dup.yaml"
    config.write_text("model: {preset: tiny}\ntrain:\n  lr: 1.0e-3\n  epochs: 3\n  lr: 2.0e-3\n")
    line = refused(cli.train(str(config)))
    assert line == f"error: {config}:5:3: invalid YAML: duplicate key 'lr' (first on line 3): keep one"
    cli.assert_nothing_created()


def test_duplicate_key_in_a_sweep_or_its_base_config(cli):
    sweep = cli.root / "dup-sweep.yaml"
    sweep.write_text(cli.sweep.read_text() + "backend: ray\n")
    line = refused(cli.launch(str(sweep)))
    assert line == f"error: {sweep}:8:1: invalid YAML: duplicate key 'backend' (first on line 6): keep one"
    base = cli.root / "dup-base.yaml"
    base.write_text("run: {seed: 1, seed: 2}\n")
    sweep.write_text(cli.sweep.read_text().replace(str(REPO / "configs" / "tiny.yaml"), str(base)))
    line = refused(cli.train(str(sweep), "--trial", "0"))
    assert line == f"error: {base}:1:16: invalid YAML: duplicate key 'seed' (first on line 1): keep one"
    cli.assert_nothing_created()


# ----------------------------------------------------------------------------------------------
# files that do not parse: CelebA's partition file, sinfo's listing
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def bad_partition(tmp_path) -> Path:
    folder = make_celeba(tmp_path / "celeba")
    partition = folder / "list_eval_partition.txt"
    lines = partition.read_text().splitlines()
    lines[3] = "000004.jpg train"
    partition.write_text("\n".join(lines) + "\n")
    return folder


def test_celeba_partition_file_that_does_not_parse_stops_a_sweep(cli, bad_partition):
    done = cli.launch(str(cli.sweep), "data.name=celeba", f"data.celeba_dir={bad_partition}",
                      f"data.root={cli.root / 'data'}")
    line = preflight_refused(done)
    assert f"{bad_partition / 'list_eval_partition.txt'}:4: expected '<image>.jpg <0|1|2>', got '000004.jpg train'" in line
    assert "fix that line" in line
    cli.assert_nothing_created()
    assert not (cli.root / "data").exists()


def test_celeba_partition_file_that_does_not_parse_stops_a_trial(cli, bad_partition):
    line = refused(cli.train(str(cli.config), "data.name=celeba", f"data.celeba_dir={bad_partition}",
                             f"data.root={cli.root / 'data'}", "train.batch_size=4", "data.train_size=8"))
    assert f"{bad_partition / 'list_eval_partition.txt'}:4: expected '<image>.jpg <0|1|2>'" in line
    cli.assert_nothing_created(group_folder_ok=True)


def fake_sinfo(folder: Path, output: str) -> dict[str, str]:
    """An ``sinfo`` first on ``PATH`` that prints ``output`` (a cluster as sinfo would describe it)."""
    folder.mkdir()
    script = folder / "sinfo"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\n")
    script.chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def test_slurm_cluster_without_gpus_refuses_a_gpu_sweep_within_30_s(cli):
    env = fake_sinfo(cli.root / "bin", "cpu*|(null)|16|64000|infinite\nlong|(null)|16|64000|7-00:00:00\n")
    started = time.monotonic()
    done = cli.launch(str(cli.sweep), "backend=slurm", "resources.gpus=1", "run.device=auto", env=env)
    assert time.monotonic() - started < PREFLIGHT_LIMIT_S
    line = preflight_refused(done)
    assert "trials ask for 1 GPU(s) (slurm.gpus_per_trial) but no node of this cluster has GPUs" in line
    assert "(no GRES gpu in any partition: cpu, long)" in line and "set resources.gpus=0" in line
    cli.assert_nothing_created()


def test_sinfo_listing_that_does_not_parse_is_one_error(cli):
    env = fake_sinfo(cli.root / "bin", "PARTITION AVAIL TIMELIMIT NODES STATE NODELIST\n")
    line = preflight_refused(cli.launch(str(cli.sweep), "backend=slurm", env=env))
    assert "backend=slurm: cannot parse the partitions sinfo lists" in line
    assert "'PARTITION AVAIL TIMELIMIT NODES STATE NODELIST'" in line
    cli.assert_nothing_created()


# ----------------------------------------------------------------------------------------------
# GPUs asked for where there are none
# ----------------------------------------------------------------------------------------------

def _has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None or Path("/dev/nvidia0").exists()


@pytest.mark.parametrize("hide", ["CUDA_VISIBLE_DEVICES=''", "no GPU on this machine"])
def test_local_gpu_sweep_without_gpus_is_refused_within_30_s(cli, hide):
    env = {"CUDA_VISIBLE_DEVICES": ""} if hide.startswith("CUDA") else {}
    if not env:
        if _has_gpu():
            pytest.skip("this machine has a GPU")
        cli.env.pop("CUDA_VISIBLE_DEVICES", None)
    started = time.monotonic()
    done = cli.launch(str(cli.sweep), "resources.gpus=1", "run.device=auto", env=env)
    assert time.monotonic() - started < PREFLIGHT_LIMIT_S
    line = preflight_refused(done)
    assert "resources.gpus=1: the local backend finds no GPU here" in line and "set resources.gpus=0" in line
    cli.assert_nothing_created()


def test_ray_here_gpu_sweep_without_gpus_is_refused_within_30_s(cli):
    started = time.monotonic()
    done = cli.launch(str(cli.sweep), "backend=ray", "resources.gpus=1", "run.device=auto",
                      env={"CUDA_VISIBLE_DEVICES": ""})
    assert time.monotonic() - started < PREFLIGHT_LIMIT_S
    line = preflight_refused(done)
    assert "resources.gpus=1 but this machine has 0 GPU(s)" in line and "no trial would ever start" in line
    cli.assert_nothing_created()


def test_cuda_trial_without_a_gpu_is_refused(cli):
    done = cli.train(str(cli.config), "run.device=cuda", env={"CUDA_VISIBLE_DEVICES": ""})
    line = refused(done)
    assert "run.device='cuda'" in line
    cli.assert_nothing_created(group_folder_ok=True)


@pytest.mark.slurm
def test_real_slurm_partition_with_too_few_gpus_is_refused_within_30_s(cli, slurm_cluster):
    started = time.monotonic()
    done = cli.launch(str(cli.sweep), "backend=slurm", "slurm.partition=debug", "resources.gpus=4",
                      "run.device=auto", env=slurm_cluster.env)
    assert time.monotonic() - started < PREFLIGHT_LIMIT_S
    line = preflight_refused(done)
    assert "trials ask for 4 GPU(s)" in line and "debug: 2" in line
    cli.assert_nothing_created()
