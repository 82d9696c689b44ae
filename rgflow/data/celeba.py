"""CelebA from a local folder (spec §9): centre crop 148 → resize 32, official splits.

The folder is the standard layout that ``torchvision.datasets.CelebA`` uses::

    <celeba_dir>/img_align_celeba/000001.jpg … 202599.jpg   (178×218 aligned faces)
    <celeba_dir>/list_eval_partition.txt                    ("000001.jpg 0": 0 train, 1 valid, 2 test)

Each image is decoded, centre-cropped to 148×148 as ``torchvision.transforms.CenterCrop(148)``
does (box (15, 35, 163, 183) for 178×218) and resized to 32×32 with PIL (``bicubic`` or
``bilinear``, PIL's antialiased filters as ``transforms.Resize`` uses on PIL images). Decoding is
spread over worker processes; the result goes into the uint8 cache once. Flips are not done here
(the batcher flips training batches).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image

from rgflow.data.workers import process_pool, progress, usable_cpus

PREPROCESS_VERSION = "celeba-crop148-pil-v1"
CROP, SIZE = 148, 32
SPLIT_CODES = {"train": "0", "valid": "1", "test": "2"}
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_TASK = 256  # images per worker task
OBTAIN = ("obtain CelebA (img_align_celeba.zip + list_eval_partition.txt) from the official site "
          "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (see torchvision.datasets.CelebA's documentation)")


class CelebAMissing(FileNotFoundError):
    """The CelebA folder or a file in it is missing; the message is one line saying what to do."""


def resolve_dir(celeba_dir: str | None, root: str) -> tuple[Path, str]:
    """The CelebA folder and where that choice came from (config, env, or the default)."""
    if celeba_dir:
        return Path(celeba_dir), "data.celeba_dir"
    if os.environ.get("RGFLOW_CELEBA_DIR"):
        return Path(os.environ["RGFLOW_CELEBA_DIR"]), "RGFLOW_CELEBA_DIR"
    return Path(root) / "celeba", "the default <data.root>/celeba"


def check_dir(folder: Path, source: str) -> Path:
    """Return the partition file's path, or raise :class:`CelebAMissing`."""
    partition = folder / "list_eval_partition.txt"
    images = folder / "img_align_celeba"
    missing = [p.name + ("/*.jpg" if p == images else "") for p in (images, partition)
               if not (p.is_dir() if p == images else p.is_file())]
    if missing:
        raise CelebAMissing(
            f"CelebA not found in {folder.resolve()} (from {source}): missing {' and '.join(missing)}; "
            f"expected img_align_celeba/*.jpg and list_eval_partition.txt there; {OBTAIN}, then set "
            "data.celeba_dir or RGFLOW_CELEBA_DIR to that folder")
    return partition


def read_partition(partition: Path) -> dict[str, list[str]]:
    """File names per split, in file order."""
    splits: dict[str, list[str]] = {name: [] for name in SPLIT_CODES}
    codes = {code: name for name, code in SPLIT_CODES.items()}
    for number, line in enumerate(partition.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[1] not in codes:
            raise ValueError(f"{partition}:{number}: expected '<image>.jpg <0|1|2>', got {line!r}")
        splits[codes[parts[1]]].append(parts[0])
    return splits


def partition_sha256(partition: Path) -> str:
    return hashlib.sha256(partition.read_bytes()).hexdigest()


def preprocess_image(path: Path, interpolation: str) -> np.ndarray:
    """One JPEG → uint8 ``(3, 32, 32)``: centre crop 148, resize 32."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        top, left = int(round((h - CROP) / 2.0)), int(round((w - CROP) / 2.0))
        img = img.crop((left, top, left + CROP, top + CROP)).resize((SIZE, SIZE), _RESAMPLE[interpolation])
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _task(folder: str, names: list[str], interpolation: str, out_path: str, offset: int) -> None:
    out = np.load(out_path, mmap_mode="r+")
    for i, name in enumerate(names):
        out[offset + i] = preprocess_image(Path(folder) / name, interpolation)
    out.flush()


def check_images(folder: Path, names: list[str]) -> None:
    """Raise :class:`CelebAMissing` naming the first listed image that is not in the folder."""
    images = folder / "img_align_celeba"
    absent = [n for n in names if not (images / n).is_file()]
    if absent:
        raise CelebAMissing(f"CelebA incomplete: {len(absent)} images listed in list_eval_partition.txt are not in "
                            f"{images.resolve()} (first: {absent[0]}); {OBTAIN}")


def preprocess_split(folder: Path, names: list[str], interpolation: str, out_path: Path,
                     workers: int | None = None) -> None:
    """Write the preprocessed images of ``names`` into a new uint8 ``(N, 3, 32, 32)`` ``.npy``."""
    images = folder / "img_align_celeba"
    np.lib.format.open_memmap(out_path, mode="w+", dtype=np.uint8, shape=(len(names), 3, SIZE, SIZE)).flush()
    jobs = [(str(images), names[i:i + _TASK], interpolation, str(out_path), i) for i in range(0, len(names), _TASK)]
    workers = min(len(jobs), workers or usable_cpus())
    what = f"CelebA {out_path.stem}"
    if workers <= 1:
        list(progress((_task(*job) for job in jobs), len(jobs), what))
        return
    with process_pool(workers) as pool:
        list(progress(pool.map(_task, *zip(*jobs)), len(jobs), what))
