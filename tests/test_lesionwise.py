"""BraTS 2023 lesion-wise Dice and HD95 on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from tumorseg.evaluation.metrics import LESION_HD95_PENALTY, TruthLesions, hd95, lesion_wise, volume_metrics


def _cube(shape, corner, size):
    m = np.zeros(shape, dtype=bool)
    x, y, z = corner
    m[x:x + size, y:y + size, z:z + size] = True
    return m


SHAPE = (40, 24, 24)


def test_exact_prediction_scores_like_legacy():
    truth = _cube(SHAPE, (4, 4, 4), 4)  # 64 mm3
    s = lesion_wise(truth, truth)
    assert (s.dice, s.hd95, s.tp, s.fn, s.fp) == (1.0, 0.0, 1, 0, 0)


def test_a_false_positive_lesion_halves_dice_and_costs_374():
    truth = _cube(SHAPE, (4, 4, 4), 4)
    pred = truth | _cube(SHAPE, (30, 15, 15), 2)  # an 8-voxel blob far from the tumour
    s = lesion_wise(pred, truth)
    assert s.dice == pytest.approx(0.5)  # (1 + 0) / (1 lesion + 1 FP)
    assert s.hd95 == pytest.approx(LESION_HD95_PENALTY / 2)  # (0 + 374) / 2
    assert (s.tp, s.fn, s.fp) == (1, 0, 1)


def test_a_component_within_the_dilated_lesion_is_not_a_false_positive():
    truth = _cube(SHAPE, (4, 4, 4), 4)
    near = _cube(SHAPE, (10, 4, 4), 1)  # 2 voxels past the lesion's face: inside its 3-voxel dilation
    s = lesion_wise(truth | near, truth)
    assert s.fp == 0 and s.tp == 1
    assert s.dice == pytest.approx(2 * 64 / (65 + 64))  # matched components are scored together with the lesion


@pytest.mark.parametrize("gap, merged", [(6, True), (7, False)])  # 3 + 3 dilated voxels close a gap of 6
def test_two_lesions_merge_when_they_touch_after_three_dilations(gap, merged):
    a = _cube(SHAPE, (2, 4, 4), 4)
    b = _cube(SHAPE, (2 + 4 + gap, 4, 4), 4)
    s = lesion_wise(a, a | b)  # only the first lesion is found
    if merged:  # one lesion of 128 voxels, half of it found
        assert (s.tp, s.fn) == (1, 0)
        assert s.dice == pytest.approx(2 * 64 / (64 + 128))
    else:  # two lesions: one perfect, one missed
        assert (s.tp, s.fn) == (1, 1)
        assert s.dice == pytest.approx(0.5)
        assert s.hd95 == pytest.approx(LESION_HD95_PENALTY / 2)


def test_lesions_of_50_mm3_or_less_are_left_out_in_mm3_not_voxels():
    big = _cube(SHAPE, (4, 4, 4), 4)  # 64 voxels
    small = _cube(SHAPE, (30, 15, 15), 3)  # 27 voxels
    iso = lesion_wise(big, big | small, spacing=(1.0, 1.0, 1.0))  # 27 mm3: left out, not a miss
    assert (iso.dice, iso.tp, iso.fn, iso.fp) == (1.0, 1, 0, 0)
    aniso = lesion_wise(big, big | small, spacing=(2.0, 1.0, 1.0))  # 54 mm3: counted and missed
    assert (aniso.tp, aniso.fn) == (1, 1) and aniso.dice == pytest.approx(0.5)
    # a prediction of the small lesion alone is neither a TP nor an FP at 1 mm
    only_small = lesion_wise(small, big | small)
    assert (only_small.tp, only_small.fn, only_small.fp) == (0, 1, 0) and only_small.dice == 0.0


def test_empty_region_conventions():
    empty = np.zeros(SHAPE, dtype=bool)
    both = lesion_wise(empty, empty)
    assert (both.dice, both.hd95, both.fp) == (1.0, 0.0, 0)
    spurious = lesion_wise(_cube(SHAPE, (4, 4, 4), 3), empty)  # e.g. ET predicted in a patient without ET
    assert (spurious.dice, spurious.hd95, spurious.fp) == (0.0, LESION_HD95_PENALTY, 1)
    missed = lesion_wise(empty, _cube(SHAPE, (4, 4, 4), 4))
    assert (missed.dice, missed.hd95, missed.fn) == (0.0, LESION_HD95_PENALTY, 1)


def test_per_lesion_hd95_is_in_mm_of_the_voxel_spacing():
    truth = _cube(SHAPE, (8, 6, 6), 6)
    pred = _cube(SHAPE, (9, 6, 6), 6)  # shifted one voxel along the first axis
    iso = lesion_wise(pred, truth, spacing=(1.0, 1.0, 1.0))
    aniso = lesion_wise(pred, truth, spacing=(2.0, 1.0, 1.0))
    assert iso.hd95 == pytest.approx(hd95(pred, truth, (1.0, 1.0, 1.0))) == pytest.approx(1.0)
    assert aniso.hd95 == pytest.approx(2.0)


def test_volume_metrics_carry_lesion_scores_per_region():
    truth = np.zeros(SHAPE, dtype=np.uint8)
    truth[_cube(SHAPE, (4, 4, 4), 5)] = 2
    truth[_cube(SHAPE, (5, 5, 5), 3)] = 1
    pred = truth.copy()
    pred[_cube(SHAPE, (30, 15, 15), 2)] = 3  # a false ET blob, far away: FP in WT, TC and ET
    m = volume_metrics(pred, truth)
    assert m["lesion_fp_WT"] == m["lesion_fp_TC"] == m["lesion_fp_ET"] == 1
    assert m["lesion_dice_WT"] == pytest.approx(0.5) and m["lesion_dice_ET"] == 0.0  # no ET in the truth
    assert m["dice_WT"] > 0.95  # the legacy Dice barely notices the blob


def test_one_decomposed_truth_scores_many_predictions_as_fresh_scores_do():
    """Post-processing fitting scores one truth against every candidate threshold's prediction: the decomposition
    it reuses must not carry anything from one prediction to the next."""
    truth = _cube(SHAPE, (4, 4, 4), 4) | _cube(SHAPE, (25, 4, 4), 5)  # two lesions
    preds = [truth, _cube(SHAPE, (4, 4, 4), 4), truth | _cube(SHAPE, (15, 18, 18), 3), np.zeros(SHAPE, bool),
             _cube(SHAPE, (26, 5, 5), 3) | _cube(SHAPE, (2, 2, 2), 3)]
    lesions = TruthLesions(truth, spacing=(1.0, 1.0, 2.0))
    scores = [lesions.score(p) for p in preds]
    assert scores == [lesion_wise(p, truth, spacing=(1.0, 1.0, 2.0)) for p in preds]
    assert len({(s.tp, s.fn, s.fp) for s in scores}) >= 4  # the predictions really differ
    with pytest.raises(ValueError, match="shape"):
        lesions.score(np.zeros((4, 4, 4), bool))
