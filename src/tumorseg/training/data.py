"""Training data: the slices of one subset held as tensors, sampling, and augmentation.

The whole subset is loaded once from the memory-mapped slice store (float16): 1.8k synthetic
slices are ~60 MB, all of BraTS-Africa ~2.5 GB, which also fits on a GPU. Batches are then
drawn by indexing, and augmented on the batch, with no DataLoader worker processes (which
cost more than they give on 2 cores).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tumorseg.data.slices import SliceStore
from tumorseg.training.settings import AugmentSettings

REGION_NAMES = ("WT", "TC", "ET")


def labels_to_regions(labels: torch.Tensor) -> torch.Tensor:
    """(N, H, W) labels 0-3 -> (N, 3, H, W) float targets WT = {1,2,3}, TC = {1,3}, ET = {3}."""
    wt = labels > 0
    tc = (labels == 1) | (labels == 3)
    et = labels == 3
    return torch.stack([wt, tc, et], dim=1).float()


def regions_to_labels(regions: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) boolean regions -> labels: ET where ET; else 1 where TC; else 2 where WT."""
    wt, tc, et = regions.unbind(dim=-3)
    labels = torch.zeros(wt.shape, dtype=torch.uint8, device=regions.device)
    labels[wt] = 2
    labels[tc] = 1
    labels[et] = 3
    return labels


@dataclass
class SliceBank:
    images: torch.Tensor  # (N, 4, H, W) float16
    labels: torch.Tensor  # (N, H, W) uint8
    has_tumour: torch.Tensor  # (N,) bool
    index: pd.DataFrame  # the slice index rows, in bank order

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> "SliceBank":
        return SliceBank(self.images.to(device), self.labels.to(device), self.has_tumour.to(device), self.index)


def load_bank(store_dir: Path, slices: pd.DataFrame) -> SliceBank:
    """Load the given slice-index rows (any order) into one bank, sorted by case and slice."""
    slices = slices.sort_values(["case_id", "slice"]).reset_index(drop=True)
    store = SliceStore(store_dir)
    images, labels = [], []
    for case_id, rows in slices.groupby("case_id", sort=True):
        r = rows["row"].to_numpy()
        images.append(np.asarray(store._images(case_id)[r]))
        labels.append(np.asarray(store._labels(case_id)[r]))
    return SliceBank(
        torch.from_numpy(np.concatenate(images)),
        torch.from_numpy(np.concatenate(labels)),
        torch.from_numpy(np.array(slices["has_tumour"], dtype=bool)),
        slices,
    )


def epoch_indices(bank: SliceBank, n: int, foreground_fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sample indices, a ``foreground_fraction`` share forced onto tumour slices and the rest
    uniform, shuffled; and which samples were forced (their patches are centred on tumour)."""
    tumour = torch.nonzero(bank.has_tumour.cpu()).flatten()
    n_fg = int(round(n * foreground_fraction)) if len(tumour) else 0
    uniform = torch.randint(len(bank), (n - n_fg,), generator=generator)
    forced = tumour[torch.randint(len(tumour), (n_fg,), generator=generator)] if n_fg else uniform[:0]
    idx = torch.cat([uniform, forced])
    is_forced = torch.cat([torch.zeros(n - n_fg, dtype=torch.bool), torch.ones(n_fg, dtype=torch.bool)])
    order = torch.randperm(len(idx), generator=generator)
    return idx[order], is_forced[order]


def augment(images: torch.Tensor, targets: torch.Tensor, settings: AugmentSettings, generator: torch.Generator):
    """Random flips, small rotations and scaling (images bilinear, targets nearest), and
    per-channel intensity jitter on brain voxels. ``images`` (N, C, H, W) float32, ``targets``
    (N, 3, H, W) float. Random numbers come from ``generator`` (on the CPU) for repeatability."""
    if not settings.enabled:
        return images, targets
    n, c = images.shape[:2]
    dev = images.device

    def rand(*shape):
        return torch.rand(*shape, generator=generator).to(dev)

    if settings.flip:
        flip = rand(n) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        targets = torch.where(flip[:, None, None, None], targets.flip(-1), targets)
    if settings.spatial_p > 0 and (settings.rotate_deg > 0 or settings.scale != (1.0, 1.0)):
        apply = rand(n) < settings.spatial_p
        angle = (rand(n) * 2 - 1) * math.radians(settings.rotate_deg) * apply
        lo, hi = settings.scale
        scale = torch.where(apply, lo + rand(n) * (hi - lo), torch.ones(n, device=dev))
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(cos)], 1), torch.stack([sin, cos, torch.zeros_like(cos)], 1)], 1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        targets = F.grid_sample(targets, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    if settings.intensity > 0:
        gain = 1 + (rand(n, c, 1, 1) * 2 - 1) * settings.intensity
        shift = (rand(n, c, 1, 1) * 2 - 1) * settings.intensity / 2
        brain = (images != 0).any(dim=1, keepdim=True)
        images = torch.where(brain, images * gain + shift, images)
    return images, targets


def random_patches(images: torch.Tensor, targets: torch.Tensor, size: int, centre_on_tumour: torch.Tensor,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut one ``size`` x ``size`` patch per sample, as nnU-Net trains on patches rather than
    whole images: the cost of a step falls with the patch area while the models stay fully
    convolutional, so inference still runs on whole slices. Samples flagged in
    ``centre_on_tumour`` (and that have tumour) get a patch centred on a random tumour voxel;
    the others a uniformly placed one. Random numbers come from ``generator`` (CPU)."""
    n, _, h, w = images.shape
    if size <= 0 or (size >= h and size >= w):
        return images, targets
    ph, pw = min(size, h), min(size, w)
    tops = (torch.rand(n, generator=generator) * (h - ph + 1)).long().clamp(max=h - ph)
    lefts = (torch.rand(n, generator=generator) * (w - pw + 1)).long().clamp(max=w - pw)
    picks = torch.rand(n, generator=generator)  # drawn for every sample, so the stream never depends on the data
    wt = targets[:, 0] > 0
    for i in torch.nonzero(centre_on_tumour.cpu()).flatten().tolist():
        voxels = torch.nonzero(wt[i]).cpu()
        if len(voxels):
            cy, cx = voxels[min(int(picks[i] * len(voxels)), len(voxels) - 1)].tolist()
            tops[i] = min(max(cy - ph // 2, 0), h - ph)
            lefts[i] = min(max(cx - pw // 2, 0), w - pw)
    rows = (tops[:, None] + torch.arange(ph)).to(images.device)  # (N, ph)
    cols = (lefts[:, None] + torch.arange(pw)).to(images.device)  # (N, pw)
    batch = torch.arange(n, device=images.device)[:, None, None]
    cut = lambda t: t.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()
    return cut(images), cut(targets)
