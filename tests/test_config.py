"""params.yaml is read strictly: a typo is an error naming the key, not a silent default."""

from __future__ import annotations

import pytest
import yaml

from conftest import REPO_ROOT
from tumorseg.config import ParamsError, from_mapping, read_params
from tumorseg.data.download import DataSettings
from tumorseg.data.preprocess import PreprocessSettings
from tumorseg.data.split import SplitSettings
from tumorseg.evaluation.evaluate import EvaluateSettings


def test_repository_params_parse():
    params = read_params(REPO_ROOT / "params.yaml")
    data = from_mapping(DataSettings, params["data"], "data")
    assert data.source == "synthetic" and data.synthetic.shape == (96, 96, 64)
    from_mapping(PreprocessSettings, params["preprocess"], "preprocess")
    assert from_mapping(SplitSettings, params["split"], "split").fractions == (0.7, 0.15, 0.15)
    assert from_mapping(EvaluateSettings, params["evaluate"], "evaluate").tta is True
    with pytest.raises(ParamsError, match="'evaluate.tta' must be"):
        from_mapping(EvaluateSettings, {"tta": "maybe"}, "evaluate")


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
