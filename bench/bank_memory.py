"""Host memory of training per ``train.bank`` mode, at BraTS-Africa's full slice size (issue 14, item 1).

    python bench/bank_memory.py --patients 12 --work .bench-bank --out bench/results/bank_memory.md

Generates ``--patients`` synthetic patients at 240 x 240 x 155 with the pipeline's data code (once per ``--work``),
then, for each mode, trains unet in a fresh process (1 epoch of ``--samples`` 64 x 64 patches, the default's
settings otherwise, on the CPU) and reports the peak RSS rise above the process's RSS after its imports, against the
bytes of the train + validation slices a bank holds (float16 images + uint8 labels). Target (issue 14): a rise of at
most ~1.2x the slices the mode holds in host memory (`device` and `host`: all of them on a CPU; `stream`: one batch).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from _output import cpu_model, emit  # noqa: E402
from gpu import build_dataset  # noqa: E402  (the same full-size synthetic data as the GPU benchmark)

MODES = ("device", "host", "stream")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(work: Path, mode: str, samples: int) -> None:
    import torch  # noqa: F401  (imported before the baseline, as the stage imports it)

    from tumorseg.training.loop import split_slices, train_model
    from tumorseg.training.settings import ModelSettings, TrainSettings

    baseline = rss_mb()
    subsets = split_slices(work / "pre", work / "split.parquet")
    n = len(subsets["train"]) + len(subsets["val"])
    first = subsets["train"].iloc[0]
    import numpy as np

    image = np.load(work / "pre" / f"{first['case_id']}.image.npy", mmap_mode="r")
    slice_bytes = image[0].nbytes + image.shape[-1] * image.shape[-2]  # float16 4-channel slice + uint8 label
    del image
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        train_model("unet", TrainSettings(epochs=1, samples_per_epoch=samples, patch_size=64, foreground_fraction=0.5,
                                          patience=0, device="cpu", bank=mode, eval_batch_size=8),
                    ModelSettings(lr=2e-3, batch_size=8, arch={"base_channels": 16, "depth": 4}),
                    work / "pre", work / "split.parquet", Path(tmp) / "out", Path(tmp) / "ckpt")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": mode, "baseline_mb": baseline, "peak_mb": peak, "slices": n,
                      "bank_mb": n * slice_bytes / 2**20, "seconds": time.perf_counter() - t0}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=12)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--work", type=Path, default=REPO / ".bench-bank")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.work, args.child, args.samples)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    info = build_dataset(args.work, args.patients, (240, 240, 155), workers=max(1, os.cpu_count() or 1))
    rows = []
    for mode in MODES:
        out = subprocess.run([sys.executable, __file__, "--work", str(args.work), "--samples", str(args.samples), "--child", mode],
                             check=True, capture_output=True, text=True, env=os.environ | {"TQDM_DISABLE": "1"})
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rise = r["peak_mb"] - r["baseline_mb"]
        held = r["bank_mb"] if mode != "stream" else 0.0
        rows.append(f"| {mode} | {r['bank_mb']:.0f} | {held:.0f} | {r['baseline_mb']:.0f} | {r['peak_mb']:.0f} | {rise:.0f} | "
                    f"{rise / r['bank_mb']:.2f}x | {r['seconds']:.1f} |")
        print(rows[-1], flush=True)
    text = "\n".join([
        f"`python bench/bank_memory.py --patients {info['patients']} --samples {args.samples}` on {cpu_model()} "
        f"({os.cpu_count()} cores): unet, 1 epoch of {args.samples} patches, then validation over every validation slice",
        "", "| train.bank | train + val slices (MB) | held in host memory (MB) | RSS after imports (MB) | peak RSS (MB) | "
        "rise (MB) | rise / slices | seconds |", "|---|---|---|---|---|---|---|---|", *rows])
    emit(text, args.out)


if __name__ == "__main__":
    main()
