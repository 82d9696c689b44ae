"""Held-out BPD: per-image dequantisation noise (common random numbers by image index), per-image
BPD and the two standard errors (over images, over draws), and the evaluation config keys."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from jobs.config import ConfigError, load_trial_config, trial_id
from rgflow.config import PriorConfig, model_preset
from rgflow.data import EpochBatcher
from rgflow.data.batching import _EVAL, derive_seed
from rgflow.data.msds import generate
from rgflow.logit import dequantize
from rgflow.model import RGFlowModel
from rgflow.train import validation_bpd
from tests.test_flow import randomize


def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _random_images(n: int, size: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def _noise(batcher: EpochBatcher, batch_size: int, draw: int) -> torch.Tensor:
    return torch.cat([b.noise for b in batcher.eval_batches(batch_size, draw=draw)])


@pytest.mark.parametrize("device", _devices())
def test_noise_of_an_image_depends_on_seed_draw_and_index_only(device):
    images = _random_images(20)
    batcher = EpochBatcher(images, 5, seed=11, device=device, drop_last=False)
    by_size = {b: _noise(batcher, b, draw=0) for b in (1, 7, 64)}
    assert by_size[1].shape == images.shape and by_size[1].device.type == device
    assert torch.equal(by_size[1], by_size[7]) and torch.equal(by_size[1], by_size[64])
    # image i's noise is U[0,1) from its own device generator seeded (seed, _EVAL, draw, i)
    for i in (0, 6, 19):
        g = torch.Generator(device=device).manual_seed(derive_seed(11, _EVAL, 0, i))
        assert torch.equal(by_size[7][i], torch.empty(3, 4, 4, device=device).uniform_(generator=g))
    u = by_size[1]
    assert 0 <= float(u.min()) and float(u.max()) < 1
    assert len({tuple(row.flatten().tolist()) for row in u}) == 20            # differs between images
    assert not torch.equal(_noise(batcher, 7, draw=1), u)                       # and between draws
    assert not torch.equal(_noise(EpochBatcher(images, 5, seed=12, device=device, drop_last=False), 7, 0), u)
    # the noise of image i does not depend on the other images either: a prefix sees the same noise
    prefix = EpochBatcher(images[:9], 64, seed=11, device=device, drop_last=False)
    assert torch.equal(_noise(prefix, 4, draw=0), u[:9])
    assert torch.equal(batcher.eval_noise(0, 6, 9), u[6:9])


def test_dequantize_with_given_noise_is_the_same_formula():
    x = _random_images(3)
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    kept = u.clone()
    out = dequantize(x, noise=u)
    assert out.dtype == torch.float32 and torch.equal(out, (x.float() + kept) / 256)
    assert torch.equal(u, kept)  # not modified
    # the generator path draws u the same way torch.rand does, then applies the same formula
    drawn = dequantize(x, torch.Generator().manual_seed(0))
    assert torch.equal(drawn, out)
    with pytest.raises(ValueError, match=r"noise must be float32 of shape \(3, 3, 4, 4\)"):
        dequantize(x, noise=u[:2])
    with pytest.raises(ValueError, match="float32"):
        dequantize(x, noise=u.double())


@pytest.fixture(scope="module")
def model_and_images():
    torch.manual_seed(0)
    model = RGFlowModel(model_preset("tiny"), PriorConfig())
    randomize(model, seed=4)
    imgs, _ = generate("msds1", 0, "test", 12, workers=1)
    return model.eval(), torch.from_numpy(imgs)


def test_per_image_bpd_and_the_two_standard_errors(model_and_images):
    model, images = model_and_images
    n, draws = len(images), 3
    batcher = EpochBatcher(images, 5, seed=3, drop_last=False)
    held = validation_bpd(model, batcher, draws, 5)
    assert held.per_image.shape == (n,) and held.per_image.dtype == np.float64
    assert held.per_draw.shape == (draws,) and held.per_draw.dtype == np.float64
    # per image, in image order: the BPD of that image alone, averaged over its noise of each draw
    with torch.no_grad():
        direct = np.array([[model.bpd(dequantize(images[i:i + 1], noise=batcher.eval_noise(d, i, i + 1))).item()
                            for i in range(n)] for d in range(draws)])  # (draws, n)
    np.testing.assert_allclose(held.per_image, direct.mean(0), rtol=1e-6)
    np.testing.assert_allclose(held.per_draw, direct.mean(1), rtol=1e-6)
    assert held.mean == pytest.approx(direct.mean(), rel=1e-6)
    assert held.se_images == pytest.approx(np.std(held.per_image, ddof=1) / math.sqrt(n), rel=1e-12)
    assert held.se_draws == pytest.approx(np.std(held.per_draw, ddof=1) / math.sqrt(draws), rel=1e-12)
    # images differ far more than the dequantisation draws of the same image do
    assert held.se_images > 0.01 and 0 < 20 * held.se_draws < held.se_images
    # the batch size changes nothing but rounding: the noise follows the image
    for b in (1, 12):
        other = validation_bpd(model, EpochBatcher(images, b, seed=3, drop_last=False), draws, b)
        np.testing.assert_allclose(other.per_image, held.per_image, rtol=1e-6)
    # another noise seed: other per-image values, the same to within the draw noise
    reseeded = validation_bpd(model, EpochBatcher(images, 5, seed=4, drop_last=False), draws, 5)
    assert not np.array_equal(reseeded.per_image, held.per_image)
    assert abs(reseeded.mean - held.mean) < 10 * held.se_draws * math.sqrt(2)


def test_undefined_standard_errors_are_nan_and_a_stop_returns_none(model_and_images):
    model, images = model_and_images
    one_image = validation_bpd(model, EpochBatcher(images[:1], 4, seed=0, drop_last=False), 2, 4)
    assert math.isnan(one_image.se_images) and math.isfinite(one_image.se_draws)
    assert one_image.per_image.shape == (1,) and one_image.mean == pytest.approx(one_image.per_draw.mean())
    one_draw = validation_bpd(model, EpochBatcher(images, 4, seed=0, drop_last=False), 1, 4)
    assert math.isnan(one_draw.se_draws) and math.isfinite(one_draw.se_images)
    model.train()
    polls = []
    stopped = validation_bpd(model, EpochBatcher(images, 4, seed=0, drop_last=False), 2, 4,
                             lambda: polls.append(1) or ("stop" if len(polls) == 4 else None))
    assert stopped is None and len(polls) == 4 and model.training  # 3 batches per draw: stopped in draw 2
    model.eval()


def test_eval_config_noise_seed_and_receptive_field_space():
    cfg = load_trial_config(None, [])
    assert cfg.eval.noise_seed == 0 and cfg.eval.receptive_field_space == "image"
    chosen = load_trial_config(None, ["eval.noise_seed=5", "eval.receptive_field_space=logit"])
    assert (chosen.eval.noise_seed, chosen.eval.receptive_field_space) == (5, "logit")
    assert trial_id(chosen) == trial_id(cfg)  # evaluation settings: the same trial
    with pytest.raises(ConfigError) as err:
        load_trial_config(None, ["eval.noise_seed=-1"])
    assert str(err.value) == "eval.noise_seed=-1: must be a non-negative integer [override 'eval.noise_seed=-1']"
    with pytest.raises(ConfigError) as err:
        load_trial_config(None, ["eval.receptive_field_space=imgae"])
    assert str(err.value) == ("eval.receptive_field_space='imgae': must be one of 'image', 'logit' "
                              "(did you mean 'image'?) [override 'eval.receptive_field_space=imgae']")
