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


def segmentation_loss(logits: torch.Tensor, targets: torch.Tensor, bce_weight: float = 1.0, dice_weight: float = 1.0) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets)
    return bce_weight * bce + dice_weight * soft_dice_loss(logits, targets)
