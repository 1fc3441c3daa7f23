"""`tumorseg ci-report`: the pull-request comment CI posts after retraining.

Each model's (and the ensemble's) test Dice, lesion-wise Dice and HD95 per region against the base branch (from `dvc metrics diff`, so
the base's figures are the metrics/*.json committed there), then the report stage's table. Lives
in the project, not in the workflow file, so it is tested like the rest.

A run on other data (the real-data profile on the GPU runner) is compared with a baseline of the same data instead:
``--base-metrics DIR`` reads the baseline's metrics/<model>.json files from DIR (e.g. ``baselines/brats-africa``,
committed from an earlier real-data run's artifact), never the synthetic default's metrics on the base branch.
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


def _flat(value, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a metrics JSON with dotted keys, as `dvc metrics diff --all` names them."""
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value} if isinstance(value, (int, float)) and not isinstance(value, bool) else {}


def metrics_diff_dirs(new_dir: Path, base_dir: Path, metrics_dir: str = "metrics") -> dict[str, dict[str, dict]]:
    """The same structure as ``metrics_diff``, between this revision's metrics files and a baseline folder's."""
    diff: dict[str, dict[str, dict]] = {}
    for name in ROWS:
        new_path, base_path = Path(new_dir) / f"{name}.json", Path(base_dir) / f"{name}.json"
        new = _flat(json.loads(new_path.read_text())) if new_path.is_file() else {}
        old = _flat(json.loads(base_path.read_text())) if base_path.is_file() else {}
        if new or old:
            diff[f"{metrics_dir}/{name}.json"] = {
                k: {"old": old.get(k), "new": new.get(k), **({"diff": new[k] - old[k]} if k in new and k in old else {})}
                for k in sorted(set(new) | set(old))}
    return diff


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


def _like_for_like(diff: dict[str, dict[str, dict]], metrics_dir: str) -> list[str]:
    """A warning when the baseline was scored on another number of test patients (other data or another split)."""
    counts = {(e.get("old"), e.get("new")) for name, m in diff.items() if (e := m.get("n_patients")) and None not in (e.get("old"), e.get("new"))}
    if any(old != new for old, new in counts):
        return [f"**Not comparable**: the baseline was scored on {', '.join(str(int(o)) for o, _ in sorted(counts))} test "
                f"patients, this run on {', '.join(str(int(n)) for _, n in sorted(counts))}; the changes below compare different "
                f"data or splits.", ""]
    return []


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


def build_report(base: str, repo: Path = Path("."), metrics_dir: str = "metrics", report_md: str = "reports/comparison.md",
                 base_metrics: Path | None = None) -> str:
    if base_metrics is None:
        diff = metrics_diff(base, repo)
        lines = [MARKER, f"### tumorseg retraining: test metrics against `{base}`", ""]
    else:
        base_dir = Path(repo) / base_metrics
        diff = metrics_diff_dirs(Path(repo) / metrics_dir, base_dir, metrics_dir)
        lines = [MARKER, f"### tumorseg retraining: test metrics against the baseline in `{base_metrics}`", ""]
        if not any(base_dir.glob("*.json")):
            lines += [f"No baseline in `{base_metrics}` yet, so nothing to compare with: this run's metrics/*.json are in the "
                      f"job's artifact; commit them under `{base_metrics}/` to make them the baseline of the next runs.", ""]
        lines += _like_for_like(diff, metrics_dir)
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
