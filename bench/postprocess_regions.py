"""Does a fitted post-processing lower any validation patient's legacy Dice in a region other than the one its rule
was fitted for?

`postprocess@<model>` keeps a threshold only if no validation patient's legacy Dice *of that step's region* falls
(by more than `postprocess.patient_tolerance`); this script counts any fall, however small.
A WT rule that drops a component also drops the tumour core and enhancing tumour inside it, which that check does not
see. This script applies each model's fitted rules (models/<model>/postprocess.json) to the validation patients'
stored predictions and lists, per region, every patient whose legacy Dice falls: if none does, checking every region
while fitting would have chosen the same thresholds. The test patients are not read.

    python bench/postprocess_regions.py --out bench/results/postprocess_regions.md      (after `dvc repro`)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _output import emit  # noqa: E402  (bench/ is on sys.path when a script runs)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tumorseg import paths  # noqa: E402
from tumorseg.data.labels import REGION_NAMES  # noqa: E402
from tumorseg.data.split import read_split  # noqa: E402
from tumorseg.evaluation.postprocess import POSTPROCESS_FILE, read_rules  # noqa: E402
from tumorseg.evaluation.predictions import Predictions, patients  # noqa: E402
from tumorseg.evaluation.scoring import Truths, score_patients  # noqa: E402

ROWS = ("unet", "resnet_unet", "transunet", "ensemble")


def worse_patients(model: str, cases: list[str], truths: Truths) -> dict[str, list[str]]:
    """Per region, '<case> <raw> -> <post-processed>' for every validation patient whose legacy Dice falls (scored as
    postprocess@<model> and evaluate score, tumorseg.evaluation.scoring)."""
    preds = Predictions(REPO / paths.INFERENCE_DIR / model)
    rules = read_rules(REPO / paths.MODELS_DIR / model / POSTPROCESS_FILE)
    scored = score_patients(preds, cases, truths, {"raw": None, "post": rules.apply})
    worse: dict[str, list[str]] = {r: [] for r in REGION_NAMES}
    for raw, post in zip(scored["raw"][0], scored["post"][0]):
        for region in REGION_NAMES:
            before, after = raw[f"dice_{region}"], post[f"dice_{region}"]
            if after < before - 1e-9:
                worse[region].append(f"{raw['case_id']} {before:.3f} -> {after:.3f}")
    return worse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    cases = patients(read_split(REPO / paths.SPLIT), "val")
    truths = Truths(REPO / paths.RAW_DIR, REPO / paths.MANIFEST)
    lines = [f"`python bench/postprocess_regions.py`: validation patients ({len(cases)}) whose legacy Dice of a region "
             "falls under the model's fitted post-processing (models/<model>/postprocess.json)", "",
             "| model | " + " | ".join(f"{r}: patients worse" for r in REGION_NAMES) + " |",
             "|---|" + "---|" * len(REGION_NAMES)]
    for model in ROWS:
        worse = worse_patients(model, cases, truths)
        lines.append(f"| {model} | " + " | ".join("; ".join(worse[r]) or "none" for r in REGION_NAMES) + " |")
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
