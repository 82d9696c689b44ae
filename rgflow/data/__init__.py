"""Data: MSDS1/MSDS2 generators, CelebA preprocessing, the uint8 cache and device batching.

Public interface: :func:`load_split` (``DataConfig`` + ``train|valid|test`` → :class:`ImageSet`),
:class:`EpochBatcher` (reproducible device batches, resumable mid-epoch) and the CLI
``python -m rgflow.data msds1 --seed 0 [--root DIR] [--verify]``.
"""
import importlib

_HOMES = {"Batch": "batching", "EpochBatcher": "batching", "EvalBatch": "batching", "CelebAMissing": "celeba",
          "ImageSet": "splits", "load_split": "splits"}

__all__ = ["load_split", "ImageSet", "EpochBatcher", "Batch", "EvalBatch", "CelebAMissing"]


def __getattr__(name: str):
    """The public names, imported on first use (so that ``rgflow.data.cache`` & co. need no torch)."""
    if name not in _HOMES:
        raise AttributeError(f"module 'rgflow.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"rgflow.data.{_HOMES[name]}"), name)
