"""The ``evaluate@<model>`` stage: every test patient predicted and scored in 3D.

Each test patient's kept slices are predicted in batches and put back into the original
volume (cropped-away slices are background), then compared with the expert mask read from the
original NIfTI, so nothing the cropping dropped is silently excluded.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from tumorseg.data.brats import MASK, load_mask, read_manifest
from tumorseg.data.slices import SliceStore, read_case_index
from tumorseg.data.split import read_split
from tumorseg.evaluation.inference import predict_slices, to_volume
from tumorseg.evaluation.metrics import slice_dice_wt, summarise, volume_metrics
from tumorseg.fileio import atomic_file, sha256_file
from tumorseg.models.io import WEIGHTS_FILE, load_model
from tumorseg.models.runtime import RuntimeSettings, configure_determinism, pick_amp_dtype, pick_device
from tumorseg.tracking import MlflowSettings, log_test_metrics

log = logging.getLogger(__name__)

PER_PATIENT_FILE = "per_patient.csv"
EXAMPLES_FILE = "examples.npy"
EXAMPLES_INDEX = "examples.json"
N_EXAMPLES = 3


@dataclass(frozen=True)
class EvaluateSettings:
    """The ``evaluate`` block of params.yaml."""

    tta: bool = True  # average the four in-plane mirrorings, as nnU-Net predicts (4x the inference cost)


def test_cases(split: pd.DataFrame) -> list[str]:
    """Patients whose slices are all in the test subset (all of them under a patient split)."""
    per_case = split.groupby("case_id")["split"].agg(lambda s: set(s))
    cases = sorted(c for c, subsets in per_case.items() if subsets == {"test"})
    if not cases:
        raise ValueError("no patient lies wholly in the test subset (split.level: slice?); 3D evaluation needs a patient split")
    return cases


def example_slices(store_dir: Path, split: pd.DataFrame, n: int = N_EXAMPLES) -> list[tuple[str, int]]:
    """The same (case, row) for every model: the largest-tumour slice of the first n test patients."""
    from tumorseg.data.slices import read_slice_index

    index = read_slice_index(Path(store_dir) / "slice_index.parquet")
    index = index[index["case_id"].isin(test_cases(split))]
    index = index.assign(wt=index["n_netc"] + index["n_edema"] + index["n_et"])
    best = index.sort_values(["case_id", "wt", "slice"], ascending=[True, False, True]).drop_duplicates("case_id")
    return [(r.case_id, int(r.row)) for r in best.head(n).itertuples()]


def evaluate_model(name: str, model_dir: Path, store_dir: Path, split_path: Path, manifest_path: Path, raw_dir: Path,
                   metrics_path: Path, out_dir: Path, runtime: RuntimeSettings, mlflow_settings: MlflowSettings,
                   settings: EvaluateSettings = EvaluateSettings()) -> dict:
    device = pick_device(runtime.device)
    configure_determinism(runtime.deterministic, device)
    amp_dtype = pick_amp_dtype(runtime.amp, device)
    model, config = load_model(model_dir, device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    split = read_split(split_path)
    cases = read_case_index(Path(store_dir) / "cases.parquet").set_index("case_id")
    manifest = read_manifest(manifest_path).set_index("case_id")
    store = SliceStore(store_dir)
    rows, slice_dices, seconds = [], [], []
    for case_id in tqdm(test_cases(split), desc=f"evaluate {name}", unit="patient", dynamic_ncols=True):
        case = cases.loc[case_id]
        t0 = time.perf_counter()
        labels = predict_slices(model, store._images(case_id), runtime.eval_batch_size, device, amp_dtype, runtime.channels_last,
                                settings.tta)
        pred = to_volume(labels, int(case["z_start"]), (int(case["nx"]), int(case["ny"]), int(case["nz"])))
        seconds.append(time.perf_counter() - t0)
        truth = load_mask(Path(raw_dir) / manifest.loc[case_id, f"{MASK}_path"])
        spacing = (float(case["spacing_x"]), float(case["spacing_y"]), float(case["spacing_z"]))
        rows.append({"case_id": case_id, "cohort": case["cohort"], **volume_metrics(pred, truth, spacing)})
        slice_dices += slice_dice_wt(pred, truth)
    per_patient = pd.DataFrame(rows)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(out_dir / PER_PATIENT_FILE) as tmp:
        per_patient.to_csv(tmp, index=False, float_format="%.6g")

    examples = example_slices(store_dir, split)
    preds = np.stack([predict_slices(model, np.asarray(store.image(c, r))[None], 1, device, amp_dtype, runtime.channels_last,
                                     settings.tta)[0]
                      for c, r in examples])
    with atomic_file(out_dir / EXAMPLES_FILE) as tmp:
        np.save(tmp, preds)
    with atomic_file(out_dir / EXAMPLES_INDEX) as tmp:
        tmp.write_text(json.dumps([{"case_id": c, "row": r} for c, r in examples], indent=2) + "\n")

    metrics = summarise(rows, slice_dices)
    metrics["seconds_per_volume"] = round(float(np.median(seconds)), 3)
    with atomic_file(metrics_path) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("%s on %d test patients: Dice WT %.3f TC %.3f ET %.3f; HD95 WT %.1f mm; %.2f s/volume", name, len(per_patient),
             metrics["dice_WT"], metrics["dice_TC"], metrics["dice_ET"], metrics["hd95_WT"], metrics["seconds_per_volume"])
    log_test_metrics(mlflow_settings, name, sha256_file(Path(model_dir) / WEIGHTS_FILE),
                     {f"test_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, [out_dir / PER_PATIENT_FILE])
    return metrics


def main(model: str, params_path: str | Path = "params.yaml") -> dict:
    """Stage entry point for ``evaluate@<model>``."""
    from tumorseg import paths
    from tumorseg.config import from_mapping, read_params
    from tumorseg.logs import setup_logging

    setup_logging()
    params = read_params(params_path)
    return evaluate_model(
        model, paths.MODELS_DIR / model, paths.PREPROCESSED_DIR, paths.SPLIT, paths.MANIFEST, paths.RAW_DIR,
        paths.METRICS_DIR / f"{model}.json", paths.EVALUATION_DIR / model,
        from_mapping(RuntimeSettings, params.get("train"), "train", subset=True), from_mapping(MlflowSettings, params.get("mlflow"), "mlflow"),
        from_mapping(EvaluateSettings, params.get("evaluate"), "evaluate"),
    )
