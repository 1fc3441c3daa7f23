"""Seed study (issue 13, item 3), and validation-only comparisons of one setting against another.

For every seed and model it runs, in-process and in a temporary folder, exactly the pipeline's
train -> infer -> postprocess (fitted on the validation patients) -> evaluate (test), on this repository's
data stages (`dvc repro split` first) and params.yaml, with `train.seed` changed (and any `--set` override).
MLflow is off. Prints, per model, the mean +/- standard deviation over seeds of the test legacy and
lesion-wise Dice, the validation lesion-wise mean Dice the champion is chosen by, and the training wall-clock.

With `--validation-only` the test patients are neither predicted nor scored: what decides a setting
(issue 13: the test set is touched once) is the validation figures, which it prints per seed and on average:
post-processed lesion-wise Dice per region, legacy mean Dice, and false-positive WT lesions per patient after
and before post-processing.

    python bench/seeds.py --seeds 1 2 3 --out bench/results/seeds.md
    python bench/seeds.py --validation-only --seeds 1 2 3 --set train.context_slices=1 --out bench/results/context_1.md
A `--set preprocess.<key>=...` builds its own slice store from data/raw with the pipeline's preprocess code, in the
temporary folder, and trains, predicts and scores on it (the split's patients and slices are the same).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from _output import cpu_model, emit  # noqa: E402  (bench/ is on sys.path when a script runs)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tumorseg import paths  # noqa: E402
from tumorseg.config import from_mapping, read_params  # noqa: E402
from tumorseg.data.preprocess import PreprocessSettings, run_preprocess  # noqa: E402
from tumorseg.evaluation.evaluate import evaluate_model  # noqa: E402
from tumorseg.evaluation.infer import SUBSETS, InferSettings, infer_model  # noqa: E402
from tumorseg.evaluation.postprocess import PostprocessSettings, fit_postprocess  # noqa: E402
from tumorseg.models.runtime import RuntimeSettings, pin_cpu_kernels  # noqa: E402
from tumorseg.tracking import MlflowSettings  # noqa: E402
from tumorseg.training.loop import train_model  # noqa: E402
from tumorseg.training.settings import ModelSettings, TrainSettings  # noqa: E402

TEST_KEYS = ("dice_WT", "dice_TC", "dice_ET", "dice_mean", "lesion_dice_WT", "lesion_dice_TC", "lesion_dice_ET", "lesion_dice_mean",
             "fp_per_patient_WT")
MODELS = ["unet", "resnet_unet", "transunet"]
VAL_KEYS = ("val_lesion_dice_WT", "val_lesion_dice_TC", "val_lesion_dice_ET", "val_lesion_dice_mean", "val_dice_mean",
            "val_fp_WT", "val_fp_WT_raw")


def override(params: dict, assignments: list[str]) -> dict:
    """params with ``a.b.c=value`` assignments applied (value parsed as YAML), as `dvc exp run -S` would."""
    params = copy.deepcopy(params)
    for assignment in assignments:
        key, _, value = assignment.partition("=")
        *parents, last = key.split(".")
        block = params
        for part in parents:
            block = block[part]
        if last not in block:
            raise SystemExit(f"--set {assignment}: params.yaml has no key {key}")
        block[last] = yaml.safe_load(value)
    return params


def run_seed(model: str, seed: int, params: dict, work: Path, validation_only: bool, store: Path) -> dict:
    train_block = dict(params["train"], seed=seed)
    train = from_mapping(TrainSettings, train_block, "train")
    out = work / f"{model}-{seed}"
    off = MlflowSettings(enabled=False)
    t0 = time.perf_counter()
    train_model(model, train, from_mapping(ModelSettings, params["models"][model], f"models.{model}"), store,
                REPO / paths.SPLIT, out / "model", out / "ckpt", off, preprocess_config=params.get("preprocess"))
    train_s = time.perf_counter() - t0
    infer_model(model, out / "model", store, REPO / paths.SPLIT, out / "inference", out / "seconds.json",
                from_mapping(RuntimeSettings, train_block, "train", subset=True),
                from_mapping(InferSettings, params.get("infer"), "infer").tta, ("val",) if validation_only else SUBSETS)
    fitted = fit_postprocess(model, out / "inference", REPO / paths.SPLIT, REPO / paths.MANIFEST, REPO / paths.RAW_DIR,
                             out / "postprocess.json", from_mapping(PostprocessSettings, params.get("postprocess"), "postprocess"))
    post, raw = fitted["validation"]["postprocessed"], fitted["validation"]["raw"]
    result = {"train_s": train_s, "val_lesion_dice_WT": post["lesion_dice_WT"], "val_lesion_dice_TC": post["lesion_dice_TC"],
              "val_lesion_dice_ET": post["lesion_dice_ET"], "val_lesion_dice_mean": post["lesion_dice_mean"],
              "val_dice_mean": post["dice_mean"], "val_fp_WT": post["fp_per_patient_WT"], "val_fp_WT_raw": raw["fp_per_patient_WT"]}
    if not validation_only:
        metrics = evaluate_model(model, out / "inference", out / "postprocess.json", store, REPO / paths.SPLIT,
                                 REPO / paths.MANIFEST, REPO / paths.RAW_DIR, out / "metrics.json", out / "evaluation", None, off)
        result.update({k: metrics[k] for k in TEST_KEYS})
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params.yaml value, e.g. train.context_slices=1 (repeatable)")
    ap.add_argument("--validation-only", action="store_true", help="predict and score the validation patients only")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    params = override(read_params(REPO / paths.PARAMS), args.assignments)
    runtime = from_mapping(RuntimeSettings, params.get("train"), "train", subset=True)
    pin_cpu_kernels(runtime.cpu_kernels, runtime.num_threads)  # before a --set preprocess.* store runs torch here
    keys = VAL_KEYS if args.validation_only else ("val_lesion_dice_mean", *TEST_KEYS)
    results: dict[str, list[dict]] = {m: [] for m in args.models}
    with tempfile.TemporaryDirectory() as tmp:
        store = REPO / paths.PREPROCESSED_DIR
        if params.get("preprocess") != read_params(REPO / paths.PARAMS).get("preprocess"):
            store = Path(tmp) / "preprocessed"
            run_preprocess(from_mapping(PreprocessSettings, params.get("preprocess"), "preprocess"), REPO / paths.MANIFEST,
                           REPO / paths.RAW_DIR, store)
        for seed in args.seeds:
            for model in args.models:
                r = run_seed(model, seed, params, Path(tmp), args.validation_only, store)
                results[model].append(r)
                print(f"{model} seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items()), flush=True)

    # four decimals: a criterion threshold such as +0.01 must be decidable from the printed means
    def ms(values: list[float]) -> str:
        return f"{statistics.mean(values):.4f} +/- {statistics.stdev(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}"

    command = " ".join(["python bench/seeds.py", *(["--validation-only"] if args.validation_only else []),
                        "--seeds", *map(str, args.seeds), *(["--models", *args.models] if args.models != MODELS else []),
                        *(f"--set {a}" for a in args.assignments)])
    what = ("validation figures only (12 validation patients, post-processing fitted on them; the test patients untouched)"
            if args.validation_only else "test figures post-processed, 12 test patients")
    header = "| model | " + " | ".join((*keys, "training s")) + " |"
    rows = [f"| {m} | " + " | ".join(ms([r[k] for r in rs]) for k in (*keys, "train_s")) + " |" for m, rs in results.items()]
    lines = [f"`{command}` on {cpu_model()}: mean +/- standard deviation over {len(args.seeds)} seeds (train.seed; everything "
             f"else as params.yaml{' with ' + ', '.join(args.assignments) if args.assignments else ''}), {what}",
             "", header, "|" + "---|" * (len(keys) + 2), *rows]
    # per seed too: a mean over three trainings hides whether a target holds for each of them
    lines += ["", "Per seed:", "", "| model | seed | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 2)]
    lines += [f"| {m} | {seed} | " + " | ".join(f"{r[k]:.4f}" for k in keys) + " |"
              for m, rs in results.items() for seed, r in zip(args.seeds, rs)]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
