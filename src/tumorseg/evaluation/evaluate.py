"""The ``evaluate@<model>`` stage: the test patients scored in 3D, with and without post-processing.

It reads the model's probabilities from ``infer@<model>`` (or the ensemble's) and the rules that
``postprocess@<model>`` fitted on the validation patients; the test patients only report. Labels
are put back into the original volume (cropped-away slices are background) and compared with the
expert mask read from the original NIfTI, so nothing the cropping dropped is silently excluded.
Scored per region: legacy Dice / HD95 and BraTS 2023 lesion-wise Dice / HD95 with lesion counts.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from tumorseg.data.split import read_split
from tumorseg.evaluation.metrics import summarise
from tumorseg.evaluation.postprocess import POSTPROCESS_FILE, read_rules
from tumorseg.evaluation.predictions import Predictions, read_seconds
from tumorseg.evaluation.scoring import Truths, score_patients
from tumorseg.fileio import atomic_dir, atomic_file
from tumorseg.tracking import MlflowSettings, flatten, log_test_metrics

log = logging.getLogger(__name__)

PER_PATIENT_FILE = "per_patient.csv"
EXAMPLES_FILE = "examples.npy"
EXAMPLES_INDEX = "examples.json"
N_EXAMPLES = 3
RAW_KEY = "without_postprocess"  # metrics/<model>.json: the same figures before post-processing


def test_cases(split: pd.DataFrame) -> list[str]:
    """Patients whose slices are all in the test subset (all of them under a patient split)."""
    from tumorseg.evaluation.predictions import patients

    return patients(split, "test")


def example_slices(store_dir: Path, split: pd.DataFrame, n: int = N_EXAMPLES) -> list[tuple[str, int]]:
    """The same (case, row) for every model: the largest-tumour slice of the first n test patients."""
    from tumorseg.data.slices import read_slice_index

    index = read_slice_index(Path(store_dir) / "slice_index.parquet")
    index = index[index["case_id"].isin(test_cases(split))]
    index = index.assign(wt=index["n_netc"] + index["n_edema"] + index["n_et"])
    best = index.sort_values(["case_id", "wt", "slice"], ascending=[True, False, True]).drop_duplicates("case_id")
    return [(r.case_id, int(r.row)) for r in best.head(n).itertuples()]


def evaluate_model(name: str, predictions_dir: Path, postprocess_path: Path, store_dir: Path, split_path: Path,
                   manifest_path: Path, raw_dir: Path, metrics_path: Path, out_dir: Path, seconds_path: Path | None,
                   mlflow_settings: MlflowSettings) -> dict:
    preds = Predictions(predictions_dir)
    rules = read_rules(postprocess_path)
    split = read_split(split_path)
    cases = test_cases(split)
    missing = sorted(set(cases) - set(preds.cases("test")))
    if missing:
        raise ValueError(f"{predictions_dir}: no predictions for test patients {missing}; rerun `dvc repro infer@{name}`")
    scored = score_patients(preds, cases, Truths(raw_dir, manifest_path), {"raw": None, "post": rules.apply})
    (raw_rows, raw_slices), (rows, slices) = scored["raw"], scored["post"]

    examples = example_slices(store_dir, split)
    example_labels = []
    for case_id, row in examples:
        z = preds.index["cases"][case_id]["z_start"] + row
        post = rules.apply(preds.labels(case_id), preds.spacing(case_id), preds.probability_volume(case_id))
        example_labels.append(post[:, :, z].T)  # (Y, X) as stored
    with atomic_dir(Path(out_dir)) as tmp:
        table = pd.DataFrame(rows).merge(pd.DataFrame(raw_rows), on=["case_id", "cohort"], suffixes=("", "_raw"))
        table.to_csv(tmp / PER_PATIENT_FILE, index=False, float_format="%.6g")
        np.save(tmp / EXAMPLES_FILE, np.stack(example_labels))
        (tmp / EXAMPLES_INDEX).write_text(json.dumps([{"case_id": c, "row": r} for c, r in examples], indent=2) + "\n")

    metrics = summarise(rows, slices)
    metrics[RAW_KEY] = summarise(raw_rows, raw_slices)
    metrics["seconds_per_volume"] = read_seconds(seconds_path) if seconds_path and Path(seconds_path).is_file() else None
    with atomic_file(metrics_path) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("%s on %d test patients: Dice WT %.3f TC %.3f ET %.3f, lesion-wise %.3f %.3f %.3f, %.2f false WT lesions per patient "
             "(without post-processing: lesion-wise WT %.3f, %.2f)", name, len(rows), metrics["dice_WT"], metrics["dice_TC"],
             metrics["dice_ET"], metrics["lesion_dice_WT"], metrics["lesion_dice_TC"], metrics["lesion_dice_ET"],
             metrics["fp_per_patient_WT"], metrics[RAW_KEY]["lesion_dice_WT"], metrics[RAW_KEY]["fp_per_patient_WT"])
    if preds.index["members"] == [name]:  # a trained model: its test figures join its training run
        log_test_metrics(mlflow_settings, name, preds.index["weights_sha256"][name],
                         {f"test_{k}": v for k, v in flatten("", metrics, {}).items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool)}, [Path(out_dir) / PER_PATIENT_FILE])
    return metrics


def main(model: str, params_path: str | Path = "params.yaml") -> dict:
    """Stage entry point for ``evaluate@<model>`` (``model`` may be ``ensemble``)."""
    from tumorseg import paths
    from tumorseg.config import from_mapping, read_params
    from tumorseg.logs import setup_logging

    setup_logging()
    params = read_params(params_path)
    return evaluate_model(
        model, paths.INFERENCE_DIR / model, paths.MODELS_DIR / model / POSTPROCESS_FILE, paths.PREPROCESSED_DIR, paths.SPLIT,
        paths.MANIFEST, paths.RAW_DIR, paths.METRICS_DIR / f"{model}.json", paths.EVALUATION_DIR / model,
        paths.INFERENCE_DIR / f"{model}.seconds.json", from_mapping(MlflowSettings, params.get("mlflow"), "mlflow"),
    )
