"""Score nnU-Net's test predictions with the project's own metric. Run with the project's python:

    score.py --pred WORK/pred_test --cases WORK/cases.json --label tta --out WORK/results.json

Per test patient: tumorseg.evaluation.metrics.volume_metrics (Dice, HD95, sensitivity, specificity for
WT/TC/ET) on label maps read with tumorseg.data.brats.load_mask, ground truth from data/raw; means rounded as
the evaluate stage rounds them (metrics/<model>.json), so the numbers compare with the project's models.
Adds the summary under --label to --out (other labels kept).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from tumorseg.data.brats import MASK, case_filename, load_mask, read_volume  # noqa: E402
from tumorseg.data.labels import REGIONS  # noqa
from tumorseg.evaluation.metrics import slice_dice_wt, summarise, volume_metrics  # noqa: E402


def score_case(pred_path: Path, gt_path: Path) -> tuple[dict, list[float]]:
    pred, truth = load_mask(pred_path), load_mask(gt_path)  # both in the pipeline's orientation (LPS)
    p_img, g_img = nib.load(pred_path), nib.load(gt_path)  # headers only
    assert pred.shape == truth.shape, (pred_path, pred.shape, truth.shape)
    assert np.allclose(p_img.affine, g_img.affine, atol=1e-3), (pred_path, p_img.affine, g_img.affine)
    assert set(np.unique(pred).tolist()) <= {0, 1, 2, 3}, (pred_path, np.unique(pred))
    _, spacing = read_volume(gt_path)  # voxel sizes in the same axis order as the arrays
    return volume_metrics(pred, truth, spacing), slice_dice_wt(pred, truth)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pred", type=Path, required=True, help="folder of <case_id>.nii.gz label maps")
    ap.add_argument("--cases", type=Path, required=True, help="splits.py export's JSON")
    ap.add_argument("--label", required=True, help="key in --out, e.g. tta / notta")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    cases = json.loads(args.cases.read_text())
    rows, slice_dices = [], []
    for c in cases["test"]:
        m, sd = score_case(args.pred / f"{c}.nii.gz", Path(cases["case_dirs"][c]) / case_filename(c, MASK))
        rows.append({"case_id": c, **m})
        slice_dices += sd
    summary = summarise(rows, slice_dices)

    print(f"{'case_id':<22}" + "".join(f"{'Dice_' + r:>10}" for r in REGIONS) + f"{'HD95_WT':>10}")
    for row in rows:
        print(f"{row['case_id']:<22}" + "".join(f"{row['dice_' + r]:>10.4f}" for r in REGIONS) + f"{row['hd95_WT']:>10.2f}")
    print(f"{'MEAN':<22}" + "".join(f"{summary['dice_' + r]:>10.4f}" for r in REGIONS) + f"{summary['hd95_WT']:>10.2f}")

    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results[args.label] = {"pred_dir": str(args.pred), "summary": summary, "per_patient": rows}
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{args.out}: {args.label}")


if __name__ == "__main__":
    main()
