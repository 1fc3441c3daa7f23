"""dvc.yaml lists exactly the code each stage runs, and `dvc repro` is cached end to end."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT, copy_repo as _copy_repo, ran_stages, run_cmd as _run, tiny_params, write_params
from tumorseg import paths

SRC = REPO_ROOT / "src"


def _module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imports(path: Path) -> set[Path]:
    """tumorseg modules a file imports (anywhere in it, lazy imports included)."""
    found = set()
    package = ".".join(path.relative_to(SRC).with_suffix("").parts[:-1]) if path.is_relative_to(SRC) else ""
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .blocks import X
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            if name.split(".")[0] != "tumorseg":
                continue
            file = _module_file(name)
            if file is not None and not (file.name == "__init__.py" and file.stat().st_size < 200 and name.count(".") <= 1):
                found.add(file)
    return found


def code_closure(script: Path) -> set[str]:
    todo, seen = [script], set()
    while todo:
        for dep in _imports(todo.pop()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return {p.relative_to(REPO_ROOT).as_posix() for p in seen | {script}}


def dvc_stages() -> dict:
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", ["download", "preprocess", "split", "ensemble", "report"])
def test_stage_deps_are_exactly_the_code_it_runs(stage):
    spec = dvc_stages()[stage]
    script = REPO_ROOT / spec["cmd"].split()[-1]
    listed = {d for d in spec["deps"] if d.endswith(".py")}
    assert listed == code_closure(script)


@pytest.mark.parametrize("stage", ["train", "infer"])
@pytest.mark.parametrize("model", ["unet", "resnet_unet", "transunet"])
def test_model_stage_deps_are_its_own_model_module_and_shared_code(stage, model):
    """Editing one model's module reruns only that model's stages (and what reads their outputs)."""
    spec = dvc_stages()[stage]["do"]
    script = REPO_ROOT / spec["cmd"].split()[1]
    listed = {d.replace("${key}", model) for d in spec["deps"] if d.endswith(".py")}
    model_module = REPO_ROOT / "src" / "tumorseg" / "models" / f"{model}.py"  # imported by name in build_model
    assert listed == code_closure(script) | code_closure(model_module)
    others = {f"src/tumorseg/models/{m}.py" for m in ("unet", "resnet_unet", "transunet") if m != model}
    assert not listed & others


@pytest.mark.parametrize("stage", ["postprocess", "evaluate"])
def test_scoring_stages_run_no_model_or_training_code(stage):
    """Post-processing and evaluation read probabilities: a model or training edit that leaves them unchanged reruns neither."""
    spec = dvc_stages()[stage]
    assert spec["foreach"] == ["unet", "resnet_unet", "transunet", "ensemble"]
    script = REPO_ROOT / spec["do"]["cmd"].split()[1]
    listed = {d for d in spec["do"]["deps"] if d.endswith(".py")}
    assert listed == code_closure(script)
    assert not any(d.startswith(("src/tumorseg/models/", "src/tumorseg/training/")) for d in listed)


def test_dvc_yaml_paths_match_the_library():
    stages = dvc_stages()
    assert set(stages["download"]["outs"]) == {paths.RAW_DIR.as_posix(), paths.MANIFEST.as_posix()}
    assert stages["preprocess"]["outs"] == [paths.PREPROCESSED_DIR.as_posix()]
    assert stages["split"]["outs"] == [paths.SPLIT.as_posix()]
    assert paths.SLICE_INDEX.parent == paths.PREPROCESSED_DIR


def _git_copy(tmp_path: Path, params: dict) -> tuple[Path, dict]:
    """The working tree copied to a fresh git repo with ``params`` as its params.yaml; and the env to run dvc in."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _copy_repo(repo)
    write_params(repo, params)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    _run(["git", "init", "-q"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "copy"], repo, env)
    return repo, env


@pytest.mark.slow
def test_dvc_repro_runs_and_second_run_is_a_noop(tmp_path):
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["data"]["synthetic"].update(n_patients=7, shape=[40, 40, 24])
    repo, env = _git_copy(tmp_path, params)
    dvc = [sys.executable, "-m", "dvc"]
    out = _run(dvc + ["repro", "split"], repo, env)
    for stage in ("download", "preprocess", "split"):
        assert f"Running stage '{stage}'" in out
    assert (repo / "data" / "split.parquet").is_file()
    again = _run(dvc + ["repro", "split"], repo, env)
    assert "Running stage" not in again and "Data and pipelines are up to date" in again
    status = _run(dvc + ["status", "split"], repo, env)
    assert "up to date" in status
    # changing one split param reruns split only
    params["split"]["seed"] = 7
    write_params(repo, params)
    third = _run(dvc + ["repro", "split"], repo, env)
    assert "Running stage 'split'" in third and "Running stage 'preprocess'" not in third


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + line)


@pytest.mark.slow
def test_training_only_edits_never_rerun_evaluation(tmp_path):
    """Inference and evaluation import no training code: an edit to the training loop or its settings retrains,
    the (deterministic) weights come out byte-identical, and DVC skips infer, postprocess and evaluate; an edit
    to the metrics reruns the scoring stages alone."""
    repo, env = _git_copy(tmp_path, tiny_params(REPO_ROOT))
    dvc = [sys.executable, "-m", "dvc"]
    first = _run(dvc + ["repro", "evaluate@unet"], repo, env)
    assert {"train@unet", "infer@unet", "postprocess@unet", "evaluate@unet"} <= ran_stages(first)
    weights = (repo / "models" / "unet" / "model.safetensors").read_bytes()

    _append(repo / "src" / "tumorseg" / "training" / "loop.py", "\n# a comment: the loop's code changed, its arithmetic did not\n")
    _append(repo / "src" / "tumorseg" / "training" / "settings.py", "\n# and so did the settings module\n")
    second = _run(dvc + ["repro", "evaluate@unet"], repo, env)
    assert ran_stages(second) == {"train@unet"}, second
    for stage in ("infer@unet", "postprocess@unet", "evaluate@unet"):
        assert f"Stage '{stage}' didn't change, skipping" in second
    assert (repo / "models" / "unet" / "model.safetensors").read_bytes() == weights

    _append(repo / "src" / "tumorseg" / "evaluation" / "metrics.py", "\n# an evaluation-only edit\n")
    third = _run(dvc + ["repro", "evaluate@unet"], repo, env)
    assert ran_stages(third) == {"postprocess@unet", "evaluate@unet"}, third
