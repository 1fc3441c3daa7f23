"""`tumorseg predict`: NIfTI in, BraTS label map out, exactly as the pipeline preprocesses and predicts."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
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
    # a params.yaml that trains two models: the ensemble stage averaged those two, and so does predict
    params = tmp_path / "params.yaml"
    params.write_text("models:\n  unet: {lr: 0.001, batch_size: 8}\n  resnet_unet: {lr: 0.001, batch_size: 8}\n")
    monkeypatch.setattr("tumorseg.paths.PARAMS", params)
    two = _invoke("predict", case.path, "--model", "ensemble", "--out", tmp_path / "two", "--no-postprocess")
    assert two.exit_code == 0, two.output


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


def test_the_default_model_is_the_champion_chosen_on_validation(trained, tmp_path, monkeypatch):
    """Without --model, predict runs the model the report would make champion (best validation lesion-wise Dice)."""
    from tumorseg.evaluation.postprocess import PostprocessRules, write_rules

    root, model_dir, _ = trained
    models = tmp_path / "models"
    model, config = model_io.load_model(model_dir)
    state = model.state_dict()
    for name, lesion in (("unet", 0.70), ("resnet_unet", 0.90), ("transunet", 0.80)):
        if name == "resnet_unet":  # a different network, so the output shows which model ran: ET everywhere
            state = {**state, "head.weight": state["head.weight"] * 0, "head.bias": state["head.bias"] * 0 + 10.0}
        else:
            state = model.state_dict()
        model_io.save_model(models / name, state, config)
        write_rules(models / name / "postprocess.json", PostprocessRules(), True, [],
                    {"postprocessed": {"lesion_dice_mean": lesion, "dice_mean": 0.9}})
    monkeypatch.setattr("tumorseg.paths.MODELS_DIR", models)
    case = discover_cases(root / "raw")[0]
    name = f"{case.case_id}-seg.nii.gz"
    default = _invoke("predict", case.path, "--out", tmp_path / "default")
    assert default.exit_code == 0, default.output
    named = _invoke("predict", case.path, "--model", "resnet_unet", "--out", tmp_path / "named")
    other = _invoke("predict", case.path, "--model", "unet", "--out", tmp_path / "other")
    assert named.exit_code == 0 and other.exit_code == 0
    read = lambda folder: np.asanyarray(nib.load(tmp_path / folder / name).dataobj)  # noqa: E731
    assert np.array_equal(read("default"), read("named")) and not np.array_equal(read("default"), read("other"))
    (models / "transunet" / "postprocess.json").unlink()
    missing = _invoke("predict", case.path, "--out", tmp_path / "none")
    assert missing.exit_code == 2 and "transunet" in missing.output and "--model" in missing.output


def test_the_log_says_when_the_mirrorings_differ_from_those_the_rules_were_fitted_on(caplog):
    import logging

    from tumorseg.prediction import Predictor, note_tta

    caplog.set_level(logging.INFO, logger="tumorseg.prediction")
    fitted = Predictor("unet", [], rules_source="models/unet/postprocess.json", rules_tta="all")
    note_tta("all", fitted)
    assert "fitted on" not in caplog.text
    note_tta("none", fitted)
    assert "fitted on probabilities averaged over --tta all" in caplog.text
    caplog.clear()
    note_tta("none", Predictor("unet", []))  # no rules applied (or --no-postprocess): nothing to say
    note_tta("none", Predictor("old", [], rules_source="old/postprocess.json"))  # the file predates the record
    assert "fitted on" not in caplog.text


def test_two_inputs_with_one_case_id_are_refused_before_anything_is_written(trained, tmp_path):
    root, model_dir, _ = trained
    case = discover_cases(root / "raw")[0]
    for site in ("site1", "site2"):
        shutil.copytree(case.path, tmp_path / site / case.path.name)
    result = _invoke("predict", tmp_path / "site1", tmp_path / "site2", "--model", model_dir, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "site1" in result.output and "site2" in result.output and "both" in result.output
    assert not (tmp_path / "out").exists()


def test_an_onnx_export_of_other_weights_is_refused(trained, tmp_path):
    """model.onnx is no pipeline output: after a retraining the old graph must not run under the new name."""
    root, model_dir, _ = trained
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    (folder / "model.onnx").unlink(missing_ok=True)
    assert _invoke("export", folder, "--size", 48, 48).exit_code == 0
    case = discover_cases(root / "raw")[0]
    assert _invoke("predict", case.path, "--model", folder, "--out", tmp_path / "ok", "--runtime", "onnx").exit_code == 0
    model, config = model_io.load_model(folder)
    model_io.save_model(folder, {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}, config)
    stale = _invoke("predict", case.path, "--model", folder, "--out", tmp_path / "stale", "--runtime", "onnx")
    assert stale.exit_code == 2 and "not an export of" in stale.output and "tumorseg export" in stale.output


class _CornerOfEachSlice(torch.nn.Module):
    """Tumour wherever there is brain in the first half of a slice's rows and third of its columns: what it marks
    depends on how the volume is sliced and laid out, as a real 2D model's output does."""

    def forward(self, x):
        h, w = x.shape[-2:]
        corner = torch.zeros_like(x[:, :1], dtype=torch.bool)
        corner[..., : h // 2, : w // 3] = True
        tumour = corner & (x[:, :1] > 0.05)
        return torch.where(tumour, 10.0, -10.0).expand(-1, 3, -1, -1)


@pytest.mark.parametrize("codes", [("R", "A", "S"), ("S", "R", "A")])  # dcm2niix's RAS; a volume whose third axis is not axial
def test_an_input_in_another_orientation_is_predicted_as_the_models_see_it_and_mapped_back(trained, tmp_path, codes):
    """The same brain stored in another orientation (same world coordinates) gets the same labels, in its own voxel
    order: the 2D axial models never see sagittal or flipped slices."""
    from nibabel import orientations

    from tumorseg.prediction import Predictor, case_from_folder, load_case

    root, model_dir, _ = trained
    case = discover_cases(root / "raw")[0]
    moved = tmp_path / "moved" / case.path.name
    moved.mkdir(parents=True)
    for f in case.path.iterdir():
        img = nib.load(f)
        transform = orientations.ornt_transform(orientations.io_orientation(img.affine), orientations.axcodes2ornt(codes))
        nib.save(img.as_reoriented(transform), moved / f.name)
    _, config = model_io.load_model(model_dir)
    predictor = Predictor("corner", [(_CornerOfEachSlice(), config)])
    channels, reference = load_case(case_from_folder(case.path))
    moved_channels, moved_reference = load_case(case_from_folder(moved))
    as_stored = predictor.predict(channels, affine=reference.affine)
    assert 0 < (as_stored > 0).mean() < 0.5
    to_stored = orientations.ornt_transform(orientations.io_orientation(moved_reference.affine),
                                            orientations.io_orientation(reference.affine))
    mapped = predictor.predict(moved_channels, affine=moved_reference.affine)
    assert mapped.shape == moved_channels[0].shape
    assert np.array_equal(orientations.apply_orientation(mapped, to_stored), as_stored)
    naive = predictor.predict(moved_channels)  # without the affine: sliced as stored, other slices, other labels
    assert not np.array_equal(orientations.apply_orientation(naive, to_stored), as_stored)
    # the command writes the labels in the input's orientation, with its affine
    name = f"{case.case_id}-seg.nii.gz"
    result = _invoke("predict", moved, "--model", model_dir, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    out = nib.load(tmp_path / "out" / name)
    assert tuple(nib.aff2axcodes(out.affine)) == codes and np.allclose(out.affine, moved_reference.affine)


def test_voxels_far_from_the_trained_size_get_a_warning(trained, caplog):
    import logging

    from tumorseg.prediction import Predictor, case_from_folder, load_case

    root, model_dir, _ = trained
    caplog.set_level(logging.WARNING, logger="tumorseg.prediction")
    _, config = model_io.load_model(model_dir)
    predictor = Predictor("corner", [(_CornerOfEachSlice(), config)])
    channels, _ = load_case(case_from_folder(discover_cases(root / "raw")[0].path))
    predictor.predict(channels, spacing=(1.1, 0.9, 1.0))
    assert "resample" not in caplog.text
    predictor.predict(channels, spacing=(0.5, 0.5, 1.0))
    assert "in-plane voxels of 0.5 x 0.5 x 1 mm" in caplog.text and "resample the sequences to 1 mm" in caplog.text


def test_volumes_are_turned_into_the_models_orientation_with_their_voxel_sizes():
    """What the models and the app's viewer see: an SRA volume with 1 x 2 x 3 mm LPS voxels comes back as the LPS
    array with 1 x 2 x 3 mm voxels."""
    from nibabel import orientations

    from tumorseg.data.orientation import to_model_orientation

    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    lps = nib.Nifti1Image(data, np.diag([-1.0, -2.0, 3.0, 1.0]))
    sra = lps.as_reoriented(orientations.ornt_transform(orientations.io_orientation(lps.affine),
                                                        orientations.axcodes2ornt(("S", "R", "A"))))
    assert sra.shape == (6, 4, 5)
    (volume,), spacing = to_model_orientation([np.asanyarray(sra.dataobj)], sra.header.get_zooms(), sra.affine)
    assert np.array_equal(volume, data) and spacing == (1.0, 2.0, 3.0)
    (same,), same_spacing = to_model_orientation([data], (1.0, 2.0, 3.0), lps.affine)
    assert same is data and same_spacing == (1.0, 2.0, 3.0)
