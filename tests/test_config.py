"""params.yaml is read strictly: a typo is an error naming the key, not a silent default."""

from __future__ import annotations

import pytest
import yaml

from conftest import REPO_ROOT
from tumorseg.config import ParamsError, from_mapping, read_params
from tumorseg.data.download import DataSettings
from tumorseg.data.preprocess import PreprocessSettings
from tumorseg.data.split import SplitSettings
from tumorseg.evaluation.infer import InferSettings
from tumorseg.evaluation.postprocess import PostprocessSettings


def test_repository_params_parse():
    params = read_params(REPO_ROOT / "params.yaml")
    data = from_mapping(DataSettings, params["data"], "data")
    assert data.source == "synthetic" and data.synthetic.shape == (96, 96, 64)
    from_mapping(PreprocessSettings, params["preprocess"], "preprocess")
    assert from_mapping(SplitSettings, params["split"], "split").fractions == (0.7, 0.15, 0.15)
    assert from_mapping(InferSettings, params["infer"], "infer").tta in ("none", "lr", "all")
    assert 0 in from_mapping(PostprocessSettings, params["postprocess"], "postprocess").component_mm3
    from tumorseg.training.settings import ModelSettings, TrainSettings

    from_mapping(TrainSettings, params["train"], "train")
    for name, block in params["models"].items():
        from_mapping(ModelSettings, block, f"models.{name}")
    with pytest.raises(ParamsError, match="'infer.tta' = 'maybe'; expected one of"):
        from_mapping(InferSettings, {"tta": "maybe"}, "infer")


@pytest.mark.parametrize(
    "mapping, message",
    [
        ({"sourse": "local"}, r"unknown key\(s\) \['sourse'\] in 'data'"),
        ({"source": "ftp"}, r"'data.source' = 'ftp'; expected one of \['synthetic', 'local', 'url'\]"),
        ({"synthetic": {"shape": [1, 2]}}, "'data.synthetic.shape' must have 3 items"),
        ({"synthetic": {"n_patients": "ten"}}, "'data.synthetic.n_patients' must be an integer"),
        ({"workers": True}, "'data.workers' must be an integer"),
    ],
)
def test_bad_values_name_the_key(mapping, message):
    with pytest.raises(ParamsError, match=message):
        from_mapping(DataSettings, mapping, "data")


def test_exponent_without_a_dot_says_how_to_write_it():
    from tumorseg.training.settings import ModelSettings

    # PyYAML (and so DVC) reads `lr: 4e-3` as the string '4e-3'.
    assert yaml.safe_load("lr: 4e-3")["lr"] == "4e-3"
    with pytest.raises(ParamsError, match=r"'models.unet.lr' must be a number, got the text '4e-3'.*write 4.0e-3"):
        from_mapping(ModelSettings, {"lr": "4e-3", "batch_size": 8}, "models.unet")
    assert from_mapping(ModelSettings, yaml.safe_load("{lr: 4.0e-3, batch_size: 8}"), "models.unet").lr == 4e-3


def test_missing_params_file(tmp_path):
    with pytest.raises(ParamsError, match="no such params file"):
        read_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ParamsError, match="mapping at the top level"):
        read_params(tmp_path / "params.yaml")


@pytest.mark.parametrize(
    "cls_path, mapping, where, message",
    [
        ("train", {"foreground_fraction": 2.0}, "train", r"'train.foreground_fraction' = 2.0; must be in \[0, 1\]"),
        ("train", {"augment": {"spatial_p": 1.5}}, "train", r"'train.augment.spatial_p' = 1.5; must be in \[0, 1\]"),
        ("train", {"augment": {"scale": [1.2, 0.8]}}, "train", r"'train.augment.scale' = \[1.2, 0.8\]; must be \[low, high\] with low <= high"),
        ("train", {"augment": {"scale": [0.0, 1.1]}}, "train", r"'train.augment.scale' = \[0.0, 1.1\]; must be > 0"),
        ("train", {"epochs": 0}, "train", r"'train.epochs' = 0; must be >= 1"),
        ("train", {"eval_batch_size": 0}, "train", r"'train.eval_batch_size' = 0; must be >= 1"),
        ("train", {"patch_size": 16}, "train", r"'train.patch_size' = 16; must be 0 \(whole slices\) or >= 32"),
        ("model", {"lr": 0.0, "batch_size": 8}, "models.unet", r"'models.unet.lr' = 0.0; must be > 0"),
        ("model", {"lr": 1e-3, "batch_size": 0}, "models.unet", r"'models.unet.batch_size' = 0; must be >= 1"),
        ("split", {"fractions": [0.7, 0.2, 0.2]}, "split", r"'split.fractions' = \[0.7, 0.2, 0.2\]; must add up to 1"),
        ("split", {"fractions": [0.9, 0.0, 0.1]}, "split", r"'split.fractions'.*train and val"),
        ("preprocess", {"percentiles": [99.5, 0.5]}, "preprocess", r"'preprocess.percentiles' = \[99.5, 0.5\]; must be \[low, high\]"),
        ("preprocess", {"percentiles": [0.5, 101]}, "preprocess", r"'preprocess.percentiles' = \[0.5, 101.0\]; must be in \[0, 100\]"),
        ("data", {"workers": 0}, "data", r"'data.workers' = 0; must be >= 1"),
        ("data", {"synthetic": {"glioma_fraction": 1.5}}, "data", r"'data.synthetic.glioma_fraction' = 1.5; must be in \[0, 1\]"),
    ],
)
def test_out_of_range_values_name_the_key(cls_path, mapping, where, message):
    from tumorseg.training.settings import ModelSettings, TrainSettings

    cls = {"train": TrainSettings, "model": ModelSettings, "split": SplitSettings, "preprocess": PreprocessSettings,
           "data": DataSettings}[cls_path]
    with pytest.raises(ParamsError, match=message):
        from_mapping(cls, mapping, where)


def test_settings_built_in_code_are_checked_too():
    from tumorseg.config import SettingError
    from tumorseg.training.settings import AugmentSettings

    with pytest.raises(SettingError, match=r"'scale' = \[1.2, 0.8\]"):
        AugmentSettings(scale=(1.2, 0.8))
    assert AugmentSettings(scale=(1.0, 1.0), spatial_p=1.0).spatial_p == 1.0  # the bounds themselves are allowed


def test_evaluate_reads_only_its_keys_of_the_train_block():
    from tumorseg.models.runtime import RuntimeSettings

    params = read_params(REPO_ROOT / "params.yaml")
    runtime = from_mapping(RuntimeSettings, params["train"], "train", subset=True)
    assert runtime.eval_batch_size == params["train"]["eval_batch_size"] and runtime.amp == params["train"]["amp"]
    with pytest.raises(ParamsError, match="'train.eval_batch_size' = -1"):
        from_mapping(RuntimeSettings, {**params["train"], "eval_batch_size": -1}, "train", subset=True)
    with pytest.raises(ParamsError, match="unknown key"):
        from_mapping(RuntimeSettings, params["train"], "train")  # without subset the other keys are errors
