"""Seed study (issue 13, item 3): each model trained and scored with several seeds, as the pipeline does.

For every seed and model it runs, in-process and in a temporary folder, exactly the pipeline's
train -> infer -> postprocess (fitted on the validation patients) -> evaluate (test), on this repository's
data stages (`dvc repro split` first) and params.yaml, with only `train.seed` changed. MLflow is off.
Prints, per model and region, the mean +/- standard deviation over seeds of the test legacy and lesion-wise
Dice, the validation lesion-wise mean Dice the champion is chosen by, and the training wall-clock.

    python bench/seeds.py --seeds 1 2 3 --out bench/results/seeds.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _output import cpu_model, emit  # noqa: E402  (bench/ is on sys.path when a script runs)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tumorseg import paths  # noqa: E402
from tumorseg.config import from_mapping, read_params  # noqa: E402
from tumorseg.evaluation.evaluate import evaluate_model  # noqa: E402
from tumorseg.evaluation.infer import InferSettings, infer_model  # noqa: E402
from tumorseg.evaluation.postprocess import PostprocessSettings, fit_postprocess  # noqa: E402
from tumorseg.models.runtime import RuntimeSettings  # noqa: E402
from tumorseg.tracking import MlflowSettings  # noqa: E402
from tumorseg.training.loop import train_model  # noqa: E402
from tumorseg.training.settings import ModelSettings, TrainSettings  # noqa: E402

KEYS = ("dice_WT", "dice_TC", "dice_ET", "dice_mean", "lesion_dice_WT", "lesion_dice_TC", "lesion_dice_ET", "lesion_dice_mean")


def run_seed(model: str, seed: int, params: dict, work: Path) -> dict:
    train_block = dict(params["train"], seed=seed)
    train = from_mapping(TrainSettings, train_block, "train")
    out = work / f"{model}-{seed}"
    off = MlflowSettings(enabled=False)
    t0 = time.perf_counter()
    train_model(model, train, from_mapping(ModelSettings, params["models"][model], f"models.{model}"), REPO / paths.PREPROCESSED_DIR,
                REPO / paths.SPLIT, out / "model", out / "ckpt", off, preprocess_config=params.get("preprocess"))
    train_s = time.perf_counter() - t0
    infer_model(model, out / "model", REPO / paths.PREPROCESSED_DIR, REPO / paths.SPLIT, out / "inference", out / "seconds.json",
                from_mapping(RuntimeSettings, train_block, "train", subset=True),
                from_mapping(InferSettings, params.get("infer"), "infer").tta)
    fitted = fit_postprocess(model, out / "inference", REPO / paths.SPLIT, REPO / paths.MANIFEST, REPO / paths.RAW_DIR,
                             out / "postprocess.json", from_mapping(PostprocessSettings, params.get("postprocess"), "postprocess"))
    metrics = evaluate_model(model, out / "inference", out / "postprocess.json", REPO / paths.PREPROCESSED_DIR, REPO / paths.SPLIT,
                             REPO / paths.MANIFEST, REPO / paths.RAW_DIR, out / "metrics.json", out / "evaluation", None, off)
    return {"train_s": train_s, "val_lesion_dice_mean": fitted["validation"]["postprocessed"]["lesion_dice_mean"], **{k: metrics[k] for k in KEYS}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--models", nargs="+", default=["unet", "resnet_unet", "transunet"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    params = read_params(REPO / paths.PARAMS)
    results: dict[str, list[dict]] = {m: [] for m in args.models}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for model in args.models:
                r = run_seed(model, seed, params, Path(tmp))
                results[model].append(r)
                print(f"{model} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)

    def ms(values: list[float]) -> str:
        return f"{statistics.mean(values):.3f} +/- {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"

    header = "| model | " + " | ".join(("val lesion Dice mean", *KEYS, "training s")) + " |"
    rows = [f"| {m} | " + " | ".join(ms([r[k] for r in rs]) for k in ("val_lesion_dice_mean", *KEYS, "train_s")) + " |"
            for m, rs in results.items()]
    lines = [f"`python bench/seeds.py --seeds {' '.join(map(str, args.seeds))}` on {cpu_model()}: mean +/- standard deviation over "
             f"{len(args.seeds)} seeds (train.seed; everything else as params.yaml), test figures post-processed, 12 test patients",
             "", header, "|" + "---|" * (len(KEYS) + 3), *rows]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
