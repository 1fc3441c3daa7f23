"""The BraTS label scheme, defined once: sequences, label values, regions, label <-> region.

Every part of the pipeline speaks it (validation, preprocessing, training targets, inference,
metrics, the report and the app), so it lives here, beside the dataset layout, and nothing else
spells a label value or a region's label set by hand. An edit here reruns every stage, as it should.

* Model input: the four sequences stacked in ``SEQUENCES`` order as channels.
* Labels (BraTS 2023): 0 background, 1 NETC (necrotic / non-enhancing core), 2 SNFH (edema),
  3 ET (enhancing tumour); pre-2023 data coded ET as 4 (``LEGACY_ET_LABEL``).
* Regions, what models predict and BraTS scores: WT = {1, 2, 3}, TC = {1, 3}, ET = {3}, nested
  ET within TC within WT, so a region map turns back into labels without ambiguity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

SEQUENCES: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")  # channel order of every model input
LABELS: tuple[int, ...] = (0, 1, 2, 3)
LEGACY_ET_LABEL = 4
LABEL_NAMES: dict[int, str] = {1: "necrotic core (NETC)", 2: "edema (SNFH)", 3: "enhancing tumour (ET)"}

REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
REGION_NAMES: tuple[str, ...] = tuple(REGIONS)  # the models' output channels, in this order


def region_mask(labels: np.ndarray, region: str) -> np.ndarray:
    """Boolean mask of one region (``"WT"``, ``"TC"`` or ``"ET"``) in a label array."""
    return np.isin(labels, REGIONS[region])


def labels_to_regions(labels: torch.Tensor) -> torch.Tensor:
    """(N, H, W) labels 0-3 -> (N, 3, H, W) float targets, one channel per region in REGION_NAMES order."""
    import torch

    return torch.stack([torch.isin(labels, torch.tensor(REGIONS[r], dtype=labels.dtype, device=labels.device))
                        for r in REGION_NAMES], dim=1).float()


def regions_to_labels(regions):
    """(..., 3, H, W) boolean regions (numpy or torch) -> uint8 labels, the innermost region winning:
    ET -> 3, else TC -> 1, else WT -> 2 (a voxel in TC but not WT, or ET but not TC, still gets the inner label)."""
    wt, tc, et = regions[..., 0, :, :], regions[..., 1, :, :], regions[..., 2, :, :]
    if isinstance(regions, np.ndarray):
        return np.where(et, np.uint8(3), np.where(tc, np.uint8(1), np.where(wt, np.uint8(2), np.uint8(0))))
    import torch

    labels = torch.zeros(wt.shape, dtype=torch.uint8, device=regions.device)
    labels[wt] = 2
    labels[tc] = 1
    labels[et] = 3
    return labels
