"""Tags describing where and with what a trial ran: code version, host, device, libraries, Slurm,
and MLflow's standard source tags (``mlflow.source.*``, ``mlflow.user``)."""
from __future__ import annotations

import getpass
import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path

from .tags import (
    DEVICE_TAG, GIT_COMMIT_TAG, GIT_DIRTY_TAG, HOST_TAG, SLURM_ARRAY_JOB_ID_TAG, SLURM_ARRAY_TASK_ID_TAG,
    SLURM_JOB_ID_TAG, SLURM_RESTART_COUNT_TAG, SOURCE_GIT_COMMIT_TAG, SOURCE_NAME_TAG, SOURCE_TYPE_TAG, USER_TAG,
    VERSION_TAG_PREFIX,
)

REPO_DIR = Path(__file__).resolve().parents[2]
#: ``mlflow.source.name`` of every trial run: the entry point that trains it (``python -m jobs.train``,
#: or :func:`jobs.train.run_trial` in a Ray worker or Slurm job — the same code path).
SOURCE_NAME = "jobs.train"
#: ``mlflow.source.type`` of every trial run (MLflow's ``SourceType.JOB``).
SOURCE_TYPE = "JOB"
_SLURM_VARS = {
    "SLURM_JOB_ID": SLURM_JOB_ID_TAG,
    "SLURM_ARRAY_JOB_ID": SLURM_ARRAY_JOB_ID_TAG,
    "SLURM_ARRAY_TASK_ID": SLURM_ARRAY_TASK_ID_TAG,
    "SLURM_RESTART_COUNT": SLURM_RESTART_COUNT_TAG,
}
_LIBS = {"torch": "torch", "mlflow": "mlflow", "ray": "ray", "submitit": "submitit", "rgflow": "rgflow-sweeps"}


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPO_DIR), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: str | None = None) -> str:
    """Human name of ``device`` (``cpu``, ``cuda``, ``cuda:N``; None = CUDA if available).

    Looks at CUDA only when torch is importable; a CPU device gives the CPU model.
    """
    if device is None or device.startswith("cuda"):
        try:
            import torch

            if torch.cuda.is_available():
                index = int(device.split(":")[1]) if device and ":" in device else 0
                return torch.cuda.get_device_name(index)
        except ImportError:
            pass
    return _cpu_model()


def user_name() -> str:
    """The login name of this process's user (``getpass.getuser()``), ``"unknown"`` when there is none
    (no ``$USER``/``$LOGNAME`` and a uid without a passwd entry, e.g. some containers)."""
    try:
        return getpass.getuser() or "unknown"
    except (OSError, KeyError):
        return "unknown"


def environment_tags(device: str | None = None) -> dict[str, str]:
    """``rgflow.*`` tags: git commit and dirty flag (``unknown`` without git), host, device name,
    Python and library versions (``rgflow.version.<lib>``), Slurm ids present in the environment;
    and MLflow's standard tags: ``mlflow.source.git.commit`` (the same commit), ``mlflow.source.name``
    (:data:`SOURCE_NAME`), ``mlflow.source.type`` (:data:`SOURCE_TYPE`), ``mlflow.user`` (:func:`user_name`)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    tags = {
        GIT_COMMIT_TAG: commit or "unknown",
        GIT_DIRTY_TAG: "unknown" if status is None else str(bool(status)).lower(),
        HOST_TAG: socket.gethostname(),
        DEVICE_TAG: device_name(device),
        f"{VERSION_TAG_PREFIX}python": platform.python_version(),
        SOURCE_GIT_COMMIT_TAG: commit or "unknown",
        SOURCE_NAME_TAG: SOURCE_NAME,
        SOURCE_TYPE_TAG: SOURCE_TYPE,
        USER_TAG: user_name(),
    }
    for short, dist in _LIBS.items():
        try:
            tags[f"{VERSION_TAG_PREFIX}{short}"] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    for var, tag in _SLURM_VARS.items():
        if os.environ.get(var):
            tags[tag] = os.environ[var]
    return tags
