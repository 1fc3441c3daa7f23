"""The slice store: per-case memory-mapped arrays plus Parquet index tables.

Pixels live in one ``<case>.image.npy`` (float16, shape (Z, 4, Y, X)) and one
``<case>.label.npy`` (uint8, (Z, Y, X)) per case, so one random slice is a memory-mapped read
of ~0.1-0.5 ms; Parquet holds only the small index (one row per slice) and the per-case table
that maps slices back into the original volume. ``(Y, X)`` is the NIfTI in-plane grid
transposed, which is the order the data already has on disk (no copy when slicing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

SLICE_INDEX_COLUMNS: dict[str, str] = {
    "case_id": "object",
    "cohort": "object",
    "slice": "int32",        # axial index z in the original volume
    "row": "int32",          # position of the slice in the case's arrays
    "image_file": "object",  # relative to the preprocessed folder
    "label_file": "object",
    "n_brain": "int32",
    "n_netc": "int32",       # label 1
    "n_edema": "int32",      # label 2
    "n_et": "int32",         # label 3
    "has_tumour": "bool",
}

CASE_INDEX_COLUMNS: dict[str, str] = {
    "case_id": "object",
    "cohort": "object",
    "nx": "int32", "ny": "int32", "nz": "int32",
    "spacing_x": "float64", "spacing_y": "float64", "spacing_z": "float64",
    "z_start": "int32",      # first kept axial slice
    "z_stop": "int32",       # one past the last kept slice
    "image_file": "object",
    "label_file": "object",
}


def image_file(case_id: str) -> str:
    return f"{case_id}.image.npy"


def label_file(case_id: str) -> str:
    return f"{case_id}.label.npy"


def _check(df: pd.DataFrame, columns: dict[str, str], path: Path) -> pd.DataFrame:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: columns missing {missing}; rerun `dvc repro preprocess`")
    return df


def read_slice_index(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: slice index not found; run `dvc repro preprocess` first")
    return _check(pd.read_parquet(path), SLICE_INDEX_COLUMNS, path)


def read_case_index(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: case index not found; run `dvc repro preprocess` first")
    return _check(pd.read_parquet(path), CASE_INDEX_COLUMNS, path)


def typed_frame(rows: list[dict], columns: dict[str, str]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(columns))
    return df.astype(columns)


@dataclass
class SliceStore:
    """Access to preprocessed slices: ``store.images(case_id)`` maps one patient, ``store.image(case_id, row)`` reads one slice.

    Nothing stays mapped between calls: a memory map kept open holds every page read against the process's RSS, so a
    store that cached its maps grew with the patients it had visited (bench/scale.py: infer@unet reached 4.0 GB over 44
    full-size patients). Callers hold a patient's map while they work on it and drop it after."""

    root: Path

    def __post_init__(self):
        self.root = Path(self.root)

    def _load(self, path: Path, case_id: str) -> np.ndarray:
        if not path.is_file():
            raise FileNotFoundError(f"{case_id}: {path} not found in the slice store; rerun `dvc repro preprocess`")
        return np.load(path, mmap_mode="r")

    def images(self, case_id: str) -> np.ndarray:
        """The patient's (Z, 4, Y, X) float16 slices, memory-mapped: read what you need, then drop the reference."""
        return self._load(self.root / image_file(case_id), case_id)

    def labels(self, case_id: str) -> np.ndarray:
        """The patient's (Z, Y, X) uint8 labels, memory-mapped."""
        return self._load(self.root / label_file(case_id), case_id)

    def image(self, case_id: str, row: int) -> np.ndarray:
        return np.array(self.images(case_id)[row])

    def label(self, case_id: str, row: int) -> np.ndarray:
        return np.array(self.labels(case_id)[row])
