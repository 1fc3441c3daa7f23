"""The training loop: learns, is repeatable, resumes exactly, and refuses a non-finite loss."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pandas as pd
import pytest
import torch

from tumorseg.training import checkpoint
from tumorseg.models.io import load_model
from tumorseg.config import SettingError
from tumorseg.training.data import MIMIC, TUMOUR, SliceBank, epoch_indices, find_mimics, random_patches
from tumorseg.training.losses import mimic_weights, segmentation_loss
from tumorseg.training.loop import HISTORY_COLUMNS, NonFiniteLossError, lr_at, train_model
from tumorseg.training.settings import ModelSettings, TrainSettings

TRAIN = TrainSettings(epochs=3, samples_per_epoch=32, patience=0, device="cpu", seed=1, eval_batch_size=16)
UNET = ModelSettings(lr=3e-3, batch_size=8, arch={"base_channels": 8, "depth": 2})


def _train(root, tag, train=TRAIN, model=UNET):
    return train_model("unet", train, model, root / "pre", root / "split.parquet", root / tag / "model", root / tag / "ckpt")


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_random_patches_cut_aligned_windows_and_centre_on_tumour():
    g = torch.Generator().manual_seed(0)
    n, h, w = 6, 40, 48
    x = torch.arange(n * 4 * h * w, dtype=torch.float32).reshape(n, 4, h, w)  # every voxel unique
    y = torch.zeros(n, 3, h, w)
    y[:, :, 30:33, 40:43] = 1.0  # a small tumour near a corner
    forced = torch.tensor([True, True, True, False, False, False])
    xp, yp = random_patches(x, y, 16, forced, g)
    assert xp.shape == (n, 4, 16, 16) and yp.shape == (n, 3, 16, 16)
    for i in range(n):
        # each patch is a contiguous window of its own sample, the same window for image and target
        top, left = divmod(int(xp[i, 0, 0, 0] - x[i, 0, 0, 0]), w)
        assert torch.equal(xp[i], x[i, :, top:top + 16, left:left + 16])
        assert torch.equal(yp[i], y[i, :, top:top + 16, left:left + 16])
    assert all(yp[i, 0].sum() > 0 for i in range(3))  # forced samples contain the tumour
    assert random_patches(x, y, 0, forced, g)[0] is x  # 0: whole slices
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(random_patches(x, y, 16, forced, g1)[0], random_patches(x, y, 16, forced, g2)[0])


def test_epoch_indices_force_the_foreground_share():
    has_tumour = torch.tensor([False] * 90 + [True] * 10)
    bank = SliceBank(torch.zeros(100, 4, 2, 2), torch.zeros(100, 2, 2, dtype=torch.uint8), has_tumour, pd.DataFrame())
    idx, kinds = epoch_indices(bank, 300, 0.5, torch.Generator().manual_seed(0))
    forced = kinds == TUMOUR
    assert len(idx) == 300 and int(forced.sum()) == 150 and not (kinds == MIMIC).any()
    assert has_tumour[idx[forced]].all()
    assert 0.5 < float(has_tumour[idx].float().mean()) < 0.65  # 50% forced + ~10% of the uniform half


def test_without_mimics_the_sampling_draws_what_it_drew_before_the_option():
    """The weights of a default training must not move because hard-negative sampling exists."""
    has_tumour = torch.tensor([False] * 90 + [True] * 10)
    bank = SliceBank(torch.zeros(100, 4, 2, 2), torch.zeros(100, 2, 2, dtype=torch.uint8), has_tumour, pd.DataFrame())
    g = torch.Generator().manual_seed(3)  # the algorithm as it was: uniform, forced, shuffle
    tumour = torch.nonzero(has_tumour).flatten()
    uniform = torch.randint(100, (150,), generator=g)
    forced = tumour[torch.randint(len(tumour), (150,), generator=g)]
    order = torch.randperm(300, generator=g)
    idx, kinds = epoch_indices(bank, 300, 0.5, torch.Generator().manual_seed(3), mimic_fraction=0.0)
    assert torch.equal(idx, torch.cat([uniform, forced])[order])
    assert torch.equal(kinds == TUMOUR, torch.cat([torch.zeros(150, dtype=torch.bool), torch.ones(150, dtype=torch.bool)])[order])


def _bank_with_a_mimic():
    """Slices 0-9: tumour (edema 0.8, ET rim bright on T1c); slices 10-14: a FLAIR-bright blob, no tumour; 15-19: plain."""
    images = torch.zeros(20, 4, 32, 32)
    images[:, :, 4:28, 4:28] = 0.4  # brain
    labels = torch.zeros(20, 32, 32, dtype=torch.uint8)
    images[:10, 3, 8:14, 8:14] = 0.8
    images[:10, 1, 10:12, 10:12] = 0.9
    labels[:10, 8:14, 8:14] = 2
    labels[:10, 10:12, 10:12] = 3
    images[10:15, 3, 20:26, 20:26] = 0.85  # the mimic: FLAIR like edema, label 0, 36 voxels
    return SliceBank(images.half(), labels, labels.flatten(1).any(1), pd.DataFrame())


def test_mimic_slices_are_found_and_sampled_with_patches_centred_on_them():
    bank = find_mimics(_bank_with_a_mimic())
    assert bank.has_mimic.tolist() == [False] * 10 + [True] * 5 + [False] * 5
    idx, kinds = epoch_indices(bank, 400, 0.25, torch.Generator().manual_seed(0), mimic_fraction=0.25)
    assert int((kinds == MIMIC).sum()) == 100 and bank.has_mimic[idx[kinds == MIMIC]].all()
    x = bank.images[idx[:64]].float()
    y = torch.stack([bank.labels[idx[:64]] > 0] * 3, 1).float()
    xp, _ = random_patches(x, y, 8, kinds[:64], torch.Generator().manual_seed(1), bank.mimic_thresholds)
    for i in torch.nonzero(kinds[:64] == MIMIC).flatten().tolist():
        assert (xp[i, 3] >= 0.8).any(), "a hard-negative patch shows its mimic"
    with pytest.raises(SettingError, match="foreground_fraction \\+ mimic_fraction"):
        TrainSettings(foreground_fraction=0.7, mimic_fraction=0.4)


def test_lr_schedule():
    assert lr_at(0, 100, 0, 1.0, "cosine") == pytest.approx(1.0)
    assert lr_at(50, 100, 0, 1.0, "cosine") == pytest.approx(0.5)
    assert lr_at(0, 100, 10, 1.0, "constant") == pytest.approx(0.1)


@pytest.mark.slow
def test_training_learns_is_repeatable_and_writes_outputs(tiny_pipeline):
    root = tiny_pipeline
    config = _train(root, "a")
    out = root / "a" / "model"
    history = pd.read_csv(out / "history.csv")
    assert list(history.columns) == list(HISTORY_COLUMNS) and history["epoch"].tolist() == [1, 2, 3]
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert config["best_epoch"] == int(history["val_dice_mean"].idxmax()) + 1
    assert not (root / "a" / "ckpt" / checkpoint.RESUME_FILE).exists(), "resume state removed after success"
    model, cfg = load_model(out)
    assert cfg["model"] == "unet" and not model.training
    _train(root, "b")
    assert _sha(out / "model.safetensors") == _sha(root / "b" / "model" / "model.safetensors"), "deterministic CPU training"
    assert (out / "history.csv").read_text() == (root / "b" / "model" / "history.csv").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_killed_training_resumes_to_the_same_result(tiny_pipeline, monkeypatch, ema_decay):
    root = tiny_pipeline
    train = dataclasses.replace(TRAIN, ema_decay=ema_decay)
    tag = f"ema{ema_decay}"
    _train(root, f"{tag}-full", train)
    restore = _kill_after_two_epochs(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        _train(root, f"{tag}-killed", train)
    assert (root / f"{tag}-killed" / "ckpt" / checkpoint.RESUME_FILE).is_file()
    assert not (root / f"{tag}-killed" / "model" / "model.safetensors").exists()
    restore()
    _train(root, f"{tag}-killed", train)  # the next run resumes from epoch 2 (with its weight average)
    assert _sha(root / f"{tag}-killed" / "model" / "model.safetensors") == _sha(root / f"{tag}-full" / "model" / "model.safetensors")
    assert (root / f"{tag}-killed" / "model" / "history.csv").read_text() == (root / f"{tag}-full" / "model" / "history.csv").read_text()


@pytest.mark.slow
def test_ema_decay_validates_and_saves_the_averaged_weights(tiny_pipeline, monkeypatch):
    """With train.ema_decay the loop validates the running average and saves it, not the last step's weights."""
    import tumorseg.training.loop as loop

    kept, validated = {}, []
    real_update, real_validate = loop.WeightAverage.update, loop.validate

    def spy_update(self, model):
        real_update(self, model)
        kept["average"] = {k: v.clone() for k, v in self.module.state_dict().items()}
        kept["last"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        kept["module"] = self.module

    def rising_validate(model, *args, **kwargs):  # every epoch "better" than the last: the final average is saved
        validated.append(model)
        return real_validate(model, *args, **kwargs) | {"val_dice_mean": 0.1 * len(validated)}

    monkeypatch.setattr(loop.WeightAverage, "update", spy_update)
    monkeypatch.setattr(loop, "validate", rising_validate)
    config = _train(tiny_pipeline, "ema-saved", dataclasses.replace(TRAIN, ema_decay=0.9))
    assert config["best_epoch"] == 3 and all(m is kept["module"] for m in validated)
    saved, _ = load_model(tiny_pipeline / "ema-saved" / "model")
    for name, value in saved.state_dict().items():
        assert torch.equal(value, kept["average"][name].to(value.dtype)), name
    assert any(not torch.equal(kept["average"][k], kept["last"][k]) for k in kept["last"] if kept["last"][k].is_floating_point())


def test_stale_checkpoint_is_ignored(tmp_path):
    checkpoint.save_resume_state(tmp_path, {"fingerprint": "old", "epoch": 3})
    assert checkpoint.load_resume_state(tmp_path, "new") is None
    assert checkpoint.load_resume_state(tmp_path, "old")["epoch"] == 3


def test_non_finite_loss_stops_with_epoch_and_step(tiny_pipeline, monkeypatch):
    import tumorseg.training.loop as loop

    monkeypatch.setattr(loop, "segmentation_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(NonFiniteLossError, match=r"loss is not finite at epoch 1, step 1;"):
        _train(tiny_pipeline, "nan", train=TrainSettings(epochs=1, samples_per_epoch=16, device="cpu"))
    assert not (tiny_pipeline / "nan" / "model" / "model.safetensors").exists()


def _kill_after_two_epochs(monkeypatch):
    import tumorseg.training.loop as loop

    real_validate, calls = loop.validate, {"n": 0}

    def killed(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill during epoch 3")
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(loop, "validate", killed)
    return lambda: monkeypatch.setattr(loop, "validate", real_validate)


@pytest.mark.slow
@pytest.mark.parametrize("change", ["nothing", "slice store", "preprocess params", "code"])
def test_a_killed_training_resumes_only_if_its_inputs_are_unchanged(tiny_pipeline, tmp_path, monkeypatch, caplog, change):
    import shutil
    import sys
    import types

    store = tmp_path / "pre"
    shutil.copytree(tiny_pipeline / "pre", store)
    preprocess = {"crop": "brain", "normalize": "minmax"}

    def run(preprocess_config):
        return train_model("unet", TRAIN, UNET, store, tiny_pipeline / "split.parquet", tmp_path / "model", tmp_path / "ckpt",
                           preprocess_config=preprocess_config)

    restore = _kill_after_two_epochs(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run(preprocess)
    restore()
    assert (tmp_path / "ckpt" / checkpoint.RESUME_FILE).is_file()
    if change == "slice store":  # e.g. preprocessing rerun with other settings by hand, outside DVC
        victim = sorted(store.glob("*.image.npy"))[0]
        np.save(victim, np.load(victim) * 0.5)
    elif change == "preprocess params":
        preprocess = {"crop": "brain", "normalize": "zscore"}
    elif change == "code":  # a tumorseg module the training runs was edited after the kill
        source = tmp_path / "edited.py"
        source.write_text("X = 2\n")
        monkeypatch.setitem(sys.modules, "tumorseg._edited_after_the_kill", types.SimpleNamespace(__file__=str(source)))
    with caplog.at_level("INFO"):
        run(preprocess)
    resumed = "resuming unet" in caplog.text
    assert resumed == (change == "nothing"), caplog.text[-2000:]
    if not resumed:
        assert "saved for other params, data or code; training from scratch" in caplog.text


def test_code_digest_follows_the_loaded_modules_source(tmp_path, monkeypatch):
    import sys
    import types

    source = tmp_path / "probe.py"
    source.write_text("A = 1\n")
    monkeypatch.setitem(sys.modules, "tumorseg._probe", types.SimpleNamespace(__file__=str(source)))
    before = checkpoint.code_digest()
    assert checkpoint.code_digest() == before
    source.write_text("A = 2\n")
    assert checkpoint.code_digest() != before
    monkeypatch.setitem(sys.modules, "not_tumorseg_probe", types.SimpleNamespace(__file__=str(source)))
    assert checkpoint.code_digest() == checkpoint.code_digest()


@pytest.mark.slow
def test_a_resumed_training_continues_its_mlflow_run(tiny_pipeline, tmp_path, monkeypatch):
    """SIGKILL leaves the run RUNNING; the resumed training continues that run (its id is in the checkpoint)
    instead of opening a second one, and ends it FINISHED with every epoch's curve point once."""
    from mlflow import MlflowClient

    from tumorseg.tracking import MlflowSettings

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = MlflowSettings(experiment="resume", tracking_uri=uri, register=False)

    def run():
        return train_model("unet", TRAIN, UNET, tiny_pipeline / "pre", tiny_pipeline / "split.parquet", tmp_path / "model",
                           tmp_path / "ckpt", settings)

    restore = _kill_after_two_epochs(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run()
    restore()
    run()
    client = MlflowClient(uri)
    [only] = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    assert only.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(only.info.run_id, "val_dice_mean")] == [1, 2, 3]


def _patches_one_by_one(images, targets, size, kinds, generator, mimic_thresholds=None):
    """The per-sample loop random_patches replaced (a host round trip per sample): the reference it must equal."""
    from tumorseg.data.context import centre_slice
    from tumorseg.training.data import UNIFORM, mimic_voxels

    n, _, h, w = images.shape
    ph, pw = size, size
    tops = (torch.rand(n, generator=generator) * (h - ph + 1)).long().clamp(max=h - ph)
    lefts = (torch.rand(n, generator=generator) * (w - pw + 1)).long().clamp(max=w - pw)
    picks = torch.rand(n, generator=generator)
    wt = targets[:, 0] > 0
    mimic = mimic_voxels(centre_slice(images), wt, mimic_thresholds) if mimic_thresholds is not None else None
    for i in torch.nonzero(kinds != UNIFORM).flatten().tolist():
        where = wt[i] if kinds[i] == TUMOUR else (mimic[i] if mimic is not None else wt[i][:0])
        voxels = torch.nonzero(where)
        if len(voxels):
            cy, cx = voxels[min(int(picks[i] * len(voxels)), len(voxels) - 1)].tolist()
            tops[i] = min(max(cy - ph // 2, 0), h - ph)
            lefts[i] = min(max(cx - pw // 2, 0), w - pw)
    return [images[i, :, t:t + ph, l:l + pw] for i, (t, l) in enumerate(zip(tops.tolist(), lefts.tolist()))]


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_patch_centres_equal_the_per_sample_loop(seed):
    g = torch.Generator().manual_seed(seed)
    n, h, w = 12, 48, 40
    x = torch.rand(n, 4, h, w, generator=g)
    y = (torch.rand(n, 3, h, w, generator=g) > 0.97).float()
    y[::4] = 0  # some samples without tumour
    kinds = torch.randint(0, 3, (n,), generator=g).to(torch.int8)
    for thresholds in (None, (0.9, 0.9)):
        got = random_patches(x, y, 32, kinds, torch.Generator().manual_seed(seed), thresholds)[0]
        want = _patches_one_by_one(x, y, 32, kinds, torch.Generator().manual_seed(seed), thresholds)
        assert all(torch.equal(got[i], want[i]) for i in range(n))


def test_compile_wraps_the_training_step_only_and_epochs_report_their_timings(tiny_pipeline, monkeypatch):
    """train.compile: true runs the training step through torch.compile's module (here a recording stand-in, so the
    test costs no compilation), while validation and the saved weights use the model itself; on_epoch receives each
    epoch's record with its timings."""
    root = tiny_pipeline
    compiled, calls = [], []

    def fake_compile(model):
        compiled.append(model)

        def step(x):
            calls.append(tuple(x.shape))
            return model(x)
        return step

    monkeypatch.setattr(torch, "compile", fake_compile)
    records = []
    train = TrainSettings(**{**TRAIN.__dict__, "compile": True})
    train_model("unet", train, UNET, root / "pre", root / "split.parquet", root / "c" / "model", root / "c" / "ckpt",
                on_epoch=records.append)
    steps = TRAIN.epochs * (TRAIN.samples_per_epoch // UNET.batch_size)
    assert len(compiled) == 1 and len(calls) == steps, "every training step, and nothing else, went through the compiled module"
    assert all(shape[0] == UNET.batch_size for shape in calls)
    _train(root, "eager")
    assert _sha(root / "c" / "model" / "model.safetensors") == _sha(root / "eager" / "model" / "model.safetensors")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all(r["slices"] == steps // TRAIN.epochs * UNET.batch_size and r["train_seconds"] > 0 and r["val_seconds"] > 0
               for r in records)


def test_mimic_weights_raise_the_bce_of_mimic_voxels_only():
    """Zero logits: every element's BCE is ln 2; weight 3 on one of four voxels makes the BCE mean 6/4 ln 2 in every
    region, while the soft Dice term stays the same."""
    logits = torch.zeros(1, 3, 2, 2)
    targets = torch.zeros(1, 3, 2, 2)
    targets[0, :, 0, 0] = 1
    mimic = torch.tensor([[[False, True], [False, False]]])
    weights = mimic_weights(mimic, 3.0)
    assert weights.tolist() == [[[1.0, 3.0], [1.0, 1.0]]]
    plain = segmentation_loss(logits, targets, dice_weight=0.0)
    weighted = segmentation_loss(logits, targets, dice_weight=0.0, voxel_weight=weights)
    assert float(plain) == pytest.approx(np.log(2))
    assert float(weighted) == pytest.approx(1.5 * np.log(2))
    assert float(segmentation_loss(logits, targets, bce_weight=0.0, voxel_weight=weights)) == pytest.approx(
        float(segmentation_loss(logits, targets, bce_weight=0.0)))
    assert torch.equal(segmentation_loss(logits, targets, voxel_weight=mimic_weights(mimic, 1.0)), segmentation_loss(logits, targets))
    with pytest.raises(SettingError, match="mimic_loss_weight: 1"):
        TrainSettings(bank="stream", mimic_loss_weight=3.0)


@pytest.mark.slow
def test_mimic_loss_weight_weighs_bright_background_voxels_in_training(tiny_pipeline, monkeypatch):
    """train.mimic_loss_weight: the loss gets voxel weights, the weight itself on tumour-bright voxels outside the
    tumour and 1 on every other voxel (tumour included); at 1 the loss is called without weights."""
    from tumorseg.training import loop

    root, seen = tiny_pipeline, []

    def spy(logits, targets, bce_weight, dice_weight, voxel_weight=None):
        if torch.is_grad_enabled():  # training steps, not validation
            seen.append((targets.detach().clone(), None if voxel_weight is None else voxel_weight.detach().clone()))
        return segmentation_loss(logits, targets, bce_weight, dice_weight, voxel_weight)

    monkeypatch.setattr(loop, "segmentation_loss", spy)
    train_model("unet", TrainSettings(**{**TRAIN.__dict__, "epochs": 1, "mimic_loss_weight": 4.0}), UNET, root / "pre",
                root / "split.parquet", root / "w" / "model", root / "w" / "ckpt")
    weights = torch.cat([w for _, w in seen])
    tumour = torch.cat([t[:, 0] > 0 for t, _ in seen])
    assert set(weights.unique().tolist()) == {1.0, 4.0}, "some voxels weighted, the rest 1"
    assert not (weights[tumour] != 1).any(), "tumour voxels are never mimics"
    seen.clear()
    _train(root, "plain", TrainSettings(**{**TRAIN.__dict__, "epochs": 1}))
    assert seen and all(w is None for _, w in seen)
