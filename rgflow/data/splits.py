"""Train / valid / test splits of MSDS1, MSDS2 and CelebA, served from the verified cache.

Cache folders under ``DataConfig.root``: ``msds1-seed<S>/`` and ``msds2-seed<S>/`` hold
``{train,test}_{images,labels}.npy`` (all 90,000 + 10,000 generated images);
``celeba-<interpolation>/`` holds ``{train,valid,test}_images.npy``.

MSDS has no validation split of its own: ``valid`` is the last ``msds_valid_holdout`` generated
training images and ``train`` the ones before; ``test`` is the 10,000 test images. Every split can
be cut to its first N images (``train_size`` / ``valid_size`` / ``test_size``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rgflow.config import ConfigError, DataConfig
from rgflow.data import cache, celeba, msds

if TYPE_CHECKING:
    import torch

log = logging.getLogger("rgflow.data")
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class ImageSet:
    """A split in memory. ``images``: uint8 ``(N, 3, 32, 32)`` CPU tensor. ``labels``: MSDS
    float32 ``(N, 16, 6)`` = (x, y, angle°, r, g, b) per ellipse (see :mod:`rgflow.data.msds`);
    CelebA ``None``."""

    images: torch.Tensor
    labels: torch.Tensor | None
    name: str
    split: str

    def __len__(self) -> int:
        return len(self.images)


def cache_path(cfg: DataConfig) -> Path:
    if cfg.name == "celeba":
        return Path(cfg.root) / f"celeba-{cfg.interpolation}"
    return Path(cfg.root) / f"{cfg.name}-seed{cfg.seed}"


def msds_identity(name: str, seed: int, counts: dict[str, int]) -> dict:
    return {"dataset": name, "generator": msds.GENERATOR_VERSION, "seed": seed, "counts": counts}


def ensure_msds(root: str | Path, name: str, seed: int, counts: dict[str, int] | None = None, *,
                build: bool = True, workers: int | None = None) -> tuple[Path, dict, cache.CacheReport]:
    """Build (or verify) the MSDS cache; ``counts`` per generated split, default all (90k/10k).

    Returns ``(folder, manifest, report)``. Smaller counts (tests) give their own folder.
    """
    counts = dict(counts or msds.SPLIT_COUNTS)
    if set(counts) != set(msds.SPLIT_COUNTS):
        raise ValueError(f"MSDS counts {counts}: give one count for each of {', '.join(msds.SPLIT_COUNTS)}")
    suffix = "" if counts == msds.SPLIT_COUNTS else "-" + "-".join(f"{k}{v}" for k, v in counts.items())
    path = Path(root) / f"{name}-seed{seed}{suffix}"

    def builder(tmp: Path) -> None:
        for split, count in counts.items():
            images = tmp / f"{split}_images.npy"
            np.lib.format.open_memmap(images, mode="w+", dtype=np.uint8, shape=(count, 3, 32, 32)).flush()
            _, labels = msds.generate(name, seed, split, count, workers=workers, images_path=images)
            np.save(tmp / f"{split}_labels.npy", labels)

    manifest, report = cache.ensure(path, msds_identity(name, seed, counts), builder, build=build)
    return path, manifest, report


def celeba_identity(interpolation: str, partition_sha: str | None) -> dict:
    return {"dataset": "celeba", "preprocess": celeba.PREPROCESS_VERSION, "crop": celeba.CROP,
            "size": celeba.SIZE, "interpolation": interpolation, "partition_sha256": partition_sha}


def ensure_celeba(cfg: DataConfig, *, build: bool = True, workers: int | None = None,
                  ) -> tuple[Path, dict, cache.CacheReport]:
    """Build (or verify) the preprocessed CelebA cache from the local folder.

    The cache is tied to the partition file's sha256. When the folder is absent a valid cache is
    still used (the identity is then taken from the cache itself); with neither, the one-line
    :class:`celeba.CelebAMissing` error says what to provide.
    """
    path = cache_path(cfg)
    folder, source = celeba.resolve_dir(cfg.celeba_dir, cfg.root)
    try:
        partition = celeba.check_dir(folder, source)
    except celeba.CelebAMissing as missing:
        if not path.exists():
            raise
        try:   # no folder: a cache built from it earlier is enough
            have = cache.read_manifest(path)["identity"]["partition_sha256"]
            manifest, report = cache.ensure(path, celeba_identity(cfg.interpolation, have), None)
        except (cache.CacheInvalid, KeyError, TypeError) as err:
            raise celeba.CelebAMissing(f"{missing} (the cache {path} cannot be used instead: {err})") from None
        return path, manifest, report
    identity = celeba_identity(cfg.interpolation, celeba.partition_sha256(partition))

    def builder(tmp: Path) -> None:
        splits = celeba.read_partition(partition)
        celeba.check_images(folder, [name for names in splits.values() for name in names])
        for split, names in splits.items():
            celeba.preprocess_split(folder, names, cfg.interpolation, tmp / f"{split}_images.npy", workers)

    manifest, report = cache.ensure(path, identity, builder, build=build)
    return path, manifest, report


def _limit(key: str, size: int | None, available: int) -> slice:
    if size is None:
        return slice(0, available)
    if size > available:
        raise ConfigError(f"data.{key}", size, f"must be at most {available} (the images in this split)")
    return slice(0, size)


def msds_rows(split: str, holdout: int, counts: dict[str, int]) -> tuple[str, slice]:
    """Which generated array and rows hold an MSDS split: valid = the last ``holdout`` training
    images, train = the ones before, test = all test images."""
    if holdout >= counts["train"]:
        raise ConfigError("data.msds_valid_holdout", holdout, f"must be below the {counts['train']} generated training images")
    cut = counts["train"] - holdout
    return {"train": ("train", slice(0, cut)), "valid": ("train", slice(cut, counts["train"])),
            "test": ("test", slice(0, counts["test"]))}[split]


def load_split(cfg: DataConfig, split: str, *, msds_counts: dict[str, int] | None = None) -> ImageSet:
    """The ``split`` (``train`` | ``valid`` | ``test``) of ``cfg``'s data set, from the cache.

    Builds the cache on first use (generating MSDS / preprocessing CelebA) and verifies its
    checksums otherwise; a corrupt or mismatched cache is rebuilt (logged as a warning on the
    ``rgflow.data`` logger, with the reason). ``msds_counts`` (tests, smoke runs) generates
    fewer MSDS images than the real ``{"train": 90000, "test": 10000}``, in their own cache.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: must be one of {', '.join(SPLITS)}")
    size = getattr(cfg, f"{split}_size")
    if cfg.name == "celeba":
        path, manifest, report = ensure_celeba(cfg)
        array = f"{split}_images.npy"
        rows = slice(0, manifest["files"][array]["shape"][0])
    else:
        counts = dict(msds_counts or msds.SPLIT_COUNTS)
        source, rows = msds_rows(split, cfg.msds_valid_holdout, counts)
        path, manifest, report = ensure_msds(cfg.root, cfg.name, cfg.seed, counts)
        array = f"{source}_images.npy"
    (log.warning if report.action == "rebuilt" else log.info)("data cache: %s", report.line())
    first = _limit(f"{split}_size", size, rows.stop - rows.start)
    rows = slice(rows.start, rows.start + first.stop)
    import torch  # here: the cache and split logic is used without torch (preflight, dry-run)

    images = torch.from_numpy(cache.load_array(path, array, manifest, rows))
    labels = None
    if cfg.name != "celeba":
        labels = torch.from_numpy(cache.load_array(path, array.replace("images", "labels"), manifest, rows))
    return ImageSet(images, labels, cfg.name, split)
