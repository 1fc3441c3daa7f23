"""The ``report`` stage: the three models side by side.

Writes ``reports/comparison.md`` (legacy and lesion-wise Dice per region, with and without
post-processing, the ensemble row, a one-threshold FLAIR baseline), ``reports/training_curves.png``
(as the original's convergence slide) and ``reports/qualitative.png`` (the same test slices for
every model: MRI, truth, predictions), and gives the best model by *validation* lesion-wise mean
Dice the MLflow alias ``champion``: the test patients only report.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from tumorseg.data.slices import SliceStore, image_file, read_case_index  # noqa: E402
from tumorseg.data.split import read_split  # noqa: E402
from tumorseg.evaluation.champion import champion as choose_champion, read_validation  # noqa: E402
from tumorseg.evaluation.ensemble import ENSEMBLE  # noqa: E402
from tumorseg.evaluation.evaluate import EXAMPLES_FILE, EXAMPLES_INDEX, PER_PATIENT_FILE, RAW_KEY, test_cases  # noqa: E402
from tumorseg.evaluation.predictions import to_volume  # noqa: E402
from tumorseg.data.labels import LABEL_NAMES  # noqa: E402
from tumorseg.evaluation.metrics import volume_metrics  # noqa: E402
from tumorseg.fileio import atomic_file, sha256_file  # noqa: E402
from tumorseg.models.io import WEIGHTS_FILE  # noqa: E402
from tumorseg.tracking import MlflowSettings, set_champion  # noqa: E402

log = logging.getLogger(__name__)

LABEL_COLOURS = ListedColormap([(0, 0, 0, 0), (0.95, 0.2, 0.2, 0.85), (0.2, 0.85, 0.3, 0.6), (1.0, 0.85, 0.1, 0.9)])
FLAIR = 3  # channel of t2f in the stacked input


def _case_flair(store_dir: Path, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """One patient's stored FLAIR (float16) and labels, read and unmapped: nothing stays resident after the case."""
    store = SliceStore(store_dir)
    flair, label = np.array(store.images(case_id)[:, FLAIR]), np.array(store.labels(case_id))
    if flair.dtype != np.float16:
        raise ValueError(f"{case_id}: {Path(store_dir) / image_file(case_id)} is {flair.dtype}, not the store's float16; "
                         f"rerun `dvc repro preprocess`")
    return flair, label


def flair_histograms(store_dir: Path, case_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Counts of brain voxels (FLAIR > 0) and of tumour voxels among them per float16 FLAIR value, patient by patient.
    float16 has 65,536 bit patterns and positive ones sort as their values, so these two histograms are exact: every
    quantile and every threshold's Dice over all training voxels follow from them, in memory independent of the
    number of patients (146 full-size patients: ~6e8 voxels, which the former gathering held as float32 + bool)."""
    brain_counts = np.zeros(2**16, dtype=np.int64)
    tumour_counts = np.zeros(2**16, dtype=np.int64)
    for cid in case_ids:
        flair, label = _case_flair(store_dir, cid)
        brain = flair > 0
        bits = flair[brain].view(np.uint16)
        brain_counts += np.bincount(bits, minlength=2**16)
        tumour_counts += np.bincount(bits[label[brain] > 0], minlength=2**16)
    return brain_counts, tumour_counts


def histogram_quantiles(counts: np.ndarray, values: np.ndarray, q: np.ndarray) -> np.ndarray:
    """np.quantile's default (linear, float64, its own interpolation formula) over the data that ``counts`` of sorted
    ``values`` stand for: the same candidates as on the gathered voxels, bit for bit."""
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])
    position = (n - 1) * np.asarray(q, dtype=np.float64)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, n - 1)
    gamma = position - low
    a = values[np.searchsorted(cumulative, low, side="right")].astype(np.float64)
    b = values[np.searchsorted(cumulative, high, side="right")].astype(np.float64)
    diff = b - a
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)


def flair_threshold_baseline(store_dir: Path, split: pd.DataFrame) -> dict:
    """WT by one threshold on normalised FLAIR, the threshold chosen on the training patients (120 candidates: quantiles
    0.5-0.999 of their brain voxels), streamed patient by patient through exact histograms."""
    cases = read_case_index(Path(store_dir) / "cases.parquet").set_index("case_id")
    train_ids = sorted(split.loc[split["split"] == "train", "case_id"].unique())
    brain_counts, tumour_counts = flair_histograms(store_dir, train_ids)
    present = np.flatnonzero(brain_counts)
    values = present.astype(np.uint16).view(np.float16).astype(np.float32)  # ascending: positive float16 bit patterns
    counts, tumour = brain_counts[present], tumour_counts[present]
    thresholds = histogram_quantiles(counts, values, np.linspace(0.5, 0.999, 120))
    # voxels above each threshold: a suffix of the sorted values
    above_all = np.concatenate([np.cumsum(counts[::-1])[::-1], [0]])
    above_tumour = np.concatenate([np.cumsum(tumour[::-1])[::-1], [0]])
    first_above = np.searchsorted(values, thresholds, side="right")
    scores = 2 * above_tumour[first_above] / (above_all[first_above] + tumour.sum())
    threshold = float(thresholds[int(np.argmax(scores))])
    rows = []
    for cid in test_cases(split):
        case = cases.loc[cid]
        shape = (int(case["nx"]), int(case["ny"]), int(case["nz"]))
        flair, label = _case_flair(store_dir, cid)
        pred = to_volume((flair > threshold).astype(np.uint8) * 2, int(case["z_start"]), shape)
        truth = to_volume(label, int(case["z_start"]), shape)
        spacing = (float(case["spacing_x"]), float(case["spacing_y"]), float(case["spacing_z"]))
        m = volume_metrics(pred, truth, spacing)
        rows.append({"dice_WT": m["dice_WT"], "hd95_WT": m["hd95_WT"]})
    df = pd.DataFrame(rows)
    return {"threshold": round(threshold, 4), "dice_WT": round(float(df["dice_WT"].mean()), 4), "hd95_WT": round(float(df["hd95_WT"].mean()), 2)}


def comparison_table(metrics: dict[str, dict], baseline: dict) -> str:
    """Test figures per model, post-processed and without post-processing: legacy and lesion-wise Dice, lesion-wise
    HD95, false-positive lesions per patient, seconds per volume."""
    header = ("| model | post-proc. | Dice WT | Dice TC | Dice ET | **Dice mean** | lesion Dice WT | lesion Dice TC | lesion Dice ET "
              "| **lesion Dice mean** | lesion HD95 mean (mm) | false WT lesions / patient | s / volume |")
    lines = [header, "|" + "---|" * 13]
    for name, m in metrics.items():
        for label, row in (("yes", m), ("no", m.get(RAW_KEY, {}))):
            if not row:
                continue
            seconds = f"{m['seconds_per_volume']:.2f}" if m.get("seconds_per_volume") is not None else "-"
            lines.append(f"| {name} | {label} | {row['dice_WT']:.3f} | {row['dice_TC']:.3f} | {row['dice_ET']:.3f} | "
                         f"**{row['dice_mean']:.3f}** | {row['lesion_dice_WT']:.3f} | {row['lesion_dice_TC']:.3f} | "
                         f"{row['lesion_dice_ET']:.3f} | **{row['lesion_dice_mean']:.3f}** | {row['lesion_hd95_mean']:.1f} | "
                         f"{row['fp_per_patient_WT']:.2f} | {seconds} |")
    lines.append(f"| FLAIR > {baseline['threshold']:.3f} (one threshold) | - | {baseline['dice_WT']:.3f} | - | - | - | - | - | - | - "
                 f"| - | - | - |")
    return "\n".join(lines)


def interval_table(metrics: dict[str, dict]) -> str:
    """Test means with their 95% bootstrap intervals over patients (post-processed)."""
    keys = ["lesion_dice_WT", "lesion_dice_TC", "lesion_dice_ET", "lesion_dice_mean", "dice_mean", "fp_per_patient_WT"]
    lines = ["| model | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for name, m in metrics.items():
        ci = m.get("ci95", {})
        cells = [f"{m[k]:.3f} [{ci[k]['low']:.3f}, {ci[k]['high']:.3f}]" if k in ci else f"{m[k]:.3f}" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def significance_table(per_patient: dict[str, pd.DataFrame], alpha: float = 0.05) -> tuple[str, list[str]]:
    """Paired Wilcoxon signed-rank test of every pair of rows, per region, on the test patients' lesion-wise Dice
    (post-processed); and the pairs that differ at ``alpha`` (no correction for the 18 comparisons: read with care)."""
    from itertools import combinations

    from tumorseg.data.labels import REGION_NAMES
    from tumorseg.evaluation.statistics import paired_wilcoxon

    lines = ["| pair | " + " | ".join(f"p {r} (lesion Dice)" for r in REGION_NAMES) + " |", "|" + "---|" * (len(REGION_NAMES) + 1)]
    significant = []
    for a, b in combinations(per_patient, 2):
        left = per_patient[a].set_index("case_id")
        right = per_patient[b].set_index("case_id").loc[left.index]
        cells = []
        for region in REGION_NAMES:
            key = f"lesion_dice_{region}"
            p = paired_wilcoxon(left[key], right[key])
            if p < alpha:
                better = a if left[key].mean() > right[key].mean() else b
                significant.append(f"{better} better than {b if better == a else a} in {region} (p = {p:.3f})")
            cells.append(f"{p:.3f}{' *' if p < alpha else ''}")
        lines.append(f"| {a} vs {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines), significant


def validation_table(validation: dict[str, dict]) -> str:
    """The champion criterion: validation lesion-wise Dice, as evaluate computes the test figures."""
    lines = ["| model | val lesion Dice WT | TC | ET | **mean** | val Dice mean | val false WT lesions / patient |", "|" + "---|" * 7]
    for name, v in validation.items():
        lines.append(f"| {name} | {v['lesion_dice_WT']:.3f} | {v['lesion_dice_TC']:.3f} | {v['lesion_dice_ET']:.3f} | "
                     f"**{v['lesion_dice_mean']:.3f}** | {v['dice_mean']:.3f} | {v['fp_per_patient_WT']:.2f} |")
    return "\n".join(lines)


def training_curves_figure(histories: dict[str, pd.DataFrame]):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, h in histories.items():
        axes[0].plot(h["epoch"], h["train_loss"], marker="o", label=f"{name} train")
        axes[0].plot(h["epoch"], h["val_loss"], marker="o", linestyle="--", label=f"{name} val")
        axes[1].plot(h["epoch"], h["val_dice_mean"], marker="o", label=name)
    axes[0].set(xlabel="epoch", ylabel="BCE + soft Dice loss", title="Training and validation loss")
    axes[1].set(xlabel="epoch", ylabel="validation mean Dice (WT, TC, ET)", title="Validation Dice", ylim=(0, 1))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def qualitative_figure(store_dir: Path, examples: list[dict], predictions: dict[str, np.ndarray]):
    store = SliceStore(store_dir)
    cols = 2 + len(predictions)
    fig, axes = plt.subplots(len(examples), cols, figsize=(2.6 * cols, 2.7 * len(examples)), squeeze=False)
    for i, ex in enumerate(examples):
        image = np.asarray(store.image(ex["case_id"], ex["row"]), dtype=np.float32)
        truth = np.asarray(store.label(ex["case_id"], ex["row"]))
        panels = [("FLAIR", None), ("ground truth", truth)] + [(name, pred[i]) for name, pred in predictions.items()]
        for j, (title, labels) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(image[FLAIR], cmap="gray", origin="lower")
            if labels is not None:
                ax.imshow(labels, cmap=LABEL_COLOURS, vmin=0, vmax=3, interpolation="nearest", origin="lower")
            ax.set_title(title if i == 0 else "", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(f"{ex['case_id'][10:15]} row {ex['row']}", fontsize=8)
    fig.legend(handles=[Patch(color=LABEL_COLOURS(k), label=f"{v} ({k})") for k, v in LABEL_NAMES.items()], loc="lower center", ncol=3, fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def _save_png(fig, path: Path) -> None:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)


def run_report(models: list[str], metrics_dir: Path, models_dir: Path, evaluation_dir: Path, store_dir: Path,
               split_path: Path, reports_dir: Path, mlflow_settings: MlflowSettings, ensemble: bool = True) -> dict:
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    rows = models + ([ENSEMBLE] if ensemble else [])
    metrics = {m: json.loads((Path(metrics_dir) / f"{m}.json").read_text()) for m in rows}
    validation = {m: read_validation(models_dir, m) for m in rows}
    split = read_split(split_path)
    baseline = flair_threshold_baseline(store_dir, split)
    # The champion is chosen on the validation patients (never on test): best post-processed lesion-wise mean Dice.
    best = choose_champion(models_dir, models)
    from tumorseg.models import MODEL_NAMES

    champion = set_champion(mlflow_settings, best, sha256_file(Path(models_dir) / best / WEIGHTS_FILE),
                            rivals=sorted(set(models) | set(MODEL_NAMES)))
    alias = f"MLflow alias `champion` on `tumorseg-{best}`" if champion else "no MLflow alias set: tracking or registration is off"
    lines = [f"# Model comparison on the test patients ({metrics[models[0]]['n_patients']} patients)", "",
             comparison_table(metrics, baseline), "",
             "Dice and HD95 are per-patient 3D means. Legacy Dice scores the whole volume; lesion-wise Dice and HD95 (BraTS 2023, "
             "how BraTS-Africa ranks) score each tumour component and count every false-positive component as Dice 0 / HD95 "
             "374 mm. Post-processing (small components dropped, tiny ET relabelled as necrotic core) is fitted per model on "
             "the validation patients by `postprocess@<model>`.", "",
             f"## Champion, chosen on the {validation[best]['n_patients']} validation patients",
             "", validation_table({m: validation[m] for m in rows}), "",
             f"Champion by validation lesion-wise mean Dice (post-processed): **{best}** ({alias}). The ensemble is reported, "
             "never a champion candidate."]
    if ensemble:
        single_best = max(models, key=lambda m: metrics[m]["lesion_dice_mean"])
        e, s = metrics[ENSEMBLE], metrics[single_best]
        verdict = "beats" if e["lesion_dice_mean"] > s["lesion_dice_mean"] else "does not beat"
        lines += ["", f"On the test patients the ensemble (mean of the three models' probabilities) {verdict} the best single "
                      f"model, {single_best}: lesion-wise mean Dice {e['lesion_dice_mean']:.3f} vs {s['lesion_dice_mean']:.3f}, "
                      f"legacy {e['dice_mean']:.3f} vs {s['dice_mean']:.3f} (test figures: reported, not used to choose)."]
    per_patient = {m: pd.read_csv(Path(evaluation_dir) / m / PER_PATIENT_FILE) for m in rows}
    significance, significant = significance_table(per_patient)
    lines += ["", "## Error bars and significance (test patients)", "",
              "Means with their 95% bootstrap interval over patients (10,000 resamples, seeded):", "", interval_table(metrics), "",
              "Paired Wilcoxon signed-rank tests, per region, on each patient's lesion-wise Dice (* p < 0.05, uncorrected):", "",
              significance, "",
              ("Significant at 0.05: " + "; ".join(significant) + ".") if significant else
              "No pair differs significantly at 0.05 on these patients."]
    lines += ["", "![training curves](training_curves.png)", "", "![qualitative](qualitative.png)", ""]
    with atomic_file(reports_dir / "comparison.md") as tmp:
        tmp.write_text("\n".join(lines))
    histories = {m: pd.read_csv(Path(models_dir) / m / "history.csv") for m in models}
    _save_png(training_curves_figure(histories), reports_dir / "training_curves.png")
    examples = json.loads((Path(evaluation_dir) / models[0] / EXAMPLES_INDEX).read_text())
    predictions = {m: np.load(Path(evaluation_dir) / m / EXAMPLES_FILE) for m in rows}
    _save_png(qualitative_figure(store_dir, examples, predictions), reports_dir / "qualitative.png")
    log.info("report -> %s; champion (validation) %s (%s)", reports_dir, best, champion or "MLflow alias not set")
    print(comparison_table(metrics, baseline))
    return {"best": best, "metrics": metrics, "validation": validation, "baseline": baseline}


def main(params_path: str | Path = "params.yaml") -> dict:
    """Stage entry point for ``report``."""
    from tumorseg import paths
    from tumorseg.config import from_mapping, read_params
    from tumorseg.logs import setup_logging
    from tumorseg.models import MODEL_NAMES

    setup_logging()
    params = read_params(params_path)
    models = [m for m in MODEL_NAMES if m in (params.get("models") or {})]
    return run_report(models, paths.METRICS_DIR, paths.MODELS_DIR, paths.EVALUATION_DIR, paths.PREPROCESSED_DIR,
                      paths.SPLIT, paths.REPORTS_DIR, from_mapping(MlflowSettings, params.get("mlflow"), "mlflow"))
