"""Tags describing where and with what a trial ran: code version, host, device, libraries, Slurm."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[2]
_SLURM_VARS = {
    "SLURM_JOB_ID": "rgflow.slurm_job_id",
    "SLURM_ARRAY_JOB_ID": "rgflow.slurm_array_job_id",
    "SLURM_ARRAY_TASK_ID": "rgflow.slurm_array_task_id",
    "SLURM_RESTART_COUNT": "rgflow.slurm_restart_count",
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


def environment_tags(device: str | None = None) -> dict[str, str]:
    """``rgflow.*`` tags: git commit and dirty flag (``unknown`` without git), host, device name,
    Python and library versions (``rgflow.version.<lib>``), Slurm ids present in the environment."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    tags = {
        "rgflow.git_commit": commit or "unknown",
        "rgflow.git_dirty": "unknown" if status is None else str(bool(status)).lower(),
        "rgflow.host": socket.gethostname(),
        "rgflow.device": device_name(device),
        "rgflow.version.python": platform.python_version(),
    }
    for short, dist in _LIBS.items():
        try:
            tags[f"rgflow.version.{short}"] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    for var, tag in _SLURM_VARS.items():
        if os.environ.get(var):
            tags[tag] = os.environ[var]
    return tags
