"""The embedded synthetic dataset: layout, file contents, realism checks, determinism."""

from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pytest

from tumorseg.data.brats import CASE_ID_RE, FILE_KINDS, case_filename, discover_cases
from tumorseg.data.labels import LABELS
from tumorseg.data.synthetic import SyntheticSettings, cohorts, generate_case, write_dataset


def test_layout_names_shapes_dtypes_labels(tiny_synthetic):
    root, settings = tiny_synthetic
    dataset = root / "BraTS-Africa"
    assert {p.name for p in dataset.iterdir()} <= {"95_Glioma", "51_OtherNeoplasms"}
    cases = discover_cases(root)
    assert [c.case_id for c in cases] == [f"BraTS-SSA-{n:05d}-000" for n in range(2, 6)]
    for case in cases:
        assert CASE_ID_RE.match(case.case_id)
        assert case.path.parent.name == {"glioma": "95_Glioma", "other_neoplasm": "51_OtherNeoplasms"}[case.cohort]
        files = sorted(p.name for p in case.path.iterdir())
        assert files == sorted(case_filename(case.case_id, k) for k in FILE_KINDS)
        for kind in FILE_KINDS:
            img = nib.load(case.path / case_filename(case.case_id, kind))
            data = np.asanyarray(img.dataobj)
            assert data.shape == settings.shape
            assert data.dtype == (np.uint8 if kind == "seg" else np.int16)
            assert img.header.get_zooms() == (1.0, 1.0, 1.0)
            assert img.header.get_xyzt_units() == ("mm", "sec")
            assert abs(np.linalg.det(img.affine[:3, :3])) == pytest.approx(1.0)
            if kind == "seg":
                assert set(np.unique(data)) <= set(LABELS)
                assert (data > 0).sum() > 0, "every patient has a tumour"
            else:
                assert data.min() >= 0 and data.max() > 0


def _case(number=11, cohort="glioma", shape=(96, 96, 64), seed=3):
    return generate_case(number, cohort, SyntheticSettings(shape=shape, seed=seed))[0]


def test_contrasts_follow_real_mri():
    """Edema bright on FLAIR/T2, rim bright on T1c, CSF bright on T2 and dark on FLAIR."""
    v = _case()
    seg = v["seg"]
    brain = v["t1n"] > 0
    healthy = brain & (seg == 0)
    assert (seg == 2).any() and (seg == 3).any()

    def mean(seq, region):
        return v[seq][region].astype(float).mean()

    for seq in ("t2f", "t2w"):
        assert mean(seq, seg == 2) > 1.2 * mean(seq, healthy)
    assert mean("t1c", seg == 3) > 1.2 * mean("t1c", healthy)
    assert mean("t1c", seg == 3) > 1.5 * mean("t1n", seg == 3) * (mean("t1c", healthy) / mean("t1n", healthy))
    bright_t2 = healthy & (v["t2w"] > np.percentile(v["t2w"][healthy], 98))  # mostly CSF
    assert mean("t2f", bright_t2) < mean("t2f", healthy)


def _best_threshold_dice(image: np.ndarray, truth: np.ndarray, brain: np.ndarray) -> float:
    values = image[brain].astype(float)
    t = truth[brain]
    best = 0.0
    for q in np.linspace(1, 99, 99):
        thr = np.percentile(values, q)
        for pred in (values > thr, values < thr):
            inter = (pred & t).sum()
            best = max(best, 2 * inter / (pred.sum() + t.sum()))
    return best


def test_no_single_threshold_segments_the_tumour():
    """A one-threshold FLAIR (or any one sequence) baseline must stay well short of a model."""
    for number, cohort in ((11, "glioma"), (12, "other_neoplasm"), (13, "glioma")):
        v = _case(number, cohort)
        brain, wt = v["t1n"] > 0, v["seg"] > 0
        for seq in ("t1n", "t1c", "t2w", "t2f"):
            assert _best_threshold_dice(v[seq], wt, brain) < 0.8, (number, seq)


def test_cases_vary_in_size_position_count_and_scale():
    settings = SyntheticSettings(shape=(64, 64, 40), seed=1)
    sizes, centres, maxima = [], [], []
    for n in range(2, 10):
        v, _ = generate_case(n, "glioma" if n % 2 else "other_neoplasm", settings)
        wt = np.argwhere(v["seg"] > 0)
        sizes.append(len(wt))
        centres.append(wt.mean(axis=0))
        maxima.append(v["t2f"].max())
    assert max(sizes) > 3 * min(sizes)
    assert np.ptp(np.array(centres), axis=0).max() > 10
    assert max(maxima) > 2 * min(maxima)


def test_cohort_proportion_and_determinism(tmp_path):
    settings = SyntheticSettings(n_patients=146, shape=(32, 32, 32))
    labels = cohorts(settings)
    assert labels.count("glioma") == 95 and labels.count("other_neoplasm") == 51
    small = SyntheticSettings(n_patients=2, shape=(40, 40, 24), seed=5)

    def digest(root):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.nii.gz"))}

    a = digest(write_dataset(tmp_path / "a", small, workers=1, progress=False))
    b = digest(write_dataset(tmp_path / "b", small, workers=2, progress=False))
    c = digest(write_dataset(tmp_path / "c", SyntheticSettings(n_patients=2, shape=(40, 40, 24), seed=6), progress=False))
    assert a == b, "same seed -> byte-identical files, whatever the worker count"
    assert a != c


@pytest.mark.slow
def test_full_brats_grid():
    v = _case(shape=(240, 240, 155))
    assert all(a.shape == (240, 240, 155) for a in v.values())
    assert (v["seg"] > 0).sum() > 1000


def test_tumour_mimics_are_background_and_look_like_tumour():
    """Plaques (edema-like on FLAIR, no core) and vessels (bright on T1c) are drawn in, and labelled 0."""
    import tumorseg.data.synthetic as syn

    tissues = {}
    original = syn._add_mimics

    def spy(mrng, grid, shape, centre, radii, depth, brain, tissue):
        original(mrng, grid, shape, centre, radii, depth, brain, tissue)
        tissues["last"] = tissue.copy()

    settings = SyntheticSettings(shape=(96, 96, 48), seed=3)
    found = {"plaque": 0, "vessel": 0}
    try:
        syn._add_mimics = spy
        for number in range(2, 12):
            volumes, _ = syn.generate_case(number, "glioma", settings)
            tissue, seg, flair, t1c = tissues["last"], volumes["seg"], volumes["t2f"].astype(float), volumes["t1c"].astype(float)
            plaque, vessel = (tissue == syn.PLAQUE) & (seg == 0), (tissue == syn.VESSEL) & (seg == 0)
            brain = flair > 0
            if plaque.sum() > 20:
                found["plaque"] += 1
                assert np.median(flair[plaque]) > 1.3 * np.median(flair[brain & (seg == 0)])  # FLAIR-bright
            if vessel.sum() > 15:
                found["vessel"] += 1
                assert np.median(t1c[vessel]) > 1.15 * np.median(t1c[brain & (seg == 0)])  # bright on T1c
    finally:
        syn._add_mimics = original
    assert found["plaque"] >= 3 and found["vessel"] >= 3
