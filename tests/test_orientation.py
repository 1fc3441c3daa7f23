"""The pipeline reads every case in one orientation, whatever the files' own: the same brain stored as RAS (dcm2niix),
as a sagittal volume, or with only its mask reoriented, preprocesses and scores exactly as the BraTS (LPS) original."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nibabel import orientations

from conftest import simple_volumes
from tumorseg.data.brats import COHORT_FOLDER, MASK, case_filename, discover_cases, manifest_frame, read_volume, validate_case
from tumorseg.data.preprocess import PreprocessSettings, run_preprocess
from tumorseg.data.slices import image_file, label_file
from tumorseg.evaluation.scoring import Truths
from tumorseg.fileio import write_parquet

CASE = "BraTS-SSA-00012-000"
LPS_ANISOTROPIC = np.diag([-1.0, -0.9, 2.5, 1.0])  # LPS, voxels 1 x 0.9 x 2.5 mm


def _write(root, reorient: dict[str, tuple[str, str, str]]):
    """The case of simple_volumes in LPS, with the files named in ``reorient`` saved in those axis codes instead
    (same world coordinates: the same brain)."""
    folder = root / "BraTS-Africa" / COHORT_FOLDER["glioma"] / CASE
    folder.mkdir(parents=True)
    for kind, data in simple_volumes(shape=(14, 12, 10)).items():
        img = nib.Nifti1Image(data, LPS_ANISOTROPIC)
        if kind in reorient:
            img = img.as_reoriented(orientations.ornt_transform(orientations.io_orientation(img.affine),
                                                                 orientations.axcodes2ornt(reorient[kind])))
        nib.save(img, folder / case_filename(CASE, kind))
    return root


def _pipeline(root, tmp_path):
    """The manifest row, the preprocessed arrays and case row, and the truth the scoring reads."""
    (case,) = discover_cases(root)
    row = validate_case(case, root)
    manifest = tmp_path / f"{root.name}-manifest.parquet"
    write_parquet(manifest_frame([row]), manifest)
    out = tmp_path / f"{root.name}-preprocessed"
    run_preprocess(PreprocessSettings(workers=1), manifest, root, out)
    cases = pd.read_parquet(out / "cases.parquet")
    return (row, np.load(out / image_file(CASE)), np.load(out / label_file(CASE)), cases.iloc[0].to_dict(),
            Truths(root, manifest)(CASE))


ALL_RAS = {k: ("R", "A", "S") for k in ("t1n", "t1c", "t2w", "t2f", MASK)}
ALL_SAGITTAL = {k: ("S", "R", "A") for k in ("t1n", "t1c", "t2w", "t2f", MASK)}


@pytest.mark.parametrize("reorient, recorded", [(ALL_RAS, "RAS"), (ALL_SAGITTAL, "SRA"),
                                                ({MASK: ("R", "A", "S")}, "t1n LPS, t1c LPS, t2w LPS, t2f LPS, seg RAS")],
                         ids=["ras", "sagittal", "mask-only"])
def test_a_case_in_another_orientation_is_read_as_the_lps_original(tmp_path, reorient, recorded):
    original = _pipeline(_write(tmp_path / "lps", {}), tmp_path)
    moved = _pipeline(_write(tmp_path / "moved", reorient), tmp_path)
    row, images, labels, case_row, truth = moved
    assert original[0].orientation == "LPS" and row.orientation == recorded
    assert row.status == "ok", row.reason
    # shape and voxel sizes in the models' orientation, as the original's
    assert (row.nx, row.ny, row.nz, row.spacing_x, row.spacing_y, row.spacing_z) == (14, 12, 10, 1.0, 0.9, 2.5)
    assert np.array_equal(images, original[1]) and np.array_equal(labels, original[2])
    assert {k: case_row[k] for k in ("nx", "ny", "nz", "spacing_x", "spacing_y", "spacing_z", "z_start", "z_stop")} == \
        {k: original[3][k] for k in ("nx", "ny", "nz", "spacing_x", "spacing_y", "spacing_z", "z_start", "z_stop")}
    assert np.array_equal(truth, original[4]) and truth.sum() > 0


def test_read_volume_returns_the_model_orientation_and_its_spacing(tmp_path):
    root = _write(tmp_path / "sagittal", ALL_SAGITTAL)
    path = next(root.rglob(f"*-{MASK}.nii.gz"))
    stored = np.asanyarray(nib.load(path).dataobj)
    assert stored.shape == (10, 14, 12)  # S, R, A
    data, spacing = read_volume(path)
    assert data.shape == (14, 12, 10) and spacing == pytest.approx((1.0, 0.9, 2.5))
    assert np.array_equal(data, simple_volumes(shape=(14, 12, 10))[MASK])


def _write_files(root, affines: dict[str, np.ndarray | None], no_qform: tuple[str, ...] = ()):
    """The simple_volumes case in LPS, with the files named in ``affines`` given those sform affines (None: neither
    qform nor sform)."""
    folder = root / "BraTS-Africa" / COHORT_FOLDER["glioma"] / CASE
    folder.mkdir(parents=True)
    for kind, data in simple_volumes(shape=(14, 12, 10)).items():
        img = nib.Nifti1Image(data, LPS_ANISOTROPIC)
        if kind in affines:
            img = nib.Nifti1Image(data, None)
            if affines[kind] is not None:
                img.set_sform(affines[kind], code=2)
        nib.save(img, folder / case_filename(CASE, kind))
    (case,) = discover_cases(root)
    return validate_case(case, root)


SHIFTED = LPS_ANISOTROPIC.copy()
SHIFTED[0, 3] = 1.0  # one voxel to the side


@pytest.mark.parametrize("affines, expected", [
    ({MASK: SHIFTED}, "seg: not on t1n's voxel grid"),
    ({"t2w": np.diag([0.0, 1.0, 1.0, 1.0])}, "t2w: unusable affine"),
    ({MASK: None}, "seg: no qform or sform, unlike the other files"),
], ids=["shifted-mask", "singular-affine", "mask-without-affine"])
def test_files_off_the_case_grid_or_without_a_usable_affine_are_reported_not_read(tmp_path, affines, expected):
    row = _write_files(tmp_path, affines)
    assert row.status == "skipped" and expected in row.reason, row.reason


def test_a_case_without_any_orientation_is_read_as_stored(tmp_path):
    row = _write_files(tmp_path, {k: None for k in ("t1n", "t1c", "t2w", "t2f", MASK)})
    assert row.status == "ok" and row.orientation == "none"
    data, spacing = read_volume(next(tmp_path.rglob(f"*-{MASK}.nii.gz")))
    assert np.array_equal(data, simple_volumes(shape=(14, 12, 10))[MASK]) and spacing == (1.0, 1.0, 1.0)


def test_a_manifest_from_an_older_tumorseg_says_to_rerun_download(tmp_path):
    from tumorseg.data.brats import read_manifest

    row = _write_files(tmp_path / "raw", {})
    path = tmp_path / "manifest.parquet"
    write_parquet(manifest_frame([row]).drop(columns=["orientation"]), path)
    with pytest.raises(ValueError, match=r"columns missing: \['orientation'\].*older tumorseg: rerun `dvc repro download`"):
        read_manifest(path)


def test_the_app_refuses_a_mask_on_another_grid_than_the_images(tmp_path):
    from tumorseg.app.support import load_mask_for
    from tumorseg.prediction import InputError

    seg = simple_volumes(shape=(14, 12, 10))[MASK]
    lps, ras = tmp_path / "lps-seg.nii.gz", tmp_path / "ras-seg.nii.gz"
    nib.save(nib.Nifti1Image(seg, LPS_ANISOTROPIC), lps)
    img = nib.Nifti1Image(seg, LPS_ANISOTROPIC)
    nib.save(img.as_reoriented(orientations.ornt_transform(orientations.io_orientation(img.affine),
                                                           orientations.axcodes2ornt(("R", "A", "S")))), ras)
    assert np.array_equal(load_mask_for(seg.shape, lps, LPS_ANISOTROPIC), seg)
    with pytest.raises(InputError, match="ras-seg.nii.gz: mask not on the images' voxel grid \\(stored RAS, images LPS"):
        load_mask_for(seg.shape, ras, LPS_ANISOTROPIC)  # same shape: without the check, a mirrored overlay


def test_validate_case_and_the_app_decode_each_file_once(tmp_path, monkeypatch):
    """Decompressing and decoding a full-size BraTS volume is the cost of the download stage and of loading a case in
    the app: each file is read and decoded once, not once per check."""
    from nibabel.arrayproxy import ArrayProxy

    import tumorseg.data.brats as brats
    from tumorseg.app.support import load_mask_for

    root = _write(tmp_path / "lps", {})
    (case,) = discover_cases(root)
    decodes, reads = [], []
    original_array, original_read = ArrayProxy.__array__, brats.read_nifti
    monkeypatch.setattr(ArrayProxy, "__array__", lambda self, *a, **k: decodes.append(1) or original_array(self, *a, **k))
    monkeypatch.setattr(brats, "read_nifti", lambda path: reads.append(path) or original_read(path))
    assert validate_case(case, root).status == "ok"
    assert (len(reads), len(decodes)) == (5, 5)
    decodes.clear(), reads.clear()
    seg = case.path / case_filename(CASE, MASK)
    assert load_mask_for((14, 12, 10), seg, LPS_ANISOTROPIC).shape == (14, 12, 10)
    assert (len(reads), len(decodes)) == (1, 1)
