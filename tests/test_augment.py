"""Augmentation transforms, each alone, then composed from the settings."""

from __future__ import annotations

import pytest
import torch

from tumorseg.training.augment import Compose, IntensityJitter, RandomAffine, RandomFlip, build_augmentation
from tumorseg.training.settings import AugmentSettings


def _batch(n=4, size=32):
    x = torch.zeros(n, 4, size, size)
    x[:, :, 8:20, 10:23] = torch.rand(n, 4, 12, 13) + 0.5  # a brain-like block holding the tumour
    y = torch.zeros(n, 3, size, size)
    y[:, :, 10:14, 14:21] = 1.0  # off-centre in both axes, so a flip or a quarter turn moves it
    return x, y


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_flip_mirrors_image_and_target_together():
    x, y = _batch()
    xf, yf = RandomFlip(axis=-1, p=1.0)(x, y, _gen())
    assert torch.equal(xf, x.flip(-1)) and torch.equal(yf, y.flip(-1))
    xs, ys = RandomFlip(axis=-1, p=0.0)(x, y, _gen())
    assert torch.equal(xs, x) and torch.equal(ys, y)
    # p=0.5: each sample either flipped or not, image and target alike, and some of each for this seed
    xh, yh = RandomFlip(axis=-1, p=0.5)(_batch(16)[0], _batch(16)[1], _gen(3))
    x16, y16 = _batch(16)
    flipped = [torch.equal(yh[i], y16[i].flip(-1)) for i in range(16)]
    assert 0 < sum(flipped) < 16


def test_affine_rotates_a_quarter_turn_exactly_and_keeps_targets_binary():
    x, y = _batch()
    xr, yr = RandomAffine(rotate_deg=90, scale=(1.0, 1.0), p=1.0)(x, y, _gen())
    assert set(torch.unique(yr).tolist()) <= {0.0, 1.0}
    assert yr.sum() > 0 and not torch.equal(yr, y)
    # tumour area is kept up to resampling at the edges; image and target move together
    assert (yr[:, 0].sum((1, 2)) - y[:, 0].sum((1, 2))).abs().max() <= 0.1 * y[:, 0].sum((1, 2)).max()
    assert ((xr[:, 0] > 0.4) | ~(yr[:, 0] > 0)).all(), "every rotated tumour voxel lies on rotated brain"
    xi, yi = RandomAffine(rotate_deg=30, scale=(0.8, 1.2), p=0.0)(x, y, _gen())
    assert torch.allclose(xi, x, atol=1e-5) and torch.equal(yi, y)


def test_affine_zoom_changes_the_tumour_size_as_asked():
    x, y = torch.ones(1, 4, 64, 64), torch.zeros(1, 3, 64, 64)
    y[:, :, 28:36, 26:38] = 1.0  # about the centre, the fixed point of the zoom
    _, y_big = RandomAffine(rotate_deg=0, scale=(2.0, 2.0), p=1.0)(x, y, _gen())
    _, y_small = RandomAffine(rotate_deg=0, scale=(0.5, 0.5), p=1.0)(x, y, _gen())
    area = float(y[0, 0].sum())
    assert float(y_big[0, 0].sum()) == pytest.approx(4 * area, rel=0.15)
    assert float(y_small[0, 0].sum()) == pytest.approx(area / 4, rel=0.3)


def test_intensity_is_an_affine_map_per_channel_on_brain_only():
    x, y = _batch()
    s = 0.2
    xj, yj = IntensityJitter(strength=s)(x, y, _gen())
    assert torch.equal(yj, y)
    brain = (x != 0).any(1, keepdim=True).expand_as(x)
    assert torch.equal(xj[~brain], x[~brain])
    for i in range(len(x)):
        for c in range(4):
            v, w = x[i, c][brain[i, c]], xj[i, c][brain[i, c]]
            gain = (w[1] - w[0]) / (v[1] - v[0])
            shift = w[0] - gain * v[0]
            assert torch.allclose(w, gain * v + shift, atol=1e-5)
            assert 1 - s - 1e-6 <= gain <= 1 + s + 1e-6 and abs(shift) <= s / 2 + 1e-6


def test_build_from_settings_and_repeatability():
    assert build_augmentation(AugmentSettings(enabled=False)).transforms == ()
    aug = build_augmentation(AugmentSettings())
    assert [type(t) for t in aug.transforms] == [RandomFlip, RandomAffine, IntensityJitter]
    assert [type(t) for t in build_augmentation(AugmentSettings(flip=False, spatial_p=0.0)).transforms] == [IntensityJitter]
    assert build_augmentation(AugmentSettings(rotate_deg=0, scale=(1.0, 1.0), intensity=0.0)).transforms == (RandomFlip(),)
    x, y = _batch()
    a, b = aug(x, y, _gen(5)), aug(x, y, _gen(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(aug(x, y, _gen(6))[0], a[0])


def test_composition_applies_transforms_in_order_on_one_stream():
    x, y = _batch()
    flip, jitter = RandomFlip(p=1.0), IntensityJitter(0.1)
    composed = Compose((flip, jitter))(x, y, _gen(1))
    g = _gen(1)
    by_hand = jitter(*flip(x, y, g), g)
    assert torch.equal(composed[0], by_hand[0]) and torch.equal(composed[1], by_hand[1])

    def invert(images, targets, generator):  # a new augmentation slots in as any callable
        return -images, targets

    assert torch.equal(Compose((invert,))(x, y, _gen())[0], -x)
