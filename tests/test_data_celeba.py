"""CelebA from a local folder: torchvision-identical preprocessing, splits, flips, clear errors."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from rgflow.config import DataConfig
from rgflow.data import CelebAMissing, EpochBatcher, load_split
from rgflow.data.__main__ import main
from tests.fixtures.celeba import CELEBA_SPLITS


def _torchvision(folder, names, interpolation):
    mode = {"bicubic": transforms.InterpolationMode.BICUBIC, "bilinear": transforms.InterpolationMode.BILINEAR}
    pipeline = transforms.Compose([transforms.CenterCrop(148), transforms.Resize(32, interpolation=mode[interpolation])])
    return np.stack([np.asarray(pipeline(Image.open(folder / "img_align_celeba" / n).convert("RGB"))).transpose(2, 0, 1)
                     for n in names])


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_splits_match_torchvision_preprocessing(celeba_dir, tmp_path, interpolation):
    cfg = DataConfig(name="celeba", root=str(tmp_path), celeba_dir=str(celeba_dir), interpolation=interpolation)
    sets = {split: load_split(cfg, split) for split in ("train", "valid", "test")}
    assert {s: len(v) for s, v in sets.items()} == {"train": 24, "valid": 6, "test": 6}
    for split, data in sets.items():
        assert data.labels is None and data.images.dtype == torch.uint8
        assert tuple(data.images.shape) == (len(CELEBA_SPLITS[split]), 3, 32, 32)
        assert np.array_equal(data.images.numpy(), _torchvision(celeba_dir, CELEBA_SPLITS[split], interpolation))
    assert (tmp_path / f"celeba-{interpolation}" / "manifest.json").is_file()
    first = load_split(DataConfig(name="celeba", root=str(tmp_path), celeba_dir=str(celeba_dir),
                                  interpolation=interpolation, train_size=5), "train")
    assert torch.equal(first.images, sets["train"].images[:5])


def test_bicubic_and_bilinear_differ(celeba_dir, tmp_path):
    cubic, linear = (load_split(DataConfig(name="celeba", root=str(tmp_path), celeba_dir=str(celeba_dir),
                                           interpolation=i), "test").images for i in ("bicubic", "bilinear"))
    assert not torch.equal(cubic, linear)
    assert (cubic.float() - linear.float()).abs().mean() < 5


def test_flip_only_in_training(celeba_dir, tmp_path):
    cfg = DataConfig(name="celeba", root=str(tmp_path), celeba_dir=str(celeba_dir))
    assert cfg.flip_train and not DataConfig(name="msds1").flip_train
    train = load_split(cfg, "train").images
    assert (train[:, 0, :, :3].float().mean() > train[:, 0, :, -3:].float().mean() + 40)   # bright band left
    batcher = EpochBatcher(train, 8, seed=1, flip=cfg.flip_train)
    left_bright = torch.cat([b.x[:, 0, :, :3].float().mean((1, 2)) > b.x[:, 0, :, -3:].float().mean((1, 2))
                             for e in range(4) for b in batcher.batches(e)])
    assert 0.25 < left_bright.float().mean() < 0.75                                      # flipped ≈ half
    assert all(torch.equal(b.x, train[b.index * 8:(b.index + 1) * 8]) for b in batcher.eval_batches())


def test_cache_is_used_without_the_folder(celeba_dir, tmp_path):
    cfg = DataConfig(name="celeba", root=str(tmp_path), celeba_dir=str(celeba_dir))
    test = load_split(cfg, "test")
    gone = DataConfig(name="celeba", root=str(tmp_path), celeba_dir=str(tmp_path / "moved"))
    assert torch.equal(load_split(gone, "test").images, test.images)
    (tmp_path / "celeba-bicubic" / "test_images.npy").write_bytes(b"\x93NUMPY")
    with pytest.raises(CelebAMissing, match="cannot be used instead: test_images.npy has 6 bytes"):
        load_split(gone, "test")


def test_missing_folder_error_says_where_what_and_how(tmp_path, monkeypatch):
    monkeypatch.delenv("RGFLOW_CELEBA_DIR", raising=False)
    with pytest.raises(CelebAMissing) as err:
        load_split(DataConfig(name="celeba", root=str(tmp_path)), "train")
    message = str(err.value)
    assert "\n" not in message
    assert f"{tmp_path}/celeba" in message and "default" in message
    assert "img_align_celeba/*.jpg" in message and "list_eval_partition.txt" in message
    assert "mmlab.ie.cuhk.edu.hk/projects/CelebA.html" in message and "torchvision" in message
    monkeypatch.setenv("RGFLOW_CELEBA_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(CelebAMissing, match=f"{tmp_path}/elsewhere \\(from RGFLOW_CELEBA_DIR\\)"):
        load_split(DataConfig(name="celeba", root=str(tmp_path)), "valid")
    assert not list(tmp_path.glob("celeba-*"))                                   # nothing half-written


def test_missing_image_is_named(celeba_dir, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(celeba_dir, partial)
    (partial / "img_align_celeba" / "000005.jpg").unlink()
    with pytest.raises(CelebAMissing, match="1 images listed .* \\(first: 000005.jpg\\)"):
        load_split(DataConfig(name="celeba", root=str(tmp_path / "cache"), celeba_dir=str(partial)), "train")
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]


def test_cli_builds_verifies_and_rebuilds(celeba_dir, tmp_path, capsys):
    args = ["celeba", "--root", str(tmp_path), "--celeba-dir", str(celeba_dir), "--workers", "2"]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith(f"built {tmp_path}/celeba-bicubic (0.1 MB) in ")
    assert main(args + ["--verify"]) == 0
    assert capsys.readouterr().out.startswith(f"verified {tmp_path}/celeba-bicubic")
    data = tmp_path / "celeba-bicubic" / "valid_images.npy"
    data.write_bytes(data.read_bytes()[:-1] + b"\x00" if data.read_bytes()[-1] else data.read_bytes()[:-1] + b"\x01")
    assert main(args + ["--verify"]) == 1
    assert "valid_images.npy fails its sha256 checksum" in capsys.readouterr().err
    assert main(args) == 0
    assert capsys.readouterr().out.strip().endswith("because valid_images.npy fails its sha256 checksum (corrupt)")
    assert main(["celeba", "--root", str(tmp_path / "none"), "--celeba-dir", str(tmp_path / "none")]) == 2
    assert "CelebA not found" in capsys.readouterr().err
