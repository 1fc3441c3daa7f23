"""The format of an inference folder (``inference/<model>/``): what evaluate, postprocess and the ensemble read.

Each case is ``<case>.npy``: uint8 (3, Z', Y, X) region probabilities (WT, TC, ET) over the kept
slices, stored so that ``q >= 128`` exactly when the model's probability is above 0.5 (the labels
are the full-precision ones; the ensemble averages the 1/255-step values). ``index.json`` says
which subset each case belongs to and where its slices lie in the volume. Kept apart from the
code that runs the networks (``infer``), so scoring never depends on model code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tumorseg.data.labels import regions_to_labels

INDEX_FILE = "index.json"


def to_volume(slice_labels: np.ndarray, z_start: int, shape_xyz: tuple[int, int, int]) -> np.ndarray:
    """(Z', Y, X) labels of the kept slices -> (X, Y, Z) volume; cropped-away slices are background."""
    volume = np.zeros(tuple(shape_xyz)[::-1], dtype=np.uint8)  # (Z, Y, X)
    volume[z_start:z_start + len(slice_labels)] = slice_labels
    return volume.T  # (X, Y, Z), the NIfTI order


def probability_volume(q: np.ndarray, z_start: int, shape_xyz: tuple[int, int, int]) -> np.ndarray:
    """(3, Z', Y, X) quantized region probabilities of the kept slices -> (3, X, Y, Z) uint8 (cropped-away slices 0)."""
    volume = np.zeros((q.shape[0],) + tuple(shape_xyz)[::-1], dtype=np.uint8)  # (3, Z, Y, X)
    volume[:, z_start:z_start + q.shape[1]] = q
    return volume.transpose(0, 3, 2, 1)


def quantize(probs: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] -> uint8 steps of 1/255, with ``q >= 128`` exactly where ``p > 0.5``."""
    q = np.rint(np.asarray(probs, dtype=np.float32) * 255)
    q = np.where(probs > 0.5, np.maximum(q, 128), np.minimum(q, 127))
    return q.astype(np.uint8)


def dequantize(q: np.ndarray) -> np.ndarray:
    return np.asarray(q, dtype=np.float32) / 255


def quantized_to_labels(q: np.ndarray) -> np.ndarray:
    """(..., 3, Y, X) quantized region probabilities -> (..., Y, X) BraTS labels (probability > 0.5)."""
    return regions_to_labels(np.asarray(q) >= 128)


def patients(split: pd.DataFrame, subset: str) -> list[str]:
    """Patients whose slices all lie in ``subset`` (every patient, under a patient-level split)."""
    per_case = split.groupby("case_id")["split"].agg(lambda s: set(s))
    cases = sorted(c for c, subsets in per_case.items() if subsets == {subset})
    if not cases:
        raise ValueError(f"no patient lies wholly in the {subset} subset (split.level: slice?); 3D scoring needs a patient split")
    return cases


class Predictions:
    """A folder written by ``infer@<model>`` (or ``ensemble``): per-case probabilities and the index."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        path = self.folder / INDEX_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no predictions here; run `dvc repro infer@<model>` first")
        self.index = json.loads(path.read_text())

    def cases(self, subset: str) -> list[str]:
        return sorted(c for c, info in self.index["cases"].items() if info["split"] == subset)

    def probabilities(self, case_id: str) -> np.ndarray:
        """(3, Z', Y, X) uint8 quantized probabilities of the kept slices."""
        return np.load(self.folder / f"{case_id}.npy")

    def labels(self, case_id: str) -> np.ndarray:
        """The (X, Y, Z) BraTS label volume, before post-processing."""
        info = self.index["cases"][case_id]
        slices = quantized_to_labels(np.moveaxis(self.probabilities(case_id), 0, 1))  # (Z', Y, X)
        return to_volume(slices, info["z_start"], tuple(info["shape"]))

    def probability_volume(self, case_id: str) -> np.ndarray:
        """(3, X, Y, Z) uint8 quantized WT / TC / ET probabilities in the label map's geometry."""
        info = self.index["cases"][case_id]
        return probability_volume(self.probabilities(case_id), info["z_start"], tuple(info["shape"]))

    def spacing(self, case_id: str) -> tuple[float, float, float]:
        return tuple(self.index["cases"][case_id]["spacing"])  # type: ignore[return-value]


def write_index(folder: Path, index: dict) -> None:
    (Path(folder) / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def write_seconds(path: Path, seconds_per_volume: float | None) -> None:
    """Inference time beside the cached folder (``inference/<model>.seconds.json``): timings differ run to run,
    so they stay out of the outputs that must be byte-identical."""
    from tumorseg.fileio import atomic_file

    with atomic_file(Path(path)) as tmp:
        tmp.write_text(json.dumps({"seconds_per_volume": seconds_per_volume}) + "\n")


def read_seconds(path: Path) -> float | None:
    return json.loads(Path(path).read_text())["seconds_per_volume"]
