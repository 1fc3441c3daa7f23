"""train.bank: device | host | stream hold the slices in different places and give the same batches."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from tumorseg.config import SettingError
from tumorseg.training.data import NpyRows, StreamBank, find_mimics, load_bank, open_bank
from tumorseg.training.loop import train_model
from tumorseg.training.settings import ModelSettings, TrainSettings


def _index(root) -> pd.DataFrame:
    return pd.read_parquet(root / "pre" / "slice_index.parquet")


@pytest.mark.parametrize("context", [0, 1])
def test_every_mode_gives_the_same_batches(tiny_pipeline, context):
    index = _index(tiny_pipeline)
    cpu = torch.device("cpu")
    banks = {mode: open_bank(tiny_pipeline / "pre", index, context, mode, cpu) for mode in ("device", "host", "stream")}
    assert isinstance(banks["stream"], StreamBank) and banks["host"].target == cpu
    assert all(len(b) == len(index) for b in banks.values())
    assert torch.equal(banks["stream"].has_tumour, banks["device"].has_tumour)
    rows = torch.randint(0, len(index), (40,), generator=torch.Generator().manual_seed(context))
    reference = banks["device"].batch(rows)
    assert reference[0].dtype == torch.float32 and reference[0].shape[1] == 4 * (2 * context + 1)
    for mode in ("host", "stream"):
        x, y = banks[mode].batch(rows)
        assert torch.equal(x, reference[0]) and torch.equal(y, reference[1]), mode
    whole = torch.arange(len(index))  # in order: the stream reads runs of consecutive rows at once
    assert torch.equal(banks["stream"].batch(whole)[0], banks["device"].batch(whole)[0])


def test_streamed_and_host_training_equal_the_device_bank(tiny_pipeline, tmp_path):
    base = dict(epochs=2, samples_per_epoch=32, patience=0, device="cpu", seed=1, eval_batch_size=16)
    model = ModelSettings(lr=3e-3, batch_size=8, arch={"base_channels": 8, "depth": 2})
    sha = {}
    for mode in ("device", "host", "stream"):
        out = tmp_path / mode
        train_model("unet", TrainSettings(**base, bank=mode), model, tiny_pipeline / "pre", tiny_pipeline / "split.parquet",
                    out / "model", out / "ckpt")
        sha[mode] = hashlib.sha256((out / "model" / "model.safetensors").read_bytes()).hexdigest()
        assert (out / "model" / "history.csv").read_text() == (tmp_path / "device" / "model" / "history.csv").read_text()
    assert sha["host"] == sha["device"] and sha["stream"] == sha["device"]


def test_a_truncated_store_file_is_named(tiny_pipeline, tmp_path):
    index = _index(tiny_pipeline)
    case = sorted(index["case_id"].unique())[0]
    store = tmp_path / "pre"
    shutil.copytree(tiny_pipeline / "pre", store)
    path = store / f"{case}.image.npy"
    path.write_bytes(path.read_bytes()[:-1000])
    bank = StreamBank(store, index[index["case_id"] == case], torch.device("cpu"))
    with pytest.raises(ValueError, match=rf"{case}\.image\.npy: truncated"):
        bank.batch(torch.arange(len(bank)))
    path.write_bytes(b"not an array")
    with pytest.raises(ValueError, match=rf"{case}\.image\.npy: not a \.npy slice array"):
        NpyRows(path)


def test_npy_rows_reads_runs_and_single_rows(tmp_path):
    array = np.arange(7 * 3 * 2, dtype=np.float16).reshape(7, 3, 2)
    np.save(tmp_path / "a.npy", array)
    rows = np.array([0, 1, 2, 4, 6])
    assert np.array_equal(NpyRows(tmp_path / "a.npy").read(rows), array[rows])
    assert NpyRows(tmp_path / "a.npy").read(np.array([], dtype=np.int64)).shape == (0, 3, 2)


def test_stream_refuses_mimic_search_and_2_5d_mimics_keep_their_neighbours(tiny_pipeline):
    with pytest.raises(SettingError, match="stream cannot look for mimic slices"):
        TrainSettings(bank="stream", mimic_fraction=0.2)
    index = _index(tiny_pipeline)
    bank = find_mimics(load_bank(tiny_pipeline / "pre", index, context=1))
    assert bank.neighbours is not None and bank.has_mimic is not None, "mimic search must not drop the 2.5D neighbours"
