"""What the false-positive tumour components are, on the validation patients (issue 12, step 3).

For every model (and the ensemble) it reads the validation probabilities that `infer@<model>` stored,
takes the predicted whole-tumour components that the BraTS 2023 lesion-wise matching calls false
positives (no overlap with any 3x-dilated ground-truth lesion), and sorts each into one kind:

* speck: under 10 mm3;
* edge: touching the outer 3 voxels of the brain;
* near tumour: within 10 mm of a ground-truth lesion (outside the matching dilation);
* FLAIR-bright mimic: mean normalised FLAIR inside it at least the median FLAIR of true tumour voxels;
* other.

Raw predictions (before post-processing) and post-processed ones are both counted. Only validation
patients are read: this is for choosing what to change, so the test patients stay untouched.

    python bench/false_positives.py --out bench/results/false_positives.md   (after `dvc repro`)
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from scipy import ndimage

from _output import emit  # noqa: E402  (bench/ is on sys.path when a script runs)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tumorseg import paths  # noqa: E402
from tumorseg.data.labels import region_mask  # noqa: E402
from tumorseg.data.slices import SliceStore  # noqa: E402
from tumorseg.evaluation.metrics import CONNECTIVITY_26, LESION_DILATION, LESION_DILATION_STRUCTURE  # noqa: E402
from tumorseg.evaluation.postprocess import POSTPROCESS_FILE, read_rules  # noqa: E402
from tumorseg.evaluation.predictions import Predictions, to_volume  # noqa: E402
from tumorseg.evaluation.scoring import Truths  # noqa: E402

KINDS = ("speck", "edge", "near tumour", "FLAIR-bright mimic", "other")
FLAIR = 3


def classify(pred_wt: np.ndarray, truth_wt: np.ndarray, brain: np.ndarray, flair: np.ndarray, spacing) -> list[str]:
    """The kind of every false-positive WT component of one patient."""
    voxel = float(np.prod(spacing))
    reach = ndimage.binary_dilation(truth_wt, structure=LESION_DILATION_STRUCTURE, iterations=LESION_DILATION) if truth_wt.any() else truth_wt
    components, n = ndimage.label(pred_wt, structure=CONNECTIVITY_26)
    rim = brain & ~ndimage.binary_erosion(brain, iterations=3)
    dist_mm = ndimage.distance_transform_edt(~truth_wt, sampling=spacing) if truth_wt.any() else np.full(truth_wt.shape, np.inf)
    tumour_flair = float(np.median(flair[truth_wt])) if truth_wt.any() else np.inf
    kinds = []
    for k in range(1, n + 1):
        comp = components == k
        if (comp & reach).any():
            continue  # a true positive
        if comp.sum() * voxel < 10:
            kinds.append("speck")
        elif (comp & rim).any():
            kinds.append("edge")
        elif dist_mm[comp].min() <= 10:
            kinds.append("near tumour")
        elif flair[comp].mean() >= tumour_flair:
            kinds.append("FLAIR-bright mimic")
        else:
            kinds.append("other")
    return kinds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["unet", "resnet_unet", "transunet", "ensemble"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    truths = Truths(REPO / paths.RAW_DIR, REPO / paths.MANIFEST)
    store = SliceStore(REPO / paths.PREPROCESSED_DIR)
    rows = []
    for name in args.models:
        preds = Predictions(REPO / paths.INFERENCE_DIR / name)
        rules = read_rules(REPO / paths.MODELS_DIR / name / POSTPROCESS_FILE)
        cases = preds.cases("val")
        for stage, apply in (("raw", None), ("post-processed", rules.apply)):
            counts: Counter[str] = Counter()
            for case_id in cases:
                info = preds.index["cases"][case_id]
                labels = preds.labels(case_id)
                if apply is not None:
                    labels = apply(labels, preds.spacing(case_id), preds.probability_volume(case_id))
                images = np.asarray(store.images(case_id), dtype=np.float32)  # (Z', 4, Y, X)
                flair = to_volume(np.zeros(images.shape[:1] + images.shape[2:], np.uint8), info["z_start"], info["shape"]).astype(np.float32)
                flair[:, :, info["z_start"]:info["z_start"] + len(images)] = images[:, FLAIR].transpose(2, 1, 0)
                brain = flair > 0
                counts.update(classify(region_mask(labels, "WT"), region_mask(truths(case_id), "WT"), brain, flair,
                                       preds.spacing(case_id)))
            n = len(cases)
            rows.append(f"| {name} | {stage} | {sum(counts.values()) / n:.2f} | " + " | ".join(f"{counts[k] / n:.2f}" for k in KINDS) + " |")
            print(rows[-1], flush=True)
    lines = [f"`python bench/false_positives.py`: false-positive WT components per validation patient ({n} patients), by kind", "",
             "| model | prediction | all | " + " | ".join(KINDS) + " |", "|" + "---|" * (3 + len(KINDS)), *rows]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
