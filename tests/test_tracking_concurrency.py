"""Several trainings opening one sqlite tracking database at once (dvc queue start -j 3): the first step, which creates
the schema and the experiment, is serialised; every run lands."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tumorseg.tracking import setup_lock, sqlite_path

OPEN_AND_LOG = """
import sys
from tumorseg.tracking import MlflowSettings, TrainingRun
settings = MlflowSettings(tracking_uri=sys.argv[1], register=False)
run = TrainingRun(settings, sys.argv[2], {"lr": 0.1}, {})
run.log_metrics({"val_dice_mean": 0.5}, step=1)
run.mlflow.end_run()
print("done", flush=True)
"""


def test_sqlite_path_of_tracking_uris(tmp_path):
    assert sqlite_path(f"sqlite:///{tmp_path}/m.db") == tmp_path / "m.db"
    assert sqlite_path("sqlite:///m.db?timeout=30") == sqlite_path("sqlite:///m.db")
    assert sqlite_path("http://127.0.0.1:5000") is None


@pytest.mark.slow
def test_opening_the_store_waits_for_the_setup_lock(tmp_path):
    """While another process holds the lock, a training cannot open the store; once released it proceeds."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with setup_lock(uri):
        child = subprocess.Popen([sys.executable, "-c", OPEN_AND_LOG, uri, "unet"], stdout=subprocess.PIPE, text=True)
        time.sleep(8)  # long enough to import mlflow and reach the store
        assert child.poll() is None, "the store was opened while the setup lock was held"
        assert not (tmp_path / "mlflow.db").exists()
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 0 and "done" in out


@pytest.mark.slow
def test_three_trainings_start_together_against_a_new_database(tmp_path):
    """As `dvc queue start -j 3` does: three processes, one new database, every run recorded once."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AND_LOG, uri, m], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for m in ("unet", "resnet_unet", "transunet")]
    results = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(err[-1500:] for _, err in results)
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tumorseg").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["resnet_unet", "transunet", "unet"]
