"""Reproducible batches of uint8 images, made on the training device.

The whole split is copied to the device once as uint8; a batch is an index gather on the device,
so no data loader runs per step. The epoch order is a permutation drawn on the CPU from
``(seed, epoch)`` alone (identical on every device), so ``batches(epoch, start=k)`` yields exactly
batches ``k…`` of the uninterrupted epoch — resuming mid-epoch continues the same order.

Every training batch carries a ``torch.Generator`` on the device seeded from ``(seed, epoch,
index)``: it first draws the horizontal flips (when enabled, p = 0.5 per image) and is then handed
to the training loop for the dequantisation noise (``rgflow.logit.dequantize(x, generator)``).

Evaluation batches carry their dequantisation noise instead (common random numbers per image):
``u`` of image ``i`` in evaluation pass ``draw`` comes from its own device generator seeded from
``(seed, draw, i)``, so it does not depend on the batch size or on the batch an image falls in.
Two models evaluated with the same seed on the same images see the same noise image by image
(paired differences): to compare trials, give all their evaluation batchers one seed.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np
import torch

_TRAIN, _ORDER, _EVAL = 0, 1, 2   # stream tags, so that no two purposes share a seed


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from non-negative integers (``SeedSequence`` hashing: well mixed, stable)."""
    state = np.random.SeedSequence(list(parts)).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


class Batch(NamedTuple):
    """A training batch. ``index``: position in the epoch; ``x``: uint8 ``(B, C, L, L)`` on the
    device; ``generator``: a device generator seeded from ``(seed, epoch, index)``."""

    index: int
    x: torch.Tensor
    generator: torch.Generator


class EvalBatch(NamedTuple):
    """An evaluation batch: images ``start … start + B − 1`` of the set. ``index``: position in the
    pass; ``x``: uint8 ``(B, C, L, L)`` on the device; ``noise``: float32 ``(B, C, L, L)`` in
    ``[0, 1)`` on the device, the dequantisation noise of those images
    (:meth:`EpochBatcher.eval_noise`), for ``rgflow.logit.dequantize(x, noise=noise)``."""

    index: int
    start: int
    x: torch.Tensor
    noise: torch.Tensor


class EpochBatcher:
    """Shuffled, optionally flipped training batches and ordered evaluation batches.

    ``images``: uint8 ``(N, C, L, L)`` (tensor or array), copied to ``device`` once.
    ``batch_size``: images per batch. ``seed``: the run's data-order seed (seeds the training
    order, flips and noise, and the evaluation noise; a batcher used only for evaluation takes
    the evaluation noise seed shared by the runs to compare). ``flip``: random
    horizontal flips in :meth:`batches` (never in :meth:`eval_batches`). ``drop_last``: training
    epochs have ``N // batch_size`` full batches (else the last one is partial).
    """

    def __init__(self, images, batch_size: int, seed: int, device: str | torch.device = "cpu",
                 flip: bool = False, drop_last: bool = True):
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"EpochBatcher: images must be uint8 (N, C, L, L), got {images.dtype} {tuple(images.shape)}")
        if batch_size < 1:
            raise ValueError(f"EpochBatcher: batch_size={batch_size} must be positive")
        if drop_last and len(images) < batch_size:
            raise ValueError(f"EpochBatcher: {len(images)} images cannot fill one batch of {batch_size} "
                             "(lower train.batch_size or raise data.train_size)")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.batch_size, self.seed, self.flip, self.drop_last = batch_size, seed, flip, drop_last
        width = images.shape[-1]
        self._forward = torch.arange(width, device=self.device)
        self._reversed = self._forward.flip(0)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def batches_per_epoch(self) -> int:
        n, b = len(self.images), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The epoch's image order (int64 ``(N,)``, on the device), a function of (seed, epoch)."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, _ORDER, epoch))
        return torch.randperm(len(self.images), generator=g).to(self.device)

    def _generator(self, *parts: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(derive_seed(self.seed, *parts))

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Batches ``start…batches_per_epoch-1`` of ``epoch`` (training: shuffled, maybe flipped)."""
        if not 0 <= start <= self.batches_per_epoch:
            raise ValueError(f"start={start} outside 0…{self.batches_per_epoch} batches of epoch {epoch}")
        order = self.permutation(epoch)
        b = self.batch_size
        for index in range(start, self.batches_per_epoch):
            x = self.images[order[index * b:(index + 1) * b]]
            g = self._generator(_TRAIN, epoch, index)
            if self.flip:
                flipped = torch.rand(len(x), generator=g, device=self.device) < 0.5
                cols = torch.where(flipped[:, None], self._reversed, self._forward)     # (B, L)
                x = x.gather(-1, cols[:, None, None, :].expand_as(x))
            yield Batch(index, x, g)

    def eval_noise(self, draw: int, start: int, stop: int) -> torch.Tensor:
        """Dequantisation noise ``u ~ U[0, 1)`` of images ``start … stop − 1`` in evaluation pass
        ``draw``: float32 ``(stop − start, C, L, L)`` on the device.

        Image ``i``'s noise comes from its own generator seeded from ``(seed, draw, i)``: a
        function of the seed, the draw and the image index only (not of the batching).
        """
        noise = torch.empty((stop - start, *self.images.shape[1:]), dtype=torch.float32, device=self.device)
        for k, i in enumerate(range(start, stop)):
            noise[k].uniform_(generator=self._generator(_EVAL, draw, i))
        return noise

    def eval_batches(self, batch_size: int | None = None, draw: int = 0) -> Iterator[EvalBatch]:
        """All images in order, no shuffle, no flip, last batch partial, each with its noise of
        pass ``draw`` (:meth:`eval_noise`): repeating a pass repeats its noise image by image,
        whatever ``batch_size`` (default: the batcher's)."""
        b = batch_size or self.batch_size
        for index, lo in enumerate(range(0, len(self.images), b)):
            x = self.images[lo:lo + b]
            yield EvalBatch(index, lo, x, self.eval_noise(draw, lo, lo + len(x)))
