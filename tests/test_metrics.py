"""Metrics against hand-computed cases and the BraTS empty-mask conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tumorseg.evaluation.metrics import HD95_EMPTY_PENALTY, dice, hd95, sensitivity, slice_dice_wt, specificity, volume_metrics


def test_dice_by_hand():
    a = np.zeros((4, 4, 1), bool)
    b = np.zeros((4, 4, 1), bool)
    a[0, 0:3] = True  # 3 voxels
    b[0, 1:4] = True  # 3 voxels, 2 shared
    assert dice(a, b) == pytest.approx(2 * 2 / 6)
    assert dice(a, a) == 1.0


def test_empty_conventions():
    empty = np.zeros((5, 5, 5), bool)
    one = empty.copy()
    one[2, 2, 2] = True
    assert dice(empty, empty) == 1.0 and hd95(empty, empty) == 0.0
    assert dice(one, empty) == 0.0 and hd95(one, empty) == HD95_EMPTY_PENALTY
    assert dice(empty, one) == 0.0 and hd95(empty, one) == HD95_EMPTY_PENALTY
    assert sensitivity(empty, empty) == 1.0 and specificity(one, one) == 1.0


def test_hd95_by_hand_with_spacing():
    truth = np.zeros((30, 30, 30), bool)
    pred = np.zeros((30, 30, 30), bool)
    truth[10, 10, 10] = True
    pred[10, 10, 14] = True  # 4 voxels apart along z
    assert hd95(pred, truth) == pytest.approx(4.0)
    assert hd95(pred, truth, spacing=(1.0, 1.0, 2.5)) == pytest.approx(10.0)
    pred[10, 13, 10] = True  # directed pred->truth distances {4, 3}; truth->pred {3}
    assert hd95(pred, truth) == pytest.approx(np.percentile([3.0, 4.0], 95))


def test_hd95_of_shifted_cubes():
    truth = np.zeros((40, 40, 40), bool)
    truth[10:20, 10:20, 10:20] = True
    pred = np.roll(truth, 3, axis=0)
    # every surface voxel of the shifted cube is at most 3 voxels from the other's surface
    assert 0 < hd95(pred, truth) <= 3.0 + 1e-9
    assert hd95(truth, truth) == 0.0


def test_sensitivity_specificity_by_hand():
    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    pred = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0], bool)
    assert sensitivity(pred, truth) == pytest.approx(3 / 4)
    assert specificity(pred, truth) == pytest.approx(5 / 6)


def test_volume_metrics_regions():
    truth = np.zeros((10, 10, 3), np.uint8)
    truth[2:6, 2:6, 1] = 2
    truth[3:5, 3:5, 1] = 3
    pred = truth.copy()
    pred[3:5, 3:5, 1] = 1  # ET predicted as necrosis: WT and TC perfect, ET missed entirely
    m = volume_metrics(pred, truth)
    assert m["dice_WT"] == 1.0 and m["dice_TC"] == 1.0
    assert m["dice_ET"] == 0.0 and m["hd95_ET"] == HD95_EMPTY_PENALTY
    assert m["sensitivity_ET"] == 0.0 and math.isclose(m["specificity_ET"], 1.0)


def test_slice_dice_only_counts_tumour_slices():
    truth = np.zeros((4, 4, 3), np.uint8)
    pred = np.zeros((4, 4, 3), np.uint8)
    truth[0, 0, 1] = 2
    pred[0, 0, 1] = 2
    pred[0, 0, 2] = 2  # false positive on a slice without tumour: not counted, as the original
    assert slice_dice_wt(pred, truth) == [1.0]


def test_summarise_means_and_rounding_by_hand():
    from tumorseg.evaluation.metrics import summarise

    rows = [{"dice_WT": 0.9, "dice_TC": 0.8, "dice_ET": 1.0, "hd95_WT": 1.0, "hd95_TC": 2.0, "hd95_ET": 0.0},
            {"dice_WT": 0.7, "dice_TC": 0.6, "dice_ET": 0.0, "hd95_WT": 3.0, "hd95_TC": 4.0, "hd95_ET": 373.12}]
    s = summarise(rows, [0.5, 1.0, 0.0])
    assert s["n_patients"] == 2
    assert (s["dice_WT"], s["dice_TC"], s["dice_ET"], s["dice_mean"]) == (0.8, 0.7, 0.5, 0.6667)
    assert (s["hd95_WT"], s["hd95_TC"], s["hd95_ET"], s["hd95_mean"]) == (2.0, 3.0, 186.56, 63.85)
    assert s["slice_dice_WT"] == 0.5 and summarise(rows, [])["slice_dice_WT"] is None


def test_every_summary_mean_has_a_bootstrap_interval_around_it():
    from tumorseg.evaluation.metrics import summarise

    rng = np.random.default_rng(0)
    shape = (20, 20, 12)
    rows = []
    for _ in range(8):
        truth = np.zeros(shape, dtype=np.uint8)
        truth[5:12, 5:12, 3:9] = 2
        truth[7:10, 7:10, 5:7] = 3
        pred = truth.copy()
        pred[5:5 + rng.integers(1, 4), 5:12, 3:9] = 0  # a varying miss
        rows.append(volume_metrics(pred, truth))
    summary = summarise(rows, [])
    means = [k for k in summary if k not in ("n_patients", "slice_dice_WT", "ci95")]
    assert sorted(summary["ci95"]) == sorted(means)
    for key in means:
        ci = summary["ci95"][key]
        assert ci["low"] <= summary[key] + 1e-4 and summary[key] - 1e-4 <= ci["high"], key
    assert summary["ci95"]["dice_WT"]["low"] < summary["ci95"]["dice_WT"]["high"]  # the misses vary: a real interval
