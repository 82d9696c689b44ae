"""MSDS1/MSDS2: Pillow-exact rendering, determinism, the laws of each variant, label ↔ pixel."""
from __future__ import annotations

import io
import math
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from rgflow.config import ConfigError
from rgflow.data import msds
from rgflow.data.splits import msds_rows


def pil_tile(colour, angle: float) -> Image.Image:
    """The authors' tile: ellipse (1, 3, 7, 5) on transparent white, bicubic rotation."""
    tile = Image.new("RGBA", (8, 8), (255, 255, 255, 0))
    ImageDraw.Draw(tile).ellipse((1, 3, 7, 5), (*map(int, colour), 255))
    return tile.rotate(angle, resample=Image.Resampling.BICUBIC)


def pil_image(colours, angles, jitter) -> np.ndarray:
    """The authors' image loop (i outer over columns, j inner over rows) with given parameters."""
    img = Image.new("RGB", (32, 32), (0, 0, 0))
    for k in range(16):
        i, j = divmod(k, 4)
        tile = pil_tile(colours[k], float(angles[k]))
        img.paste(tile, (8 * i + int(jitter[k, 0]), 8 * j + int(jitter[k, 1])), mask=tile)
    return np.asarray(img).transpose(2, 0, 1)


def test_ellipse_mask_is_what_pillow_draws():
    tile = Image.new("RGBA", (8, 8), (255, 255, 255, 0))
    ImageDraw.Draw(tile).ellipse((1, 3, 7, 5), (10, 20, 30, 255))
    assert np.array_equal(np.asarray(tile)[..., 3] == 255, msds.ELLIPSE_MASK)


@pytest.mark.parametrize("force_exact", [False, True])
def test_rotated_tiles_are_byte_identical_to_pillow(monkeypatch, force_exact):
    if force_exact:   # route every band value through the exact (Pillow-order) path
        monkeypatch.setattr(msds, "_TOL", 2.0)
    rng = np.random.default_rng(7)
    angles = np.concatenate([[0.0, 90.0, 180.0, 270.0, 45.0, 1e-12, 179.9999999, 360.0, 30.0, 60.0],
                             rng.random(600) * 225.0])
    colours = rng.integers(0, 256, (len(angles), 3))
    colours[:3] = [(0, 0, 0), (255, 255, 255), (1, 254, 128)]
    expected = np.stack([np.asarray(pil_tile(c, a)) for c, a in zip(colours, angles)])
    assert np.array_equal(msds.rotate_tiles(colours, angles), expected)


def test_round15_is_pythons_round():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.cos(rng.random(20000) * 7), rng.normal(size=20000), [0.5, -0.25, 1.0, 0.0, 1e-16]])
    assert np.array_equal(msds.round15(x), np.array([round(v, 15) for v in x.tolist()]))


@pytest.mark.parametrize("variant", msds.VARIANTS)
def test_images_are_byte_identical_to_the_reference_procedure(variant):
    p = msds.chunk_parameters(variant, 5, "test", 3)
    n = 24
    ours = msds.render(p["colours"][:n], p["angles"][:n], p["jitter"][:n])
    reference = np.stack([pil_image(p["colours"][k], p["angles"][k], p["jitter"][k]) for k in range(n)])
    assert ours.dtype == np.uint8 and ours.shape == (n, 3, 32, 32)
    assert np.array_equal(ours, reference)


def test_same_seed_same_bytes_any_workers_any_count():
    a, la = msds.generate("msds1", 0, "train", 1200, workers=1)
    b, lb = msds.generate("msds1", 0, "train", 1200, workers=2)
    c, lc = msds.generate("msds1", 0, "train", 300, workers=1)
    assert a.shape == (1200, 3, 32, 32) and la.shape == (1200, 16, 6) and la.dtype == np.float32
    assert a.tobytes() == b.tobytes() and la.tobytes() == lb.tobytes()
    assert c.tobytes() == a[:300].tobytes() and lc.tobytes() == la[:300].tobytes()


def test_different_seed_variant_or_split_gives_different_images():
    base, _ = msds.generate("msds1", 0, "train", 200, workers=1)
    for other in (msds.generate("msds1", 1, "train", 200, workers=1)[0],
                  msds.generate("msds1", 0, "test", 200, workers=1)[0],
                  msds.generate("msds2", 0, "train", 200, workers=1)[0]):
        assert (other != base).any(axis=(1, 2, 3)).all()   # every image differs


@pytest.fixture(scope="module")
def samples():
    return {v: msds.generate(v, 3, "train", 500, workers=1) for v in msds.VARIANTS}


def test_msds1_law(samples):
    _, labels = samples["msds1"]
    colours, angles = labels[..., 3:], labels[..., 2]
    spread = colours.max(1) - colours.min(1)                  # per image and channel
    assert spread.max() <= 64 and colours.min() >= 0 and colours.max() <= 255
    base_mid = (colours.max(1) + colours.min(1)) / 2
    assert 32 - 32 <= base_mid.min() and base_mid.max() <= 223 + 32
    assert 15 < colours.std(1).mean() < 22                    # U{-32…32}: σ = 18.8
    assert angles.min() >= 0 and angles.max() < 180
    assert 45 < angles.std(1).mean() < 56                     # U[0, 180): σ = 52
    assert np.abs(angles - np.round(angles)).max() > 0.1      # kept as floats


def test_msds2_law(samples):
    _, labels = samples["msds2"]
    colours, angles = labels[..., 3:], labels[..., 2]
    spread = angles.max(1) - angles.min(1)
    assert spread.max() < 45 and angles.min() >= 0 and angles.max() < 225
    assert 10 < angles.std(1).mean() < 15                     # U[0, 45): σ = 13
    assert 65 < colours.std(1).mean() < 78                    # U{0…255}: σ = 74
    assert colours.min() == 0 and colours.max() == 255


@pytest.mark.parametrize("variant", msds.VARIANTS)
def test_positions_on_the_jittered_grid_and_black_background(samples, variant):
    images, labels = samples[variant]
    jitter = labels[..., :2] - msds.GRID[None]
    assert set(np.unique(jitter)) == {-1.0, 0.0, 1.0}
    combos = {tuple(v) for v in jitter.reshape(-1, 2).astype(int).tolist()}
    assert len(combos) == 9
    # i (ellipse k = 4i + j) indexes x: x grows with k // 4, y with k % 4
    assert np.array_equal(msds.GRID[:, 0], 8 * (np.arange(16) // 4))
    cx, cy = _centres(labels)
    yy, xx = np.mgrid[0:32, 0:32] + 0.5
    far = np.ones((len(images), 32, 32), bool)
    for k in range(16):
        far &= (xx - cx[:, k, None, None]) ** 2 + (yy - cy[:, k, None, None]) ** 2 > 5.0 ** 2
    assert far.sum() > 10 * len(images)
    assert images.transpose(0, 2, 3, 1)[far].max() == 0      # black away from every ellipse
    assert 0.5 < (images.sum(1) == 0).mean() < 0.7


def _centres(labels):
    """Where each ellipse's centre lands: (4.5, 4.5) in the tile, rotated about (4, 4) CCW."""
    t = np.radians(labels[..., 2].astype(np.float64))
    cx = labels[..., 0] + 4 + 0.5 * np.cos(t) + 0.5 * np.sin(t)
    cy = labels[..., 1] + 4 - 0.5 * np.sin(t) + 0.5 * np.cos(t)
    return cx, cy


@pytest.mark.parametrize("variant", msds.VARIANTS)
def test_each_ellipse_is_drawn_at_its_label(samples, variant):
    images, labels = samples[variant]
    images = images[:150].astype(np.float64)
    cx, cy = _centres(labels[:150])
    yy, xx = np.mgrid[0:32, 0:32] + 0.5
    dist, colour_err, angle_err = [], [], []
    for n in range(len(images)):
        for k in range(16):
            inside = (xx - cx[n, k]) ** 2 + (yy - cy[n, k]) ** 2 <= 2.5 ** 2
            w = images[n].sum(0) * inside
            mx, my = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
            dist.append(math.hypot(mx - cx[n, k], my - cy[n, k]))
            colour_err.append(np.abs(images[n][:, int(cy[n, k]), int(cx[n, k])] - labels[n, k, 3:]).max())
            cxx, cyy = (w * (xx - mx) ** 2).sum(), (w * (yy - my) ** 2).sum()
            cxy = (w * (xx - mx) * (yy - my)).sum()
            phi = -math.degrees(0.5 * math.atan2(2 * cxy, cxx - cyy))   # CCW on screen
            angle_err.append(abs((phi - labels[n, k, 2] + 90) % 180 - 90))
    assert max(dist) < 0.6                                       # centroid at the label's position
    assert np.median(colour_err) <= 6 and max(colour_err) <= 40  # centre pixel has the label colour
    assert np.percentile(angle_err, 99) < 12                     # long axis along the label angle


def test_msds_split_rows_real_counts():
    counts = dict(msds.SPLIT_COUNTS)
    assert counts == {"train": 90_000, "test": 10_000}
    assert msds_rows("train", 5000, counts) == ("train", slice(0, 85_000))
    assert msds_rows("valid", 5000, counts) == ("train", slice(85_000, 90_000))
    assert msds_rows("test", 5000, counts) == ("test", slice(0, 10_000))
    with pytest.raises(ConfigError, match="data.msds_valid_holdout"):
        msds_rows("train", 90_000, counts)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="msds3"):
        msds.generate("msds3", 0, "train", 10)
    with pytest.raises(ValueError, match="valid"):
        msds.generate("msds1", 0, "valid", 10)
    with pytest.raises(ValueError, match="count=90001"):
        msds.generate("msds1", 0, "train", 90_001)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_generation_shows_progress_only_on_a_terminal(monkeypatch, terminal):
    err = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    msds.generate("msds1", 0, "test", count=2 * msds.CHUNK, workers=1)
    assert ("MSDS msds1 test" in err.getvalue()) == terminal, err.getvalue()
