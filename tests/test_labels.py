"""The label scheme is defined once and every user speaks it."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import torch

from tumorseg.data.labels import LABELS, REGION_NAMES, REGIONS, SEQUENCES, labels_to_regions, region_mask, regions_to_labels

SRC = Path(__file__).resolve().parents[1] / "src" / "tumorseg"


def test_regions_round_trip():
    labels = torch.tensor([[[0, 1, 2, 3]]], dtype=torch.uint8)
    regions = labels_to_regions(labels)
    assert regions.dtype == torch.float32
    assert regions[0, :, 0].tolist() == [[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]]  # WT, TC, ET
    assert torch.equal(regions_to_labels(regions > 0), labels)


def test_regions_to_labels_gives_the_innermost_region():
    # a model may predict ET outside TC or TC outside WT: the innermost region still wins
    regions = torch.tensor([[[[0, 0, 1]], [[0, 1, 0]], [[1, 0, 0]]]], dtype=torch.bool)  # (1, 3, 1, 3)
    assert regions_to_labels(regions).tolist() == [[[3, 1, 2]]]


def test_region_mask_matches_the_torch_conversion():
    labels = np.random.default_rng(0).integers(0, 4, (5, 6, 7)).astype(np.uint8)
    regions = labels_to_regions(torch.from_numpy(labels)).numpy()  # (5, 3, 6, 7)
    for i, name in enumerate(REGION_NAMES):
        assert np.array_equal(regions[:, i] > 0, region_mask(labels, name))


def test_scheme_is_nested_and_complete():
    assert REGION_NAMES == ("WT", "TC", "ET") and set(REGIONS["ET"]) <= set(REGIONS["TC"]) <= set(REGIONS["WT"])
    assert set(REGIONS["WT"]) == set(LABELS) - {0}
    assert SEQUENCES == ("t1n", "t1c", "t2w", "t2f")


def _literal_assignments(path: Path) -> list[str]:
    """Module-level names assigned a literal that spells the label scheme again (a region map or the sequence order)."""
    found = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            if value in (REGIONS, SEQUENCES, list(SEQUENCES), REGION_NAMES, list(REGION_NAMES)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                found += [f"{path.relative_to(SRC)}: {ast.unparse(t)}" for t in targets]
    return found


def test_no_module_respells_the_scheme():
    offenders = [hit for path in sorted(SRC.rglob("*.py")) if path.name != "labels.py" for hit in _literal_assignments(path)]
    assert offenders == []


def test_regions_to_labels_numpy_and_torch_agree():
    regions = np.random.default_rng(1).random((4, 3, 5, 6)) > 0.5
    from_numpy = regions_to_labels(regions)
    assert from_numpy.dtype == np.uint8
    np.testing.assert_array_equal(from_numpy, regions_to_labels(torch.from_numpy(regions)).numpy())
