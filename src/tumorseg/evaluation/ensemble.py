"""The ``ensemble`` stage: the mean of the trained models' probabilities, scored like a fourth model.

Post-processed and evaluated exactly as each model is (``postprocess@ensemble``, ``evaluate@ensemble``);
it is not an MLflow model and never the champion. Reads only the inference folders, so no network runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tumorseg.evaluation.predictions import Predictions, dequantize, quantize, read_seconds, write_index, write_seconds
from tumorseg.fileio import atomic_dir

ENSEMBLE = "ensemble"


def ensemble_predictions(members: list[str], inference_dir: Path, out_dir: Path, seconds_path: Path) -> dict:
    """The mean of the members' probabilities, case by case: a fourth 'model' for postprocess and evaluate."""
    preds = [Predictions(Path(inference_dir) / m) for m in members]
    first = preds[0].index
    for m, p in zip(members, preds):
        if p.index["cases"] != first["cases"]:
            raise ValueError(f"{Path(inference_dir) / m}: its patients or geometry differ from {members[0]}'s; "
                             f"rerun `dvc repro infer@{m}`")
    index = {"model": ENSEMBLE, "members": members,
             "weights_sha256": {m: p.index["weights_sha256"][m] for m, p in zip(members, preds)},
             "tta": sorted({str(p.index["tta"]) for p in preds}), "cases": first["cases"]}
    with atomic_dir(Path(out_dir)) as tmp:
        for case_id in tqdm(sorted(first["cases"]), desc="ensemble", unit="patient", dynamic_ncols=True):
            mean = sum(dequantize(p.probabilities(case_id)) for p in preds) / len(preds)
            np.save(tmp / f"{case_id}.npy", quantize(mean))
        write_index(tmp, index)
    write_seconds(seconds_path, round(sum(read_seconds(Path(inference_dir) / f"{m}.seconds.json") for m in members), 3))
    return index


def main(params_path: str | Path = "params.yaml") -> dict:
    """Stage entry point for ``ensemble``: the models of params.yaml's ``models`` block."""
    from tumorseg import paths
    from tumorseg.config import read_params
    from tumorseg.logs import setup_logging

    setup_logging()
    members = list(read_params(params_path).get("models") or {})
    return ensemble_predictions(members, paths.INFERENCE_DIR, paths.INFERENCE_DIR / ENSEMBLE,
                                paths.INFERENCE_DIR / f"{ENSEMBLE}.seconds.json")
