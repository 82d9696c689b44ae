"""The uint8 cache: built once, verified, corruption and mismatches detected and rebuilt."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rgflow.config import ConfigError, DataConfig
from rgflow.data import cache, load_split, msds
from rgflow.data.splits import ensure_msds

COUNTS = {"train": 400, "test": 100}


@pytest.fixture()
def built(tmp_path):
    path, manifest, report = ensure_msds(tmp_path, "msds1", 0, COUNTS, workers=1)
    return path, manifest, report


def test_build_then_verify(built, tmp_path):
    path, manifest, report = built
    assert report.action == "built" and report.reason == ""
    assert sorted(manifest["files"]) == ["test_images.npy", "test_labels.npy", "train_images.npy", "train_labels.npy"]
    assert manifest["identity"] == {"dataset": "msds1", "generator": msds.GENERATOR_VERSION, "seed": 0, "counts": COUNTS}
    assert manifest["files"]["train_images.npy"]["shape"] == [400, 3, 32, 32]
    images = np.load(path / "train_images.npy")
    assert images.dtype == np.uint8 and images.tobytes() == msds.generate("msds1", 0, "train", 400, workers=1)[0].tobytes()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]   # no leftovers
    cache._VERIFIED.clear()                                   # as in a fresh process
    _, _, again = ensure_msds(tmp_path, "msds1", 0, COUNTS, workers=1)
    assert again.action == "verified"
    assert again.line().startswith(f"verified {path} (")


def _flip_byte(file, offset=-100):
    data = bytearray(file.read_bytes())
    data[offset] ^= 0xFF
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, reason", [
    (lambda p: _flip_byte(p / "train_images.npy"), "train_images.npy fails its sha256 checksum"),
    (lambda p: _flip_byte(p / "test_labels.npy"), "test_labels.npy fails its sha256 checksum"),
    (lambda p: (p / "train_images.npy").write_bytes((p / "train_images.npy").read_bytes()[:-5]), "train_images.npy has"),
    (lambda p: (p / "test_images.npy").unlink(), "test_images.npy is missing"),
    (lambda p: (p / "manifest.json").write_text("{not json"), "manifest is unreadable"),
    (lambda p: (p / "manifest.json").unlink(), "no manifest"),
])
def test_damaged_cache_is_detected_and_rebuilt(built, tmp_path, damage, reason):
    path, manifest, _ = built
    original = (path / "train_images.npy").read_bytes()
    damage(path)
    with pytest.raises(cache.CacheInvalid, match=reason):
        ensure_msds(tmp_path, "msds1", 0, COUNTS, build=False)
    _, rebuilt_manifest, report = ensure_msds(tmp_path, "msds1", 0, COUNTS, workers=1)
    assert report.action == "rebuilt" and reason.split()[0] in report.reason
    assert (path / "train_images.npy").read_bytes() == original
    assert rebuilt_manifest["files"] == manifest["files"]


def test_cache_built_for_something_else_is_rebuilt(built, tmp_path):
    path, _, _ = built
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["identity"]["generator"] = "msds-v0"
    (path / "manifest.json").write_text(json.dumps(manifest))
    stale = tmp_path / f".{path.name}.tmp-999999"            # as left by a killed build
    stale.mkdir()
    (stale / "train_images.npy").write_bytes(b"partial")
    _, _, report = ensure_msds(tmp_path, "msds1", 0, COUNTS, workers=1)
    assert not stale.exists()
    assert report.action == "rebuilt"
    assert report.reason == f"it was built for generator='msds-v0' (want {msds.GENERATOR_VERSION!r})"


def test_load_split_serves_the_msds_splits(tmp_path, caplog):
    cfg = DataConfig(name="msds2", root=str(tmp_path), seed=4, msds_valid_holdout=150)
    with caplog.at_level(logging.INFO, logger="rgflow.data"):
        train = load_split(cfg, "train", msds_counts=COUNTS)
    assert "built" in caplog.text
    valid, test = (load_split(cfg, s, msds_counts=COUNTS) for s in ("valid", "test"))
    images, labels = msds.generate("msds2", 4, "train", 400, workers=1)
    assert len(train) == 250 and len(valid) == 150 and len(test) == 100
    assert train.images.dtype.is_floating_point is False and tuple(train.images.shape) == (250, 3, 32, 32)
    assert np.array_equal(train.images.numpy(), images[:250]) and np.array_equal(valid.images.numpy(), images[250:])
    assert np.array_equal(valid.labels.numpy(), labels[250:]) and tuple(test.labels.shape) == (100, 16, 6)
    small = load_split(DataConfig(name="msds2", root=str(tmp_path), seed=4, msds_valid_holdout=150,
                                  train_size=10, valid_size=5), "valid", msds_counts=COUNTS)
    assert np.array_equal(small.images.numpy(), images[250:255])
    with pytest.raises(ConfigError, match="data.train_size"):
        load_split(DataConfig(name="msds2", root=str(tmp_path), seed=4, msds_valid_holdout=150, train_size=251),
                   "train", msds_counts=COUNTS)
    _flip_byte(tmp_path / "msds2-seed4-train400-test100" / "train_images.npy", offset=-3)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rgflow.data"):
        again = load_split(cfg, "train", msds_counts=COUNTS)
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "rebuilt" in caplog.text and "sha256" in caplog.text
    assert np.array_equal(again.images.numpy(), train.images.numpy())


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "rgflow.data", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_verify_reports_a_missing_cache(tmp_path):
    result = _cli("msds1", "--seed", "3", "--root", str(tmp_path), "--verify", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == f"invalid {tmp_path}/msds1-seed3: it does not exist"
    assert not (tmp_path / "msds1-seed3").exists()


def test_msds_counts_must_cover_both_generated_splits(tmp_path):
    with pytest.raises(ValueError, match="one count for each of train, test"):
        ensure_msds(tmp_path, "msds1", 0, {"train": 10})
    assert not list(tmp_path.iterdir())
