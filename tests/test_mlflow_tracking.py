"""End to end against a real MLflow server on loopback: three trainings, their metrics, models,
registered versions, the test metrics from evaluate in the same runs, and the champion alias."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import infer_postprocess_evaluate
from tumorseg.evaluation.report import run_report
from tumorseg.training.loop import train_model
from tumorseg.training.settings import ModelSettings, TrainSettings
from tumorseg.tracking import CHAMPION_ALIAS, TAG_WEIGHTS, MlflowSettings, champion_holders, registered_name, set_champion

TINY = {
    "unet": ModelSettings(lr=3e-3, batch_size=4, arch={"base_channels": 8, "depth": 2}),
    "resnet_unet": ModelSettings(lr=1e-3, batch_size=4, arch={"pretrained": False, "decoder_channels": [32, 16, 16, 8, 8]}),
    "transunet": ModelSettings(lr=1e-3, batch_size=4, arch={"pretrained": False, "hidden_dim": 32, "depth": 1, "num_heads": 2,
                                                          "decoder_channels": [32, 16, 16, 8], "head_channels": 32}),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path, monkeypatch):
    port = _free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--default-artifact-root", str(tmp_path / "artifacts"),
           "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            pytest.fail("mlflow server exited:\n" + (tmp_path / "server.log").read_text()[-3000:])
    else:
        proc.kill()
        pytest.fail("mlflow server did not come up:\n" + (tmp_path / "server.log").read_text()[-3000:])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.slow
def test_three_trainings_land_in_mlflow(tiny_pipeline, tmp_path, mlflow_server):
    from mlflow import MlflowClient

    root = tiny_pipeline
    settings = MlflowSettings(experiment="tumorseg-test")
    train = TrainSettings(epochs=2, samples_per_epoch=8, patience=0, device="cpu", eval_batch_size=16)
    for name, cfg in TINY.items():
        train_model(name, train, cfg, root / "pre", root / "split.parquet", tmp_path / "models" / name, tmp_path / "ckpt" / name,
                    settings, preprocess_config={"normalize": "minmax"}, manifest_path=root / "manifest.parquet")
        infer_postprocess_evaluate(name, root, tmp_path, settings)
    infer_postprocess_evaluate("ensemble", root, tmp_path, settings, ensemble_of=list(TINY))
    result = run_report(list(TINY), tmp_path / "metrics", tmp_path / "models", tmp_path / "evaluation", root / "pre",
                        root / "split.parquet", tmp_path / "reports", settings)

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("tumorseg-test")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development", "opens as model training, not GenAI"
    runs = client.search_runs([experiment.experiment_id])
    manifest_digest = hashlib.sha256((root / "manifest.parquet").read_bytes()).hexdigest()[:12]
    assert sorted(r.info.run_name for r in runs) == sorted(TINY)
    for run in runs:
        name = run.info.run_name
        assert run.data.params["models." + name + ".lr"] == str(TINY[name].lr)
        assert run.data.tags[TAG_WEIGHTS] and run.data.tags["tumorseg.dvc_stage"] == f"train@{name}"
        [dataset] = run.inputs.dataset_inputs  # the Dataset column: what the run trained on
        assert (dataset.dataset.name, dataset.dataset.digest) == ("manifest", manifest_digest)
        assert [t.value for t in dataset.tags if t.key == "mlflow.data.context"] == ["training"]
        history = client.get_metric_history(run.info.run_id, "val_dice_mean")
        assert [m.step for m in history] == [1, 2]
        assert 0.0 <= run.data.metrics["test_dice_WT"] <= 1.0 and "test_hd95_WT" in run.data.metrics
        assert 0.0 <= run.data.metrics["test_lesion_dice_WT"] <= 1.0 and "test_without_postprocess.dice_WT" in run.data.metrics
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"loss_curves.png", "evaluation"} <= artifacts
        versions = client.search_model_versions(f"name = '{registered_name(name)}'")
        assert [v.run_id for v in versions] == [run.info.run_id]
    champion = client.get_model_version_by_alias(registered_name(result["best"]), CHAMPION_ALIAS)
    import mlflow.pyfunc
    import mlflow.pytorch
    import numpy as np

    model = mlflow.pytorch.load_model(f"models:/{registered_name(result['best'])}@{CHAMPION_ALIAS}")
    x = np.zeros((1, 4, 48, 48), dtype=np.float32)
    assert model(__import__("torch").from_numpy(x)).shape == (1, 3, 48, 48)
    # Its requirements name the torch that trained it (tracking.log_model states them rather than inferring).
    requirements = mlflow.pyfunc.get_model_dependencies(f"models:/{registered_name(result['best'])}@{CHAMPION_ALIAS}")
    assert f"torch=={__import__('torch').__version__.split('+')[0]}" in Path(requirements).read_text().split()
    assert champion.version == "1"
    report = (tmp_path / "reports" / "comparison.md").read_text()
    assert report.count("|") > 30 and "| ensemble |" in report
    assert "## Error bars and significance" in report and "| unet vs resnet_unet |" in report
    # the champion is the best model by validation lesion-wise Dice, never by test
    assert result["best"] == max(TINY, key=lambda m: (result["validation"][m]["lesion_dice_mean"], result["validation"][m]["dice_mean"]))
    assert champion_holders(client, list(TINY)) == {result["best"]: "1"}, "exactly one champion"
    # A retrain that changes the winner moves the alias: the other models in turn, then the first again.
    from tumorseg.fileio import sha256_file

    for winner in [m for m in TINY if m != result["best"]] + [result["best"]]:
        weights = sha256_file(tmp_path / "models" / winner / "model.safetensors")
        assert set_champion(settings, winner, weights, rivals=list(TINY)) == f"models:/{registered_name(winner)}@{CHAMPION_ALIAS}"
        assert champion_holders(client, list(TINY)) == {winner: "1"}
