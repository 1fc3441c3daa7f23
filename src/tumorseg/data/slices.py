"""The slice store: per-case memory-mapped arrays plus Parquet index tables.

Pixels live in one ``<case>.image.npy`` (float16, shape (Z, 4, Y, X)) and one
``<case>.label.npy`` (uint8, (Z, Y, X)) per case, so one random slice is a memory-mapped read
of ~0.1-0.5 ms; Parquet holds only the small index (one row per slice) and the per-case table
that maps slices back into the original volume. ``(Y, X)`` is the NIfTI in-plane grid
transposed, which is the order the data already has on disk (no copy when slicing).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
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
    """Random access to preprocessed slices: ``store.image(case_id, row)``."""

    root: Path

    def __post_init__(self):
        self.root = Path(self.root)

    @lru_cache(maxsize=None)
    def _images(self, case_id: str) -> np.ndarray:
        return np.load(self.root / image_file(case_id), mmap_mode="r")

    @lru_cache(maxsize=None)
    def _labels(self, case_id: str) -> np.ndarray:
        return np.load(self.root / label_file(case_id), mmap_mode="r")

    def image(self, case_id: str, row: int) -> np.ndarray:
        return self._images(case_id)[row]

    def label(self, case_id: str, row: int) -> np.ndarray:
        return self._labels(case_id)[row]

    def __hash__(self):
        return id(self)
