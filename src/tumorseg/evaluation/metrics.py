"""BraTS per-volume ("legacy") metrics: Dice, HD95 in mm, sensitivity, specificity.

Conventions (BraTS): prediction and truth both empty -> Dice 1, HD95 0; exactly one empty ->
Dice 0, HD95 373.13 mm (the penalty BraTS uses: the diagonal of the 240 x 240 x 155 grid).
HD95 is the larger of the two directed 95th percentiles of surface distances (as medpy and the
BraTS toolkit), computed with an exact Euclidean distance transform in the voxel spacing.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from tumorseg.data.labels import REGIONS, region_mask

HD95_EMPTY_PENALTY = 373.13


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred.sum(), truth.sum()
    if p == 0 and t == 0:
        return 1.0
    return float(2 * np.logical_and(pred, truth).sum() / (p + t))


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1), border_value=0)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> float:
    has_p, has_t = pred.any(), truth.any()
    if not has_p and not has_t:
        return 0.0
    if has_p != has_t:
        return HD95_EMPTY_PENALTY
    # Work in the bounding box of both masks (plus a margin): exact, and fast on a 240^3 grid.
    both = np.argwhere(pred | truth)
    lo = np.maximum(both.min(0) - 1, 0)
    hi = np.minimum(both.max(0) + 2, pred.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    p, t = pred[box], truth[box]
    sp, st = _surface(p), _surface(t)
    dist_to_t = ndimage.distance_transform_edt(~st, sampling=spacing)
    dist_to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return float(max(np.percentile(dist_to_t[sp], 95), np.percentile(dist_to_p[st], 95)))


def sensitivity(pred: np.ndarray, truth: np.ndarray) -> float:
    t = truth.sum()
    return 1.0 if t == 0 else float(np.logical_and(pred, truth).sum() / t)


def specificity(pred: np.ndarray, truth: np.ndarray) -> float:
    negatives = (~truth).sum()
    return 1.0 if negatives == 0 else float(np.logical_and(~pred, ~truth).sum() / negatives)


def volume_metrics(pred_labels: np.ndarray, truth_labels: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> dict[str, float]:
    """Dice, HD95, sensitivity and specificity per region for one patient's label volumes."""
    out = {}
    for region in REGIONS:
        p, t = region_mask(pred_labels, region), region_mask(truth_labels, region)
        out[f"dice_{region}"] = dice(p, t)
        out[f"hd95_{region}"] = hd95(p, t, spacing)
        out[f"sensitivity_{region}"] = sensitivity(p, t)
        out[f"specificity_{region}"] = specificity(p, t)
    return out


def slice_dice_wt(pred_labels: np.ndarray, truth_labels: np.ndarray, axis: int = -1) -> list[float]:
    """The original project's measure: whole-tumour Dice per axial slice, over slices with tumour."""
    p = np.moveaxis(pred_labels > 0, axis, 0)
    t = np.moveaxis(truth_labels > 0, axis, 0)
    return [dice(ps, ts) for ps, ts in zip(p, t) if ts.any()]


def summarise(per_patient: list[dict[str, float]], slice_dices: list[float]) -> dict[str, float | int | None]:
    """The numbers of metrics/<model>.json: mean Dice (4 decimals) and HD95 (2) per region and over the
    regions, and the mean slice-level WT Dice; shared so other scorers (bench/nnunet_baseline) compare."""
    out: dict[str, float | int | None] = {"n_patients": len(per_patient)}
    for region in REGIONS:
        out[f"dice_{region}"] = round(float(np.mean([row[f"dice_{region}"] for row in per_patient])), 4)
    out["dice_mean"] = round(float(np.mean([out[f"dice_{r}"] for r in REGIONS])), 4)
    for region in REGIONS:
        out[f"hd95_{region}"] = round(float(np.mean([row[f"hd95_{region}"] for row in per_patient])), 2)
    out["hd95_mean"] = round(float(np.mean([out[f"hd95_{r}"] for r in REGIONS])), 2)
    out["slice_dice_WT"] = round(float(np.mean(slice_dices)), 4) if slice_dices else None
    return out
