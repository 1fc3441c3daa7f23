"""`tumorseg predict`: NIfTI in, BraTS label map out, exactly as the pipeline preprocesses and predicts."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tumorseg.cli import app
from tumorseg.data.brats import discover_cases
from tumorseg.data.labels import SEQUENCES
from tumorseg.data.slices import SliceStore
from tumorseg.evaluation.inference import predict_slices
from tumorseg.evaluation.predictions import to_volume
from tumorseg.models import io as model_io
from tumorseg.training.loop import train_model
from tumorseg.training.settings import ModelSettings, TrainSettings
from tumorseg.tracking import MlflowSettings

pytestmark = pytest.mark.slow
TRAIN = TrainSettings(epochs=1, samples_per_epoch=16, patience=0, device="cpu", seed=1, eval_batch_size=16)
UNET = ModelSettings(lr=3e-3, batch_size=8, arch={"base_channels": 8, "depth": 2})


@pytest.fixture(scope="module")
def trained(tiny_pipeline, tmp_path_factory):
    """A tiny unet trained on the tiny pipeline, logged to a throw-away MLflow database."""
    root = tiny_pipeline
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    mlflow_settings = MlflowSettings(enabled=True, experiment="predict-test", tracking_uri=f"sqlite:///{db}")
    out = root / "predict_model"
    if not (out / model_io.WEIGHTS_FILE).is_file():
        train_model("unet", TRAIN, UNET, root / "pre", root / "split.parquet", out, root / "predict_ckpt", mlflow_settings,
                    preprocess_config={"crop": "brain", "normalize": "minmax"})
    return root, out, f"sqlite:///{db}"


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_predicts_a_patient_folder_like_the_pipeline(trained, tmp_path):
    root, model_dir, _ = trained
    case = discover_cases(root / "raw")[0]
    result = _invoke("predict", case.path, "--model", model_dir, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    out = tmp_path / f"{case.case_id}-seg.nii.gz"
    written = nib.load(out)
    source = nib.load(case.path / f"{case.case_id}-t1n.nii.gz")
    labels = np.asanyarray(written.dataobj)
    assert labels.shape == source.shape and labels.dtype == np.uint8
    assert np.allclose(written.affine, source.affine)
    assert written.header.get_zooms() == source.header.get_zooms()
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 3}
    # Exactly the pipeline's preprocessing: the same labels as predicting the stored slices.
    model, _ = model_io.load_model(model_dir)
    images = np.asarray(SliceStore(root / "pre").images(case.case_id))
    z0 = int(pd.read_parquet(root / "pre" / "cases.parquet").set_index("case_id").loc[case.case_id, "z_start"])
    expected = to_volume(predict_slices(model, images), z0, source.shape)
    assert np.array_equal(labels, expected)
    # --tta: the evaluate stage's mirrored prediction, voxel for voxel.
    result = _invoke("predict", case.path, "--model", model_dir, "--out", tmp_path / "tta", "--tta", "all")
    assert result.exit_code == 0, result.output
    mirrored = np.asanyarray(nib.load(tmp_path / "tta" / f"{case.case_id}-seg.nii.gz").dataobj)
    assert np.array_equal(mirrored, to_volume(predict_slices(model, images, tta="all"), z0, source.shape))
    assert _invoke("predict", case.path, "--model", model_dir, "--out", tmp_path / "bad", "--tta", "ud").exit_code == 2


def test_explicit_files_and_batch_mode(trained, tmp_path):
    root, model_dir, _ = trained
    cases = discover_cases(root / "raw")[:2]
    files = {seq: cases[0].path / f"{cases[0].case_id}-{seq}.nii.gz" for seq in SEQUENCES}
    result = _invoke("predict", "--model", model_dir, "--out", tmp_path / "one",
                     *[x for seq in SEQUENCES for x in (f"--{seq}", files[seq])])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "one" / f"{cases[0].case_id}-seg.nii.gz").is_file()

    batch = tmp_path / "batch"
    for case in cases:
        shutil.copytree(case.path, batch / case.case_id)
    result = _invoke("predict", batch, "--model", model_dir, "--out", tmp_path / "many")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == sorted(f"{c.case_id}-seg.nii.gz" for c in cases)


def _broken_copy(case, tmp_path, how):
    folder = tmp_path / "in" / case.case_id
    shutil.copytree(case.path, folder)
    target = folder / f"{case.case_id}-t2w.nii.gz"
    if how == "missing":
        target.unlink()
    elif how == "not_nifti":
        target.write_bytes(b"this is not a NIfTI file at all" * 20)
    else:
        img = nib.load(target)
        data = np.asanyarray(img.dataobj).astype(np.float32)
        affine = img.affine.copy()
        if how == "shape":
            data = data[:-2]
        elif how == "flipped":
            affine[0] *= -1  # x runs the other way: R -> L
        elif how == "shifted":
            affine[:3, 3] += 0.5  # half a millimetre off the other sequences' grid
        else:
            data[1, 1, 1] = np.nan
        nib.save(nib.Nifti1Image(data, affine), target)
    return folder, target


@pytest.mark.parametrize("how, message", [("missing", "missing sequence(s) t2w"), ("not_nifti", "not a readable NIfTI"),
                                          ("shape", "disagrees"), ("nan", "non-finite"), ("flipped", "orientation RPS differs"),
                                          ("shifted", "affine differs from")])
def test_bad_input_names_the_file_exits_2_and_writes_nothing(trained, tmp_path, how, message):
    root, model_dir, _ = trained
    case = discover_cases(root / "raw")[0]
    folder, target = _broken_copy(case, tmp_path, how)
    result = CliRunner().invoke(app, ["predict", str(folder), "--model", str(model_dir), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert message in result.output
    assert (target.name if how != "missing" else str(folder)) in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_label_map_keeps_the_inputs_qform_and_sform(trained, tmp_path):
    """A scanner file whose qform and sform differ (and whose qform code is 'scanner', sform 'aligned') comes back
    with both as they were."""
    root, model_dir, _ = trained
    case = discover_cases(root / "raw")[0]
    folder = tmp_path / "in" / case.case_id
    shutil.copytree(case.path, folder)
    qform = nib.load(folder / f"{case.case_id}-t1n.nii.gz").affine.copy()
    sform = qform.copy()
    sform[:3, 3] += [1.0, -2.0, 0.5]
    for seq in ("t1n", "t1c", "t2w", "t2f"):
        path = folder / f"{case.case_id}-{seq}.nii.gz"
        img = nib.load(path)
        out = nib.Nifti1Image(np.asanyarray(img.dataobj), sform)
        out.set_qform(qform, 1)
        out.set_sform(sform, 2)
        nib.save(out, path)
    result = _invoke("predict", folder, "--model", model_dir, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    written = nib.load(tmp_path / "out" / f"{case.case_id}-seg.nii.gz")
    source = nib.load(folder / f"{case.case_id}-t1n.nii.gz")
    for form in ("qform", "sform"):
        got, code = getattr(written, f"get_{form}")(coded=True)
        want, want_code = getattr(source, f"get_{form}")(coded=True)
        assert int(code) == int(want_code) and np.allclose(got, want, atol=1e-5), form
    assert not np.allclose(written.get_qform(), written.get_sform()), "two different forms kept apart"


def test_model_from_the_mlflow_registry(trained, tmp_path, monkeypatch):
    root, model_dir, uri = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    case = discover_cases(root / "raw")[0]
    assert _invoke("predict", case.path, "--model", model_dir, "--out", tmp_path / "file").exit_code == 0
    result = _invoke("predict", case.path, "--model", "models:/tumorseg-unet/1", "--out", tmp_path / "registry")
    assert result.exit_code == 0, result.output
    name = f"{case.case_id}-seg.nii.gz"
    a = np.asanyarray(nib.load(tmp_path / "file" / name).dataobj)
    b = np.asanyarray(nib.load(tmp_path / "registry" / name).dataobj)
    assert np.array_equal(a, b)


def test_unknown_model_is_a_clear_error(trained, tmp_path):
    root, _, _ = trained
    case = discover_cases(root / "raw")[0]
    result = CliRunner().invoke(app, ["predict", str(case.path), "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no trained model here" in result.output


def test_predict_applies_the_fitted_post_processing_unless_told_not_to(trained, tmp_path):
    """The rules postprocess@<model> wrote beside the model are applied, as evaluate applies them."""
    from tumorseg.evaluation.postprocess import PostprocessRules, write_rules

    root, model_dir, _ = trained
    case = discover_cases(root / "raw")[0]
    # the trained model with its head's bias raised: it calls every brain slice's voxels enhancing tumour
    model, config = model_io.load_model(model_dir)
    state = model.state_dict()
    state["head.weight"] = state["head.weight"] * 0
    state["head.bias"] = state["head.bias"] * 0 + 10.0
    folder = tmp_path / "model"
    model_io.save_model(folder, state, config)
    name = f"{case.case_id}-seg.nii.gz"
    raw = _invoke("predict", case.path, "--model", folder, "--out", tmp_path / "raw")
    assert raw.exit_code == 0, raw.output
    labels = np.asanyarray(nib.load(tmp_path / "raw" / name).dataobj)
    assert (labels == 3).any() and set(np.unique(labels).tolist()) == {0, 3}
    # fitted rules: a patient whose ET is under a volume larger than the whole image has it relabelled necrotic core
    rules = PostprocessRules({"WT": 0.0, "TC": 0.0, "ET": 0.0}, float(labels.size + 1))
    write_rules(folder / "postprocess.json", rules, True, [], {})
    post = _invoke("predict", case.path, "--model", folder, "--out", tmp_path / "post")
    assert post.exit_code == 0, post.output
    written = np.asanyarray(nib.load(tmp_path / "post" / name).dataobj)
    assert np.array_equal(written, np.where(labels == 3, 1, labels))
    off = _invoke("predict", case.path, "--model", folder, "--out", tmp_path / "off", "--no-postprocess")
    assert off.exit_code == 0
    assert np.array_equal(np.asanyarray(nib.load(tmp_path / "off" / name).dataobj), labels)


def test_ensemble_averages_the_three_models(trained, tmp_path, monkeypatch):
    """--model ensemble loads models/{unet,resnet_unet,transunet}; three copies of one model predict as that model."""
    root, model_dir, _ = trained
    models = tmp_path / "models"
    for name in ("unet", "resnet_unet", "transunet"):
        shutil.copytree(model_dir, models / name)
    monkeypatch.setattr("tumorseg.paths.MODELS_DIR", models)
    case = discover_cases(root / "raw")[0]
    single = _invoke("predict", case.path, "--model", models / "unet", "--out", tmp_path / "single", "--no-postprocess")
    assert single.exit_code == 0, single.output
    result = _invoke("predict", case.path, "--model", "ensemble", "--out", tmp_path / "ens", "--no-postprocess")
    assert result.exit_code == 0, result.output
    name = f"{case.case_id}-seg.nii.gz"
    assert np.array_equal(np.asanyarray(nib.load(tmp_path / "ens" / name).dataobj),
                          np.asanyarray(nib.load(tmp_path / "single" / name).dataobj))
    shutil.rmtree(models / "transunet")
    missing = _invoke("predict", case.path, "--model", "ensemble", "--out", tmp_path / "none")
    assert missing.exit_code == 2 and "transunet" in missing.output and "no trained model here" in missing.output


def test_predict_with_onnx_runtime_matches_pytorch(trained, tmp_path):
    root, model_dir, _ = trained
    case = discover_cases(root / "raw")[0]
    result = _invoke("predict", case.path, "--model", model_dir, "--out", tmp_path / "onnx", "--runtime", "onnx")
    assert result.exit_code == 2 and "not exported yet; run `tumorseg export" in result.output
    assert _invoke("export", model_dir, "--size", 48, 48).exit_code == 0
    assert _invoke("predict", case.path, "--model", model_dir, "--out", tmp_path / "onnx", "--runtime", "onnx").exit_code == 0
    assert _invoke("predict", case.path, "--model", model_dir, "--out", tmp_path / "torch").exit_code == 0
    onnx_labels = np.asanyarray(nib.load(tmp_path / "onnx" / f"{case.case_id}-seg.nii.gz").dataobj)
    torch_labels = np.asanyarray(nib.load(tmp_path / "torch" / f"{case.case_id}-seg.nii.gz").dataobj)
    assert (onnx_labels == torch_labels).mean() >= 0.9999  # logits agree to ~1e-5: a voxel at exactly 0.5 could flip
