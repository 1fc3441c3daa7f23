"""Post-processing rules and their fitting on validation cases."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from tumorseg.config import SettingError
from tumorseg.evaluation.postprocess import (
    LazyCases,
    PostprocessRules,
    _scores,
    PostprocessSettings,
    drop_coreless_components,
    drop_small_components,
    drop_unconfident_components,
    fit_rules,
    read_rules,
    relabel_small_et,
    write_rules,
)

SHAPE = (30, 24, 20)


def _tumour() -> np.ndarray:
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[4:12, 4:12, 4:12] = 2  # edema, 512 voxels
    labels[6:10, 6:10, 6:10] = 1  # core
    labels[7:9, 7:9, 7:9] = 3  # enhancing
    return labels


def test_dropped_components_become_the_next_region_out():
    labels = _tumour()
    labels[20:22, 18:20, 15:17] = 2  # an 8-voxel WT speck
    labels[25, 2, 2] = 3  # a one-voxel ET speck (also TC and WT)
    out = drop_small_components(labels, "WT", 10)
    assert out[20:22, 18:20, 15:17].max() == 0 and out[25, 2, 2] == 0
    assert np.array_equal(out[:12, :12, :12], labels[:12, :12, :12]), "the tumour itself is kept"
    # TC speck -> edema, ET speck -> necrotic core: tumour stays tumour
    assert drop_small_components(labels, "TC", 2)[25, 2, 2] == 2
    assert drop_small_components(labels, "ET", 2)[25, 2, 2] == 1
    # the threshold is in mm3: at 2 mm x 1 x 1 the 8-voxel speck is 16 mm3 and survives 10
    assert drop_small_components(labels, "WT", 10, spacing=(2.0, 1.0, 1.0))[20, 18, 15] == 2
    assert drop_small_components(labels, "WT", 0) is labels


def test_small_total_et_becomes_necrotic_core():
    labels = _tumour()  # 8 ET voxels
    out = relabel_small_et(labels, 9)
    assert (out == 3).sum() == 0 and (out == 1).sum() == (labels == 1).sum() + 8
    assert np.array_equal(relabel_small_et(labels, 8), labels)  # not under the threshold


def test_rules_apply_in_order_and_identity():
    labels = _tumour()
    labels[25, 2, 2] = 3
    rules = PostprocessRules({"WT": 5.0, "TC": 0.0, "ET": 0.0}, 0.0)
    assert rules.apply(labels)[25, 2, 2] == 0 and not rules.is_identity
    assert PostprocessRules().is_identity and np.array_equal(PostprocessRules().apply(labels), labels)


def _val_cases():
    """Three patients whose predictions are the truth plus small false blobs; one has no ET and a false ET speck."""
    cases = []
    for i in range(3):
        truth = _tumour()
        pred = truth.copy()
        pred[20 + i:22 + i, 16:18, 14:16] = 2  # an 8-voxel false WT blob
        if i == 2:
            truth[truth == 3] = 1  # this patient has no enhancing tumour...
            pred[pred == 3] = 1
            pred[7:9, 7:8, 7:8] = 3  # ...but the model predicts 2 voxels of it
        cases.append((pred, truth, (1.0, 1.0, 1.0), None))
    return cases


def test_candidates_scored_from_their_shared_rules_score_as_their_full_rules_do():
    """_scores applies the rules a step's candidates share once per patient and only the differing rest per candidate;
    every candidate must score exactly as its own full ``apply`` does, whichever step (first, middle, last) differs."""
    from tumorseg.data.labels import REGION_NAMES, region_mask
    from tumorseg.evaluation.metrics import dice, lesion_wise

    rng = np.random.default_rng(3)
    cases = []
    for i in range(3):
        truth = _tumour()
        pred = truth.copy()
        pred[20 + i:22 + i, 16:18, 14:16] = 2  # a false WT blob, then a false core speck and a false ET speck
        pred[24:26, 4:5, 4:6] = 1
        pred[5:6, 14:15, 14:15] = 3
        probs = (rng.random((3,) + SHAPE) * 255).astype(np.uint8)
        cases.append((pred, truth, (1.0, 1.0, 2.0), probs))
    base = PostprocessRules({"WT": 10.0, "TC": 0.0, "ET": 0.0}, 0.0, {"WT": 0.3, "TC": 0.0, "ET": 0.0}, keep_one_tumour=True)
    families = {
        "WT": [replace(base, min_component_mm3={**base.min_component_mm3, "WT": t}) for t in (0.0, 10.0, 2000.0)],
        "TC": [replace(base, min_component_probability={**base.min_component_probability, "TC": t}) for t in (0.0, 0.45, 0.9)],
        "ET": [replace(base, min_et_volume_mm3=t) for t in (0.0, 4.0, 50.0)],
    }
    for region, trials in families.items():
        lesion, legacy = _scores(cases, trials, region)
        for i, trial in enumerate(trials):
            for j, (pred, truth, spacing, probs) in enumerate(cases):
                out = trial.apply(pred, spacing, probs)
                assert lesion[i, j] == lesion_wise(region_mask(out, region), region_mask(truth, region), spacing).dice
                assert [legacy[i, k, j] for k in range(3)] == [dice(region_mask(out, r), region_mask(truth, r)) for r in REGION_NAMES]
        assert len({tuple(row) for row in legacy.reshape(len(trials), -1)}) > 1, f"{region}: the candidates must differ"


def test_fit_picks_thresholds_that_remove_false_lesions_on_validation():
    cases = _val_cases()
    settings = PostprocessSettings(component_mm3=(0, 10, 1000), et_volume_mm3=(0, 4, 20))
    rules, steps = fit_rules(cases, settings)
    # 10 mm3 removes the 8-voxel blobs; 1000 would also remove the tumour and lower the legacy Dice
    assert rules.min_component_mm3["WT"] == 10
    wt = steps[0]
    assert wt["region"] == "WT" and [c["mm3"] for c in wt["candidates"]] == [0, 10, 1000]
    assert wt["candidates"][1]["lesion_dice"] == pytest.approx(1.0)
    assert wt["candidates"][0]["lesion_dice"] == pytest.approx(0.5)  # one lesion + one false blob per patient
    # ET components of 10 mm3 would also drop the true 8-voxel ET of patients 0 and 1 (legacy Dice falls): kept at 0;
    # a patient ET volume of 4 mm3 relabels only patient 2's false 2 voxels, 20 would take the true ones too
    assert rules.min_component_mm3["ET"] == 0 and rules.min_et_volume_mm3 == 4
    assert [s["rule"] for s in steps] == ["min_component_mm3"] * 3 + ["min_et_volume_mm3"]
    fitted = [rules.apply(p, s) for p, _, s, _ in cases]
    assert all(np.array_equal(f, t) for f, (_, t, _, _) in zip(fitted, cases))


def test_fitting_reads_each_patient_once_per_step_and_holds_one_at_a_time():
    """fit_rules over patients loaded on demand chooses what it chooses over a list, reading each patient once per
    rule step (not once per candidate), and never holding two at once (at full size the validation set is ~1 GB)."""
    cases = _val_cases()
    settings = PostprocessSettings(component_mm3=(0, 10, 1000), et_volume_mm3=(0, 4, 20))
    loads, alive = [], []

    class Tracked(np.ndarray):
        def __del__(self):
            alive.remove(id(self)) if id(self) in alive else None

    def load(i):
        pred, truth, spacing, probabilities = cases[i]
        pred = pred.copy().view(Tracked)
        alive.append(id(pred))
        loads.append((i, len(alive)))
        return pred, truth, spacing, probabilities

    lazy_rules, lazy_steps = fit_rules(LazyCases([0, 1, 2], load), settings)
    assert (lazy_rules, lazy_steps) == fit_rules(cases, settings)
    assert len(loads) == len(lazy_steps) * len(cases), "one read per patient per step, whatever the candidates"
    assert max(n for _, n in loads) <= 2, "at most the patient being read and the one just released"


def test_disabled_or_bad_settings():
    rules, steps = fit_rules(_val_cases(), PostprocessSettings(enabled=False))
    assert rules.is_identity and steps == []
    with pytest.raises(SettingError, match="must include 0"):
        PostprocessSettings(component_mm3=(10, 20))


def test_rules_file_round_trip_and_errors(tmp_path):
    rules = PostprocessRules({"WT": 10.0, "TC": 0.0, "ET": 25.0}, 50.0)
    write_rules(tmp_path / "postprocess.json", rules, True, [], {})
    assert read_rules(tmp_path / "postprocess.json") == rules
    write_rules(tmp_path / "off.json", rules, False, [], {})
    assert read_rules(tmp_path / "off.json").is_identity
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json: not a tumorseg post-processing file"):
        read_rules(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="dvc repro postprocess@"):
        read_rules(tmp_path / "missing.json")


def test_a_threshold_that_costs_any_validation_patient_legacy_dice_is_refused():
    """Patient A has a small true lesion (64 mm3), patient B two false blobs (40 mm3 each). 100 mm3 would remove all
    three: better mean lesion-wise and legacy Dice, but A loses its lesion. 50 mm3 removes only the blobs."""
    shape = (40, 30, 30)
    main = np.zeros(shape, dtype=np.uint8)
    main[4:12, 4:12, 4:12] = 2
    truth_a = main.copy()
    truth_a[25:29, 20:24, 20:24] = 2
    pred_b = main.copy()
    pred_b[25:27, 20:24, 20:25] = 2
    pred_b[32:34, 4:8, 4:9] = 2
    cases = [(truth_a.copy(), truth_a, (1.0, 1.0, 1.0), None), (pred_b, main, (1.0, 1.0, 1.0), None)]
    rules, steps = fit_rules(cases, PostprocessSettings(component_mm3=(0, 50, 100), et_volume_mm3=(0,)))
    wt = steps[0]["candidates"]
    assert [c["lesion_dice"] for c in wt] == pytest.approx([(1 + 1 / 3) / 2, 1.0, (0.5 + 1) / 2])
    assert wt[2]["patients_worse"] == 1 and wt[1]["patients_worse"] == 0
    assert wt[2]["legacy_dice"] > wt[0]["legacy_dice"]  # on the means, 100 looks better than nothing...
    assert rules.min_component_mm3["WT"] == 50  # ...but it costs patient A, so 50 is chosen


def test_a_wt_rule_is_also_judged_on_the_core_and_enhancing_tumour_it_removes():
    """Patient A has a second, 8-voxel lesion of pure enhancing tumour beside a large edema-filled tumour; patient B a
    false 8-voxel edema speck. Dropping WT components under 10 mm3 costs A's WT Dice 0.001 (within the tolerance) but
    half its ET and a third of its TC: the WT rule is refused, although judged on WT alone it would pass."""
    shape = (40, 30, 30)
    main = np.zeros(shape, dtype=np.uint8)
    main[2:18, 2:18, 2:18] = 2
    main[8:10, 8:10, 8:10] = 1
    main[10:12, 8:10, 8:10] = 3
    truth_a = main.copy()
    truth_a[30:32, 24:26, 24:26] = 3
    pred_b = main.copy()
    pred_b[34:36, 4:6, 4:6] = 2
    cases = [(truth_a.copy(), truth_a, (1.0, 1.0, 1.0), None), (pred_b, main, (1.0, 1.0, 1.0), None)]
    rules, steps = fit_rules(cases, PostprocessSettings(component_mm3=(0, 10), et_volume_mm3=(0,), patient_tolerance=0.005))
    ten = steps[0]["candidates"][1]
    assert ten["lesion_dice"] > steps[0]["candidates"][0]["lesion_dice"]  # on WT, 10 mm3 looks better...
    assert ten["patients_worse_by_region"] == {"WT": 0, "TC": 1, "ET": 1} and ten["patients_worse"] == 1
    assert rules.min_component_mm3["WT"] == 0  # ...but it takes A's enhancing lesion with it


def test_patient_tolerance_lets_a_grazing_speck_go():
    """Patient A's prediction holds a one-voxel island of true tumour (legacy Dice 1 -> 0.99902 without it); patient B
    has two false 5-voxel specks. With no tolerance, or one below A's loss (0.00098), A vetoes the 10 mm3 rule for
    everyone; with 0.005 it goes."""
    shape = (40, 30, 30)
    main = np.zeros(shape, dtype=np.uint8)
    main[4:12, 4:12, 4:12] = 2
    truth_a = main.copy()
    truth_a[30, 20, 20] = 2
    pred_b = main.copy()
    pred_b[25, 20:25, 20] = 2
    pred_b[32, 4:9, 4] = 2
    cases = [(truth_a.copy(), truth_a, (1.0, 1.0, 1.0), None), (pred_b, main, (1.0, 1.0, 1.0), None)]
    for tolerance in (0.0, 0.0005):
        strict, steps = fit_rules(cases, PostprocessSettings(component_mm3=(0, 10), et_volume_mm3=(0,), patient_tolerance=tolerance))
        assert steps[0]["candidates"][1]["patients_worse"] == 1 and strict.min_component_mm3["WT"] == 0
    tolerant, steps = fit_rules(cases, PostprocessSettings(component_mm3=(0, 10), et_volume_mm3=(0,), patient_tolerance=0.005))
    assert steps[0]["candidates"][1]["patients_worse"] == 0 and tolerant.min_component_mm3["WT"] == 10
    # a tolerance is for specks that graze a tumour, not for lost lesions: at most 0.05
    with pytest.raises(SettingError, match="patient_tolerance"):
        PostprocessSettings(patient_tolerance=0.2)


def _probabilities(labels: np.ndarray, confidence: list[tuple[tuple[slice, ...], float]]) -> np.ndarray:
    """(3, X, Y, Z) uint8 quantized probabilities: 0.95 inside each region, overridden in the given boxes."""
    from tumorseg.data.labels import REGION_NAMES, region_mask

    probs = np.stack([np.where(region_mask(labels, r), 0.95, 0.02) for r in REGION_NAMES])
    for box, p in confidence:
        probs[(slice(None), *box)] = np.where(probs[(slice(None), *box)] > 0.5, p, probs[(slice(None), *box)])
    return np.rint(probs * 255).astype(np.uint8)


def test_components_predicted_without_confidence_are_dropped():
    labels = _tumour()
    blob = (slice(20, 26), slice(16, 22), slice(12, 18))  # a 216-voxel false WT component: too big for a size rule
    labels[blob] = 2
    probs = _probabilities(labels, [(blob, 0.7)])
    out = drop_unconfident_components(labels, "WT", 0.8, probs[0])
    assert out[blob].max() == 0 and np.array_equal(out[:12, :12, :12], labels[:12, :12, :12])
    assert np.array_equal(drop_unconfident_components(labels, "WT", 0.6, probs[0]), labels)
    rules = PostprocessRules(min_component_probability={"WT": 0.8, "TC": 0.0, "ET": 0.0})
    assert np.array_equal(rules.apply(labels, probabilities=probs), out) and not rules.is_identity
    with pytest.raises(ValueError, match="needs the predicted probabilities"):
        rules.apply(labels)


def _tumour_and_mimic(i: int) -> tuple[np.ndarray, np.ndarray, tuple[slice, ...]]:
    """A patient's truth, its prediction (the truth plus a 216-voxel edema-like mimic, shifted by ``i``) and the mimic's box."""
    truth = _tumour()
    pred = truth.copy()
    mimic = (slice(20, 26), slice(16, 22), slice(12 + i, 18 + i))
    pred[mimic] = 2
    return truth, pred, mimic


def test_fit_finds_the_confidence_that_separates_mimics_from_tumours():
    """Each patient: a true tumour predicted at 0.95 and a 216-voxel mimic at 0.7; one patient's small true satellite
    lesion is predicted at 0.75. A level of 0.8 would drop that lesion too (a missed lesion: lower lesion-wise Dice):
    0.72 is chosen among (0, 0.72, 0.8); the size rule cannot help (the mimic is larger than the satellite)."""
    cases = []
    for i in range(3):
        truth, pred, mimic = _tumour_and_mimic(i)
        boxes = [(mimic, 0.7)]
        if i == 0:
            satellite = (slice(14, 18), slice(18, 22), slice(2, 6))  # 64 voxels, true
            truth[satellite] = 2
            pred[satellite] = 2
            boxes.append((satellite, 0.75))
        cases.append((pred, truth, (1.0, 1.0, 1.0), _probabilities(pred, boxes)))
    settings = PostprocessSettings(component_mm3=(0, 100), component_probability=(0, 0.72, 0.8), et_volume_mm3=(0,))
    rules, steps = fit_rules(cases, settings)
    assert rules.min_component_mm3["WT"] == 0, "100 mm3 would drop the satellite"
    assert rules.min_component_probability["WT"] == 0.72
    wt = next(s for s in steps if s["rule"] == "min_component_probability" and s["region"] == "WT")
    assert [c["probability"] for c in wt["candidates"]] == [0, 0.72, 0.8]
    assert wt["candidates"][1]["lesion_dice"] == pytest.approx(1.0) and wt["candidates"][2]["lesion_dice"] < 0.99
    assert wt["candidates"][0]["lesion_dice"] == pytest.approx(0.5)  # one false lesion each (the satellite merges with its tumour)
    assert all(np.array_equal(rules.apply(p, s, q), t) for p, t, s, q in cases)


def test_older_rules_files_have_no_confidence_rule(tmp_path):
    import json

    path = tmp_path / "postprocess.json"
    path.write_text(json.dumps({"enabled": True, "rules": {"min_component_mm3": {"WT": 10.0, "TC": 0.0, "ET": 0.0},
                                                          "min_et_volume_mm3": 0.0}}))
    rules = read_rules(path)
    assert not any(rules.min_component_probability.values()) and rules.min_component_mm3["WT"] == 10.0


def test_a_patient_keeps_its_most_probable_tumour():
    """Every BraTS-Africa case has a tumour: when the WT rules would remove all of a patient's predicted tumour, its
    component of most tumour probability (summed over its voxels; the largest without probabilities) stays, with its
    inner labels; a confident one-voxel speck never wins over a tumour; a patient with a confident tumour still loses
    its weak mimic."""
    labels = np.zeros((30, 30, 30), dtype=np.uint8)
    weak_big = (slice(2, 10), slice(2, 10), slice(2, 10))      # 512 voxels at 0.70
    weaker = (slice(20, 24), slice(20, 24), slice(20, 24))      # 64 voxels at 0.65
    labels[weak_big] = 2
    labels[3:6, 3:6, 3:6] = 3  # ET inside the tumour that is kept
    labels[weaker] = 2
    probs = _probabilities(labels, [(weak_big, 0.70), (weaker, 0.65)])
    strict = {"WT": 0.8, "TC": 0.0, "ET": 0.0}
    emptied = PostprocessRules(min_component_probability=strict).apply(labels, probabilities=probs)
    assert not emptied.any()
    kept = PostprocessRules(min_component_probability=strict, keep_one_tumour=True).apply(labels, probabilities=probs)
    assert np.array_equal(kept[weak_big], labels[weak_big]) and not kept[weaker].any()
    # a speck more confident than the tumour (0.78 against 0.70) but one voxel: the tumour is kept, not the speck
    speck = (25, 25, 25)
    labels[speck] = 2
    probs = _probabilities(labels, [(weak_big, 0.70), (weaker, 0.65), ((slice(25, 26),) * 3, 0.78)])
    kept = PostprocessRules(min_component_probability=strict, keep_one_tumour=True).apply(labels, probabilities=probs)
    assert np.array_equal(kept[weak_big], labels[weak_big]) and not kept[weaker].any() and kept[speck] == 0
    labels[speck] = 0
    # of two components of one size, the more confident one stays
    labels[weak_big] = 0
    labels[2:6, 2:6, 2:6] = 2
    probs = _probabilities(labels, [((slice(2, 6),) * 3, 0.60), (weaker, 0.70)])
    kept = PostprocessRules(min_component_probability=strict, keep_one_tumour=True).apply(labels, probabilities=probs)
    assert not kept[2:6, 2:6, 2:6].any() and np.array_equal(kept[weaker], labels[weaker])
    labels[2:6, 2:6, 2:6] = 0
    labels[weak_big] = 2
    labels[3:6, 3:6, 3:6] = 3
    by_size = PostprocessRules({"WT": 1000.0, "TC": 0.0, "ET": 0.0}, keep_one_tumour=True).apply(labels)
    assert np.array_equal(by_size[weak_big], labels[weak_big]) and not by_size[weaker].any()
    labels[weaker] = 0
    labels[20:24, 20:24, 20:24] = 2
    probs = _probabilities(labels, [(weaker, 0.95), (weak_big, 0.70)])
    confident = PostprocessRules(min_component_probability=strict, keep_one_tumour=True).apply(labels, probabilities=probs)
    assert not confident[weak_big].any() and confident[weaker].all()  # a confident tumour: the rule works as before


def test_keep_one_tumour_is_written_and_read(tmp_path):
    rules = PostprocessRules({"WT": 10.0, "TC": 0.0, "ET": 0.0}, 0.0, keep_one_tumour=True)
    write_rules(tmp_path / "p.json", rules, True, [], {})
    assert read_rules(tmp_path / "p.json").keep_one_tumour
    rules, _ = fit_rules([(_tumour(), _tumour(), (1.0, 1.0, 1.0), None)], PostprocessSettings(component_mm3=(0,), et_volume_mm3=(0,), keep_one_tumour=False))
    assert not rules.keep_one_tumour


def test_whole_tumour_without_core_is_dropped():
    """A tumour has a core: a WT component holding less core (labels 1 and 3) than the threshold becomes background,
    however large or confident; the threshold is in mm3."""
    labels = _tumour()  # 64 core voxels inside 512 of WT
    plaque = (slice(20, 27), slice(15, 22), slice(12, 19))  # 343 voxels of edema-like mimic, no core
    labels[plaque] = 2
    out = drop_coreless_components(labels, 1.0)
    assert out[plaque].max() == 0 and np.array_equal(out[:12, :12, :12], labels[:12, :12, :12])
    labels[23, 18, 15] = 1  # one core voxel inside the mimic: enough for 1 mm3, not for 2
    assert np.array_equal(drop_coreless_components(labels, 1.0), labels)
    assert drop_coreless_components(labels, 2.0)[plaque].max() == 0
    assert np.array_equal(drop_coreless_components(labels, 2.0, spacing=(2.0, 1.0, 1.0)), labels)  # 1 voxel = 2 mm3
    assert drop_coreless_components(labels, 64 * 2 + 1, spacing=(2.0, 1.0, 1.0)).max() == 0  # the tumour too
    assert drop_coreless_components(labels, 0) is labels
    rules = PostprocessRules(min_wt_core_mm3=2.0)
    assert rules.apply(labels)[plaque].max() == 0 and not rules.is_identity


def test_fit_drops_confident_coreless_mimics_and_spares_a_patient_whose_tumour_has_no_predicted_core():
    """Each patient: a tumour with a core and a mimic predicted as confidently as the tumour (0.95) but without core;
    no confidence level separates them, the core rule does. One patient's only tumour is predicted without core:
    keep_one_tumour keeps it, so the rule is chosen (the smallest threshold that removes every mimic, 1 mm3)."""
    cases = []
    for i in range(3):
        truth, pred, _ = _tumour_and_mimic(i)
        cases.append((pred, truth, (1.0, 1.0, 1.0), _probabilities(pred, [])))
    truth = np.zeros(SHAPE, dtype=np.uint8)
    truth[4:12, 4:12, 4:12] = 2  # a tumour of edema only (as predicted)
    cases.append((truth.copy(), truth, (1.0, 1.0, 1.0), _probabilities(truth, [])))
    settings = PostprocessSettings(component_mm3=(0,), component_probability=(0, 0.9), et_volume_mm3=(0,), wt_core_mm3=(0, 1, 50))
    rules, steps = fit_rules(cases, settings)
    assert rules.min_wt_core_mm3 == 1 and rules.min_component_probability["WT"] == 0
    core = next(s for s in steps if s["rule"] == "min_wt_core_mm3")
    assert [c["lesion_dice"] for c in core["candidates"]] == pytest.approx([0.625, 1.0, 1.0])
    assert all(np.array_equal(rules.apply(p, s, q), t) for p, t, s, q in cases)
    no_keep = replace(settings, keep_one_tumour=False)
    rules, _ = fit_rules(cases, no_keep)
    assert rules.min_wt_core_mm3 == 0, "without keep_one_tumour the rule would empty the last patient: not allowed"


def test_rules_files_without_a_core_rule_read_as_none(tmp_path):
    import json

    path = tmp_path / "postprocess.json"
    path.write_text(json.dumps({"enabled": True, "rules": {"min_component_mm3": {"WT": 10.0, "TC": 0.0, "ET": 0.0},
                                                          "min_et_volume_mm3": 0.0, "keep_one_tumour": True}}))
    assert read_rules(path).min_wt_core_mm3 == 0
    write_rules(path, PostprocessRules(min_wt_core_mm3=25.0), True, [], {})
    assert read_rules(path).min_wt_core_mm3 == 25.0


def test_the_rules_file_records_the_mirrorings_fitted_on(tmp_path):
    """A confidence rule holds for the probabilities it was fitted on: postprocess.json says which (infer.tta), and an
    ensemble of members predicted alike records their one value."""
    from tumorseg.evaluation.postprocess import fitted_tta, read_fitted_tta

    assert fitted_tta({"tta": "all"}) == "all" and fitted_tta({"tta": ["lr", "lr"]}) == "lr"
    assert fitted_tta({"tta": ["all", "none"]}) == ["all", "none"] and fitted_tta({}) is None
    write_rules(tmp_path / "p.json", PostprocessRules(), True, [], {}, tta="lr")
    assert read_fitted_tta(tmp_path / "p.json") == "lr"
    write_rules(tmp_path / "mixed.json", PostprocessRules(), True, [], {}, tta=["all", "none"])
    assert read_fitted_tta(tmp_path / "mixed.json") is None
    old = json.loads((tmp_path / "p.json").read_text())
    del old["tta"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert read_fitted_tta(tmp_path / "old.json") is None
