"""BCE-with-logits + soft Dice over the three BraTS regions, on raw logits.

The original project ended forward() in a sigmoid and then used BCEWithLogits (a double
sigmoid); here models return logits and only the loss and evaluation apply the sigmoid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """1 - mean over regions of the batch Dice (sums over the whole batch, as nnU-Net's batch
    Dice: stable when many slices have no tumour)."""
    probs = torch.sigmoid(logits.float())
    dims = (0, 2, 3)
    inter = (probs * targets).sum(dims)
    denom = probs.sum(dims) + targets.sum(dims)
    dice = (2 * inter + smooth) / (denom + smooth)
    return 1 - dice.mean()


def segmentation_loss(logits: torch.Tensor, targets: torch.Tensor, bce_weight: float = 1.0, dice_weight: float = 1.0,
                      voxel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """``voxel_weight`` (N, H, W) multiplies every region's BCE at a voxel (the mean is still over voxels, so weights
    above 1 raise the loss's scale with how many weighted voxels a batch holds); the soft Dice is unweighted."""
    weight = None if voxel_weight is None else voxel_weight[:, None].expand_as(targets)
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets, weight=weight)
    return bce_weight * bce + dice_weight * soft_dice_loss(logits, targets)


def mimic_weights(mimic: torch.Tensor, weight: float) -> torch.Tensor:
    """(N, H, W) voxel weights of the BCE: ``weight`` on tumour mimics (``mimic``: bool), 1 elsewhere."""
    return 1 + (weight - 1) * mimic.float()
