"""The ``split`` stage: train / val / test by patient, never by slice.

The original project split its 10,692 slices at random, so neighbouring slices of one patient
sat in train and test and its test Dice measured memorisation. Here every patient is in exactly
one subset (all of a patient's timepoints with it), chosen with a seeded shuffle stratified by cohort (glioma /
other neoplasm).
``level: slice`` reproduces the leaky protocol for comparison only, and says so loudly.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from tumorseg.data.ids import subject_id
from tumorseg.data.slices import read_slice_index
from tumorseg import paths
from tumorseg.config import Checked, SettingError, from_mapping, in_range, read_params
from tumorseg.fileio import write_parquet
from tumorseg.logs import setup_logging

log = logging.getLogger(__name__)

SUBSETS = ("train", "val", "test")
SPLIT_COLUMNS = ("case_id", "cohort", "slice", "row", "split")


class LeakySplitWarning(UserWarning):
    """Slices of one patient end up in more than one subset."""


@dataclass(frozen=True)
class SplitSettings(Checked):
    level: Literal["patient", "slice"] = "patient"
    fractions: tuple[float, float, float] = field(default=(0.70, 0.15, 0.15), metadata=in_range(0, 1))  # train, val, test
    seed: int = 42
    stratify: bool = True  # by cohort

    def check(self) -> None:
        train, val, _ = self.fractions
        if abs(sum(self.fractions) - 1) > 1e-6:
            raise SettingError("fractions", f"= {list(self.fractions)}; must add up to 1 (train, val, test)")
        if train == 0 or val == 0:
            raise SettingError("fractions", f"= {list(self.fractions)}; training needs train and val patients (both > 0)")


def _counts(n: int, fractions: tuple[float, float, float]) -> list[int]:
    """Largest-remainder allocation; val and test get at least one item when n >= 3."""
    raw = np.array(fractions) / sum(fractions) * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for i in (2, 1):
        if n >= 3 and counts[i] == 0 and fractions[i] > 0:
            counts[i] += 1
            counts[int(np.argmax(counts))] -= 1
    return counts.tolist()


def assign_patients(cases: pd.DataFrame, settings: SplitSettings) -> dict[str, str]:
    """case_id -> subset, seeded and stratified by cohort. Patients are drawn, not cases: the timepoints of one
    patient (``subject_id``) share a subset; a patient's cohort is its first case's. With one case per patient
    (BraTS-Africa) this is the draw over case ids exactly."""
    rng = np.random.default_rng(settings.seed)
    cases = cases.assign(subject=cases["case_id"].map(subject_id)).sort_values("case_id")
    subjects = cases.drop_duplicates("subject")
    groups = subjects.groupby("cohort", sort=True) if settings.stratify else [("all", subjects)]
    chosen: dict[str, str] = {}
    for _, group in groups:
        ids = sorted(group["subject"])
        order = rng.permutation(len(ids))
        bounds = np.cumsum([0] + _counts(len(ids), settings.fractions))
        for subset, lo, hi in zip(SUBSETS, bounds[:-1], bounds[1:]):
            for i in order[lo:hi]:
                chosen[ids[i]] = subset
    return {case: chosen[subject] for case, subject in zip(cases["case_id"], cases["subject"])}


def make_split(slices: pd.DataFrame, settings: SplitSettings) -> pd.DataFrame:
    table = slices[["case_id", "cohort", "slice", "row"]].sort_values(["case_id", "slice"]).reset_index(drop=True)
    if settings.level == "patient":
        cases = table.drop_duplicates("case_id")[["case_id", "cohort"]]
        table["split"] = table["case_id"].map(assign_patients(cases, settings))
    else:
        msg = ("split.level is 'slice': slices of the same patient land in train AND test, so test scores "
               "measure memorisation, not generalisation (the original project's flaw). Use only to reproduce it.")
        warnings.warn(msg, LeakySplitWarning, stacklevel=2)
        log.warning("!" * 20 + " LEAKY SPLIT " + "!" * 20 + "\n" + msg)
        rng = np.random.default_rng(settings.seed)
        order = rng.permutation(len(table))
        bounds = np.cumsum([0] + _counts(len(table), settings.fractions))
        split = np.empty(len(table), dtype=object)
        for subset, lo, hi in zip(SUBSETS, bounds[:-1], bounds[1:]):
            split[order[lo:hi]] = subset
        table["split"] = split
    return table[list(SPLIT_COLUMNS)]


def read_split(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split not found; run `dvc repro split` first")
    df = pd.read_parquet(path)
    missing = [c for c in SPLIT_COLUMNS if c not in df.columns]
    if missing or not set(df["split"]).issubset(SUBSETS):
        raise ValueError(f"{path}: not a tumorseg split (columns missing {missing} or unknown subsets)")
    return df


def run_split(settings: SplitSettings, slice_index_path: Path, out_path: Path) -> pd.DataFrame:
    table = make_split(read_slice_index(slice_index_path), settings)
    write_parquet(table, out_path)
    per_case = table.drop_duplicates(["case_id", "split"]).groupby("split")["case_id"].nunique()
    log.info("split (%s level): %s patients; %s slices -> %s", settings.level,
             per_case.reindex(SUBSETS, fill_value=0).to_dict(),
             table["split"].value_counts().reindex(SUBSETS, fill_value=0).to_dict(), out_path)
    return table


def main(params_path: str | Path = paths.PARAMS) -> pd.DataFrame:
    """Stage entry point: settings from params.yaml ``split``."""
    setup_logging()
    settings = from_mapping(SplitSettings, read_params(params_path).get("split"), "split")
    return run_split(settings, paths.SLICE_INDEX, paths.SPLIT)
