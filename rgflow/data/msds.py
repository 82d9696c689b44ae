"""MSDS1 / MSDS2 (spec §9): 32×32 RGB images of a 4×4 grid of small rotated ellipses.

Faithful to the authors' generators (PIL): every ellipse is drawn into a transparent 8×8 RGBA
tile ``(255, 255, 255, 0)`` with ``ImageDraw.ellipse((1, 3, 7, 5), (r, g, b, 255))``, rotated
with ``Image.rotate(angle, resample=BICUBIC)`` (degrees, counter-clockwise about the tile centre,
tile size kept) and alpha-pasted onto a black RGB image with its top-left corner at
``(x, y) = (8i + U{-1,0,1}, 8j + U{-1,0,1})`` (``i`` indexes columns, ``j`` rows; tiles clip at
the border), in the order ``i`` outer, ``j`` inner.

* MSDS1: one base colour per image, each channel U{32…223}; each ellipse's colour is the base +
  U{-32…32} per channel; each ellipse's angle U[0, 180) independently.
* MSDS2: one base angle per image U[0, 180); each ellipse's angle is the base + U[0, 45); each
  ellipse's colour U{0…255} per channel independently.

Rendering is a vectorised numpy re-implementation of exactly what Pillow does (premultiply to
``RGBa``, the bicubic affine filter of ``libImaging/Geometry.c`` with its clamping and ``(UINT8)``
truncation, un-premultiply, ``paste`` with the 8-bit ``BLEND``): images are byte-identical to
Pillow's (tested). The interpolated mask is computed once per pixel for all bands; a band value
that lands within ``1e-9`` of an integer is recomputed in Pillow's exact floating-point order.

Randomness: each split (train / test) and each chunk of :data:`CHUNK` images has its own PCG64
stream seeded by ``SeedSequence(seed, spawn_key=(variant, split, chunk))``, and only raw 64-bit
outputs are used (floats ``(raw >> 11)·2⁻⁵³``, integers ``low + ⌊u·n⌋``), so the bytes depend on
the seed alone — not on numpy's ``Generator`` methods, the number of workers or the count asked
for (the first N images of a split are the same whatever N).

Labels: float32 ``(N, 16, 6)`` = ``(x, y, angle, r, g, b)`` per ellipse, ellipse ``k = 4i + j``
(the reference's ``labels[n, i, j]`` flattened); ``x, y`` the tile's top-left corner in pixels,
``angle`` in degrees (the float64 angle used for rendering, stored as float32), colour 0…255.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from rgflow.data.workers import process_pool, progress, usable_cpus

GENERATOR_VERSION = "msds-pil13-bicubic-v1"
VARIANTS = ("msds1", "msds2")
SPLIT_COUNTS = {"train": 90_000, "test": 10_000}
CHUNK = 1000          # images per random stream (fixed: changing it changes the data)
_SUBBATCH = 200       # images rendered at once inside a chunk (memory/cache only)
_TOL = 1e-9           # distance to an integer below which a band value is recomputed exactly

# The 8×8 alpha mask that Pillow's ImageDraw.ellipse((1, 3, 7, 5)) fills (fixed here so that the
# data never depends on the installed Pillow; a test checks it against Pillow).
ELLIPSE_MASK = np.zeros((8, 8), dtype=bool)
ELLIPSE_MASK[3, 2:7] = ELLIPSE_MASK[4, 1:8] = ELLIPSE_MASK[5, 2:7] = True


_XIN = np.tile(np.arange(8) + 0.5, 8)[None]     # output pixel centres, x fastest
_YIN = np.repeat(np.arange(8) + 0.5, 8)[None]
_SCALE = 1e15


def _split(a):
    """Veltkamp split: ``a = hi + lo`` exactly, each half with ≤ 26 significant bits."""
    c = 134217729.0 * a
    hi = c - (c - a)
    return hi, a - hi


_SCALE_HI, _SCALE_LO = _split(np.float64(_SCALE))


def round15(x: np.ndarray) -> np.ndarray:
    """Python's ``round(v, 15)`` (correctly rounded, ties to even) for every element of ``x``.

    ``x·10¹⁵ = p + e`` is formed exactly (Dekker), so the nearest integer ``k`` is exact, and
    ``k / 10¹⁵`` is the double nearest to the decimal result, as CPython's ``round`` returns.
    """
    p = x * _SCALE
    xh, xl = _split(x)
    e = ((xh * _SCALE_HI - p) + xh * _SCALE_LO + xl * _SCALE_HI) + xl * _SCALE_LO
    k = np.rint(p)
    d = (p - k) + e
    k = np.where(d > 0.5, k + 1, np.where(d < -0.5, k - 1, k))
    out = k / _SCALE
    tie = np.abs(d) == 0.5                 # (practically never) defer to Python itself
    for i in np.flatnonzero(tie):
        out[i] = round(float(x[i]), 15)
    return out


def pil_rotation_matrices(angles: np.ndarray) -> np.ndarray:
    """The inverse affine matrices ``(T, 6)`` that ``Image.rotate`` computes for an 8×8 image.

    cos/sin come from Python's ``math`` (libm) as in Pillow, not numpy's SIMD versions;
    ``round(·, 15)`` and the centre terms are evaluated in Pillow's order.
    """
    a = [-math.radians(v % 360.0) for v in angles.tolist()]
    c = round15(np.fromiter(map(math.cos, a), np.float64, len(a)))
    s = round15(np.fromiter(map(math.sin, a), np.float64, len(a)))
    ms = -s                                   # round(-x, 15) == -round(x, 15)
    return np.stack([c, s, c * -4.0 + s * -4.0 + 0.0 + 4.0, ms, c, ms * -4.0 + c * -4.0 + 0.0 + 4.0], 1)


def _horner(p1, p2, p3, p4, d):
    return p1 + d * (p2 + d * (p3 + d * p4))


def _cubic(v1, v2, v3, v4, d):
    """Pillow's BICUBIC macro (a = -1 cubic convolution), in its floating-point order."""
    return _horner(v2, -v1 + v3, 2 * (v1 - v2) + v3 - v4, -v1 + v2 - v3 + v4, d)


# Cubic weights of window positions k = 0…3 as polynomials in d (Pillow's BICUBIC, a = -1):
# w_k(d) = Σ_j _W[k, j]·d^j.
_W = np.array([[0, -1, 2, -1], [1, 0, -2, 1], [0, 1, 1, -1], [0, 0, -1, 1]], dtype=np.float64)


def _window_tables() -> list[tuple[np.ndarray, np.ndarray]]:
    """The ellipse mask as Σ over its distinct row patterns of (column part) × (row part).

    For a pattern P (a set of columns) and the rows R that carry it, the column part at source
    coordinate ``xs`` (window start ``f = floor(xs)``, ``d = xs - f``) is
    ``Σ_k w_k(d)·[clamp(f - 1 + k) ∈ P]``, a cubic in d with coefficients depending on f ∈ -1…7;
    likewise the row part with R. Returns, per pattern, two (4, 9) coefficient tables
    ``[power, f + 1]``.
    """
    def table(members) -> np.ndarray:
        out = np.zeros((4, 9))
        for f in range(-1, 8):
            for k in range(4):
                if min(max(f - 1 + k, 0), 7) in members:
                    out[:, f + 1] += _W[k]
        return out

    patterns: dict[tuple[int, ...], list[int]] = {}
    for row in range(8):
        cols = tuple(np.flatnonzero(ELLIPSE_MASK[row]).tolist())
        if cols:
            patterns.setdefault(cols, []).append(row)
    return [(table(set(cols)), table(set(rows))) for cols, rows in patterns.items()]


_TABLES = _window_tables()


def _cubic_of(table: np.ndarray, index: np.ndarray, d: np.ndarray) -> np.ndarray:
    c0, c1, c2, c3 = (np.take(row, index) for row in table)
    return c0 + d * (c1 + d * (c2 + d * c3))


def _unit_mask_fast(fx, dx, fy, dy):
    """Interpolated unit mask S per pixel: Pillow's value for band value 1, to ~1e-15 (not in
    Pillow's floating-point order; :func:`_exact` is)."""
    ix, iy = (np.clip(f + 1.0, 0.0, 8.0).astype(np.intp) for f in (fx, fy))   # outside: masked later
    return sum(_cubic_of(cols, ix, dx) * _cubic_of(rows, iy, dy) for cols, rows in _TABLES)


def _exact(c, fx, dx, fy, dy):
    """Pillow's exact double for band value ``c`` (1-D arrays of selected pixels)."""
    m = ELLIPSE_MASK.astype(np.float64)
    cols = [np.clip(fx.astype(np.int64) - 1 + k, 0, 7) for k in range(4)]
    rows = [np.clip(fy.astype(np.int64) - 1 + k, 0, 7) for k in range(4)]
    horizontal = [_cubic(*(c * m[r, col] for col in cols), dx) for r in rows]
    return _cubic(*horizontal, dy)


def rotate_tiles(colours: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Pillow's ``tile.rotate(angle, resample=BICUBIC)`` of the ellipse tiles, vectorised.

    ``colours``: int ``(T, 3)`` in 0…255; ``angles``: float64 ``(T,)`` degrees. Returns the
    rotated tiles as Pillow's RGBA (un-premultiplied) uint8 ``(T, 8, 8, 4)``.
    """
    t = len(angles)
    m = pil_rotation_matrices(angles)[:, :, None]
    xx = m[:, 0] * _XIN + m[:, 1] * _YIN + m[:, 2]        # (T, 64): [tile, 8·out y + out x]
    yy = m[:, 3] * _XIN + m[:, 4] * _YIN + m[:, 5]
    inside = (xx >= 0.0) & (xx < 8.0) & (yy >= 0.0) & (yy < 8.0)
    xs, ys = xx - 0.5, yy - 0.5
    fx, fy = np.floor(xs), np.floor(ys)
    dx, dy = xs - fx, ys - fy
    s = np.where(inside, _unit_mask_fast(fx, dx, fy, dy), 0.0)

    # Only pixels with alpha ≥ 1 (255·S ≥ 1) can be non-zero in any band; the rest stay 0.
    # Band-major (4, A) arrays keep every numpy loop long.
    active = np.flatnonzero(s.reshape(-1) >= (1.0 - _TOL) / 255.0)
    band = np.empty((4, t), dtype=np.float64)
    band[:3] = colours.T
    band[3] = 255.0
    band = np.take(band, active >> 6, axis=1)             # 64 pixels per tile
    v = band * s.reshape(-1)[active]                       # (4, A) ≈ Pillow's doubles
    q = np.floor(v)
    frac = v - q
    near = ((frac <= _TOL) | (frac >= 1.0 - _TOL)) & (v > 0.5)
    if near.any():
        b, i = np.nonzero(near)
        pix = active[i]
        q[b, i] = np.floor(_exact(band[b, i], *(a.reshape(-1)[pix] for a in (fx, dx, fy, dy))))
    rgba = np.clip(q, 0.0, 255.0).astype(np.uint8)        # Pillow's (UINT8) truncation
    # RGBa -> RGBA (Convert.c rgba2rgbA): colour = min(255, 255·c // a) where 0 < a < 255
    # (float32 is exact here: a non-integer 255·c/a < 256 is ≥ 1/254 away from an integer)
    alpha = rgba[3]
    partial = (alpha > 0) & (alpha < 255)
    scaled = np.minimum(np.floor(np.float32(255.0) * rgba[:3] / np.maximum(alpha, 1).astype(np.float32)), 255.0)
    rgba[:3] = np.where(partial, scaled, rgba[:3])
    out = np.zeros((4, t * 64), dtype=np.uint8)
    out[:, active] = rgba
    out = np.ascontiguousarray(out.T).reshape(t, 8, 8, 4)
    # angles 0/90/180/270 are copies/transposes in Pillow: transparent pixels stay white
    special = np.isin(angles % 360.0, (0.0, 90.0, 180.0, 270.0))
    if special.any():
        tiles = out[special]
        tiles[..., :3][tiles[..., 3] == 0] = 255
        out[special] = tiles
    return out


GRID = 8 * np.stack(np.meshgrid(np.arange(4), np.arange(4), indexing="ij"), -1).reshape(16, 2)


def paste_tiles(tiles: np.ndarray, jitter: np.ndarray) -> np.ndarray:
    """Alpha-paste tiles onto black 32×32 RGB images like Pillow's ``paste(tile, pos, mask=tile)``.

    ``tiles``: uint8 ``(N, 16, 8, 8, 4)`` RGBA, tile ``k = 4i + j`` pasted in order k with its
    top-left corner at ``(x, y) = (8i, 8j) + jitter[:, k]``; ``jitter``: int ``(N, 16, 2)`` in
    -1…1. Pixels outside the image are clipped. Returns uint8 ``(N, 3, 32, 32)``.

    Each tile is first placed in a 10×10 transparent frame at its jitter, so that every paste is
    a blend of a fixed canvas window (alpha 0 leaves a pixel unchanged, as ``BLEND`` does). The
    image index is the innermost axis, so that each blend is one long vectorised loop.
    """
    n, k = tiles.shape[:2]
    flat_tiles = tiles.reshape(n * k, 8, 8, 4)
    flat_jitter = jitter.reshape(n * k, 2) + 1
    frames = np.zeros((n * k, 10, 10, 4), dtype=np.uint8)
    for ox in range(3):
        for oy in range(3):
            sel = np.flatnonzero((flat_jitter[:, 0] == ox) & (flat_jitter[:, 1] == oy))
            frames[sel, oy:oy + 8, ox:ox + 8] = flat_tiles[sel]
    frames = np.ascontiguousarray(frames.reshape(n, k, 10, 10, 4).transpose(1, 2, 3, 4, 0))  # (k, 10, 10, 4, n)
    alpha = frames[:, :, :, 3:].astype(np.uint16)
    keep = 255 - alpha
    add = frames[:, :, :, :3] * alpha + 128                   # BLEND = DIV255(out·(255-a) + in·a)
    canvas = np.zeros((34, 34, 3, n), dtype=np.uint16)        # a 1-pixel margin takes the clipping
    for j in range(k):
        x, y = GRID[j]
        region = canvas[y:y + 10, x:x + 10]
        tmp = region * keep[j] + add[j]
        tmp += tmp >> 8
        tmp >>= 8
        region[...] = tmp
    return np.ascontiguousarray(canvas[1:33, 1:33].astype(np.uint8).transpose(3, 2, 0, 1))


class _Stream:
    """Uniform draws from raw PCG64 output only (stable across numpy versions)."""

    def __init__(self, seed_seq: np.random.SeedSequence):
        self._bits = np.random.PCG64(seed_seq)

    def uniform(self, shape) -> np.ndarray:
        raw = self._bits.random_raw(int(np.prod(shape)))
        return ((raw >> np.uint64(11)).astype(np.float64) * 2.0**-53).reshape(shape)

    def integers(self, low: int, high: int, shape) -> np.ndarray:
        """Uniform integers in ``[low, high]`` (inclusive)."""
        return low + np.floor(self.uniform(shape) * (high - low + 1)).astype(np.int64)


def chunk_parameters(variant: str, seed: int, split: str, chunk: int) -> dict[str, np.ndarray]:
    """The random parameters of chunk ``chunk`` (images ``chunk·CHUNK …``) of a split.

    Returns ``colours`` int64 ``(CHUNK, 16, 3)``, ``angles`` float64 ``(CHUNK, 16)`` degrees and
    ``jitter`` int64 ``(CHUNK, 16, 2)`` (x, y offsets of the tile from ``(8i, 8j)``), ellipse
    k = 4i + j.
    """
    _check(variant, split)
    seq = np.random.SeedSequence(seed, spawn_key=(VARIANTS.index(variant), list(SPLIT_COUNTS).index(split), chunk))
    rng = _Stream(seq)
    if variant == "msds1":
        base = rng.integers(32, 223, (CHUNK, 1, 3))
        colours = base + rng.integers(-32, 32, (CHUNK, 16, 3))
        angles = rng.uniform((CHUNK, 16)) * 180.0
    else:
        base = rng.uniform((CHUNK, 1)) * 180.0
        angles = base + rng.uniform((CHUNK, 16)) * 45.0
        colours = rng.integers(0, 255, (CHUNK, 16, 3))
    jitter = rng.integers(-1, 1, (CHUNK, 16, 2))
    return {"colours": colours, "angles": angles, "jitter": jitter}


def render(colours: np.ndarray, angles: np.ndarray, jitter: np.ndarray) -> np.ndarray:
    """Images uint8 ``(N, 3, 32, 32)`` from per-ellipse parameters (shapes as :func:`chunk_parameters`)."""
    n = len(colours)
    tiles = rotate_tiles(colours.reshape(-1, 3), angles.reshape(-1)).reshape(n, 16, 8, 8, 4)
    return paste_tiles(tiles, jitter)


def labels_of(params: dict[str, np.ndarray]) -> np.ndarray:
    """float32 ``(N, 16, 6)`` labels (x, y, angle, r, g, b)."""
    return np.concatenate(
        [GRID + params["jitter"], params["angles"][..., None], params["colours"]], axis=-1
    ).astype(np.float32)


def _render_chunk(variant: str, seed: int, split: str, chunk: int, count: int,
                  images_path: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Render the first ``count`` images of a chunk; write them into the .npy at ``images_path``
    (at the chunk's offset) when given, else return them."""
    params = {k: v[:count] for k, v in chunk_parameters(variant, seed, split, chunk).items()}
    images = np.concatenate([
        render(*(params[k][i:i + _SUBBATCH] for k in ("colours", "angles", "jitter")))
        for i in range(0, count, _SUBBATCH)
    ])
    if images_path is None:
        return labels_of(params), images
    out = np.load(images_path, mmap_mode="r+")
    out[chunk * CHUNK:chunk * CHUNK + count] = images
    out.flush()
    del out
    return labels_of(params), None


def _check(variant: str, split: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"MSDS variant {variant!r} unknown: use one of {', '.join(VARIANTS)}")
    if split not in SPLIT_COUNTS:
        raise ValueError(f"MSDS split {split!r} unknown: use one of {', '.join(SPLIT_COUNTS)}")


def generate(variant: str, seed: int, split: str, count: int | None = None, *,
             workers: int | None = None, images_path: str | Path | None = None,
             ) -> tuple[np.ndarray | None, np.ndarray]:
    """Generate the first ``count`` images (default: all) of an MSDS split.

    Returns ``(images uint8 (N, 3, 32, 32), labels float32 (N, 16, 6))``. With ``images_path``
    (an existing uint8 ``.npy`` of shape ``(N, 3, 32, 32)``), images are written there by the
    workers and ``None`` is returned in their place. ``workers`` processes (default: the usable
    CPUs) render chunks in parallel; the bytes do not depend on it.
    """
    _check(variant, split)
    total = SPLIT_COUNTS[split] if count is None else count
    if not 0 < total <= SPLIT_COUNTS[split]:
        raise ValueError(f"count={count}: MSDS {split} has 1…{SPLIT_COUNTS[split]} images")
    jobs = [(variant, seed, split, c, min(CHUNK, total - c * CHUNK), None if images_path is None else str(images_path))
            for c in range(math.ceil(total / CHUNK))]
    workers = min(len(jobs), workers or usable_cpus())
    what = f"MSDS {variant} {split}"
    if workers == 1:
        results = list(progress((_render_chunk(*job) for job in jobs), len(jobs), what))
    else:
        with process_pool(workers) as pool:
            results = list(progress(pool.map(_render_chunk, *zip(*jobs)), len(jobs), what))
    labels = np.concatenate([r[0] for r in results])
    images = None if images_path is not None else np.concatenate([r[1] for r in results])
    return images, labels
