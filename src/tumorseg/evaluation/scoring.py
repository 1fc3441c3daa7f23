"""Patients scored in 3D against the expert masks: shared by postprocess (validation) and evaluate (test).

One function scores both subsets, so the validation figures that choose post-processing and the
champion are computed exactly as the test figures that are reported.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from tumorseg.data.brats import MASK, load_mask, read_manifest
from tumorseg.evaluation.predictions import Predictions
from tumorseg.evaluation.metrics import slice_dice_wt, volume_metrics

Spacing = tuple[float, float, float]
Transform = Callable[[np.ndarray, Spacing, np.ndarray], np.ndarray]  # (labels, spacing, probabilities) -> labels


class Truths:
    """The expert label maps, read from the original NIfTI (so nothing the cropping dropped is excluded)."""

    def __init__(self, raw_dir: Path, manifest_path: Path):
        self.raw_dir = Path(raw_dir)
        self.manifest = read_manifest(manifest_path).set_index("case_id")

    def __call__(self, case_id: str) -> np.ndarray:
        if case_id not in self.manifest.index:
            raise KeyError(f"{case_id}: not in the manifest; rerun `dvc repro` from download")
        return load_mask(self.raw_dir / self.manifest.loc[case_id, f"{MASK}_path"])


def score_patients(preds: Predictions, case_ids: list[str], truths: Truths,
                   transforms: dict[str, Transform | None]) -> dict[str, tuple[list[dict], list[float]]]:
    """For each named transform (None: the raw prediction), per-patient metric rows and slice-level WT Dice."""
    out: dict[str, tuple[list[dict], list[float]]] = {name: ([], []) for name in transforms}
    for case_id in case_ids:
        raw, truth, spacing = preds.labels(case_id), truths(case_id), preds.spacing(case_id)
        probabilities = preds.probability_volume(case_id) if any(transforms.values()) else None
        cohort = preds.index["cases"][case_id].get("cohort", "")
        for name, transform in transforms.items():
            pred = raw if transform is None else transform(raw, spacing, probabilities)
            rows, slices = out[name]
            rows.append({"case_id": case_id, "cohort": cohort, **volume_metrics(pred, truth, spacing)})
            slices += slice_dice_wt(pred, truth)
    return out
