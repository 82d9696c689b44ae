"""Fréchet Inception Distance in memory, with pytorch-fid's network and a local weights file.

pytorch-fid downloads its Inception weights on first use; nothing here may touch the network.
The weights file ``pt_inception-2015-12-05-6726825d.pth`` is looked up, in order, at the config
value ``eval.fid_weights``, the environment variable ``RGFLOW_FID_WEIGHTS``, and
``<torch hub dir>/checkpoints/`` (where pytorch-fid itself caches it). Without it
:class:`FidUnavailable` says how to provide it; callers warn and skip FID.

Features are taken from any module that maps images ``(N, 3, H, W)`` in ``[0, 1]`` to
``(N, D, 1, 1)`` (or a list whose first element is that, pytorch-fid's convention), so tests can
use a small fixed-seed network instead of Inception. FID is in units of squared feature
distance (no per-dim normalisation), as in pytorch-fid.

pytorch-fid scores image files, i.e. 8-bit images: generated float images go through
:func:`to_uint8` (what ``torchvision.utils.save_image`` writes to a PNG) before the network, so
that they are scored as the uint8 real images are (``k / 255``).
"""
from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rgflow.data.cache import sha256_file

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
# pytorch_fid.inception.FID_WEIGHTS_URL, repeated so that a missing-weights message does not pay
# for importing torchvision's model zoo (tests check that the two agree)
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILE}"
WEIGHTS_ENV = "RGFLOW_FID_WEIGHTS"
INCEPTION_DIMS = 2048

_load_lock = threading.Lock()


class FidUnavailable(RuntimeError):
    """The Inception weights are not on this machine; ``str(err)`` says how to provide them."""


def default_weights_path() -> Path:
    """Where pytorch-fid caches the weights: ``<torch hub dir>/checkpoints/<WEIGHTS_FILE>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def resolve_weights(configured: str | os.PathLike | None = None) -> Path:
    """The weights file to use: ``configured``, else ``$RGFLOW_FID_WEIGHTS``, else the hub cache.

    A path that is named (config or env) but missing is an error, not a silent fallback.
    Raises :class:`FidUnavailable` with a one-line fix when no file is found.
    """
    for source, value in (("eval.fid_weights", configured), (WEIGHTS_ENV, os.environ.get(WEIGHTS_ENV))):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise FidUnavailable(f"FID weights file {path} (from {source}) does not exist; "
                                     f"download {WEIGHTS_URL} on a machine with internet and point {source} at it")
            return path
    path = default_weights_path()
    if path.is_file():
        return path
    raise FidUnavailable(
        f"FID skipped: Inception weights {WEIGHTS_FILE} not found; download {WEIGHTS_URL} on a machine "
        f"with internet and set eval.fid_weights or ${WEIGHTS_ENV} to the file, or copy it to {path}")


def load_inception(weights: str | os.PathLike) -> nn.Module:
    """pytorch-fid's ``InceptionV3`` (FID variant, 2048-d pool features) with weights from a local file.

    The state dict is read with ``torch.load(weights_only=True)`` and handed to pytorch-fid's own
    builder in place of its download, so the architecture and the strict key check are
    pytorch-fid's. A file of the wrong architecture raises ``RuntimeError`` from
    ``load_state_dict``. Returns the network in eval mode on the CPU.
    """
    import pytorch_fid.inception as inception_module

    state = torch.load(weights, map_location="cpu", weights_only=True)
    expected_url = inception_module.FID_WEIGHTS_URL
    if expected_url != WEIGHTS_URL:
        raise RuntimeError(f"pytorch-fid expects weights {expected_url}, this module names {WEIGHTS_URL}: update jobs.fid")

    def local_state(url: str, *args, **kwargs) -> dict:
        if url != expected_url:
            raise RuntimeError(f"refusing to download {url}: FID runs offline")
        return state

    with _load_lock:
        original = inception_module.load_state_dict_from_url
        inception_module.load_state_dict_from_url = local_state
        try:
            net = inception_module.InceptionV3(
                [inception_module.InceptionV3.BLOCK_INDEX_BY_DIM[INCEPTION_DIMS]], use_fid_inception=True)
        finally:
            inception_module.load_state_dict_from_url = original
    return net.eval()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in ``[0, 1]`` → ``uint8`` ``floor(clamp(255·x + 0.5, 0, 255))``, shape kept:
    the pixels ``torchvision.utils.save_image`` writes to a PNG file (reading it back gives them)."""
    if images.dtype == torch.uint8:
        raise TypeError("to_uint8: the images are uint8 already")
    return images.mul(255.0).add_(0.5).clamp_(0.0, 255.0).to(torch.uint8)


def as_unit_float(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` images → float in ``[0, 1]``; float images are clamped to ``[0, 1]``. Shape kept."""
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return images.float().clamp(0.0, 1.0)


@torch.no_grad()
def extract_features(net: nn.Module, images: torch.Tensor, batch_size: int = 50,
                     device: str | torch.device = "cpu") -> np.ndarray:
    """Features ``(N, D)`` float64 of ``images`` ``(N, C, H, W)`` (uint8, or float in [0, 1]).

    ``net`` returns ``(N, D, h, w)`` or a list whose first element is that; a spatial map larger
    than 1×1 is average-pooled, as pytorch-fid does.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    net = net.to(device).eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        batch = as_unit_float(images[start:start + batch_size]).to(device)
        pred = net(batch)
        if isinstance(pred, (list, tuple)):
            pred = pred[0]
        if pred.shape[2:] != (1, 1):
            pred = nn.functional.adaptive_avg_pool2d(pred, (1, 1))
        out.append(pred.flatten(1).double().cpu())
    return torch.cat(out).numpy()


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and covariance ``(D, D)`` of features ``(N, D)``, N ≥ 2."""
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"need features (N ≥ 2, D), got shape {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID between two feature sets ``(N_a, D)`` and ``(N_b, D)`` via pytorch-fid's formula."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    mu_a, sigma_a = feature_stats(feats_a)
    mu_b, sigma_b = feature_stats(feats_b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # scipy's sqrtm(disp=...) inside pytorch-fid
        return float(calculate_frechet_distance(mu_a, sigma_a, mu_b, sigma_b))


@dataclass
class FidScorer:
    """A feature network plus what identifies it in the protocol (``network``, ``weights_sha256``).

    ``net`` may be ``None`` with ``weights_path`` set: the Inception network is then loaded on the
    first :meth:`features` call, so a caller can record the protocol without paying for it.
    """

    net: nn.Module | None
    network: str
    weights_sha256: str | None = None
    batch_size: int = 50
    device: str | torch.device = "cpu"
    weights_path: Path | None = None

    @classmethod
    def inception(cls, configured: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                  batch_size: int = 50) -> "FidScorer":
        """The real scorer (loaded lazily); raises :class:`FidUnavailable` when the weights are absent."""
        path = resolve_weights(configured)
        return cls(None, network="inception-v3-fid", weights_sha256=sha256_file(path), batch_size=batch_size,
                   device=device, weights_path=path)

    def network_module(self) -> nn.Module:
        if self.net is None:
            self.net = load_inception(self.weights_path)
        return self.net

    def features(self, images: torch.Tensor) -> np.ndarray:
        """Features ``(N, D)`` of images ``(N, C, H, W)``."""
        return extract_features(self.network_module(), images, self.batch_size, self.device)

    def fid(self, images: torch.Tensor, reference_feats: np.ndarray) -> float:
        """FID of ``images`` against precomputed reference features."""
        return frechet_distance(self.features(images), reference_feats)


__all__ = [
    "FidUnavailable", "FidScorer", "WEIGHTS_FILE", "WEIGHTS_URL", "WEIGHTS_ENV", "default_weights_path", "resolve_weights",
    "sha256_file", "load_inception", "extract_features", "feature_stats", "frechet_distance", "as_unit_float",
    "to_uint8",
]
