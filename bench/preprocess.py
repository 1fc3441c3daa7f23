"""Benchmark: preprocessing cost per full-size case next to the bare cost of reading it.

Generates full 240 x 240 x 155 synthetic cases, then times, case by case and interleaved (so
all see the same page cache and machine noise):
  * bare read, zlib: nibabel loads the five .nii.gz files of the case and materialises the voxels;
  * bare read, ISA-L: the same with the gzip reader the pipeline uses (tumorseg.data.brats.read_nifti);
  * preprocess: the preprocess stage's per-case work (read, stack, crop, normalise, write the
    memory-mapped slice arrays and count labels per slice), single process.
Target: preprocess <= 1.3 x bare read. Both ratios are reported: against the same reader (ISA-L) the
ratio is the preprocessing's own cost; against nibabel's zlib it also credits the faster reader.
Also reports random single-slice read latency.

    python bench/preprocess.py --cases 4 --repeats 3 --out bench/results/preprocess.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from tumorseg.data.brats import FILE_KINDS, case_filename, discover_cases, read_nifti, validate_case
from tumorseg.data.preprocess import PreprocessSettings, _process_case
from tumorseg.data.slices import SliceStore
from tumorseg.data.synthetic import SyntheticSettings, write_dataset

from _output import emit  # bench/ is on sys.path when a script runs


def bare_read(case) -> None:
    for kind in FILE_KINDS:
        np.asanyarray(nib.load(case.path / case_filename(case.case_id, kind)).dataobj)


def bare_read_isal(case) -> None:
    for kind in FILE_KINDS:
        np.asanyarray(read_nifti(case.path / case_filename(case.case_id, kind)).dataobj)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--normalize", default="minmax", choices=["minmax", "percentile", "zscore"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        settings = SyntheticSettings(n_patients=args.cases, shape=(240, 240, 155), seed=11)
        t0 = time.perf_counter()
        write_dataset(tmp / "raw", settings, workers=2, progress=False)
        gen_s = time.perf_counter() - t0
        cases = discover_cases(tmp / "raw")
        rows = [validate_case(c, tmp / "raw").flat() for c in cases]
        out = tmp / "pre"
        out.mkdir()
        pre = PreprocessSettings(normalize=args.normalize, workers=1)
        read_t, isal_t, pre_t = [], [], []
        for _ in range(args.repeats):
            for case, row in zip(cases, rows):
                t = time.perf_counter()
                bare_read(case)
                read_t.append(time.perf_counter() - t)
                t = time.perf_counter()
                bare_read_isal(case)
                isal_t.append(time.perf_counter() - t)
                t = time.perf_counter()
                _process_case((row, tmp / "raw", out, pre))
                pre_t.append(time.perf_counter() - t)
        store = SliceStore(out)
        rng = np.random.default_rng(0)
        lat = []
        for _ in range(300):
            case = rows[rng.integers(len(rows))]["case_id"]
            n = np.load(out / f"{case}.image.npy", mmap_mode="r").shape[0]
            r = int(rng.integers(n))
            t = time.perf_counter()
            torch.from_numpy(np.array(store.image(case, r))).float()  # one random slice through SliceStore: map, read, unmap
            lat.append(time.perf_counter() - t)
        mb = sum((tmp / "raw" / r[f"{k}_path"]).stat().st_size for r in rows for k in FILE_KINDS) / len(rows) / 1e6

    read_med, isal_med, pre_med = statistics.median(read_t), statistics.median(isal_t), statistics.median(pre_t)
    lines = [
        f"`python bench/preprocess.py --cases {args.cases} --repeats {args.repeats} --normalize {args.normalize}`",
        f"({platform.processor() or platform.machine()}, {len(cases)} synthetic cases of 240 x 240 x 155, "
        f"{mb:.1f} MB of .nii.gz per case, generated in {gen_s:.0f} s)",
        "",
        "| per case (median of %d) | seconds | cases/s |" % len(read_t),
        "|---|---|---|",
        f"| bare nibabel read of the 5 files (zlib) | {read_med:.3f} | {1 / read_med:.2f} |",
        f"| bare read of the 5 files with the pipeline's reader (ISA-L) | {isal_med:.3f} | {1 / isal_med:.2f} |",
        f"| preprocess (read + stack + crop + {args.normalize} + write slices + index) | {pre_med:.3f} | {1 / pre_med:.2f} |",
        "",
        f"preprocess / bare read with the same reader (ISA-L) = **{pre_med / isal_med:.2f}x**; "
        f"preprocess / nibabel's zlib read = {pre_med / read_med:.2f}x (target <= 1.3x; this ratio credits the faster reader); "
        f"random single-slice read from the store (memory-mapped float16 -> float32 tensor): median {1e3 * statistics.median(lat):.3f} ms, "
        f"p99 {1e3 * float(np.percentile(lat, 99)):.3f} ms",
    ]
    text = "\n".join(lines)
    emit(text, args.out)


if __name__ == "__main__":
    main()
