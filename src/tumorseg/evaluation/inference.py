"""Whole-volume inference: batched slice predictions reassembled into the original geometry."""

from __future__ import annotations

import numpy as np
import torch

from tumorseg.data.context import volume_batch
from tumorseg.data.labels import regions_to_labels
from tumorseg.models.runtime import autocast


# Test-time augmentation for 2D: the mean of the sigmoid maps of mirrored copies of each slice. "lr" uses only the
# mirroring the training augmentation applies (left-right); "all" adds up-down and both, as nnU-Net predicts.
MIRRORINGS: dict[str, tuple[tuple[int, ...], ...]] = {"none": ((),), "lr": ((), (-1,)), "all": ((), (-1,), (-2,), (-2, -1))}
TTA_CHOICES = tuple(MIRRORINGS)


def region_probabilities(model: torch.nn.Module, x: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """(N, 4, Y, X) -> (N, 3, Y, X) sigmoid region probabilities, averaged over the ``tta`` mirrorings
    (``MIRRORINGS``), which smooths boundary errors for that many times the cost."""
    if tta not in MIRRORINGS:
        raise ValueError(f"tta = {tta!r}; expected one of {list(MIRRORINGS)}")
    flips = MIRRORINGS[tta]
    return sum(torch.sigmoid(model(x.flip(axes)).float()).flip(axes) for axes in flips) / len(flips)


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, images: np.ndarray, batch_size: int = 32, device: torch.device | str = "cpu",
                          amp_dtype: torch.dtype | None = None, channels_last: bool = True, tta: str = "none",
                          context: int = 0) -> np.ndarray:
    """(Z, 4, Y, X) normalised slices -> (Z, 3, Y, X) float32 region probabilities (WT, TC, ET). ``context``: the
    neighbours on each side the model was trained with (its model.json ``context_slices``; tumorseg.data.context)."""
    device = torch.device(device)
    model.eval()
    out = np.zeros((images.shape[0], 3) + images.shape[2:], dtype=np.float32)
    for start in range(0, len(images), batch_size):
        x = volume_batch(images, start, min(start + batch_size, len(images)), context).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            out[start:start + len(x)] = region_probabilities(model, x, tta).cpu().numpy()
    return out


def predict_slices(model: torch.nn.Module, images: np.ndarray, batch_size: int = 32, device: torch.device | str = "cpu",
                   amp_dtype: torch.dtype | None = None, channels_last: bool = True, tta: str = "none",
                   context: int = 0) -> np.ndarray:
    """(Z, 4, Y, X) normalised slices -> (Z, Y, X) uint8 BraTS labels (probability > 0.5 per region)."""
    probs = predict_probabilities(model, images, batch_size, device, amp_dtype, channels_last, tta, context)
    return regions_to_labels(probs > 0.5)
