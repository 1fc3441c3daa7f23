"""Full-size scale run (issue 14, item 1): the whole pipeline on 146 synthetic patients at 240 x 240 x 155, with wall
time and peak RSS of every stage.

    python bench/scale.py --out bench/results/scale.md                       # the full-size profile (about an hour, 2 cores)
    python bench/scale.py --set data.synthetic.n_patients=12 --set 'data.synthetic.shape=[96,96,64]'   # a quick check

It clones this repository's committed HEAD into ``--work`` (its own DVC cache and MLflow database), applies
``SCALE_PROFILE`` (then any ``--set``) to the clone's params.yaml exactly as ``dvc exp run -S`` would, and runs every
stage alone, in DAG order, as ``/usr/bin/time -v dvc repro --single-item <stage>``. Peak RSS is GNU time's "Maximum
resident set size": the largest single process of the stage (dvc's own included), not the sum over a worker pool.
The training is short (a scale check, not a quality run); ``train.bank: stream`` keeps the slices out of memory.

The same profile by hand, in a clone: ``dvc exp run -n scale`` followed by ``-S key=value`` for each entry below.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from _output import cpu_model, emit, fresh_clone  # noqa: E402
from seeds import override  # noqa: E402  (``a.b.c=value`` as dvc exp run -S)

MODELS = ("unet", "resnet_unet", "transunet")
SCALE_PROFILE = [
    "data.synthetic.n_patients=146", "data.synthetic.shape=[240,240,155]",
    "train.epochs=1", "train.samples_per_epoch=64", "train.bank=stream", "train.eval_batch_size=8", "train.max_val_slices=256",
    *(f"models.{m}.epochs=1" for m in MODELS),
    "infer.tta=none",
    "postprocess.component_mm3=[0,100]", "postprocess.component_probability=[0,0.8]", "postprocess.et_volume_mm3=[0,100]",
]
STAGES = ["download", "preprocess", "split", *(f"train@{m}" for m in MODELS), *(f"infer@{m}" for m in MODELS), "ensemble",
          *(f"postprocess@{m}" for m in (*MODELS, "ensemble")), *(f"evaluate@{m}" for m in (*MODELS, "ensemble")), "report"]


def run_stage(clone: Path, stage: str, log) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of ``dvc repro --single-item stage`` in ``clone``."""
    t0 = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", "dvc", "repro", "--single-item", stage], cwd=clone, capture_output=True,
                          text=True, env=os.environ | {"TQDM_DISABLE": "1"})
    seconds = time.perf_counter() - t0
    log.write(f"\n===== {stage} =====\n{done.stdout}\n{done.stderr}")
    log.flush()
    if done.returncode:
        sys.exit(f"{stage} failed (exit {done.returncode}); its output is in {log.name}:\n{done.stderr[-2000:]}")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return seconds, int(peak.group(1)) / 1024 if peak else float("nan")


def du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20 if path.exists() else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / ".bench-scale")
    ap.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not Path("/usr/bin/time").is_file():
        sys.exit("bench/scale.py measures each stage with GNU time: install it (Debian: apt-get install time)")
    clone, commit = fresh_clone(REPO, args.work, "a scale run starts from nothing")
    params = override(yaml.safe_load((clone / "params.yaml").read_text()), SCALE_PROFILE + args.assignments)
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rows, total = [], 0.0
    with open(args.work / "scale.log", "w") as log:
        for stage in STAGES:
            seconds, peak = run_stage(clone, stage, log)
            total += seconds
            rows.append(f"| {stage} | {seconds:.0f} | {peak:.0f} |")
            print(rows[-1], flush=True)
    synthetic = params["data"]["synthetic"]
    text = "\n".join([
        f"`python bench/scale.py{''.join(' --set ' + a for a in args.assignments)}` on {cpu_model()} ({os.cpu_count()} cores), "
        f"commit {commit}: {synthetic['n_patients']} synthetic patients at {' x '.join(map(str, synthetic['shape']))}, "
        f"`train.bank: {params['train']['bank']}`, every stage alone under `/usr/bin/time -v dvc repro --single-item`",
        "", "| stage | wall (s) | peak RSS (MB) |", "|---|---|---|", *rows, f"| **all** | **{total:.0f}** | |", "",
        f"Disk: data/raw {du_mb(clone / 'data' / 'raw'):.0f} MB, data/preprocessed {du_mb(clone / 'data' / 'preprocessed'):.0f} MB, "
        f"DVC cache {du_mb(clone / '.dvc' / 'cache'):.0f} MB."])
    emit(text, args.out)


if __name__ == "__main__":
    main()
