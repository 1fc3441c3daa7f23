"""Every kind of bad case gives a clear reason naming the case and file, or stops the run."""

from __future__ import annotations

import gzip
import logging

import numpy as np
import pandas as pd
import pytest

from conftest import simple_volumes, write_case
from tumorseg.data.brats import BadCaseError, MANIFEST_COLUMNS, case_filename, discover_cases, load_mask, read_manifest, validate_case
from tumorseg.data.download import DataSettings, run_download

CASE = "BraTS-SSA-00010-000"


def _validate(root):
    (case,) = discover_cases(root)
    return validate_case(case, root)


def test_valid_case_is_ok_with_checksums(tmp_path):
    write_case(tmp_path, CASE, simple_volumes())
    row = _validate(tmp_path)
    assert row.status == "ok" and row.reason == ""
    assert (row.nx, row.ny, row.nz) == (12, 10, 8)
    assert (row.spacing_x, row.spacing_y, row.spacing_z) == (1.0, 1.0, 1.0)
    flat = row.flat()
    assert flat["t2f_path"] == f"BraTS-Africa/95_Glioma/{CASE}/{CASE}-t2f.nii.gz"
    assert len(flat["seg_sha256"]) == 64 and flat["t1n_dtype"] == "int16"


def _break(tmp_path, mutate):
    folder = write_case(tmp_path, CASE, simple_volumes())
    mutate(folder)
    return _validate(tmp_path)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda f: (f / case_filename(CASE, "t2w")).write_bytes(b""), f"t2w: zero-byte file BraTS-Africa/95_Glioma/{CASE}/{CASE}-t2w.nii.gz"),
        (lambda f: (f / case_filename(CASE, "t1c")).unlink(), "t1c: missing file"),
        (lambda f: (f / case_filename(CASE, "seg")).unlink(), "seg: missing file"),
        (lambda f: _truncate(f / case_filename(CASE, "t2f")), "t2f: unreadable or truncated NIfTI"),
        (lambda f: (f / case_filename(CASE, "t1n")).write_bytes(gzip.compress(b"not a nifti at all" * 50)), "t1n: unreadable or truncated NIfTI"),
    ],
    ids=["zero-byte", "missing-sequence", "missing-mask", "truncated", "not-nifti"],
)
def test_broken_files(tmp_path, mutate, expected):
    row = _break(tmp_path, mutate)
    assert row.status == "skipped"
    assert expected in row.reason


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_shapes_disagree(tmp_path):
    vols = simple_volumes()
    vols["t2w"] = np.zeros((12, 10, 9), dtype=np.int16)
    write_case(tmp_path, CASE, vols)
    row = _validate(tmp_path)
    assert row.status == "skipped" and "shapes disagree" in row.reason and "t2w 12x10x9" in row.reason


def test_non_finite_voxels(tmp_path):
    vols = simple_volumes()
    t1c = vols["t1c"].astype(np.float32)
    t1c[3, 3, 3] = np.nan
    t1c[4, 3, 3] = np.inf
    vols["t1c"] = t1c
    write_case(tmp_path, CASE, vols)
    row = _validate(tmp_path)
    assert row.status == "skipped" and "t1c: 2 non-finite voxels" in row.reason


def test_labels_outside_scheme(tmp_path):
    vols = simple_volumes()
    vols["seg"][1, 1, 1] = 7
    write_case(tmp_path, CASE, vols)
    row = _validate(tmp_path)
    assert row.status == "skipped" and "seg: labels [7] outside {0,1,2,3}" in row.reason


def test_legacy_label_4_is_remapped_with_warning(tmp_path, caplog):
    vols = simple_volumes()
    seg = vols["seg"]
    seg[seg == 3] = 4
    write_case(tmp_path, CASE, vols)
    with caplog.at_level(logging.WARNING):
        row = _validate(tmp_path)
    assert row.status == "ok" and row.label4_voxels == 1
    assert "legacy label 4" in caplog.text and CASE in caplog.text
    mask = load_mask(tmp_path / row.files["seg"]["path"])
    assert set(np.unique(mask)) == {0, 1, 2, 3}


def _local_source(tmp_path, n_bad):
    src = tmp_path / "src"
    for i in range(3):
        folder = write_case(src, f"BraTS-SSA-0001{i}-000", simple_volumes(seed=i), cohort="glioma" if i else "other_neoplasm")
        if i < n_bad:
            (folder / case_filename(f"BraTS-SSA-0001{i}-000", "t2w")).write_bytes(b"")
    return src / "BraTS-Africa"


def test_skip_lists_bad_cases_in_manifest(tmp_path):
    src = _local_source(tmp_path, n_bad=1)
    settings = DataSettings(source="local", local_path=str(src), on_bad_case="skip", workers=1)
    df = run_download(settings, tmp_path / "raw", tmp_path / "manifest.parquet", tmp_path / "dl")
    manifest = read_manifest(tmp_path / "manifest.parquet")
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    pd.testing.assert_frame_equal(df, manifest)
    bad = manifest.set_index("case_id").loc["BraTS-SSA-00010-000"]
    assert bad["status"] == "skipped" and "t2w: zero-byte file" in bad["reason"]
    assert (manifest["status"] == "ok").sum() == 2
    assert set(manifest["cohort"]) == {"glioma", "other_neoplasm"}
    # the source was copied, not modified or moved
    assert (src / "51_OtherNeoplasms" / "BraTS-SSA-00010-000" / "BraTS-SSA-00010-000-t2w.nii.gz").stat().st_size == 0
    assert (tmp_path / "raw" / "BraTS-Africa" / "95_Glioma" / "BraTS-SSA-00011-000").is_dir()


def test_fail_stops_and_names_every_bad_case(tmp_path):
    src = _local_source(tmp_path, n_bad=2)
    settings = DataSettings(source="local", local_path=str(src), on_bad_case="fail", workers=1)
    with pytest.raises(BadCaseError) as err:
        run_download(settings, tmp_path / "raw", tmp_path / "manifest.parquet", tmp_path / "dl")
    msg = str(err.value)
    assert "2 of 3 cases" in msg and "BraTS-SSA-00010-000: t2w: zero-byte" in msg and "BraTS-SSA-00011-000" in msg
    assert not (tmp_path / "manifest.parquet").exists()
    assert not (tmp_path / "raw").exists(), "nothing half-written is left behind"


def test_missing_local_path_is_a_clear_error(tmp_path):
    settings = DataSettings(source="local", local_path=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        run_download(settings, tmp_path / "raw", tmp_path / "m.parquet", tmp_path / "dl")
    with pytest.raises(ValueError, match="data.local_path is empty"):
        run_download(DataSettings(source="local"), tmp_path / "raw", tmp_path / "m.parquet", tmp_path / "dl")
