"""Patch geometry (spec §2) and the latent level map (spec §1)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rgflow.config import model_preset
from rgflow.geometry import from_patches, level_dims, level_map, patch_index, sublayer_geometry, to_patches

CFG = model_preset("tiny")  # 3×32×32, kernel 4: the geometry of every preset

# Spec §2: rows touched by block (0, 0) of sub-layer k = 0…7.
FIRST_ROWS = [{0, 1, 2, 3}, {2, 3, 4, 5}, {0, 2, 4, 6}, {4, 6, 8, 10},
              {0, 4, 8, 12}, {8, 12, 16, 20}, {0, 8, 16, 24}, {0, 8, 16, 24}]


def test_sublayer_geometry_table():
    expected = [(1, 4, 0), (1, 4, 2), (2, 8, 0), (2, 8, 4), (4, 16, 0), (4, 16, 8), (8, 32, 0), (8, 32, 16)]
    assert [sublayer_geometry(k, CFG) for k in range(8)] == expected
    with pytest.raises(ValueError, match="k=8"):
        sublayer_geometry(8, CFG)


@pytest.mark.parametrize("k", range(8))
def test_first_block_rows_and_columns(k):
    idx = patch_index(k, CFG)
    first = idx[0, :16]  # channel 0 of patch (0, 0)
    rows, cols = first // 32, first % 32
    assert set(rows.tolist()) == FIRST_ROWS[k]
    assert set(cols.tolist()) == FIRST_ROWS[k]  # same geometry along columns
    # channel-major then row-major inside the window
    assert torch.equal(idx[0, 16:32], first + 32 * 32)
    assert rows.view(4, 4)[:, 0].tolist() == sorted(FIRST_ROWS[k], key=lambda r: (r - rows[0].item()) % 32)


@pytest.mark.parametrize("k", range(8))
def test_patches_equal_roll_unfold(k):
    d, s, o = sublayer_geometry(k, CFG)
    x = torch.randn(2, 3, 32, 32)
    ref = F.unfold(x.roll((-o, -o), (2, 3)), kernel_size=4, dilation=d, stride=s)  # (B, C·m², P)
    ref = ref.transpose(1, 2).reshape(-1, 48)
    got = to_patches(x, k, CFG)
    assert got.shape == (2 * (32 // s) ** 2, 48)
    assert torch.equal(got, ref)
    # scatter back: exact inverse, and writes only the sub-lattice of level h
    assert torch.equal(from_patches(got, k, CFG, 2, into=x), x)
    folded = F.fold(ref.view(2, -1, 48).transpose(1, 2), (32, 32), kernel_size=4, dilation=d, stride=s).roll((o, o), (2, 3))
    assert torch.equal(from_patches(got, k, CFG, 2), folded)


@pytest.mark.parametrize("k", range(8))
def test_patches_are_a_bijection_onto_the_sublattice(k):
    d, _, o = sublayer_geometry(k, CFG)
    flat = patch_index(k, CFG).reshape(-1)
    assert flat.unique().numel() == flat.numel()  # no overlap
    pos = flat % (32 * 32)
    assert bool(((pos // 32) % d == 0).all() and ((pos % 32) % d == 0).all())
    assert flat.numel() == 3 * (32 // d) ** 2  # covers the whole level-≥h sub-lattice


def test_from_patches_does_not_mutate_into():
    x = torch.randn(1, 3, 32, 32)
    before = x.clone()
    from_patches(torch.zeros(4, 48), 4, CFG, 1, into=x)
    assert torch.equal(x, before)


def test_level_map_and_dims():
    lm = level_map(CFG)
    assert lm.shape == (32, 32) and lm.dtype == torch.long
    assert level_dims(CFG) == [2304, 576, 144, 48]
    assert sum(level_dims(CFG)) == CFG.dims
    for lvl in range(4):
        assert bool((lm[:: 2**lvl, :: 2**lvl] >= lvl).all())
        assert int((lm >= lvl).sum()) == (32 // 2**lvl) ** 2
    assert lm[0, 0] == 3 and lm[16, 8] == 3 and lm[4, 12] == 2 and lm[2, 6] == 1 and lm[1, 0] == 0
    small = model_preset("tiny", size=16)
    assert level_dims(small) == [576, 144, 48]
