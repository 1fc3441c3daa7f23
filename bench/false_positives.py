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

A second table asks whether a confidence rule other than the fitted one (a component's mean WT probability) could
tell true from false components better: for the raw components the size rule keeps, the AUC of each statistic of
the component's WT probability (mean, maximum, 0.9 quantile, share of voxels at 0.95 or more), i.e. the chance that a
true component scores above a false one (ties half). A rule that "spares a component with a confident core" needs
the last three to separate better than the mean.

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


def matching(pred_wt: np.ndarray, truth_wt: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """The predicted WT components (labels, count) and the dilated truth that makes one a true positive (BraTS 2023)."""
    reach = ndimage.binary_dilation(truth_wt, structure=LESION_DILATION_STRUCTURE, iterations=LESION_DILATION) if truth_wt.any() else truth_wt
    components, n = ndimage.label(pred_wt, structure=CONNECTIVITY_26)
    return components, n, reach


def classify(matched: tuple[np.ndarray, int, np.ndarray], truth_wt: np.ndarray, brain: np.ndarray, flair: np.ndarray,
             spacing) -> list[str]:
    """The kind of every false-positive WT component of one patient (``matched``: its ``matching``)."""
    voxel = float(np.prod(spacing))
    components, n, reach = matched
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


STATISTICS = {"mean": np.mean, "max": np.max, "q90": lambda p: np.quantile(p, 0.9), "share >= 0.95": lambda p: np.mean(p >= 0.95)}


def component_confidence(matched: tuple[np.ndarray, int, np.ndarray], wt_probability: np.ndarray, spacing, min_mm3: float):
    """(is true positive, {statistic: value}) of every predicted WT component of at least ``min_mm3``."""
    components, n, reach = matched
    out = []
    for k in range(1, n + 1):
        comp = components == k
        if comp.sum() * float(np.prod(spacing)) < min_mm3:
            continue
        p = wt_probability[comp].astype(np.float64) / 255
        out.append((bool((comp & reach).any()), {name: float(f(p)) for name, f in STATISTICS.items()}))
    return out


def auc(positives: list[float], negatives: list[float]) -> float:
    """P(a positive scores above a negative), ties counted half (the Mann-Whitney U over the pair count)."""
    if not positives or not negatives:
        return float("nan")
    pos, neg = np.asarray(positives)[:, None], np.asarray(negatives)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["unet", "resnet_unet", "transunet", "ensemble"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    truths = Truths(REPO / paths.RAW_DIR, REPO / paths.MANIFEST)
    store = SliceStore(REPO / paths.PREPROCESSED_DIR)
    rows, separation = [], []
    for name in args.models:
        preds = Predictions(REPO / paths.INFERENCE_DIR / name)
        rules = read_rules(REPO / paths.MODELS_DIR / name / POSTPROCESS_FILE)
        cases = preds.cases("val")
        raw_matching = {c: matching(region_mask(preds.labels(c), "WT"), region_mask(truths(c), "WT")) for c in cases}
        scored = [component_confidence(raw_matching[c], preds.probability_volume(c)[0], preds.spacing(c),
                                       rules.min_component_mm3.get("WT", 0.0)) for c in cases]
        comps = [comp for patient in scored for comp in patient]
        n_tp = sum(tp for tp, _ in comps)
        separation.append(f"| {name} | {rules.min_component_mm3.get('WT', 0.0):g} | {n_tp} | {len(comps) - n_tp} | " + " | ".join(
            f"{auc([v[k] for tp, v in comps if tp], [v[k] for tp, v in comps if not tp]):.2f}" for k in STATISTICS) + " |")
        print(separation[-1], flush=True)
        for stage, apply in (("raw", None), ("post-processed", rules.apply)):
            counts: Counter[str] = Counter()
            for case_id in cases:
                info = preds.index["cases"][case_id]
                truth_wt = region_mask(truths(case_id), "WT")
                if apply is None:
                    matched = raw_matching[case_id]
                else:
                    labels = apply(preds.labels(case_id), preds.spacing(case_id), preds.probability_volume(case_id))
                    matched = matching(region_mask(labels, "WT"), truth_wt)
                images = np.asarray(store.images(case_id), dtype=np.float32)  # (Z', 4, Y, X)
                flair = to_volume(np.zeros(images.shape[:1] + images.shape[2:], np.uint8), info["z_start"], info["shape"]).astype(np.float32)
                flair[:, :, info["z_start"]:info["z_start"] + len(images)] = images[:, FLAIR].transpose(2, 1, 0)
                brain = flair > 0
                counts.update(classify(matched, truth_wt, brain, flair, preds.spacing(case_id)))
            n = len(cases)
            rows.append(f"| {name} | {stage} | {sum(counts.values()) / n:.2f} | " + " | ".join(f"{counts[k] / n:.2f}" for k in KINDS) + " |")
            print(rows[-1], flush=True)
    lines = [f"`python bench/false_positives.py`: false-positive WT components per validation patient ({n} patients), by kind", "",
             "| model | prediction | all | " + " | ".join(KINDS) + " |", "|" + "---|" * (3 + len(KINDS)), *rows, "",
             "How well each statistic of a raw WT component's probability separates true from false components (AUC; 1: "
             "perfectly, 0.5: not at all), components at least as large as the fitted size rule keeps", "",
             "| model | size rule (mm3) | true components | false components | " + " | ".join(STATISTICS) + " |",
             "|" + "---|" * (4 + len(STATISTICS)), *separation]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
