"""The three trainings at once inside DVC (issue 14, item 4): queued experiments, then the run-cache.

One `dvc repro` runs its stages one after the other, and a second `dvc repro` in the same workspace is refused by the
repository lock. DVC's own way to run stages at once is the experiment queue: each queued experiment runs in its own
temporary copy of the repository, sharing the DVC cache and its run-cache. This script checks the whole route in a
fresh clone of this repository's HEAD (its own cache and MLflow database) and times it:

1. `dvc repro split` (data stages), then `dvc exp run --queue -n train-<model> train@<model>` for each model and
   `dvc queue start -j 3`: the three trainings run at once, each in a temporary workspace, each logging to the
   clone's mlflow.db (DVC_ROOT points every stage at the real repository; see tumorseg.tracking);
2. `dvc repro train@unet train@resnet_unet train@transunet` in the clone's workspace: must restore the three
   trainings from the run-cache (DVC prints "Stage ... is cached - skipping run"), not train again;
3. the same three trainings one after the other (`dvc repro --force --no-run-cache`), the reference: the same
   params, threads and machine. CPU training is deterministic, so the retrained weights must equal the restored ones.

    python bench/dvc_queue.py --out bench/results/dvc_queue.md                # the default's trainings (2 cores: ~10 min)
    python bench/dvc_queue.py --set train.epochs=1 --set train.samples_per_epoch=256   # a quick check

On a CPU the three processes share the cores: give each its share (``--set train.num_threads=1`` on 2 cores; torch's
default of every core per process oversubscribes them) and expect little gain. On a GPU they share the device, which
one training leaves mostly idle (bench/gpu.py --side-by-side: 0.44x the time of one after the other on an H100).
"""

from __future__ import annotations

import argparse
import hashlib
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
from seeds import override  # noqa: E402

MODELS = ("unet", "resnet_unet", "transunet")
TRAIN_STAGES = [f"train@{m}" for m in MODELS]
ENV = os.environ | {"TQDM_DISABLE": "1"}


def dvc(clone: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(["dvc", *args], cwd=clone, capture_output=True, text=True, env=ENV)
    if check and done.returncode:
        sys.exit(f"`dvc {' '.join(args)}` failed in {clone} (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def weights(clone: Path) -> dict[str, str]:
    return {m: hashlib.sha256((clone / "models" / m / "model.safetensors").read_bytes()).hexdigest() for m in MODELS}


def mlflow_runs(clone: Path) -> dict[str, int]:
    """Finished MLflow runs per model name in the clone's database."""
    import sqlite3

    db = clone / "mlflow.db"
    if not db.is_file():
        return {}
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT name, status FROM runs").fetchall()
    return {m: sum(1 for name, status in rows if name == m and status == "FINISHED") for m in MODELS}


def wait_for_queue(clone: Path, timeout_s: float) -> str:
    """Poll `dvc queue status` until nothing is queued or running; its last output."""
    t0 = time.perf_counter()
    while True:
        status = dvc(clone, "queue", "status")
        if not re.search(r"\b(Queued|Running)\b", status):
            return status
        if time.perf_counter() - t0 > timeout_s:
            dvc(clone, "queue", "kill", *[f"train-{m}" for m in MODELS], check=False)
            sys.exit(f"the queue did not finish within {timeout_s:.0f} s:\n{status}")
        time.sleep(5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / ".bench-queue")
    ap.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds the queued trainings may take")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    clone, commit = fresh_clone(REPO, args.work, "the check starts from an empty cache and run-cache")
    if args.assignments:  # committed in the clone, so the queue, the workspace and the reference share one params.yaml
        params = override(yaml.safe_load((clone / "params.yaml").read_text()), args.assignments)
        (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        subprocess.run(["git", "commit", "--quiet", "-am", "bench/dvc_queue.py profile"], cwd=clone, check=True)
    dvc(clone, "repro", "split")
    subprocess.run(["git", "commit", "--quiet", "-am", "data stages"], cwd=clone, check=False)

    for model in MODELS:
        dvc(clone, "exp", "run", "--queue", "-n", f"train-{model}", f"train@{model}")
    t0 = time.perf_counter()
    dvc(clone, "queue", "start", "-j", str(len(MODELS)))
    status = wait_for_queue(clone, args.timeout)
    queued_s = time.perf_counter() - t0
    if status.count("Success") < len(MODELS):
        logs = "\n".join(dvc(clone, "queue", "logs", f"train-{m}", check=False)[-2000:] for m in MODELS)
        sys.exit(f"not every queued training succeeded:\n{status}\n{logs}")
    runs_after_queue = mlflow_runs(clone)

    t0 = time.perf_counter()
    restore_log = dvc(clone, "repro", *TRAIN_STAGES)
    restore_s = time.perf_counter() - t0
    # DVC 3.x says "Stage '<s>' is cached - skipping run, checking out outputs"; older versions "Restored stage '<s>' from
    # run-cache"
    restored = [s for s in TRAIN_STAGES
                if re.search(rf"Stage '{re.escape(s)}' is cached - skipping run|Restored stage '{re.escape(s)}' from run-cache", restore_log)]
    restored_weights, runs_after_restore = weights(clone), mlflow_runs(clone)

    t0 = time.perf_counter()
    dvc(clone, "repro", "--force", "--no-run-cache", "--single-item", *TRAIN_STAGES)
    sequential_s = time.perf_counter() - t0
    retrained = weights(clone)

    train = yaml.safe_load((clone / "params.yaml").read_text())["train"]
    text = "\n".join([
        f"`python bench/dvc_queue.py{''.join(' --set ' + a for a in args.assignments)}` on {cpu_model()} ({os.cpu_count()} cores), "
        f"commit {commit} (train.num_threads: {train.get('num_threads')}, train.device: {train.get('device')})", "",
        "| how | wall-clock (s) |", "|---|---|",
        f"| queued, `dvc queue start -j 3` (three temporary workspaces at once) | {queued_s:.0f} |",
        f"| then `dvc repro train@...` in the workspace | {restore_s:.0f} |",
        f"| one after the other, `dvc repro --force --no-run-cache` | {sequential_s:.0f} |", "",
        f"Queue + restore / one after the other: **{(queued_s + restore_s) / sequential_s:.2f}x** the time.", "",
        f"- restored from the run-cache, not trained again: {', '.join(restored) or 'NONE'} "
        f"({len(restored)} of {len(TRAIN_STAGES)})",
        f"- MLflow runs per model after the queue: {runs_after_queue}; after the restore: {runs_after_restore} "
        "(a restore trains nothing, so it logs nothing)",
        f"- restored weights equal the weights trained again one after the other: "
        f"{all(restored_weights[m] == retrained[m] for m in MODELS)}",
    ])
    emit(text, args.out)
    if len(restored) < len(TRAIN_STAGES):
        sys.exit("the workspace did not restore every training from the run-cache; dvc output:\n" + restore_log[-3000:])


if __name__ == "__main__":
    main()
