"""`tumorseg ci-report`: the pull-request comment CI posts after retraining.

Each model's (and the ensemble's) test Dice, lesion-wise Dice and HD95 per region against the base branch (from `dvc metrics diff`, so
the base's figures are the metrics/*.json committed there), then the report stage's table. Lives
in the project, not in the workflow file, so it is tested like the rest.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from tumorseg.data.labels import REGION_NAMES
from tumorseg.models import MODEL_NAMES

REGIONS = REGION_NAMES + ("mean",)  # the rows of each model table
ROWS = (*MODEL_NAMES, "ensemble")
MARKER = "<!-- tumorseg-ci-report -->"  # lets the workflow find and update its own comment


class CiReportError(RuntimeError):
    """dvc could not compare the metrics; the message carries its output."""


def metrics_diff(base: str, repo: Path = Path(".")) -> dict[str, dict[str, dict]]:
    """`dvc metrics diff --json --all <base>`: {metrics file: {metric: {old, new, diff}}}."""
    proc = subprocess.run([sys.executable, "-m", "dvc", "metrics", "diff", "--json", "--all", base],
                          cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CiReportError(f"`dvc metrics diff {base}` failed in {repo}: {proc.stderr.strip() or proc.stdout.strip()}")
    return json.loads(proc.stdout or "{}")


def _fmt(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _change(entry: dict, digits: int, higher_is_better: bool) -> str:
    old, new = entry.get("old"), entry.get("new")
    if old is None or new is None:
        return "new" if old is None and new is not None else "-"
    delta = new - old
    if round(delta, digits) == 0:
        return "0"
    better = (delta > 0) == higher_is_better
    return f"{'+' if delta > 0 else ''}{delta:.{digits}f} {'🟢' if better else '🔴'}"


def model_table(model: str, metrics: dict[str, dict]) -> list[str]:
    """Legacy Dice, lesion-wise Dice and lesion-wise HD95 per region (post-processed), base vs this revision."""
    lines = [f"#### {model}", "", "| region | Dice (base) | Dice | change | lesion Dice (base) | lesion Dice | change "
             "| lesion HD95 mm (base) | lesion HD95 mm | change |", "|" + "---|" * 10]
    for region in REGIONS:
        cells = []
        for key, digits, higher in (("dice", 3, True), ("lesion_dice", 3, True), ("lesion_hd95", 1, False)):
            e = metrics.get(f"{key}_{region}", {})
            cells.append(f"{_fmt(e.get('old'), digits)} | {_fmt(e.get('new'), digits)} | {_change(e, digits, higher)}")
        lines.append(f"| {region} | " + " | ".join(cells) + " |")
    fp = metrics.get("fp_per_patient_WT", {})
    lines.append(f"\nFalse-positive WT lesions per test patient: {_fmt(fp.get('old'), 2)} -> {_fmt(fp.get('new'), 2)} "
                 f"({_change(fp, 2, False)})")
    return lines + [""]


def build_report(base: str, repo: Path = Path("."), metrics_dir: str = "metrics", report_md: str = "reports/comparison.md") -> str:
    diff = metrics_diff(base, repo)
    lines = [MARKER, f"### tumorseg retraining: test metrics against `{base}`", ""]
    summary = []
    for model in ROWS:
        metrics = diff.get(f"{metrics_dir}/{model}.json")
        if metrics is None:
            summary.append(f"- **{model}**: no metrics in this revision or in `{base}`")
            continue
        lesion, mean = metrics.get("lesion_dice_mean", {}), metrics.get("dice_mean", {})
        summary.append(f"- **{model}**: lesion-wise mean Dice {_fmt(lesion.get('old'), 3)} -> {_fmt(lesion.get('new'), 3)} "
                       f"({_change(lesion, 3, True)}); mean Dice {_fmt(mean.get('old'), 3)} -> {_fmt(mean.get('new'), 3)} "
                       f"({_change(mean, 3, True)})")
    lines += summary + ["", "<details open><summary>Dice and HD95 per region</summary>", ""]
    for model in ROWS:
        if f"{metrics_dir}/{model}.json" in diff:
            lines += model_table(model, diff[f"{metrics_dir}/{model}.json"])
    lines += ["</details>", ""]
    report = Path(repo) / report_md
    if report.is_file():
        body = report.read_text().split("\n", 1)[1].strip()  # without its own title
        body = "\n".join(line for line in body.splitlines() if not line.startswith("![")) # images travel as the job's artifact
        lines += ["#### The report stage (`reports/comparison.md`)", "", body, "",
                  "The training-curve and qualitative figures are in the job's `reports` artifact."]
    else:
        lines.append(f"(no {report_md}: the report stage did not run)")
    return "\n".join(lines) + "\n"
