"""Which test-time mirrorings to average, decided on the validation patients (issue 13, item 6).

Training flips left-right only (`train.augment.flip`), while nnU-Net-style TTA also mirrors up-down, an
orientation the models never saw. For each trained model this predicts the validation patients with no
TTA, with the left-right mirroring only, and with all four in-plane mirrorings, applies the model's fitted
post-processing, and reports mean validation lesion-wise and legacy Dice and the prediction time. Test
patients are not read.

    python bench/tta_choice.py --out bench/results/tta_choice.md   (after `dvc repro`)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from _output import cpu_model, emit  # noqa: E402  (bench/ is on sys.path when a script runs)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tumorseg import paths  # noqa: E402
from tumorseg.data.slices import SliceStore, read_case_index  # noqa: E402
from tumorseg.data.split import read_split  # noqa: E402
from tumorseg.evaluation.inference import MIRRORINGS, predict_probabilities  # noqa: E402
from tumorseg.evaluation.metrics import summarise  # noqa: E402
from tumorseg.evaluation.postprocess import POSTPROCESS_FILE, read_rules  # noqa: E402
from tumorseg.evaluation.predictions import patients, probability_volume, quantize, quantized_to_labels, to_volume  # noqa: E402
from tumorseg.evaluation.scoring import Truths  # noqa: E402
from tumorseg.evaluation.metrics import volume_metrics  # noqa: E402
from tumorseg.models.io import context_slices, load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["unet", "resnet_unet", "transunet"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    split = read_split(REPO / paths.SPLIT)
    cases = patients(split, "val")
    index = read_case_index(REPO / paths.CASE_INDEX).set_index("case_id")
    store = SliceStore(REPO / paths.PREPROCESSED_DIR)
    truths = Truths(REPO / paths.RAW_DIR, REPO / paths.MANIFEST)
    rows = []
    for name in args.models:
        model, config = load_model(REPO / paths.MODELS_DIR / name)
        rules = read_rules(REPO / paths.MODELS_DIR / name / POSTPROCESS_FILE)
        for tta in ("none", "lr", "all"):
            scored, seconds = [], 0.0
            for case_id in cases:
                case = index.loc[case_id]
                t0 = time.perf_counter()
                probs = predict_probabilities(model, store.images(case_id), 32, "cpu", None, True, tta, context_slices(config))
                seconds += time.perf_counter() - t0
                shape = (int(case["nx"]), int(case["ny"]), int(case["nz"]))
                spacing = (float(case["spacing_x"]), float(case["spacing_y"]), float(case["spacing_z"]))
                q = quantize(probs)  # (Z', 3, Y, X)
                labels = to_volume(quantized_to_labels(q), int(case["z_start"]), shape)
                post = rules.apply(labels, spacing, probability_volume(np.moveaxis(q, 1, 0), int(case["z_start"]), shape))
                scored.append(volume_metrics(post, truths(case_id), spacing))
            s = summarise(scored, [])
            rows.append(f"| {name} | {tta} ({len(MIRRORINGS[tta])}) | {s['lesion_dice_WT']:.3f} | {s['lesion_dice_TC']:.3f} | "
                        f"{s['lesion_dice_ET']:.3f} | **{s['lesion_dice_mean']:.3f}** | {s['dice_mean']:.3f} | {seconds / len(cases):.2f} |")
            print(rows[-1], flush=True)
    lines = [f"`python bench/tta_choice.py` on {cpu_model()}: {len(cases)} validation patients, each model's fitted "
             "post-processing applied", "",
             "| model | mirrorings averaged | val lesion Dice WT | TC | ET | mean | val legacy Dice mean | s / patient |",
             "|---|---|---|---|---|---|---|---|", *rows]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
