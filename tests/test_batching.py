"""EpochBatcher: order from (seed, epoch), exact mid-epoch resume, flips, ordered evaluation."""
from __future__ import annotations

import pytest
import torch

from rgflow.data import EpochBatcher


def _images(n=103):
    # image k carries k in its first pixel and a left/right asymmetric pattern
    x = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    x[:, 1, :, 0] = 200
    return x


def _draws(batch):
    return torch.rand(6, generator=batch.generator, device=batch.x.device)


def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
def test_resume_at_k_equals_the_tail_of_an_uninterrupted_epoch(device):
    batcher = EpochBatcher(_images(), 10, seed=3, device=device, flip=True)
    assert batcher.batches_per_epoch == 10
    full = [(b.index, b.x.clone(), _draws(b)) for b in batcher.batches(epoch=2)]
    resumed = [(b.index, b.x.clone(), _draws(b)) for b in
               EpochBatcher(_images(), 10, seed=3, device=device, flip=True).batches(epoch=2, start=7)]
    assert [i for i, _, _ in full] == list(range(10)) and [i for i, _, _ in resumed] == [7, 8, 9]
    for (_, x, u), (_, xr, ur) in zip(full[7:], resumed):
        assert x.device.type == device and x.dtype == torch.uint8
        assert torch.equal(x, xr) and torch.equal(u, ur)
    assert list(batcher.batches(2, start=10)) == []
    with pytest.raises(ValueError, match="start=11"):
        next(batcher.batches(2, start=11))


def test_epoch_order_depends_on_seed_and_epoch_only():
    a, b = EpochBatcher(_images(), 10, seed=3), EpochBatcher(_images(), 10, seed=3)
    perms = [a.permutation(e) for e in range(4)]
    assert all(torch.equal(p, b.permutation(e)) for e, p in enumerate(perms))
    assert all(sorted(p.tolist()) == list(range(103)) for p in perms)
    assert len({tuple(p.tolist()) for p in perms}) == 4                       # differ across epochs
    assert not torch.equal(EpochBatcher(_images(), 10, seed=4).permutation(0), perms[0])
    seen = torch.cat([batch.x[:, 0, 0, 0] for batch in a.batches(1)]).long()
    assert torch.equal(seen, perms[1][:100])                                  # drop_last: 100 of 103
    draws = {tuple(_draws(batch).tolist()) for e in range(2) for batch in a.batches(e)}
    assert len(draws) == 20                                                   # a fresh stream per batch


def test_flips_are_per_image_half_the_time_and_only_in_training():
    images = _images(250)
    batcher = EpochBatcher(images, 50, seed=0, flip=True)
    flipped = 0
    for batch in batcher.batches(0):
        ids = torch.maximum(batch.x[:, 0, 0, 0], batch.x[:, 0, 0, 3]).long()  # id moves to x=3 when flipped
        mirrored = batch.x[:, 1, 0, 3] == 200
        for x, k, m in zip(batch.x, ids, mirrored):
            assert torch.equal(x, images[k].flip(-1) if m else images[k])
        flipped += int(mirrored.sum())
    assert 95 < flipped < 155
    plain = EpochBatcher(images, 50, seed=0, flip=False)
    assert all(bool((b.x[:, 1, :, 0] == 200).all()) for b in plain.batches(0))
    assert all(bool((b.x[:, 1, :, 0] == 200).all()) for b in batcher.eval_batches())


def test_eval_batches_are_ordered_complete_and_reproducible():
    images = _images(103)
    batcher = EpochBatcher(images, 10, seed=5, flip=True)
    batches = list(batcher.eval_batches(batch_size=25))
    assert [len(b.x) for b in batches] == [25, 25, 25, 25, 3]
    assert torch.equal(torch.cat([b.x for b in batches]), images)
    assert [b.start for b in batches] == [0, 25, 50, 75, 100] and [b.index for b in batches] == [0, 1, 2, 3, 4]
    assert all(b.noise.shape == b.x.shape and b.noise.dtype == torch.float32 for b in batches)
    again = list(batcher.eval_batches(batch_size=25))
    assert all(torch.equal(x.noise, y.noise) for x, y in zip(batches, again))
    other = list(batcher.eval_batches(batch_size=25, draw=1))
    assert not torch.equal(batches[0].noise, other[0].noise)


def test_keep_last_and_bad_input():
    assert EpochBatcher(_images(103), 10, seed=0, drop_last=False).batches_per_epoch == 11
    assert [len(b.x) for b in EpochBatcher(_images(103), 10, seed=0, drop_last=False).batches(0)][-1] == 3
    with pytest.raises(ValueError, match="cannot fill one batch of 200"):
        EpochBatcher(_images(103), 200, seed=0)
    with pytest.raises(ValueError, match="uint8"):
        EpochBatcher(torch.zeros(4, 3, 2, 2), 2, seed=0)
