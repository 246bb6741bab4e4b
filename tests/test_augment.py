"""On-the-fly augmentation (pipeline.data.augment): seeded, bounded, and off when disabled."""

import dataclasses

import numpy as np
import pytest

from pipeline.data.augment import augment_images, epoch_rng
from pipeline.errors import ConfigError
from pipeline.recipe.schema import AugmentConfig, Recipe

NONE = AugmentConfig(shift=0.0, zoom=0.0, rotation=0.0, brightness=0.0, contrast=0.0)


def _images(n=16, size=20, channels=1, seed=0):
    return np.random.default_rng(seed).random((n, size, size, channels), dtype=np.float32)


def test_deterministic_by_seed_and_new_each_epoch():
    x = _images()
    a = augment_images(x, AugmentConfig(), epoch_rng(0, "train", 3))
    b = augment_images(x, AugmentConfig(), epoch_rng(0, "train", 3))
    assert a.dtype == np.float32 and a.shape == x.shape
    assert np.array_equal(a, b)
    assert not np.array_equal(a, augment_images(x, AugmentConfig(), epoch_rng(0, "train", 4)))
    assert not np.array_equal(a, augment_images(x, AugmentConfig(), epoch_rng(1, "train", 3)))
    assert not np.array_equal(a, x)
    assert 0.0 <= a.min() and a.max() <= 1.0


def test_off_when_disabled_and_input_untouched():
    x = _images()
    before = x.copy()
    off = augment_images(x, AugmentConfig(enabled=False), epoch_rng(0, "train", 0))
    assert off is x
    augment_images(x, AugmentConfig(), epoch_rng(0, "train", 0))
    assert np.array_equal(x, before)


def test_zero_ranges_are_the_identity():
    x = _images(channels=3)
    assert np.allclose(augment_images(x, NONE, epoch_rng(0, "train", 0)), x, atol=1e-6)


def test_a_shift_moves_the_content():
    x = np.zeros((1, 20, 20, 1), np.float32)
    x[0, 8:12, 8:12] = 1.0
    moved = augment_images(x, dataclasses.replace(NONE, shift=0.25), epoch_rng(0, "train", 0))
    com = lambda img: np.array(np.nonzero(img[..., 0] > 0.5)).mean(axis=1)  # noqa: E731
    assert np.abs(com(moved[0]) - com(x[0])).max() > 0.5
    assert moved.sum() == pytest.approx(x.sum(), rel=0.35)  # shifted, not destroyed


def test_hflip_is_off_by_default_and_mirrors_when_on():
    x = np.zeros((64, 8, 32, 1), np.float32)
    x[:, :, :4] = 1.0  # a bar on the left
    plain = augment_images(x, NONE, epoch_rng(0, "train", 0))
    assert (plain[:, :, :4] > 0.5).all()
    flipped = augment_images(x, dataclasses.replace(NONE, hflip=True), epoch_rng(0, "train", 0))
    right = (flipped[:, :, -4:] > 0.5).all(axis=(1, 2, 3))
    assert 10 < right.sum() < 54  # about half mirrored
    assert not AugmentConfig().hflip


def test_brightness_and_contrast_change_intensity_only():
    x = _images(n=32)
    out = augment_images(x, dataclasses.replace(NONE, brightness=0.2, contrast=0.3), epoch_rng(0, "train", 0))
    # Per image an affine map of the intensities: correlation 1 where nothing clipped.
    for a, b in zip(x, out):
        keep = (b > 0) & (b < 1)
        assert np.corrcoef(a[keep], b[keep])[0, 1] > 0.999


@pytest.mark.parametrize("augment, message", [
    ({"rotation": 200}, "recipe.train.augment.rotation: expected a number from 0 to 180, got 200"),
    ({"shift": -0.1}, "recipe.train.augment.shift: expected a number from 0 to 0.5, got -0.1"),
    ({"hflip": "yes"}, "recipe.train.augment.hflip: expected true or false, got 'yes'"),
    ({"blur": 1}, "recipe.train.augment: unknown key 'blur'; valid keys: enabled, shift, zoom, rotation"),
])
def test_recipe_rejects_bad_augmentation(augment, message):
    with pytest.raises(ConfigError) as exc:
        Recipe.from_dict({"train": {"augment": augment}})
    assert message in str(exc.value)
