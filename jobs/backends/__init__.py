"""Sweep backends: ``ray`` (Ray Tune, default), ``slurm`` (submitit job arrays), ``local``
(subprocesses). One interface, :class:`jobs.backends.base.Backend`; see each module for its
settings. Backends are imported on demand so that a machine without Ray or Slurm can use the others.
"""
from __future__ import annotations

import importlib

from jobs.backends.base import Backend

BACKENDS = {
    "ray": ("jobs.backends.ray_backend", "RayBackend"),
    "slurm": ("jobs.backends.slurm_backend", "SlurmBackend"),
    "local": ("jobs.backends.local_backend", "LocalBackend"),
}


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (``ray``, ``slurm`` or ``local``)."""
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r}: must be one of {', '.join(map(repr, BACKENDS))}")
    module, cls = BACKENDS[name]
    return getattr(importlib.import_module(module), cls)()


__all__ = ["BACKENDS", "Backend", "get_backend"]
