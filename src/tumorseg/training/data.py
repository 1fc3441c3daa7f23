"""Training data: the slices of one subset held as tensors, and how samples and patches are drawn.

The whole subset is loaded once from the memory-mapped slice store (float16): 1.8k synthetic
slices are ~60 MB, all of BraTS-Africa ~2.5 GB, which also fits on a GPU. Batches are then
drawn by indexing, and augmented on the batch (``tumorseg.training.augment``), with no DataLoader
worker processes (which cost more than they give on 2 cores).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tumorseg.data.slices import SliceStore


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
