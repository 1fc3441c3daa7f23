"""Fault injection: every stage SIGKILLed at its worst moment, then `dvc repro` again, ends byte-identical to an
uninterrupted run; two `dvc repro` at once; a corrupted resume checkpoint. On the tiny params profile.

The kill comes from tumorseg.fileio's hook: ``TUMORSEG_FAULT=<output path suffix>[:<n>]`` SIGKILLs the stage's process
at the n-th completed write of that output, just before its rename into place (all work done, nothing committed).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import copy_repo, tiny_params, write_params

pytestmark = pytest.mark.slow

# (stage killed, TUMORSEG_FAULT): the unet chain stands for every model's; train is killed after its first epoch's
# resume checkpoint is committed, while writing the second.
FAULTS = [
    ("download", "data/raw"),
    ("preprocess", "data/preprocessed"),
    ("split", "data/split.parquet"),
    ("train@unet", "checkpoints/unet/last.pt:2"),
    ("infer@unet", "inference/unet"),
    ("postprocess@unet", "models/unet/postprocess.json"),
    ("evaluate@unet", "metrics/unet.json"),
    ("report", "reports/comparison.md"),
]
TIMING_KEYS = {"seconds_per_volume"}


def _repo(tmp_path: Path, name: str, mlflow: bool) -> tuple[Path, dict]:
    repo = tmp_path / name
    repo.mkdir()
    copy_repo(repo)
    params = tiny_params(repo)
    params["models"]["unet"]["epochs"] = 2  # so a killed training has a committed epoch to resume from
    params["mlflow"]["enabled"] = mlflow
    write_params(repo, params)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
               MLFLOW_TRACKING_URI=f"sqlite:///{repo / 'mlflow.db'}")
    env.pop("TUMORSEG_FAULT", None)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    return repo, env


def _dvc(repo: Path, env: dict, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    run_env = dict(env, **({"TUMORSEG_FAULT": fault} if fault else {}))
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=run_env, capture_output=True, text=True)


def _outputs(repo: Path) -> dict[str, str]:
    """Every stage output's md5 from dvc.lock, those that carry timings compared without them."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    hashes = {}
    for stage, entry in lock.items():
        for out in entry.get("outs", []):
            hashes[out["path"]] = out["md5"]
    for path in list(hashes):
        if path.startswith("metrics/") or path.endswith(".seconds.json"):
            data = json.loads((repo / path).read_text())
            hashes[path] = json.dumps({k: v for k, v in data.items() if k not in TIMING_KEYS}, sort_keys=True)
        elif path == "reports":
            text = (repo / "reports" / "comparison.md").read_text()
            hashes["reports/comparison.md"] = re.sub(r"\| [0-9.]+ \|$", "| (s/volume) |", text, flags=re.M)
            for png in sorted((repo / "reports").glob("*.png")):
                hashes[f"reports/{png.name}"] = hashlib.md5(png.read_bytes()).hexdigest()
            del hashes[path]
    return hashes


def _leftovers(repo: Path) -> list[str]:
    return sorted(str(p.relative_to(repo)) for p in repo.rglob(".tmp-*") if ".dvc" not in p.parts)


def test_every_stage_killed_then_rerun_ends_as_an_uninterrupted_run(tmp_path):
    reference, env_ref = _repo(tmp_path, "reference", mlflow=True)  # the report names the MLflow alias it set
    proc = _dvc(reference, env_ref, "repro")
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = _outputs(reference)

    repo, env = _repo(tmp_path, "faulted", mlflow=True)
    table = []
    for stage, fault in FAULTS:
        killed = _dvc(repo, env, "repro", fault=fault)
        survived = killed.returncode != 0 and f"failed to reproduce '{stage}'" in killed.stderr
        table.append((stage, fault, survived))
        assert survived, f"{stage}: expected a kill at {fault}\n{killed.stdout[-2000:]}\n{killed.stderr[-2000:]}"
    final = _dvc(repo, env, "repro")
    assert final.returncode == 0, final.stderr[-3000:]
    assert _outputs(repo) == expected, "every output byte-identical to the uninterrupted run (timings aside)"
    assert _leftovers(repo) == [], "no temporary of a killed stage left behind"
    assert "Data and pipelines are up to date" in _dvc(repo, env, "repro").stdout

    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("tumorseg").experiment_id])
    trainings = sorted(r.info.run_name for r in runs if r.data.tags.get("tumorseg.dvc_stage", "").startswith("train@"))
    assert trainings == ["resnet_unet", "transunet", "unet"], "the killed unet training continued its run, no second one"
    assert {r.info.status for r in runs} == {"FINISHED"}
    print("\n".join(f"| {stage} | `{fault}` | {'survived' if ok else 'LOST'} |" for stage, fault, ok in table))


def test_a_second_dvc_repro_is_refused_while_the_first_runs(tmp_path):
    repo, env = _repo(tmp_path, "locked", mlflow=False)
    first = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "split"], cwd=repo, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    started = []
    for line in first.stdout:  # wait until the first is inside a stage
        started.append(line)
        if line.startswith("Running stage 'preprocess'"):
            break
    second = _dvc(repo, env, "repro", "split")
    rest = first.stdout.read()
    assert first.wait(timeout=600) == 0, "".join(started) + rest
    assert second.returncode != 0
    assert "Unable to acquire lock" in second.stderr or "is busy" in second.stderr, second.stderr
    assert "Data and pipelines are up to date" in _dvc(repo, env, "repro", "split").stdout, "the first finished unharmed"


def test_a_corrupted_resume_checkpoint_is_ignored_with_a_message(tiny_pipeline, tmp_path, caplog):
    from tumorseg.training.checkpoint import RESUME_FILE
    from tumorseg.training.loop import train_model
    from tumorseg.training.settings import ModelSettings, TrainSettings

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / RESUME_FILE).write_bytes(b"\x80\x02 half a pickle, cut by a crash")
    with caplog.at_level("WARNING"):
        train_model("unet", TrainSettings(epochs=1, samples_per_epoch=16, patience=0, device="cpu", eval_batch_size=16),
                    ModelSettings(lr=3e-3, batch_size=8, arch={"base_channels": 8, "depth": 2}), tiny_pipeline / "pre",
                    tiny_pipeline / "split.parquet", tmp_path / "model", tmp_path / "ckpt")
    assert f"{tmp_path / 'ckpt' / RESUME_FILE}: unreadable checkpoint" in caplog.text
    assert (tmp_path / "model" / "model.safetensors").is_file()
