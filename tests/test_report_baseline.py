"""The report's one-threshold FLAIR baseline, streamed per patient through exact float16 histograms."""

from __future__ import annotations

import numpy as np
import pytest

from tumorseg.evaluation.report import flair_histograms, flair_threshold_baseline, histogram_quantiles


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_histogram_quantiles_equal_numpy_on_the_data(seed):
    rng = np.random.default_rng(seed)
    data = rng.gamma(2.0, 0.2, size=rng.integers(50, 5000)).astype(np.float16)
    data = data[data > 0]
    counts = np.bincount(data.view(np.uint16), minlength=2**16)
    present = np.flatnonzero(counts)
    values = present.astype(np.uint16).view(np.float16).astype(np.float32)
    q = np.linspace(0.5, 0.999, 120)
    assert np.array_equal(histogram_quantiles(counts[present], values, q), np.quantile(data.astype(np.float32), q))


def test_histograms_match_the_voxels_and_the_baseline_is_reproducible(tiny_pipeline):
    from tumorseg.data.split import read_split

    split = read_split(tiny_pipeline / "split.parquet")
    train_ids = sorted(split.loc[split["split"] == "train", "case_id"].unique())
    brain, tumour = flair_histograms(tiny_pipeline / "pre", train_ids)
    flair = np.concatenate([np.load(tiny_pipeline / "pre" / f"{c}.image.npy")[:, 3].ravel() for c in train_ids])
    labels = np.concatenate([np.load(tiny_pipeline / "pre" / f"{c}.label.npy").ravel() for c in train_ids])
    assert brain.sum() == (flair > 0).sum() and tumour.sum() == ((flair > 0) & (labels > 0)).sum()
    result = flair_threshold_baseline(tiny_pipeline / "pre", split)
    # brute force over the same candidates: the chosen threshold is the best Dice on the training voxels
    v, t = flair[flair > 0].astype(np.float32), labels[flair > 0] > 0
    candidates = np.quantile(v, np.linspace(0.5, 0.999, 120))
    scores = [2 * (t & (v > th)).sum() / ((v > th).sum() + t.sum()) for th in candidates]
    assert result["threshold"] == round(float(candidates[int(np.argmax(scores))]), 4)
    assert 0 <= result["dice_WT"] <= 1 and result == flair_threshold_baseline(tiny_pipeline / "pre", split)
