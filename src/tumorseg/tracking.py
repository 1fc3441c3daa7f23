"""Everything MLflow, in one module: where runs go, how they are named, tagged and found.

* Tracking URI: params ``mlflow.tracking_uri`` if set, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<repo root>/mlflow.db`` where
  the repo root is ``DVC_ROOT`` (set by DVC for every stage, and pointing at the real repo even
  in ``dvc exp run --temp/--queue``), else the current folder. mlflow.db is never a DVC out.
* One run per model training, named after the model, tagged with the git commit, the DVC
  stage, the data manifest's hash and the sha256 of the trained weights; ``evaluate`` finds
  the run by that weights hash and adds the test metrics to it.
* The model is logged with ``mlflow.pytorch.log_model(name=...)`` and registered as a version
  of ``tumorseg-<model>``; the report stage gives the best one the alias ``champion``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TAG_MODEL = "tumorseg.model"
TAG_WEIGHTS = "tumorseg.weights_sha256"
TAG_DATA = "tumorseg.data_manifest_sha256"
TAG_COMMIT = "mlflow.source.git.commit"
TAG_STAGE = "tumorseg.dvc_stage"
CHAMPION_ALIAS = "champion"
# MLflow 3 opens an experiment without a kind in its GenAI view; this tag makes it open as model training.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
DATASET_NAME = "manifest"  # the training data as each run's MLflow input: the manifest (per-file sha256), by its digest


@dataclass(frozen=True)
class MlflowSettings:
    enabled: bool = True
    experiment: str = "tumorseg"
    tracking_uri: str | None = None  # null: MLFLOW_TRACKING_URI, else sqlite:///<repo root>/mlflow.db
    register: bool = True  # register each trained model as a version of tumorseg-<model>


def registered_name(model: str) -> str:
    return f"tumorseg-{model}"


def repo_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri(settings: MlflowSettings) -> str:
    """An explicit ``mlflow.tracking_uri`` first, then ``MLFLOW_TRACKING_URI``, then the repository's mlflow.db. The
    explicit setting must win: ``mlflow.set_tracking_uri`` itself exports MLFLOW_TRACKING_URI, so in a process that
    tracked to one database (a test session, a notebook) the variable would otherwise redirect every later run."""
    if settings.tracking_uri:
        return settings.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{repo_root() / 'mlflow.db'}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI; None for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0])


@contextlib.contextmanager
def setup_lock(uri: str):
    """Held while a process opens the tracking store and its experiment. Creating a new sqlite database (MLflow's
    schema migrations) or the experiment is not safe from several processes at once: three trainings started together
    (`dvc queue start -j 3`, bench/dvc_queue.py) failed with "table ... already exists". An exclusive lock on
    ``<database>.lock`` serialises that first step; the runs then write through sqlite's own locking. POSIX only
    (fcntl); other stores (a tracking server, a database server) handle their own concurrency."""
    db = sqlite_path(uri)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; start concurrent trainings against a database that exists
        fcntl = None
    if db is None or fcntl is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _mlflow(settings: MlflowSettings):
    import mlflow

    uri = tracking_uri(settings)
    with setup_lock(uri):
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.get_experiment_by_name(settings.experiment)
        if experiment is None:
            mlflow.create_experiment(settings.experiment, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        elif EXPERIMENT_KIND_TAG not in experiment.tags:  # made by an older tumorseg; a kind the user chose stays
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        mlflow.set_experiment(settings.experiment)
    return mlflow


def flatten(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value
    return out


class TrainingRun:
    """An MLflow run for one model's training; a no-op when ``mlflow.enabled`` is false."""

    def __init__(self, settings: MlflowSettings, model: str, params: dict[str, Any], tags: dict[str, str],
                 manifest_path: Path | None = None, resume_run_id: str | None = None):
        self.settings, self.model = settings, model
        self.run, self.resumed = None, False
        if not settings.enabled:
            log.info("MLflow tracking disabled (mlflow.enabled: false)")
            return
        self.mlflow = _mlflow(settings)
        if resume_run_id:  # a killed training continues its own run (left RUNNING by a SIGKILL, KILLED otherwise)
            try:
                self.run, self.resumed = self.mlflow.start_run(run_id=resume_run_id), True
                log.info("MLflow run %s (%s) continued after the resume", resume_run_id, model)
                return
            except Exception as exc:  # e.g. another tracking database now: a new run, said so
                log.warning("MLflow run %s of the killed training cannot be continued (%s); starting a new run", resume_run_id, exc)
        all_tags = {TAG_MODEL: model, TAG_COMMIT: git_commit(), TAG_STAGE: os.environ.get("DVC_STAGE", f"train@{model}")} | tags
        self.run = self.mlflow.start_run(run_name=model, tags=all_tags)
        self.mlflow.log_params({k: str(v)[:6000] for k, v in flatten("", params, {}).items()})
        if manifest_path is not None and Path(manifest_path).is_file():
            self.log_dataset(Path(manifest_path))
        log.info("MLflow run %s (%s) at %s", self.run.info.run_id, model, tracking_uri(settings))

    def log_dataset(self, manifest_path: Path) -> None:
        """The manifest as the run's training input, named by its sha256 (the Dataset column of the runs table)."""
        import mlflow.data
        import pandas as pd

        from tumorseg.fileio import sha256_file

        with warnings.catch_warnings():  # MLflow's notes on a local path's source kind and on integer columns: not ours to act on
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(pd.read_parquet(manifest_path), source=manifest_path.as_posix(), name=DATASET_NAME,
                                              digest=sha256_file(manifest_path)[:12])
            self.mlflow.log_input(dataset, context="training")

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.run:
            self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_figure(self, figure, path: str) -> None:
        if self.run:
            self.mlflow.log_figure(figure, path)

    def log_artifact(self, path: Path) -> None:
        if self.run:
            self.mlflow.log_artifact(str(path))

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.run:
            self.mlflow.set_tags(tags)

    def log_model(self, model, input_example) -> None:
        if not self.run:
            return
        import mlflow.pytorch
        import numpy as np
        import torch
        from mlflow.models import infer_signature

        model = model.cpu().eval()
        with torch.no_grad():
            output = model(torch.from_numpy(input_example)).numpy()
        signature = infer_signature(input_example, output)
        name = registered_name(self.model) if self.settings.register else None
        # Explicit requirements: MLflow would otherwise infer them by reloading the model in a subprocess,
        # ~10 s per model on 2 cores (a twentieth of the default pipeline's budget for three). The pt2
        # (torch.export) model needs torch alone, which these name.
        mlflow.pytorch.log_model(
            model, name="model", signature=signature, input_example=input_example.astype(np.float32),
            registered_model_name=name, pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
        )

    @property
    def run_id(self) -> str | None:
        return self.run.info.run_id if self.run else None

    def end(self, status: str = "FINISHED") -> None:
        if self.run:
            self.mlflow.end_run(status=status)
            self.run = None


def find_training_run(settings: MlflowSettings, model: str, weights_sha256: str):
    """The newest run that trained exactly these weights, or None."""
    mlflow = _mlflow(settings)
    runs = mlflow.search_runs(
        experiment_names=[settings.experiment],
        filter_string=f"tags.`{TAG_MODEL}` = '{model}' and tags.`{TAG_WEIGHTS}` = '{weights_sha256}'",
        order_by=["attributes.start_time DESC"], max_results=1, output_format="list",
    )
    return runs[0] if runs else None


def log_test_metrics(settings: MlflowSettings, model: str, weights_sha256: str, metrics: dict[str, float], artifacts: list[Path]) -> str | None:
    """Add test metrics to the training run of these weights (or to a new, tagged run when the
    weights came from a DVC cache without their MLflow run, which is said in the log)."""
    if not settings.enabled:
        return None
    mlflow = _mlflow(settings)
    run = find_training_run(settings, model, weights_sha256)
    if run is None:
        log.warning("no MLflow training run for %s weights %s (restored from a DVC cache?); logging test metrics to a new run",
                    model, weights_sha256[:12])
        ctx = mlflow.start_run(run_name=f"{model}-evaluate", tags={TAG_MODEL: model, TAG_WEIGHTS: weights_sha256, TAG_COMMIT: git_commit()})
    else:
        ctx = mlflow.start_run(run_id=run.info.run_id)
    with ctx as active:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        for path in artifacts:
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        return active.info.run_id


def set_champion(settings: MlflowSettings, model: str, weights_sha256: str, rivals: list[str] = ()) -> str | None:
    """Give the registered version trained from these weights the alias ``champion``, and take it from the
    ``rivals`` (the other compared models), so exactly one model version is the champion at any time."""
    if not (settings.enabled and settings.register):
        return None
    mlflow = _mlflow(settings)
    run = find_training_run(settings, model, weights_sha256)
    if run is None:
        log.warning("champion %s: no MLflow run for its weights; alias not set", model)
        return None
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name = '{registered_name(model)}' and run_id = '{run.info.run_id}'")
    if not versions:
        log.warning("champion %s: run %s has no registered model version; alias not set", model, run.info.run_id)
        return None
    version = max(versions, key=lambda v: int(v.version))
    client.set_registered_model_alias(registered_name(model), CHAMPION_ALIAS, version.version)
    for rival in rivals:
        if rival != model and rival in champion_holders(client, [rival]):
            client.delete_registered_model_alias(registered_name(rival), CHAMPION_ALIAS)
            log.info("champion moved from %s to %s", registered_name(rival), registered_name(model))
    return f"models:/{registered_name(model)}@{CHAMPION_ALIAS}"


def champion_holders(client, models: list[str]) -> dict[str, str]:
    """{model: version} of the given models' registered versions that carry the alias ``champion``."""
    from mlflow.exceptions import MlflowException

    holders = {}
    for model in models:
        try:
            holders[model] = client.get_model_version_by_alias(registered_name(model), CHAMPION_ALIAS).version
        except MlflowException:  # no such registered model, or no version with the alias
            pass
    return holders
