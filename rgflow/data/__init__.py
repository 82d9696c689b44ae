"""Data: MSDS1/MSDS2 generators, CelebA preprocessing, the uint8 cache and device batching.

Public interface: :func:`load_split` (``DataConfig`` + ``train|valid|test`` → :class:`ImageSet`),
:class:`EpochBatcher` (reproducible device batches, resumable mid-epoch) and the CLI
``python -m rgflow.data msds1 --seed 0 [--root DIR] [--verify]``.
"""
from rgflow.data.batching import Batch, EpochBatcher, EvalBatch
from rgflow.data.celeba import CelebAMissing
from rgflow.data.splits import ImageSet, load_split

__all__ = ["load_split", "ImageSet", "EpochBatcher", "Batch", "EvalBatch", "CelebAMissing"]
