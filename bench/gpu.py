"""GPU benchmark at BraTS-Africa's size (issue 14, item 2): how fast the pipeline's own training loop runs on one GPU,
which settings make it faster, what that costs in validation Dice, and what the real-data profile costs projected.

Run on a machine with a CUDA GPU (``--device cpu`` only for a smoke test of the script itself):

    python bench/gpu.py --patients 20 --work .bench-gpu --out bench/results/gpu.md
    python bench/gpu.py --work .bench-gpu --side-by-side --out bench/results/gpu_side_by_side.md   # after the first

1. Generates ``--patients`` synthetic patients at 240 x 240 x 155 with the pipeline's own download, preprocess and
   split code (70 / 15 / 15 by patient), into ``--work`` (kept: a second run reuses it).
2. For every model, trains with the pipeline's ``train_model`` (whole 240 x 240 slices, bf16 autocast, channels_last,
   the real-data profile's batch size, learning rate and architecture; pretrained weights off: none are on the GPU
   machine) ``--epochs`` epochs over all training slices, under each configuration:

   - ``before``: ``deterministic: true`` (cuDNN autotuning off), the reference AdamW, eager: the loop as it was;
   - ``eager``: ``deterministic: false`` (cuDNN autotuning), fused AdamW;
   - ``eager_2x``: the same with twice the batch size and twice the learning rate (linear scaling);
   - ``compiled_2x``: ``eager_2x`` with ``train.compile: true``;
   - ``graph``, ``graph_2x``, ``graph_4x``: ``eager`` with ``train.cuda_graph: true`` (the whole step replayed as one
     CUDA graph) at 1x, 2x and 4x the batch size and learning rate;
   - ``compiled_graph_2x``: ``graph_2x`` with ``train.compile: true`` as well.

   Configurations run one at a time over every model, in the order given (``--configs``); once ``--budget-s`` seconds
   have passed the rest are skipped and listed as such (a lent GPU's time is short).

   Throughput is training slices per second over the epochs after the first (the first holds compilation and
   autotuning), measured by the loop itself (``on_epoch``), the epoch's GPU work synchronised.
3. Criterion, fixed before the run: a model's GPU configuration is the fastest one whose validation mean Dice after
   the last epoch is at least the reference's minus 0.02 (the reference: ``before`` when it ran, else ``eager``) (equal epochs, same data, same seed; the non-deterministic
   configurations move by run-to-run noise, which 0.02 is meant to cover).
4. Projects the real-data profile (146 patients: 102 train, 22 validation, with this data's slices per patient,
   100 epochs per model) from the measured training and validation speeds; target: the three models together in at
   most 30 minutes of training.

``--side-by-side`` then trains the three models (their chosen configuration) one after the other and all three at once
as separate processes on the one GPU, and compares the wall-clock times (issue 14, item 4).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tumorseg.models import MODEL_NAMES  # noqa: E402
from tumorseg.training.settings import AugmentSettings, ModelSettings, TrainSettings  # noqa: E402

from _output import emit  # noqa: E402  (bench/ is on sys.path when a script runs)

# The real-data profile's per-model settings (README, "The real-data profile"), pretrained weights off.
PROFILE = {
    "unet": {"batch_size": 16, "lr": 1e-4, "arch": {"base_channels": 32}},
    "resnet_unet": {"batch_size": 16, "lr": 1e-4, "arch": {"decoder_channels": [256, 128, 64, 32, 16]}},
    "transunet": {"batch_size": 8, "lr": 1e-5, "arch": {"head_channels": 512}},
}
CONFIGS = {
    "before": {"deterministic": True, "fused": False, "scale": 1, "compile": False, "graph": False},
    "eager": {"deterministic": False, "fused": True, "scale": 1, "compile": False, "graph": False},
    "eager_2x": {"deterministic": False, "fused": True, "scale": 2, "compile": False, "graph": False},
    "compiled_2x": {"deterministic": False, "fused": True, "scale": 2, "compile": True, "graph": False},
    "graph": {"deterministic": False, "fused": True, "scale": 1, "compile": False, "graph": True},
    "graph_2x": {"deterministic": False, "fused": True, "scale": 2, "compile": False, "graph": True},
    "graph_4x": {"deterministic": False, "fused": True, "scale": 4, "compile": False, "graph": True},
    "compiled_graph_2x": {"deterministic": False, "fused": True, "scale": 2, "compile": True, "graph": True},
}
DICE_TOLERANCE = 0.02
REAL = {"patients": 146, "train": 102, "val": 22, "epochs": 100, "target_minutes": 30}


def build_dataset(work: Path, patients: int, shape: tuple[int, int, int], workers: int) -> dict:
    """The pipeline's data stages on ``patients`` synthetic full-size cases, once per ``work`` folder. Pins the CPU
    kernels first: with one worker the data stages run torch in this process, which would fix its kernels before the
    training's pin (which would then refuse)."""
    from tumorseg.models.runtime import RuntimeSettings, pin_cpu_kernels

    pin_cpu_kernels(RuntimeSettings().cpu_kernels, 0)
    from tumorseg.data.download import DataSettings, run_download
    from tumorseg.data.preprocess import PreprocessSettings, run_preprocess
    from tumorseg.data.split import SplitSettings, run_split
    from tumorseg.data.synthetic import SyntheticSettings

    done = work / "dataset.json"
    if done.is_file():
        return json.loads(done.read_text())
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = DataSettings(synthetic=SyntheticSettings(n_patients=patients, shape=shape), workers=workers)
    run_download(data, work / "raw", work / "manifest.parquet", work / "downloads")
    index = run_preprocess(PreprocessSettings(workers=workers), work / "manifest.parquet", work / "raw", work / "pre")
    split = run_split(SplitSettings(), work / "pre" / "slice_index.parquet", work / "split.parquet")
    counts = split.groupby("split")["case_id"].nunique().to_dict()
    info = {"patients": patients, "shape": list(shape), "seconds": round(time.perf_counter() - t0, 1),
            "slices_per_patient": round(len(index) / patients, 1), "patients_by_split": counts,
            "slices_by_split": split["split"].value_counts().to_dict()}
    done.write_text(json.dumps(info))
    return info


@contextlib.contextmanager
def reference_adamw(active: bool):
    """``before`` measures the loop as it was: AdamW without the fused kernel."""
    if not active:
        yield
        return
    original = torch.optim.AdamW

    def unfused(*args, **kwargs):
        kwargs.pop("fused", None)
        return original(*args, **kwargs)

    torch.optim.AdamW = unfused
    try:
        yield
    finally:
        torch.optim.AdamW = original


def settings_for(name: str, config: str, epochs: int, device: str) -> tuple[TrainSettings, ModelSettings]:
    c, p = CONFIGS[config], PROFILE[name]
    train = TrainSettings(epochs=epochs, samples_per_epoch=0, patch_size=0, foreground_fraction=0.33, patience=0,
                          device=device, amp="auto", channels_last=True, deterministic=c["deterministic"],
                          compile=c["compile"], cuda_graph=c["graph"], augment=AugmentSettings(), eval_batch_size=32, seed=42)
    model = ModelSettings(lr=p["lr"] * c["scale"], batch_size=p["batch_size"] * c["scale"], arch=p["arch"])
    return train, model


def train_once(name: str, config: str, epochs: int, work: Path, device: str) -> dict:
    from tumorseg.training.loop import train_model

    train, model = settings_for(name, config, epochs, device)
    records: list[dict] = []
    if train.compile:
        torch._dynamo.reset()  # each configuration compiles from scratch (the on-disk cache may still help)
    with tempfile.TemporaryDirectory() as tmp, reference_adamw(not CONFIGS[config]["fused"]):
        t0 = time.perf_counter()
        train_model(name, train, model, work / "pre", work / "split.parquet", Path(tmp) / "out", Path(tmp) / "ckpt",
                    on_epoch=records.append)
        wall = time.perf_counter() - t0
    later = records[1:] or records
    return {"model": name, "config": config, "batch_size": model.batch_size, "lr": model.lr, "wall_s": wall,
            "first_epoch_s": records[0]["train_seconds"],
            "slices_per_s": sum(r["slices"] for r in later) / sum(r["train_seconds"] for r in later),
            "val_seconds": sum(r["val_seconds"] for r in later) / len(later),
            "val_dice_mean": records[-1]["val_dice_mean"], "val_dice": [round(r["val_dice_mean"], 4) for r in records]}


def project(result: dict, info: dict) -> float:
    """Minutes of the real-data profile for one model: 100 epochs of training and validation."""
    per_patient = info["slices_per_patient"]
    val_slices_here = info["slices_by_split"]["val"]
    epoch = REAL["train"] * per_patient / result["slices_per_s"] + result["val_seconds"] * REAL["val"] * per_patient / val_slices_here
    return REAL["epochs"] * epoch / 60


def benchmark(args, info: dict) -> str:
    device = "cuda" if args.device == "cuda" else "cpu"
    t_start = time.perf_counter()
    skipped = []
    results_file, failed_file = args.work / "results.json", args.work / "failed.json"
    results: list[dict] = json.loads(results_file.read_text()) if results_file.is_file() else []
    failed: list[str] = json.loads(failed_file.read_text()) if failed_file.is_file() else []  # not retried by a rerun
    for config in args.configs:  # config-major: every model gets the cheap configurations before any compiles
        for name in args.models:
            r = next((x for x in results if x["model"] == name and x["config"] == config and x["epochs"] == args.epochs), None)
            if r is None and any(f.startswith(f"- {name} {config}: ") for f in failed):
                continue
            if r is None:
                if time.perf_counter() - t_start > args.budget_s:
                    skipped.append(f"{name} {config}")
                    continue
                try:
                    r = train_once(name, config, args.epochs, args.work, device) | {"epochs": args.epochs}
                except Exception as exc:  # one configuration failing (a compiler error, say) must not lose the others
                    print(f"{name} {config} FAILED: {type(exc).__name__}: {exc}", flush=True)
                    failed.append(f"- {name} {config}: failed with {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                    failed_file.write_text(json.dumps(failed, indent=1))
                    continue
                results.append(r)
                results_file.write_text(json.dumps(results, indent=1))
                if args.results_copy:
                    args.results_copy.write_text(json.dumps(results, indent=1))
            print(f"{name} {config}: {r['slices_per_s']:.0f} slices/s, val Dice {r['val_dice']}, first epoch "
                  f"{r['first_epoch_s']:.1f} s, wall {r['wall_s']:.1f} s", flush=True)
    reference_name = "before" if "before" in args.configs else "eager"
    rows, chosen, bases = [], {}, {}
    for name in args.models:
        by_config = {c: r for c in args.configs for r in results
                     if r["model"] == name and r["config"] == c and r["epochs"] == args.epochs}
        if not by_config:
            continue
        base = bases[name] = by_config.get(reference_name) or by_config.get("eager") or next(iter(by_config.values()))
        ok = [r for r in by_config.values() if r["val_dice_mean"] >= base["val_dice_mean"] - DICE_TOLERANCE]
        chosen[name] = max(ok, key=lambda r: r["slices_per_s"])
        for config, r in by_config.items():
            rows.append(f"| {name} | {config}{' **(chosen)**' if r is chosen[name] else ''} | {r['batch_size']} | {r['lr']:g} | {r['slices_per_s']:.0f} | "
                        f"{r['slices_per_s'] / base['slices_per_s']:.2f}x {base['config']} | {r['first_epoch_s']:.1f} | "
                        f"{' / '.join(f'{d:.3f}' for d in r['val_dice'])} | {project(r, info):.1f} |")
    (args.work / "chosen.json").write_text(json.dumps({n: r["config"] for n, r in chosen.items()}))
    gpu = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "CPU"
    reference_total = sum(project(r, info) for r in bases.values())
    chosen_total = sum(project(r, info) for r in chosen.values())
    lines = [
        f"`python bench/gpu.py --patients {info['patients']} --epochs {args.epochs} --configs {' '.join(args.configs)}` on {gpu}, "
        f"torch {torch.__version__}, Python {platform.python_version()}",
        "",
        f"Data: {info['patients']} synthetic patients at {' x '.join(map(str, info['shape']))} "
        f"({info['patients_by_split']}; {info['slices_per_patient']} slices per patient; the data stages took "
        f"{info['seconds']} s). Whole slices, bf16 autocast, channels_last, the real-data profile's architectures.",
        "",
        "| model | config | batch | lr | train slices/s | vs reference | first epoch (s) | val mean Dice per epoch | "
        "real-data profile, projected (min) |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        *([""] + failed if failed else []),
        *(["", f"Skipped (past --budget-s {args.budget_s:.0f} s): {', '.join(skipped)}"] if skipped else []),
        "",
        f"Projected training + validation of the real-data profile ({REAL['train']} train / {REAL['val']} validation patients, "
        f"{REAL['epochs']} epochs per model): **{reference_total:.0f} min with `{reference_name}`, {chosen_total:.0f} min with each "
        f"model's chosen configuration** (target: {REAL['target_minutes']} min for the three; "
        f"{'MET' if chosen_total <= REAL['target_minutes'] and len(chosen) == len(args.models) else 'NOT MET'}). Chosen: the "
        f"fastest configuration whose last validation mean Dice is at least `{reference_name}`'s minus {DICE_TOLERANCE}.",
    ]
    return "\n".join(lines)


def side_by_side(args, info: dict) -> str:
    chosen = json.loads((args.work / "chosen.json").read_text())
    cmd = [sys.executable, __file__, "--work", str(args.work), "--device", args.device, "--epochs", str(args.epochs)]

    def launch(name):
        return subprocess.Popen(cmd + ["--child", name, "--child-config", chosen[name]], env=os.environ | {"PYTHONUNBUFFERED": "1"})

    t0 = time.perf_counter()
    for name in args.models:
        if launch(name).wait() != 0:
            sys.exit(f"side by side: {name} failed")
    sequential = time.perf_counter() - t0
    t0 = time.perf_counter()
    procs = [launch(name) for name in args.models]
    if any(p.wait() != 0 for p in procs):
        sys.exit("side by side: a concurrent training failed")
    concurrent = time.perf_counter() - t0
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    return "\n".join([
        f"`python bench/gpu.py --side-by-side --epochs {args.epochs}` on {gpu}: the trainings ({chosen}, "
        f"{args.epochs} epochs each, every process importing torch and loading its bank"
        f"{' and compiling' if any(CONFIGS[c]['compile'] for c in chosen.values()) else ''} on its own)",
        "", "| how | wall-clock (s) |", "|---|---|",
        f"| one after the other | {sequential:.1f} |", f"| all three at once, one process each | {concurrent:.1f} |",
        "", f"At once / one after the other: **{concurrent / sequential:.2f}x** the time."])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=list(MODEL_NAMES))
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--work", type=Path, default=REPO / ".bench-gpu")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a smoke test of this script only")
    ap.add_argument("--budget-s", type=float, default=float("inf"), help="start no configuration after this many seconds")
    ap.add_argument("--results-copy", type=Path, help="also write the raw results here after every configuration")
    ap.add_argument("--side-by-side", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-config", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU; none is visible (--device cpu runs a smoke test)")
    from tumorseg.logs import setup_logging

    setup_logging()
    if args.child:
        train_once(args.child, args.child_config, args.epochs, args.work, args.device)
        return
    info = build_dataset(args.work, args.patients, tuple(args.shape), workers=max(1, min(16, os.cpu_count() or 1)))
    print(f"data: {info}", flush=True)
    emit(side_by_side(args, info) if args.side_by_side else benchmark(args, info), args.out)


if __name__ == "__main__":
    main()
