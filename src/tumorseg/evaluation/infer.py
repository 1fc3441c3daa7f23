"""The ``infer@<model>`` and ``ensemble`` stages: region probabilities for the validation and test patients.

The model runs once per patient here; post-processing (fitted on the validation patients), the
test scores and the ensemble all read these files (format: ``tumorseg.evaluation.predictions``),
so none of them reruns a network. Timings are not part of these cached outputs (they differ run
to run): they go to ``inference/<model>.seconds.json`` beside the folder.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from tumorseg.data.slices import SliceStore, read_case_index
from tumorseg.data.split import read_split
from tumorseg.evaluation.inference import predict_probabilities
from tumorseg.evaluation.predictions import patients, quantize, write_index, write_seconds
from tumorseg.fileio import atomic_dir, sha256_file
from tumorseg.models.io import WEIGHTS_FILE, context_slices, load_model
from tumorseg.models.runtime import RuntimeSettings, configure_determinism, pick_amp_dtype, pick_device, pin_cpu_kernels

log = logging.getLogger(__name__)

SUBSETS = ("val", "test")  # the patients scored in 3D: validation fits post-processing, test reports


@dataclass(frozen=True)
class InferSettings:
    """The ``infer`` block of params.yaml."""

    tta: Literal["none", "lr", "all"] = "all"  # mirrorings averaged per slice (evaluation.inference.MIRRORINGS)


def infer_model(name: str, model_dir: Path, store_dir: Path, split_path: Path, out_dir: Path, seconds_path: Path,
                runtime: RuntimeSettings, tta: str, subsets: tuple[str, ...] = SUBSETS) -> dict:
    """Probabilities of the ``subsets`` patients (the stage: validation and test; a model choice: validation only)."""
    device = pick_device(runtime.device)
    log.info("%s", pin_cpu_kernels(runtime.cpu_kernels, runtime.num_threads if device.type == "cpu" else 0))
    configure_determinism(runtime.deterministic, device)
    amp_dtype = pick_amp_dtype(runtime.amp, device)
    model, config = load_model(model_dir, device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    split = read_split(split_path)
    cases = read_case_index(Path(store_dir) / "cases.parquet").set_index("case_id")
    store = SliceStore(store_dir)
    index = {"model": name, "members": [name], "weights_sha256": {name: sha256_file(Path(model_dir) / WEIGHTS_FILE)},
             "tta": tta, "cases": {}}
    seconds = []
    jobs = [(c, s) for s in subsets for c in patients(split, s)]
    with atomic_dir(Path(out_dir)) as tmp:
        for case_id, subset in tqdm(jobs, desc=f"infer {name}", unit="patient", dynamic_ncols=True):
            case = cases.loc[case_id]
            t0 = time.perf_counter()
            images = store.images(case_id)  # mapped for this patient only (see SliceStore)
            probs = predict_probabilities(model, images, runtime.eval_batch_size, device, amp_dtype,
                                          runtime.channels_last, tta, context_slices(config))  # (Z', 3, Y, X)
            del images
            seconds.append(time.perf_counter() - t0)
            np.save(tmp / f"{case_id}.npy", quantize(np.moveaxis(probs, 1, 0)))
            index["cases"][case_id] = {
                "split": subset, "cohort": str(case["cohort"]), "z_start": int(case["z_start"]),
                "shape": [int(case["nx"]), int(case["ny"]), int(case["nz"])],
                "spacing": [float(case["spacing_x"]), float(case["spacing_y"]), float(case["spacing_z"])],
            }
        write_index(tmp, index)
    write_seconds(seconds_path, round(float(np.median(seconds)), 3) if seconds else None)
    log.info("%s: probabilities of %d validation and %d test patients -> %s (%.2f s/volume)", name,
             sum(s == "val" for _, s in jobs), sum(s == "test" for _, s in jobs), out_dir, float(np.median(seconds)))
    return index


def main(model: str, params_path: str | Path = "params.yaml") -> dict:
    """Stage entry point for ``infer@<model>``."""
    from tumorseg import paths
    from tumorseg.config import from_mapping, read_params
    from tumorseg.logs import setup_logging

    setup_logging()
    params = read_params(params_path)
    settings = from_mapping(InferSettings, params.get("infer"), "infer")
    return infer_model(model, paths.MODELS_DIR / model, paths.PREPROCESSED_DIR, paths.SPLIT, paths.INFERENCE_DIR / model,
                       paths.INFERENCE_DIR / f"{model}.seconds.json",
                       from_mapping(RuntimeSettings, params.get("train"), "train", subset=True), settings.tta)
