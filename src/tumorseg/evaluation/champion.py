"""Which model is the champion: the best by the post-processed validation figures ``postprocess@<model>``
recorded, never by test. The report (MLflow alias ``champion``), ``tumorseg predict`` and the app's default
all ask here, so they cannot disagree."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tumorseg.evaluation.postprocess import POSTPROCESS_FILE

log = logging.getLogger(__name__)

CHAMPION = "champion"
CRITERION = "best post-processed validation lesion-wise mean Dice; ties: legacy mean Dice"


def read_validation(models_dir: Path, name: str) -> dict:
    """The post-processed validation figures ``postprocess@<name>`` recorded."""
    path = Path(models_dir) / name / POSTPROCESS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `dvc repro postprocess@{name}`")
    try:
        figures = json.loads(path.read_text())["validation"]["postprocessed"]
        complete = {"lesion_dice_mean", "dice_mean"} <= set(figures)
    except (KeyError, TypeError, ValueError):
        complete = False
    if not complete:
        raise ValueError(f"{path}: no post-processed validation figures in it; rerun `dvc repro postprocess@{name}`")
    return figures


def best_by_validation(validation: dict[str, dict]) -> str:
    """The candidate with the highest validation lesion-wise mean Dice (legacy mean Dice breaks a tie)."""
    if not validation:
        raise ValueError("no candidate models to choose a champion from")
    return max(validation, key=lambda m: (validation[m]["lesion_dice_mean"], validation[m]["dice_mean"]))


def pipeline_models(params_path: Path) -> list[str]:
    """The models params.yaml trains (its ``models`` block), which the report chooses among; the three pipeline
    models when there is no params.yaml (predict run outside the repository)."""
    from tumorseg.config import read_params
    from tumorseg.models import MODEL_NAMES

    if not Path(params_path).is_file():
        return list(MODEL_NAMES)
    return list(read_params(params_path).get("models") or MODEL_NAMES)


def champion(models_dir: Path, candidates: list[str] | None = None) -> str:
    """The champion among ``candidates`` (None: the three pipeline models), each of which must have been through
    ``postprocess@<model>``: a champion chosen among fewer models than asked would be a silent fallback."""
    from tumorseg.models import MODEL_NAMES

    candidates = list(MODEL_NAMES if candidates is None else candidates)
    missing = [str(Path(models_dir) / m / POSTPROCESS_FILE) for m in candidates
               if not (Path(models_dir) / m / POSTPROCESS_FILE).is_file()]
    if missing:
        raise FileNotFoundError(f"cannot choose the champion: no validation figures in {', '.join(missing)}; run `dvc repro` "
                                f"(postprocess@<model> writes them), or name a model (e.g. --model {candidates[0]})")
    validation = {m: read_validation(models_dir, m) for m in candidates}
    best = best_by_validation(validation)
    log.info("champion: %s (%s; %s)", best, CRITERION,
             ", ".join(f"{m} {v['lesion_dice_mean']:.3f}" for m, v in validation.items()))
    return best
