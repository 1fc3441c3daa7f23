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
