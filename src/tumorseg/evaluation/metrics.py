"""BraTS metrics: per-volume ("legacy") Dice, HD95, sensitivity, specificity, and lesion-wise Dice and HD95.

Legacy conventions (BraTS): prediction and truth both empty -> Dice 1, HD95 0; exactly one empty ->
Dice 0, HD95 373.13 mm (the penalty BraTS uses: the diagonal of the 240 x 240 x 155 grid).
HD95 is the larger of the two directed 95th percentiles of surface distances (as the BraTS 2023
code), computed with an exact Euclidean distance transform in the voxel spacing.

Lesion-wise (BraTS 2023 onwards, how BraTS-Africa / SSA ranks teams): every connected tumour
component is scored on its own and every false-positive component counts as Dice 0 / HD95 374 mm,
so a spurious blob that the legacy Dice barely notices halves a one-lesion patient's score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from tumorseg.data.labels import REGION_NAMES, REGIONS, region_mask

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


# ---------------------------------------------------------------------------------------------
# Lesion-wise metrics (BraTS 2023 onwards; how BraTS-Africa / SSA ranks).

LESION_HD95_PENALTY = 374.0  # the BraTS 2023 metrics code's penalty for a missed or false lesion
LESION_DILATION = 3  # binary dilations that merge nearby ground-truth lesions and define a match (GLI, SSA, PED)
LESION_MIN_VOLUME_MM3 = 50.0  # ground-truth lesions of this volume or less are left out (GLI, SSA, PED)
CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)  # what a connected component (a lesion) is
LESION_DILATION_STRUCTURE = ndimage.generate_binary_structure(3, 2)  # as the BraTS 2023 code dilates


@dataclass(frozen=True)
class LesionScores:
    """One region of one patient, scored lesion by lesion."""

    dice: float  # sum of per-lesion Dice / (GT lesions + FP)
    hd95: float  # (sum of per-lesion HD95 + 374 per FP) / (GT lesions + FP), mm
    tp: int  # ground-truth lesions (> min volume) that a predicted component overlaps
    fn: int  # ground-truth lesions (> min volume) that none does
    fp: int  # predicted components overlapping no dilated ground-truth lesion


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    where = np.argwhere(mask)
    lo = np.maximum(where.min(0) - margin, 0)
    hi = np.minimum(where.max(0) + margin + 1, mask.shape)
    return tuple(slice(a, b) for a, b in zip(lo, hi))


@dataclass(frozen=True)
class TruthLesion:
    """One ground-truth lesion: its voxels, the voxels a predicted component must touch to match it, its volume."""

    mask: np.ndarray  # the lesion's truth voxels, whole volume (boolean)
    box: tuple[slice, ...]  # the lesion's bounding box with a margin of the dilation + 1
    reach: np.ndarray  # the lesion dilated ``dilation`` times, inside ``box``
    volume_mm3: float


class TruthLesions:
    """One region's ground-truth lesions, decomposed once (the dilations and labellings cost most of a lesion-wise
    score) and scored against any number of predictions: post-processing fitting scores one truth dozens of times."""

    def __init__(self, truth: np.ndarray, spacing=(1.0, 1.0, 1.0), dilation: int = LESION_DILATION,
                 min_volume_mm3: float = LESION_MIN_VOLUME_MM3):
        truth = np.asarray(truth, dtype=bool)
        self.spacing, self.min_volume_mm3, self.shape = spacing, min_volume_mm3, truth.shape
        voxel_mm3 = float(np.prod(spacing))
        lesions = []
        if truth.any():
            dilated = ndimage.binary_dilation(truth, structure=LESION_DILATION_STRUCTURE, iterations=dilation)
            merged, n_lesions = ndimage.label(dilated, structure=CONNECTIVITY_26)
            merged[~truth] = 0  # each truth voxel carries the id of the dilated component it lies in
            for lesion_id in range(1, n_lesions + 1):
                lesion = merged == lesion_id
                box = _box(lesion, dilation + 1)
                reach = ndimage.binary_dilation(lesion[box], structure=LESION_DILATION_STRUCTURE, iterations=dilation)
                lesions.append(TruthLesion(lesion, box, reach, float(lesion.sum() * voxel_mm3)))
        self.lesions = tuple(lesions)

    def score(self, pred: np.ndarray, with_hd95: bool = True) -> LesionScores:
        """The lesion-wise scores of ``pred`` (a boolean mask of the truth's shape) against these lesions."""
        pred = np.asarray(pred, dtype=bool)
        if pred.shape != self.shape:
            raise ValueError(f"prediction of shape {pred.shape} scored against ground truth of shape {self.shape}")
        pred_cc, n_pred = ndimage.label(pred, structure=CONNECTIVITY_26)
        matched: set[int] = set()
        dices, hds, tp, fn = [], [], 0, 0
        for lesion in self.lesions:
            hits = np.unique(pred_cc[lesion.box][lesion.reach])
            hits = hits[hits != 0]
            matched.update(hits.tolist())
            if lesion.volume_mm3 <= self.min_volume_mm3:
                continue
            if len(hits) == 0:
                fn += 1
                dices.append(0.0)
                hds.append(LESION_HD95_PENALTY)
                continue
            tp += 1
            is_hit = np.zeros(n_pred + 1, dtype=bool)
            is_hit[hits] = True
            found = is_hit[pred_cc]  # the predicted components matched to this lesion
            dices.append(dice(found, lesion.mask))
            hds.append(hd95(found, lesion.mask, self.spacing) if with_hd95 else float("nan"))
        fp = n_pred - len(matched)
        count = len(dices) + fp
        if count == 0:
            return LesionScores(1.0, 0.0, 0, 0, 0)
        return LesionScores(float(sum(dices) / count), float((sum(hds) + LESION_HD95_PENALTY * fp) / count), tp, fn, fp)


def lesion_wise(pred: np.ndarray, truth: np.ndarray, spacing=(1.0, 1.0, 1.0), dilation: int = LESION_DILATION,
                min_volume_mm3: float = LESION_MIN_VOLUME_MM3, with_hd95: bool = True) -> LesionScores:
    """BraTS 2023 lesion-wise Dice and HD95 of one region (boolean 3D masks).

    Ground-truth lesions are the 26-connected components of the truth, merged when they touch after
    ``dilation`` binary dilations; a predicted 26-connected component overlapping a lesion's dilated
    mask is matched to it (a true positive), any other predicted component is a false positive that
    scores Dice 0 / HD95 374 mm. Lesions of ``min_volume_mm3`` or less are left out of the scores and
    the counts (their matched components are not false positives). Both empty: Dice 1, HD95 0.
    ``with_hd95=False`` skips the distance transforms (HD95 then NaN) where only Dice is needed.
    Scoring one truth against many predictions: ``TruthLesions(truth, ...).score(pred)`` decomposes it once.
    """
    return TruthLesions(truth, spacing, dilation, min_volume_mm3).score(pred, with_hd95)


def volume_metrics(pred_labels: np.ndarray, truth_labels: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> dict[str, float]:
    """Per region for one patient's label volumes: legacy Dice, HD95, sensitivity, specificity, and
    lesion-wise Dice, HD95 and lesion counts (TP, FN, FP)."""
    out: dict[str, float] = {}
    for region in REGIONS:
        p, t = region_mask(pred_labels, region), region_mask(truth_labels, region)
        out[f"dice_{region}"] = dice(p, t)
        out[f"hd95_{region}"] = hd95(p, t, spacing)
        out[f"sensitivity_{region}"] = sensitivity(p, t)
        out[f"specificity_{region}"] = specificity(p, t)
        lesions = lesion_wise(p, t, spacing)
        out[f"lesion_dice_{region}"] = lesions.dice
        out[f"lesion_hd95_{region}"] = lesions.hd95
        out[f"lesion_tp_{region}"] = lesions.tp
        out[f"lesion_fn_{region}"] = lesions.fn
        out[f"lesion_fp_{region}"] = lesions.fp
    return out


def slice_dice_wt(pred_labels: np.ndarray, truth_labels: np.ndarray, axis: int = -1) -> list[float]:
    """The original project's measure: whole-tumour Dice per axial slice, over slices with tumour."""
    p = np.moveaxis(pred_labels > 0, axis, 0)
    t = np.moveaxis(truth_labels > 0, axis, 0)
    return [dice(ps, ts) for ps, ts in zip(p, t) if ts.any()]


def summarise(per_patient: list[dict[str, float]], slice_dices: list[float]) -> dict[str, float | int | None]:
    """The numbers of metrics/<model>.json: mean legacy and lesion-wise Dice (4 decimals) and HD95 (2) per
    region and over the regions, false-positive lesions per patient per region, and the mean slice-level
    WT Dice; shared so other scorers (bench/nnunet_baseline) compare."""
    out: dict[str, float | int | None] = {"n_patients": len(per_patient)}

    def mean(key: str, digits: int) -> float:
        return round(float(np.mean([row[key] for row in per_patient])), digits)

    for prefix in ("", "lesion_"):
        if prefix and f"lesion_dice_{REGION_NAMES[0]}" not in per_patient[0]:
            continue  # rows scored before lesion-wise metrics existed
        for region in REGIONS:
            out[f"{prefix}dice_{region}"] = mean(f"{prefix}dice_{region}", 4)
        out[f"{prefix}dice_mean"] = round(float(np.mean([out[f"{prefix}dice_{r}"] for r in REGIONS])), 4)
        for region in REGIONS:
            out[f"{prefix}hd95_{region}"] = mean(f"{prefix}hd95_{region}", 2)
        out[f"{prefix}hd95_mean"] = round(float(np.mean([out[f"{prefix}hd95_{r}"] for r in REGIONS])), 2)
    if f"lesion_fp_{REGION_NAMES[0]}" in per_patient[0]:
        for region in REGIONS:
            out[f"fp_per_patient_{region}"] = mean(f"lesion_fp_{region}", 3)
    out["slice_dice_WT"] = round(float(np.mean(slice_dices)), 4) if slice_dices else None
    out["ci95"] = confidence_intervals(per_patient, [k for k in out if k not in ("n_patients", "slice_dice_WT")])
    return out


def per_patient_values(per_patient: list[dict[str, float]], key: str) -> np.ndarray:
    """One value per patient behind a summary key (``dice_mean``: the patient's mean over WT, TC, ET)."""
    if key.endswith("_mean"):
        base = key[: -len("mean")]
        return np.array([np.mean([row[f"{base}{r}"] for r in REGIONS]) for row in per_patient])
    if key.startswith("fp_per_patient_"):
        key = "lesion_fp_" + key[len("fp_per_patient_"):]
    return np.array([row[key] for row in per_patient], dtype=np.float64)


def confidence_intervals(per_patient: list[dict[str, float]], keys: list[str]) -> dict[str, dict[str, float]]:
    """Seeded 95% bootstrap interval over patients of every summary mean (``tumorseg.evaluation.statistics``)."""
    from tumorseg.evaluation.statistics import bootstrap_ci

    digits = {True: 2, False: 4}
    out = {}
    for key in keys:
        low, high = bootstrap_ci(per_patient_values(per_patient, key))
        d = digits["hd95" in key]
        out[key] = {"low": round(low, d), "high": round(high, d)}
    return out
