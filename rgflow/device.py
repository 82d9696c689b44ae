"""Where a trial runs and how reproducibly: device choice, threads, determinism, seeding."""
from __future__ import annotations

import os
import random

import torch


class DeviceUnavailable(RuntimeError):
    """The requested device does not exist on this machine (message: one line with the fix)."""


def choose_device(spec: str) -> torch.device:
    """``auto`` → ``cuda`` if CUDA is available, else ``cpu``; ``cpu``; ``cuda`` / ``cuda:N`` (must exist)."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"run.device={spec!r}: CUDA is not available here (use run.device=auto or cpu)")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise DeviceUnavailable(
                f"run.device={spec!r}: only {torch.cuda.device_count()} CUDA device(s) here (use cuda:0…)")
    return device


def configure_runtime(*, deterministic: bool, threads: int | None) -> None:
    """Set torch's intra-op thread count (``None``: leave the default) and, when ``deterministic``,
    deterministic kernels only (``torch.use_deterministic_algorithms``, no cuDNN autotuning, the
    cuBLAS workspace setting that deterministic CUDA GEMMs need). With a fixed thread count and
    seed this makes a CPU run bitwise reproducible, including across a resume."""
    if threads is not None:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


def seed_everything(seed: int) -> None:
    """Seed the global generators (Python, torch CPU and CUDA) that parameter initialisation uses."""
    random.seed(seed)
    torch.manual_seed(seed)


__all__ = ["DeviceUnavailable", "choose_device", "configure_runtime", "seed_everything"]
