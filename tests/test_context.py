"""2.5D input: each slice with its neighbours as extra channels, the same in training, inference and predict."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from tumorseg.config import ParamsError, from_mapping
from tumorseg.data.context import centre_slice, context_rows, input_channels, stack_context, volume_batch
from tumorseg.evaluation.inference import predict_probabilities
from tumorseg.training.augment import IntensityJitter
from tumorseg.training.data import load_bank
from tumorseg.training.settings import ModelSettings, TrainSettings


def test_neighbour_rows_stop_at_the_stored_slab():
    assert context_rows(np.array([0, 1, 4]), 5, 1).tolist() == [[-1, 0, 1], [0, 1, 2], [3, 4, -1]]
    assert context_rows(np.array([1]), 5, 2).tolist() == [[-1, 0, 1, 2, 3]]
    assert context_rows(np.array([2]), 5, 0).tolist() == [[2]]
    assert input_channels(0) == 4 and input_channels(1) == 12 and input_channels(2) == 20


def test_stacked_channels_are_neighbour_major_and_zero_past_the_slab():
    volume = torch.arange(3 * 4 * 2 * 2, dtype=torch.float32).reshape(3, 4, 2, 2) + 1  # no zeros of its own
    x = stack_context(volume, torch.from_numpy(context_rows(np.arange(3), 3, 1)))
    assert x.shape == (3, 12, 2, 2)
    assert torch.equal(x[1, 0:4], volume[0]) and torch.equal(x[1, 4:8], volume[1]) and torch.equal(x[1, 8:12], volume[2])
    assert x[0, 0:4].abs().sum() == 0 and x[2, 8:12].abs().sum() == 0, "no slice below the first or above the last"
    assert torch.equal(centre_slice(x), volume)


@pytest.mark.parametrize("start, stop", [(0, 7), (0, 3), (3, 7), (6, 7), (2, 5)])
def test_a_batch_reads_only_its_slab_and_matches_the_whole_volume(start, stop):
    images = np.random.default_rng(0).normal(size=(7, 4, 3, 3)).astype(np.float16)
    whole = stack_context(torch.from_numpy(images.astype(np.float32)), torch.from_numpy(context_rows(np.arange(7), 7, 2)))
    assert torch.equal(volume_batch(images, start, stop, 2), whole[start:stop])
    assert torch.equal(volume_batch(images, start, stop, 0), torch.from_numpy(images[start:stop].astype(np.float32)))


class _LookAbove(torch.nn.Module):
    """A 'model' whose output for a slice is the FLAIR of the slice above it (channel 8 + 3 with context 1)."""

    def forward(self, x):
        return x[:, 11:12].repeat(1, 3, 1, 1) * 100 - 50


def test_inference_feeds_each_slice_its_neighbours_whatever_the_batch_size():
    images = np.zeros((6, 4, 8, 8), dtype=np.float16)
    images[3, 3, 2:5, 2:5] = 1  # a FLAIR blob on slice 3 only
    for batch_size in (1, 2, 4, 32):
        probs = predict_probabilities(_LookAbove(), images, batch_size, context=1, channels_last=False)
        assert probs.shape == (6, 3, 8, 8)
        hot = sorted({int(z) for z in np.nonzero(probs[:, 0] > 0.5)[0]})
        assert hot == [2], f"batch {batch_size}: only the slice below the blob sees it above"


def test_bank_holds_each_slice_once_and_maps_its_neighbours(tiny_pipeline):
    index = pd.read_parquet(tiny_pipeline / "pre" / "slice_index.parquet")
    case = sorted(index["case_id"].unique())[0]
    rows = index[index["case_id"] == case]
    bank = load_bank(tiny_pipeline / "pre", rows, context=1)
    assert len(bank) == len(rows) and bank.images.shape[1] == 4
    x = bank.batch(torch.arange(len(bank)))[0]
    stored = np.load(tiny_pipeline / "pre" / f"{case}.image.npy")
    assert torch.equal(x, volume_batch(stored, 0, len(stored), 1)), "the bank's input = inference's input"
    with pytest.raises(ValueError, match=rf"{case}: 2.5D input .* not in the same subset"):
        load_bank(tiny_pipeline / "pre", rows.iloc[::2], context=1)
    assert load_bank(tiny_pipeline / "pre", rows.iloc[::2]).neighbours is None, "2D needs no neighbours"


def test_intensity_jitter_gives_a_sequence_the_same_gain_on_every_neighbour():
    x = stack_context(torch.ones(3, 4, 6, 6), torch.from_numpy(context_rows(np.arange(3), 3, 1)))
    out, _ = IntensityJitter(0.2)(x, torch.zeros(3, 3, 6, 6), torch.Generator().manual_seed(0))
    blocks = out.reshape(3, 3, 4, 6, 6)
    assert torch.equal(blocks[1, 0], blocks[1, 1]) and torch.equal(blocks[1, 1], blocks[1, 2])
    assert not torch.equal(blocks[1, 1, 0], blocks[1, 1, 1]), "sequences still differ"
    assert blocks[0, 0].abs().sum() == 0 and blocks[2, 2].abs().sum() == 0, "zero padding stays background"


def test_a_single_slice_jitter_draws_what_it_drew_before_2_5d():
    """Per-channel gains of (N, 4) drawn in the same order as before the 2.5D option: same training with context 0."""
    x = torch.rand(5, 4, 6, 6) + 0.1
    g = torch.Generator().manual_seed(3)
    gain = 1 + (torch.rand(5, 4, 1, 1, generator=g) * 2 - 1) * 0.1
    shift = (torch.rand(5, 4, 1, 1, generator=g) * 2 - 1) * 0.05
    out, _ = IntensityJitter(0.1)(x, x[:, :3], torch.Generator().manual_seed(3))
    assert torch.equal(out, x * gain + shift)


@pytest.mark.parametrize("block, message", [
    ({"context_slices": 1, "tumour_slices_only": True}, "train.context_slices"),
    ({"context_slices": 1, "max_val_slices": 100}, "train.context_slices"),
    ({"context_slices": -1}, "train.context_slices"),
])
def test_context_settings_that_cannot_work_are_refused(block, message):
    with pytest.raises(ParamsError, match=message):
        from_mapping(TrainSettings, block, "train")


def test_in_channels_is_not_a_model_setting():
    with pytest.raises(ParamsError, match="in_channels"):
        from_mapping(ModelSettings, {"lr": 1e-3, "batch_size": 4, "arch": {"in_channels": 12}}, "models.unet")


def test_a_model_may_set_its_own_context_and_is_held_to_the_shared_rules():
    from tumorseg.config import SettingError
    from tumorseg.training.settings import for_model

    shared = TrainSettings(context_slices=2)
    assert for_model(shared, ModelSettings(lr=1e-3, batch_size=4)).context_slices == 2  # None: the shared block's
    assert for_model(shared, ModelSettings(lr=1e-3, batch_size=4, context_slices=0)).context_slices == 0
    assert for_model(TrainSettings(), ModelSettings(lr=1e-3, batch_size=4, context_slices=1)).context_slices == 1
    with pytest.raises(SettingError, match="tumour_slices_only"):
        for_model(TrainSettings(tumour_slices_only=True), ModelSettings(lr=1e-3, batch_size=4, context_slices=1))
    with pytest.raises(ParamsError, match="models.unet.context_slices"):
        from_mapping(ModelSettings, {"lr": 1e-3, "batch_size": 4, "context_slices": 9}, "models.unet")


@pytest.mark.slow
def test_a_2_5d_model_trains_and_predicts_as_the_pipeline_infers(tiny_pipeline):
    """model.json carries context_slices (set here per model, ``models.<name>.context_slices``, over a shared 0); the
    infer stage and `tumorseg predict` (from the raw NIfTI) then feed the model the same neighbours, voxel for voxel."""
    import nibabel as nib

    from tumorseg.data.brats import discover_cases
    from tumorseg.evaluation.infer import infer_model
    from tumorseg.evaluation.predictions import Predictions
    from tumorseg.models.io import load_model
    from tumorseg.models.runtime import RuntimeSettings
    from tumorseg.prediction import CaseInput, run_predict
    from tumorseg.training.loop import train_model

    root, work = tiny_pipeline, tiny_pipeline / "context"
    train = TrainSettings(epochs=1, samples_per_epoch=16, patience=0, device="cpu", seed=1, eval_batch_size=16, context_slices=0)
    train_model("unet", train, ModelSettings(lr=3e-3, batch_size=8, context_slices=1, arch={"base_channels": 8, "depth": 2}), root / "pre",
                root / "split.parquet", work / "unet", work / "ckpt", preprocess_config={"crop": "brain", "normalize": "minmax"})
    assert json.loads((work / "unet" / "model.json").read_text())["context_slices"] == 1
    model, _ = load_model(work / "unet")
    assert model(torch.zeros(1, 12, 32, 32)).shape == (1, 3, 32, 32)
    with pytest.raises(RuntimeError):
        model(torch.zeros(1, 4, 32, 32))
    infer_model("unet", work / "unet", root / "pre", root / "split.parquet", work / "inference", work / "seconds.json",
                RuntimeSettings(device="cpu", eval_batch_size=5), tta="none")
    stored = Predictions(work / "inference")
    case_id = stored.cases("test")[0]
    case = next(c for c in discover_cases(root / "raw") if c.case_id == case_id)
    files = {seq: case.path / f"{case_id}-{seq}.nii.gz" for seq in ("t1n", "t1c", "t2w", "t2f")}
    [(_, path, error)] = run_predict([CaseInput(case_id, files)], str(work / "unet"), work / "out", work, batch_size=3,
                                     device="cpu", progress=False, postprocess=False)
    assert error is None
    assert np.array_equal(np.asanyarray(nib.load(path).dataobj), stored.labels(case_id))
