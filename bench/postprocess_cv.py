"""Does a post-processing rule family carry over to patients it was not fitted on? Leave-one-out on validation.

`postprocess@<model>` fits its thresholds on the validation patients and reports the validation figures it was fitted
on: those are optimistic by construction (0, "no rule", is always a candidate, so a richer family can only look
better there). To decide whether a new family of rules should join the defaults, this script fits each family on all
validation patients but one and scores the one left out, for every validation patient in turn (leave-one-patient-out),
from the probabilities `infer@<model>` stored: held-out lesion-wise and legacy Dice per region and false-positive WT
lesions per patient, per model (and the ensemble), family against family on the same folds. The test patients are
not read.

    python bench/postprocess_cv.py --family core postprocess.wt_core_mm3=[0,1,5,10,25,50,100] \\
        --out bench/results/core_rule_cv.md      (after `dvc repro`)

The baseline family is params.yaml's `postprocess` block as it is; `--family NAME KEY=VALUE...` adds one that
overrides it (several `--family` allowed).
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml

from _output import emit  # noqa: E402  (bench/ is on sys.path when a script runs)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tumorseg import paths  # noqa: E402
from tumorseg.config import from_mapping, read_params  # noqa: E402
from tumorseg.data.labels import REGION_NAMES  # noqa: E402
from tumorseg.data.split import read_split  # noqa: E402
from tumorseg.evaluation.metrics import volume_metrics  # noqa: E402
from tumorseg.evaluation.postprocess import PostprocessRules, PostprocessSettings, any_probability, fit_rules  # noqa: E402
from tumorseg.evaluation.predictions import Predictions, patients  # noqa: E402
from tumorseg.evaluation.scoring import Truths  # noqa: E402

KEYS = [f"lesion_dice_{r}" for r in REGION_NAMES] + ["lesion_dice_mean"] + [f"dice_{r}" for r in REGION_NAMES] + ["dice_mean", "fp_WT"]


def family_settings(block: dict, overrides: list[str]) -> PostprocessSettings:
    block = copy.deepcopy(block)
    for item in overrides:
        key, _, value = item.partition("=")
        if not key.startswith("postprocess."):
            sys.exit(f"{item}: only postprocess.* settings make a post-processing family")
        block[key.removeprefix("postprocess.")] = yaml.safe_load(value)
    return from_mapping(PostprocessSettings, block, "postprocess")


def score(pred: np.ndarray, truth: np.ndarray, spacing) -> dict[str, float]:
    """A held-out patient's lesion-wise and legacy Dice per region and false WT lesions, as evaluate scores them (its
    HD95s too, unused here: small next to the fits at this size)."""
    row = volume_metrics(pred, truth, spacing)
    out = {k: float(row[k]) for k in KEYS if k in row}
    out["fp_WT"] = float(row["lesion_fp_WT"])
    out["lesion_dice_mean"] = float(np.mean([out[f"lesion_dice_{r}"] for r in REGION_NAMES]))
    out["dice_mean"] = float(np.mean([out[f"dice_{r}"] for r in REGION_NAMES]))
    return out


_CASES: list[tuple] = []  # the fold workers' validation cases (inherited by fork, not pickled per task)


def _fold(i: int, settings: PostprocessSettings) -> tuple[dict[str, float], PostprocessRules]:
    pred, truth, spacing, probs = _CASES[i]
    rules, _ = fit_rules(_CASES[:i] + _CASES[i + 1:], settings)
    return score(rules.apply(pred, spacing, probs), truth, spacing), rules


def held_out(cases: list[tuple], settings: PostprocessSettings, workers: int) -> tuple[list[dict[str, float]], list[PostprocessRules]]:
    """Per validation patient: its scores under the rules fitted on the others, and those rules."""
    _CASES[:] = cases
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        done = list(pool.map(_fold, range(len(cases)), [settings] * len(cases)))
    return [d[0] for d in done], [d[1] for d in done]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["unet", "resnet_unet", "transunet", "ensemble"])
    ap.add_argument("--family", nargs="+", action="append", default=[], metavar="NAME KEY=VALUE",
                    help="a rule family: its name, then postprocess.* overrides of params.yaml")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="folds fitted at once")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    block = read_params(REPO / "params.yaml").get("postprocess") or {}
    families = {"params.yaml": family_settings(block, [])}
    families.update({f[0]: family_settings(block, f[1:]) for f in args.family})
    truths = Truths(REPO / paths.RAW_DIR, REPO / paths.MANIFEST)
    val = patients(read_split(REPO / paths.SPLIT), "val")
    rows, diffs, chosen = [], [], []
    for name in args.models:
        preds = Predictions(REPO / paths.INFERENCE_DIR / name)
        need_probs = any(any_probability(s) for s in families.values())
        cases = [(preds.labels(c), truths(c), preds.spacing(c), preds.probability_volume(c) if need_probs else None) for c in val]
        raw = [score(p, t, s) for p, t, s, _ in cases]
        rows.append(f"| {name} | none | " + " | ".join(f"{np.mean([r[k] for r in raw]):.3f}" for k in KEYS) + " |")
        per_family = {}
        for fam, settings in families.items():
            scores, fitted = held_out(cases, settings, args.workers)
            per_family[fam] = scores
            rows.append(f"| {name} | {fam} | " + " | ".join(f"{np.mean([r[k] for r in scores]):.3f}" for k in KEYS) + " |")
            print(rows[-1], flush=True)
            if fam != "params.yaml" and len(settings.wt_core_mm3) > 1:  # a core-rule family: which thresholds the folds chose
                cores = sorted({r.min_wt_core_mm3 for r in fitted})
                chosen.append(f"| {name} | {fam} | {', '.join(f'{c:g}' for c in cores)} | "
                              f"{sum(r.min_wt_core_mm3 > 0 for r in fitted)} of {len(fitted)} |")
        base = per_family["params.yaml"]
        for fam, scores in per_family.items():
            if fam == "params.yaml":
                continue
            d = {k: np.array([s[k] - b[k] for s, b in zip(scores, base)]) for k in KEYS}
            diffs.append(f"| {name} | {fam} | " + " | ".join(f"{d[k].mean():+.3f}" for k in KEYS) + " | "
                         f"{int((d['lesion_dice_mean'] > 1e-9).sum())} / {int((d['lesion_dice_mean'] < -1e-9).sum())} |")
    header = "| model | rules | " + " | ".join(KEYS) + " |"
    lines = [f"`python bench/postprocess_cv.py` ({' '.join(sys.argv[1:])}): post-processing fitted on {len(val) - 1} validation "
             f"patients, scored on the one left out, for each of the {len(val)} in turn (means over the held-out patients; "
             "'none': no post-processing; fp_WT: false-positive WT lesions per patient)", "",
             header, "|" + "---|" * (2 + len(KEYS)), *rows]
    if diffs:
        lines += ["", "Each family minus params.yaml's, same folds (mean of the per-patient differences; last column: patients "
                  "whose held-out lesion-wise mean Dice rose / fell)", "",
                  header + " better / worse |", "|" + "---|" * (3 + len(KEYS)), *diffs]
    if chosen:
        lines += ["", "Core thresholds the folds fitted (min_wt_core_mm3)", "", "| model | rules | values | folds with a core rule |",
                  "|---|---|---|---|", *chosen]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
