"""The champion: chosen on the validation figures postprocess@<model> recorded, the same for the report, predict and the app."""

from __future__ import annotations

import pytest

from tumorseg.evaluation.champion import best_by_validation, champion
from tumorseg.evaluation.postprocess import PostprocessRules, write_rules


def _validation(lesion: float, legacy: float) -> dict:
    return {"n_patients": 12, "postprocessed": {"lesion_dice_mean": lesion, "dice_mean": legacy}, "raw": {}}


def _write(models_dir, figures: dict[str, tuple[float, float]]) -> None:
    for name, (lesion, legacy) in figures.items():
        (models_dir / name).mkdir(parents=True, exist_ok=True)
        write_rules(models_dir / name / "postprocess.json", PostprocessRules(), True, [], _validation(lesion, legacy))


def test_the_best_validation_lesion_wise_dice_wins_and_legacy_breaks_a_tie(tmp_path):
    _write(tmp_path, {"unet": (0.80, 0.90), "resnet_unet": (0.85, 0.80), "transunet": (0.70, 0.95)})
    assert champion(tmp_path) == "resnet_unet"
    _write(tmp_path, {"unet": (0.85, 0.79)})
    assert champion(tmp_path) == "resnet_unet"  # tied on lesion-wise Dice with unet (listed first): the better legacy Dice
    _write(tmp_path, {"unet": (0.85, 0.81)})
    assert champion(tmp_path) == "unet"
    assert champion(tmp_path, ["transunet"]) == "transunet"
    assert best_by_validation({"a": {"lesion_dice_mean": 0.5, "dice_mean": 0.5}}) == "a"
    with pytest.raises(ValueError, match="no candidate"):
        best_by_validation({})
    with pytest.raises(ValueError, match="no candidate"):
        champion(tmp_path, [])


def test_a_model_without_validation_figures_is_an_error_naming_the_file(tmp_path):
    """Choosing among the two models that have figures would be a silent fallback."""
    _write(tmp_path, {"unet": (0.80, 0.90), "resnet_unet": (0.85, 0.80)})
    with pytest.raises(FileNotFoundError, match="transunet/postprocess.json.*dvc repro"):
        champion(tmp_path)


def test_a_file_without_validation_figures_is_an_error_naming_it(tmp_path):
    (tmp_path / "unet").mkdir()
    write_rules(tmp_path / "unet" / "postprocess.json", PostprocessRules(), True, [], {})
    with pytest.raises(ValueError, match="unet/postprocess.json: no post-processed validation figures.*postprocess@unet"):
        champion(tmp_path, ["unet"])
