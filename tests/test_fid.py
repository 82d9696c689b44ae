"""FID: in-memory features, pytorch-fid's formula, offline Inception weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from jobs import fid
from pytorch_fid.fid_score import calculate_frechet_distance


def small_net(seed: int = 0) -> nn.Module:
    """A fixed-seed conv net returning (N, 16, 1, 1), pytorch-fid's feature convention."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.Tanh(), nn.Conv2d(8, 16, 3), nn.AdaptiveAvgPool2d(1))


def images(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 16, 16, generator=g) * 0.6 + shift).clamp(0, 1)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    import pytorch_fid.inception as inception_module
    monkeypatch.setattr(inception_module, "load_state_dict_from_url", refuse)


def test_fid_equals_direct_pytorch_fid_on_same_features():
    net = small_net()
    a, b = images(64, 1), images(64, 2, shift=0.2)
    fa, fb = fid.extract_features(net, a, batch_size=10), fid.extract_features(net, b)
    assert fa.shape == (64, 16) and fa.dtype == np.float64
    with torch.no_grad():
        direct_a = net(a).flatten(1).double().numpy()
    np.testing.assert_allclose(fa, direct_a, rtol=1e-6)
    expected = calculate_frechet_distance(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))
    assert fid.frechet_distance(fa, fb) == pytest.approx(expected, rel=1e-9)
    scorer = fid.FidScorer(net, network="test-net")
    assert scorer.fid(b, fa) == pytest.approx(expected, rel=1e-9)


def test_fid_zero_for_same_set_and_monotone_in_shift():
    net = small_net()
    ref = fid.extract_features(net, images(128, 3))
    assert abs(fid.frechet_distance(ref, ref)) < 1e-6
    scores = [fid.frechet_distance(fid.extract_features(net, images(128, 3, shift=s)), ref) for s in (0.1, 0.2, 0.3)]
    assert 0 < scores[0] < scores[1] < scores[2]


def test_uint8_images_are_scaled_to_unit_range():
    net = small_net()
    x = images(8, 4)
    as_uint8 = (x * 255).round().to(torch.uint8)
    np.testing.assert_allclose(fid.extract_features(net, as_uint8), fid.extract_features(net, as_uint8.float() / 255),
                               rtol=1e-6)


def test_missing_weights_raise_fid_unavailable_with_instructions(tmp_path, monkeypatch):
    monkeypatch.delenv(fid.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(fid.FidUnavailable) as err:
        fid.resolve_weights(None)
    msg = str(err.value)
    assert "\n" not in msg
    for part in (fid.WEIGHTS_FILE, fid.WEIGHTS_ENV, "eval.fid_weights", fid.WEIGHTS_URL, str(tmp_path / "hub")):
        assert part in msg
    import pytorch_fid.inception

    assert fid.WEIGHTS_URL == pytorch_fid.inception.FID_WEIGHTS_URL
    with pytest.raises(fid.FidUnavailable, match="eval.fid_weights"):
        fid.FidScorer.inception(tmp_path / "missing.pth")
    monkeypatch.setenv(fid.WEIGHTS_ENV, str(tmp_path / "nope.pth"))
    with pytest.raises(fid.FidUnavailable, match=fid.WEIGHTS_ENV):
        fid.resolve_weights(None)


@pytest.mark.slow
def test_inception_path_offline_with_test_made_weights(tmp_path, monkeypatch, no_network):
    # pytorch-fid's FID blocks only change forward(), not parameters: torchvision's Inception3 with
    # 1008 classes and no aux head has exactly the weights file's keys and shapes.
    torch.manual_seed(0)
    donor = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=True)
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    weights = hub / "checkpoints" / fid.WEIGHTS_FILE
    torch.save(donor.state_dict(), weights)
    monkeypatch.delenv(fid.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    scorer = fid.FidScorer.inception()
    assert scorer.weights_sha256 == fid.sha256_file(weights) and len(scorer.weights_sha256) == 64
    assert torch.equal(scorer.network_module().blocks[0][0].conv.weight, donor.Conv2d_1a_3x3.conv.weight)
    # 32×32 inputs are resized to 299 inside; ≈0.5–2 s per image on this CPU, so only four.
    x = (torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    feats = scorer.features(x)
    assert feats.shape == (4, 2048) and np.isfinite(feats).all()
    assert (feats >= 0).all() and feats.std(axis=0).max() > 0  # post-ReLU pool features, input-dependent

    torch.save({"not": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(RuntimeError, match="state_dict"):
        fid.FidScorer.inception(tmp_path / "wrong.pth").network_module()


def test_to_uint8_is_the_png_round_trip_of_save_image_and_idempotent(tmp_path):
    from PIL import Image
    from torchvision.utils import save_image

    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 16, 16, generator=g) * 1.2 - 0.1  # some values outside [0, 1]
    x[0, 0, 0, :3] = torch.tensor([0.5 / 255, 1.5 / 255 - 1e-6, 254.5 / 255])  # rounding edges
    save_image(x, tmp_path / "x.png")
    read = torch.from_numpy(np.array(Image.open(tmp_path / "x.png").convert("RGB"))).permute(2, 0, 1)[None]
    q = fid.to_uint8(x)
    assert q.dtype == torch.uint8 and q.shape == x.shape
    assert torch.equal(q, read)
    assert q[0, 0, 0, :3].tolist() == [1, 1, 255] and int(q.min()) == 0 and int(q.max()) == 255
    assert torch.equal(fid.to_uint8(q.float() / 255), q)  # quantised images are fixed points
    with pytest.raises(TypeError, match="uint8 already"):
        fid.to_uint8(q)
