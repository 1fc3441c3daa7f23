"""Stored probabilities: the 0.5 threshold survives quantisation exactly; the ensemble averages its members."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tumorseg.evaluation.ensemble import ensemble_predictions
from tumorseg.evaluation.predictions import Predictions, dequantize, quantize, quantized_to_labels, write_index


def test_quantisation_keeps_the_threshold_exactly():
    p = np.array([0.0, 0.4999, 0.5, 0.50001, 0.5019, 0.502, 0.7, 1.0], dtype=np.float32)
    q = quantize(p)
    assert q.dtype == np.uint8
    np.testing.assert_array_equal(q >= 128, p > 0.5)  # 0.50001 rounds to 128 although 0.50001 * 255 = 127.5
    assert np.abs(dequantize(q) - p).max() <= 1 / 255


def test_quantized_labels_follow_the_region_precedence():
    q = np.zeros((1, 3, 1, 4), dtype=np.uint8)
    q[0, 0, 0, 1:] = 200  # WT
    q[0, 1, 0, 2:] = 200  # TC
    q[0, 2, 0, 3] = 200  # ET
    assert quantized_to_labels(q).tolist() == [[[0, 2, 1, 3]]]


def _folder(path, name, values, cases):
    path.mkdir(parents=True)
    for case_id, value in zip(cases, values):
        np.save(path / f"{case_id}.npy", np.full((3, 2, 4, 4), value, dtype=np.uint8))
    index = {"model": name, "members": [name], "weights_sha256": {name: name * 2}, "tta": False,
             "cases": {c: {"split": "test", "cohort": "glioma", "z_start": 1, "shape": [4, 4, 5], "spacing": [1.0, 1.0, 1.0]}
                       for c in cases}}
    write_index(path, index)
    (path.parent / f"{name}.seconds.json").write_text(json.dumps({"seconds_per_volume": 1.5}))


def test_ensemble_is_the_mean_of_its_members(tmp_path):
    cases = ["BraTS-SSA-00002-000", "BraTS-SSA-00003-000"]
    _folder(tmp_path / "a", "a", [100, 255], cases)
    _folder(tmp_path / "b", "b", [160, 0], cases)
    _folder(tmp_path / "c", "c", [130, 0], cases)
    ensemble_predictions(["a", "b", "c"], tmp_path, tmp_path / "ensemble", tmp_path / "ensemble.seconds.json")
    preds = Predictions(tmp_path / "ensemble")
    assert preds.cases("test") == cases and preds.index["members"] == ["a", "b", "c"]
    # (100 + 160 + 130) / 3 = 130 -> tumour, although model a alone says no; (255 + 0 + 0) / 3 = 85 -> none
    assert (preds.probabilities(cases[0]) == 130).all() and (preds.probabilities(cases[1]) == 85).all()
    labels = preds.labels(cases[0])
    assert labels.shape == (4, 4, 5) and (labels[:, :, 1:3] == 3).all() and not labels[:, :, [0, 3, 4]].any()
    assert json.loads((tmp_path / "ensemble.seconds.json").read_text())["seconds_per_volume"] == pytest.approx(4.5)


def test_ensemble_refuses_members_with_other_patients(tmp_path):
    _folder(tmp_path / "a", "a", [100], ["BraTS-SSA-00002-000"])
    _folder(tmp_path / "b", "b", [100], ["BraTS-SSA-00003-000"])
    with pytest.raises(ValueError, match="rerun `dvc repro infer@b`"):
        ensemble_predictions(["a", "b"], tmp_path, tmp_path / "ensemble", tmp_path / "ensemble.seconds.json")
