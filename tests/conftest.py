"""Shared fixtures: tiny BraTS cases made by hand or by the synthetic generator."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from tumorseg.models.runtime import RuntimeSettings, pin_cpu_kernels

# The test process runs on the pipeline's CPU kernels, pinned before its first torch operation as every stage pins them
pin_cpu_kernels(RuntimeSettings().cpu_kernels, 0)

from tumorseg.data.brats import COHORT_FOLDER, FILE_KINDS, MASK, case_filename  # noqa: E402
from tumorseg.data.labels import SEQUENCES  # noqa: E402
from tumorseg.data.synthetic import SyntheticSettings, write_dataset, write_nifti  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])


def write_case(root: Path, case_id: str, volumes: dict[str, np.ndarray], cohort: str = "glioma") -> Path:
    """Write a case folder in BraTS-Africa naming; ``volumes`` maps kind -> array."""
    folder = root / "BraTS-Africa" / COHORT_FOLDER[cohort] / case_id
    folder.mkdir(parents=True, exist_ok=True)
    for kind, data in volumes.items():
        write_nifti(data, AFFINE, folder / case_filename(case_id, kind))
    return folder


def simple_volumes(shape=(12, 10, 8), seed=0) -> dict[str, np.ndarray]:
    """A box of 'brain' with a small tumour: valid input for every validation check."""
    rng = np.random.default_rng(seed)
    vols = {}
    brain = np.zeros(shape, dtype=bool)
    brain[2:-2, 2:-2, 2:-2] = True
    for seq in SEQUENCES:
        v = np.zeros(shape, dtype=np.int16)
        v[brain] = rng.integers(100, 1000, brain.sum())
        vols[seq] = v
    seg = np.zeros(shape, dtype=np.uint8)
    seg[4:6, 4:6, 3:5] = 2
    seg[5, 5, 4] = 3
    seg[4, 4, 3] = 1
    vols[MASK] = seg
    return vols


def copy_repo(dest: Path) -> None:
    """The working tree's tracked and untracked-not-ignored files, without DVC outputs, dvc.lock or metrics."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    for rel in files:
        src = REPO_ROOT / rel
        if src.is_file() and not rel.startswith(("data/", "metrics/")) and rel != "dvc.lock":
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def run_cmd(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> tuple[Path, SyntheticSettings]:
    """Four generated patients at 48 x 48 x 32 (seconds to make)."""
    settings = SyntheticSettings(n_patients=4, shape=(48, 48, 32), seed=7)
    root = tmp_path_factory.mktemp("synthetic")
    write_dataset(root, settings, workers=1, progress=False)
    return root, settings


def nifti_kinds() -> tuple[str, ...]:
    return FILE_KINDS


def load(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """download -> preprocess -> split on 8 tiny synthetic patients; returns the folder."""
    from tumorseg.data.download import DataSettings, run_download
    from tumorseg.data.preprocess import PreprocessSettings, run_preprocess
    from tumorseg.data.split import SplitSettings, run_split

    root = tmp_path_factory.mktemp("pipeline")
    data = DataSettings(synthetic=SyntheticSettings(n_patients=8, shape=(48, 48, 24), seed=3), workers=1)
    run_download(data, root / "raw", root / "manifest.parquet", root / "downloads")
    run_preprocess(PreprocessSettings(workers=1), root / "manifest.parquet", root / "raw", root / "pre")
    run_split(SplitSettings(fractions=(0.5, 0.25, 0.25)), root / "pre" / "slice_index.parquet", root / "split.parquet")
    return root


@pytest.fixture(scope="session")
def tiny_models_dir(tiny_pipeline):
    """A models/ folder holding a tiny trained unet (models/unet/model.json + weights), as `dvc repro` leaves it."""
    from tumorseg.training.loop import train_model
    from tumorseg.training.settings import ModelSettings, TrainSettings

    models = tiny_pipeline / "app_models"
    if not (models / "unet" / "model.json").is_file():
        train_model("unet", TrainSettings(epochs=1, samples_per_epoch=16, patience=0, device="cpu", seed=1, eval_batch_size=16),
                    ModelSettings(lr=3e-3, batch_size=8, arch={"base_channels": 8, "depth": 2}),
                    tiny_pipeline / "pre", tiny_pipeline / "split.parquet", models / "unet", tiny_pipeline / "app_ckpt",
                    preprocess_config={"crop": "brain", "normalize": "minmax"})
    return models


def tiny_params(repo: Path) -> dict:
    """The repo's params.yaml shrunk so the whole DAG runs in about a minute (7 patients of 40 x 40 x 24, tiny models)."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["synthetic"].update(n_patients=7, shape=[40, 40, 24])
    params["data"]["workers"] = params["preprocess"]["workers"] = 1
    params["train"].update(epochs=1, samples_per_epoch=16, patch_size=32, eval_batch_size=16)
    params["models"]["unet"].update(epochs=1, batch_size=8, arch={"base_channels": 8, "depth": 2})
    params["models"]["resnet_unet"].update(epochs=1, batch_size=8, arch={"pretrained": False, "decoder_channels": [32, 32, 16, 16, 8]})
    params["models"]["transunet"].update(epochs=1, batch_size=8, arch={"pretrained": False, "hidden_dim": 64, "depth": 1, "num_heads": 4,
                                                                      "head_channels": 64, "decoder_channels": [32, 16, 16, 8]})
    params["mlflow"]["enabled"] = False
    return params


def write_params(repo: Path, params: dict) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def ran_stages(output: str) -> set[str]:
    """The stages a `dvc repro` output says it ran."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def infer_postprocess_evaluate(name: str, root: Path, out: Path, mlflow_settings=None, runtime=None, ensemble_of=None) -> dict:
    """What `dvc repro` runs after training, in-process: infer@name (or the ensemble of ``ensemble_of``),
    postprocess@name, evaluate@name, on the tiny pipeline under ``root``; outputs under ``out``."""
    from tumorseg.evaluation.ensemble import ensemble_predictions
    from tumorseg.evaluation.evaluate import evaluate_model
    from tumorseg.evaluation.infer import infer_model
    from tumorseg.evaluation.postprocess import PostprocessSettings, fit_postprocess
    from tumorseg.models.runtime import RuntimeSettings
    from tumorseg.tracking import MlflowSettings

    inference = out / "inference"
    if ensemble_of:
        ensemble_predictions(list(ensemble_of), inference, inference / name, inference / f"{name}.seconds.json")
    else:
        infer_model(name, out / "models" / name, root / "pre", root / "split.parquet", inference / name,
                    inference / f"{name}.seconds.json", runtime or RuntimeSettings(device="cpu", eval_batch_size=16), tta="none")
    rules = out / "models" / name / "postprocess.json"
    fit_postprocess(name, inference / name, root / "split.parquet", root / "manifest.parquet", root / "raw", rules,
                    PostprocessSettings())
    return evaluate_model(name, inference / name, rules, root / "pre", root / "split.parquet", root / "manifest.parquet",
                          root / "raw", out / "metrics" / f"{name}.json", out / "evaluation" / name,
                          inference / f"{name}.seconds.json", mlflow_settings or MlflowSettings(enabled=False))
