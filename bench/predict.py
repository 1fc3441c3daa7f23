"""Seconds to segment one 240 x 240 x 155 patient with `tumorseg predict`, per model, on this CPU.

End to end as the command does it: read the four NIfTI files, preprocess as in training, predict
every slice with brain in batches, write the label map. The models are the pipeline's trained ones
(models/<name>; run `dvc repro` first); they are fully convolutional, so the 96 x 96 training size
does not limit the input. The original project promised "under 5 minutes"; the target here is
resnet_unet under 15 s on 2 cores.

With `--runtime both`, every model also runs from its ONNX export (`tumorseg export <model>`, done here into a
temporary copy of each model folder) through ONNX Runtime on the CPU, in the same run, same patient and batch, and
the ratio to PyTorch is printed (ratios from one run: these machines are noisy).

    python bench/predict.py --repeats 3 --out bench/results/predict.md
    python bench/predict.py --repeats 3 --runtime both --out bench/results/predict_onnx.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from _output import emit  # noqa: E402  (bench/ is on sys.path when a script runs)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tumorseg.data.brats import FILE_KINDS, case_filename  # noqa: E402
from tumorseg.data.synthetic import SyntheticSettings, case_id, generate_case, write_nifti  # noqa: E402
from tumorseg.models import MODEL_NAMES  # noqa: E402
from tumorseg.prediction import case_from_folder, load_case, load_predictor, write_label_map  # noqa: E402


def make_case(root: Path) -> Path:
    settings = SyntheticSettings(n_patients=1, shape=(240, 240, 155), seed=7)
    volumes, affine = generate_case(2, "glioma", settings)
    folder = root / case_id(2)
    folder.mkdir(parents=True)
    for kind in FILE_KINDS:
        write_nifti(volumes[kind], affine, folder / case_filename(case_id(2), kind))
    return folder


def time_once(predictor, folder: Path, out: Path, batch: int, tta: str = "none") -> dict[str, float]:
    t0 = time.perf_counter()
    channels, reference = load_case(case_from_folder(folder))
    t1 = time.perf_counter()
    labels = predictor.predict(channels, batch_size=batch, tta=tta)
    t2 = time.perf_counter()
    write_label_map(labels, reference, out)
    t3 = time.perf_counter()
    return {"read": t1 - t0, "preprocess + predict": t2 - t1, "write": t3 - t2, "total": t3 - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", type=Path, default=REPO / "models")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tta", default="none", choices=["none", "lr", "all"], help="as `tumorseg predict --tta`")
    ap.add_argument("--runtime", default="torch", choices=["torch", "both"], help="both: also ONNX Runtime, from each model's export")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    runtimes = ("torch", "onnx") if args.runtime == "both" else ("torch",)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_case(Path(tmp))
        models_dir = args.models_dir
        if "onnx" in runtimes:
            from tumorseg.models.export import export_onnx

            models_dir = Path(tmp) / "models"
            for name in (*MODEL_NAMES, "ensemble"):
                if (args.models_dir / name).is_dir():
                    shutil.copytree(args.models_dir / name, models_dir / name)
            for name in MODEL_NAMES:
                export_onnx(models_dir / name, size=(240, 240))
        rows, totals = [], {}
        for name in (*MODEL_NAMES, "ensemble"):
            for runtime in runtimes:
                # with the post-processing fitted for it, as predict applies
                predictor = load_predictor(name, models_dir, runtime=runtime)
                time_once(predictor, folder, Path(tmp) / "warm.nii.gz", args.batch, args.tta)  # warm-up
                runs = [time_once(predictor, folder, Path(tmp) / f"{name}.nii.gz", args.batch, args.tta)
                        for _ in range(args.repeats)]
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                totals[name, runtime] = med["total"]
                ratio = f" | {totals[name, 'torch'] / med['total']:.2f}x" if runtime == "onnx" else (" | 1.00x" if len(runtimes) > 1 else "")
                rows.append(f"| {name} |{f' {runtime} |' if len(runtimes) > 1 else ''} {med['read']:.2f} | "
                            f"{med['preprocess + predict']:.2f} | {med['write']:.2f} | **{med['total']:.2f}**{ratio} |")
                print(rows[-1], flush=True)
    both = len(runtimes) > 1
    lines = [f"`python bench/predict.py --repeats {args.repeats}{f' --tta {args.tta}' if args.tta != 'none' else ''}"
             f"{' --runtime both' if both else ''}` on {platform.machine()}, {os.cpu_count()} CPUs, "
             f"torch {torch.__version__} ({torch.get_num_threads()} threads), one synthetic 240 x 240 x 155 patient, "
             f"batch {args.batch}, median of {args.repeats} after a warm-up", "",
             "| model |" + (" runtime |" if both else "") + " read 4 NIfTI (s) | preprocess + predict + post-process (s) | "
             "write mask (s) | total (s) |" + (" speed-up vs torch |" if both else ""),
             "|---|---|---|---|---|" + ("---|---|" if both else ""), *rows]
    text = "\n".join(lines)
    emit(text, args.out)


if __name__ == "__main__":
    main()
