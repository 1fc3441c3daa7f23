"""Batch augmentation as small composable transforms: flip, affine, intensity.

Each transform maps ``(images (N, C, H, W) float, targets (N, 3, H, W) float, generator)`` to the
augmented pair, drawing its random numbers from ``generator`` (a CPU ``torch.Generator``) in a
fixed order, so a training run is repeatable and a resumed one draws what an uninterrupted one
would. ``build_augmentation`` composes them from ``train.augment``; a new augmentation is one
more transform class and one more line there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from tumorseg.data.labels import SEQUENCES
from tumorseg.training.data import to_device
from tumorseg.training.settings import AugmentSettings

Pair = tuple[torch.Tensor, torch.Tensor]


class Transform(Protocol):
    def __call__(self, images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> Pair: ...


def uniform(generator: torch.Generator, device: torch.device, *shape: int) -> torch.Tensor:
    """U[0, 1) numbers drawn on the CPU (so the stream is the same on every device), then moved."""
    return to_device(torch.rand(*shape, generator=generator), device)


@dataclass(frozen=True)
class RandomFlip:
    """Mirror each sample along ``axis`` (-1: left-right) with probability ``p``."""

    axis: int = -1
    p: float = 0.5

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> Pair:
        flip = (uniform(generator, images.device, len(images)) < self.p)[:, None, None, None]
        return torch.where(flip, images.flip(self.axis), images), torch.where(flip, targets.flip(self.axis), targets)


@dataclass(frozen=True)
class RandomAffine:
    """With probability ``p`` per sample: a rotation uniform in +-``rotate_deg`` and a zoom uniform in
    ``scale``; images resampled bilinearly, targets by nearest neighbour (they stay binary)."""

    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    p: float = 0.5

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> Pair:
        n, dev = len(images), images.device
        apply = uniform(generator, dev, n) < self.p
        angle = (uniform(generator, dev, n) * 2 - 1) * math.radians(self.rotate_deg) * apply
        low, high = self.scale
        scale = torch.where(apply, low + uniform(generator, dev, n) * (high - low), torch.ones(n, device=dev))
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        zero = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        targets = F.grid_sample(targets, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        return images, targets


@dataclass(frozen=True)
class IntensityJitter:
    """Per sample and sequence, brain voxels (any sequence non-zero) become ``x * gain + shift`` with
    gain uniform in 1 +- ``strength`` and shift in +- ``strength`` / 2; background stays 0. With 2.5D input
    (channels = neighbours x ``sequences``) a sequence's neighbours share its gain and shift, as one scan would."""

    strength: float = 0.1
    sequences: int = len(SEQUENCES)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> Pair:
        n, c, h, w = images.shape
        per_slice = images.reshape(n, c // self.sequences, self.sequences, h, w)
        gain = 1 + (uniform(generator, images.device, n, 1, self.sequences, 1, 1) * 2 - 1) * self.strength
        shift = (uniform(generator, images.device, n, 1, self.sequences, 1, 1) * 2 - 1) * self.strength / 2
        brain = (per_slice != 0).any(dim=2, keepdim=True)
        return torch.where(brain, per_slice * gain + shift, per_slice).reshape(n, c, h, w), targets


@dataclass(frozen=True)
class Compose:
    transforms: tuple[Transform, ...] = ()

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> Pair:
        for transform in self.transforms:
            images, targets = transform(images, targets, generator)
        return images, targets


def build_augmentation(settings: AugmentSettings) -> Compose:
    """The transforms ``train.augment`` asks for, in a fixed order (flip, affine, intensity)."""
    if not settings.enabled:
        return Compose()
    transforms: list[Transform] = []
    if settings.flip:
        transforms.append(RandomFlip(axis=-1))
    if settings.spatial_p > 0 and (settings.rotate_deg > 0 or settings.scale != (1.0, 1.0)):
        transforms.append(RandomAffine(settings.rotate_deg, settings.scale, settings.spatial_p))
    if settings.intensity > 0:
        transforms.append(IntensityJitter(settings.intensity))
    return Compose(tuple(transforms))
