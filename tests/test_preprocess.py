"""Preprocessing of small hand-made cases gives exactly the expected crop and normalisation."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from conftest import write_case
from tumorseg.data.labels import SEQUENCES
from tumorseg.data.download import DataSettings, run_download
from tumorseg.data.preprocess import PreprocessSettings, axial_range, normalize_channel, preprocess_case, run_preprocess
from tumorseg.data.slices import SliceStore, read_case_index, read_slice_index

SHAPE = (6, 5, 10)  # X, Y, Z


def hand_case():
    """Brain in slices z=2..6, tumour in z=4..5; channel c has values c*100 + 1..."""
    channels = []
    for c in range(4):
        v = np.zeros(SHAPE, dtype=np.int16)
        v[1:5, 1:4, 2:7] = 100 * (c + 1)
        v[2, 2, 3] = 100 * (c + 1) + 50  # the channel's maximum
        v[1, 1, 2] = 10 * (c + 1)  # the brain's minimum
        channels.append(v)
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[2, 2, 4] = 1
    mask[3, 2, 4] = 3
    mask[2:4, 1:3, 5] = 2
    return channels, mask


def test_crop_to_brain_and_tumour():
    channels, mask = hand_case()
    images, labels, _, (z0, z1) = preprocess_case(channels, mask, PreprocessSettings(crop="brain"))
    assert (z0, z1) == (2, 7)
    assert images.shape == (5, 4, 5, 6) and images.dtype == np.float16  # (Z, C, Y, X)
    assert labels.shape == (5, 5, 6) and labels.dtype == np.uint8
    assert labels[2, 2, 2] == 1 and labels[2, 2, 3] == 3  # z=4 -> row 2; (y, x) order
    _, _, _, zt = preprocess_case(channels, mask, PreprocessSettings(crop="tumour"))
    assert zt == (4, 6)
    _, _, _, zm = preprocess_case(channels, mask, PreprocessSettings(crop="tumour", crop_margin=3))
    assert zm == (1, 9)
    assert axial_range(np.zeros((2, 2, 3), bool)) == (0, 0)


def test_minmax_is_the_original_division_by_the_maximum():
    channels, mask = hand_case()
    images, _, _, (z0, _) = preprocess_case(channels, mask, PreprocessSettings(normalize="minmax"))
    for c in range(4):
        top = 100 * (c + 1) + 50
        np.testing.assert_array_equal(images[:, c], (channels[c].T[z0:7] / top).astype(np.float16))
        assert images[3 - z0, c, 2, 2] == 1.0  # the maximum at voxel (x=2, y=2, z=3)
    assert images.min() == 0.0 and images.max() == 1.0


def test_percentile_and_zscore_over_brain_voxels():
    rng = np.random.default_rng(0)
    vol = np.zeros((8, 8, 4), dtype=np.float32)
    vol[2:6, 2:6, :] = rng.normal(500, 50, (4, 4, 4))
    brain = vol != 0
    z = normalize_channel(vol, brain, PreprocessSettings(normalize="zscore"))
    assert z[brain].mean() == pytest.approx(0, abs=1e-5) and z[brain].std() == pytest.approx(1, abs=1e-5)
    assert (z[~brain] == 0).all()
    p = normalize_channel(vol, brain, PreprocessSettings(normalize="percentile", percentiles=(10, 90)))
    lo, hi = np.percentile(vol[brain], (10, 90))
    np.testing.assert_allclose(p[brain], (np.clip(vol[brain], lo, hi) - lo) / (hi - lo), rtol=0, atol=1e-6)
    assert p.min() == 0 and p.max() == pytest.approx(1)
    assert ((p[brain] == 0).sum(), (p[brain] >= 0.99999).sum()) == (7, 7)  # 10% of 64 clipped each side


def _run_pipeline(tmp_path, **settings):
    src = tmp_path / "src"
    channels, mask = hand_case()
    for i, case_id in enumerate(["BraTS-SSA-00031-000", "BraTS-SSA-00030-000"]):
        write_case(src, case_id, dict(zip(SEQUENCES, channels)) | {"seg": mask}, cohort=["glioma", "other_neoplasm"][i])
    run_download(DataSettings(source="local", local_path=str(src), workers=1), tmp_path / "raw", tmp_path / "manifest.parquet", tmp_path / "dl")
    return run_preprocess(PreprocessSettings(**settings), tmp_path / "manifest.parquet", tmp_path / "raw", tmp_path / "pre")


def test_slice_index_and_store(tmp_path):
    _run_pipeline(tmp_path, workers=1)
    index = read_slice_index(tmp_path / "pre" / "slice_index.parquet")
    assert index["case_id"].tolist() == ["BraTS-SSA-00030-000"] * 5 + ["BraTS-SSA-00031-000"] * 5  # sorted
    first = index[index["case_id"] == "BraTS-SSA-00030-000"]
    assert first["slice"].tolist() == [2, 3, 4, 5, 6] and first["row"].tolist() == [0, 1, 2, 3, 4]
    assert first["has_tumour"].tolist() == [False, False, True, True, False]
    assert first["n_netc"].tolist() == [0, 0, 1, 0, 0] and first["n_et"].tolist() == [0, 0, 1, 0, 0]
    assert first["n_edema"].tolist() == [0, 0, 0, 4, 0]
    assert first["n_brain"].tolist() == [12] * 5
    assert set(index["cohort"]) == {"glioma", "other_neoplasm"}
    cases = read_case_index(tmp_path / "pre" / "cases.parquet")
    assert cases[["nx", "ny", "nz", "z_start", "z_stop"]].values.tolist() == [[6, 5, 10, 2, 7]] * 2
    store = SliceStore(tmp_path / "pre")
    img = store.image("BraTS-SSA-00030-000", 3)
    assert img.shape == (4, 5, 6) and store.label("BraTS-SSA-00030-000", 3).sum() == 8


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_outputs_are_byte_identical_across_runs_and_worker_counts(tmp_path):
    _run_pipeline(tmp_path / "a", workers=1)
    _run_pipeline(tmp_path / "b", workers=2)
    assert _digests(tmp_path / "a" / "pre") == _digests(tmp_path / "b" / "pre")


def test_crash_leaves_previous_output_untouched(tmp_path, monkeypatch):
    _run_pipeline(tmp_path, workers=1)
    before = _digests(tmp_path / "pre")
    import tumorseg.data.preprocess as pre

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-run")

    monkeypatch.setattr(pre, "write_parquet", boom)
    with pytest.raises(KeyboardInterrupt):
        run_preprocess(PreprocessSettings(workers=1, normalize="zscore"), tmp_path / "manifest.parquet", tmp_path / "raw", tmp_path / "pre")
    assert _digests(tmp_path / "pre") == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no temporary folder left behind"
    assert os.listdir(tmp_path / "pre")
