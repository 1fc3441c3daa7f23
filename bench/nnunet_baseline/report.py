"""Write bench/results/nnunet.md: the nnU-Net v2 2d baseline's test scores (with and without mirroring TTA)
and how it was trained. Run with the project's python after score.py; run.sh calls it:

    report.py --results WORK/results.json --fold-dir WORK/nnUNet_results/.../fold_0 \
        --timing train=618 --timing tta=101 --timing notta=41 --command "..." --out bench/results/nnunet.md

Iterations, epochs, seconds, batch size and torch threads come from the trainer's own log lines
(trainer/nnUNetTrainer_TimeBudget.py), the patch size from the plans.json saved next to the fold.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for _output
from _output import cpu_model, emit  # noqa: E402

ROWS = (("tta", "nnU-Net v2 2d, TTA", "tta"), ("notta", "nnU-Net v2 2d, no TTA", "notta"))
STOP = re.compile(r"after ([\d.]+) s: (\d+) train iterations in (\d+) epochs \(batch (\d+)\)")


def training_facts(fold_dir: Path) -> dict:
    logs = sorted(fold_dir.glob("training_log_*.txt"))
    if not logs:
        sys.exit(f"{fold_dir}: no training_log_*.txt")
    text = logs[-1].read_text()
    stop = STOP.search(text)
    if not stop:
        sys.exit(f"{logs[-1]}: no '... after X s: N train iterations in E epochs (batch B)' line; did training finish?")
    limit = re.search(r"time limit=(\d+) s", text)
    threads = re.search(r"torch threads=(\d+)", text)
    plans = json.loads((fold_dir.parent / "plans.json").read_text())
    config = fold_dir.parent.name.split("__")[-1]
    return {"seconds": float(stop[1]), "iterations": int(stop[2]), "epochs": int(stop[3]), "batch": int(stop[4]),
            "limit": int(limit[1]) if limit else None, "threads": threads[1] if threads else "?",
            "patch": plans["configurations"][config]["patch_size"], "config": config,
            "trainer": fold_dir.parent.name.split("__")[0], "log": logs[-1].name}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, required=True, help="score.py's JSON, with keys tta and notta")
    ap.add_argument("--fold-dir", type=Path, required=True, help="nnUNet_results/<dataset>/<trainer>__<plans>__2d/fold_0")
    ap.add_argument("--timing", action="append", default=[], metavar="NAME=SECONDS",
                    help="wall seconds of a step: train, tta, notta")
    ap.add_argument("--command", required=True, help="the command that produced the run")
    ap.add_argument("--software", default="", help="e.g. 'nnunetv2 2.8.1, torch 2.14.1'")
    ap.add_argument("--note", default="", help="an extra line, e.g. where the predictions came from")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    results = json.loads(args.results.read_text())
    timing = {k: float(v) for k, v in (t.split("=", 1) for t in args.timing)}
    t = training_facts(args.fold_dir)
    n_test = results["tta"]["summary"]["n_patients"]

    header = ("| model | Dice WT | Dice TC | Dice ET | Dice mean | HD95 WT (mm) | HD95 TC | HD95 ET "
              f"| slice-level WT Dice | lesion Dice WT | lesion Dice TC | lesion Dice ET | lesion Dice mean "
              f"| false WT lesions / patient | predict {n_test} patients (s) |")
    lines = [f"`{args.command}` on {platform.machine()}, {cpu_model()}, {os.cpu_count()} CPUs"
             + (f"; {args.software}" if args.software else "") + f"; {t['threads']} torch threads", ""]
    if args.note:
        lines += [args.note, ""]
    lines += [f"nnU-Net v2 `{t['config']}` (`{t['trainer']}`: nnU-Net's defaults with batch {t['batch']}, a wall-clock "
              "budget and a time-based poly learning rate), trained on the project's train patients, its val patients "
              f"as nnU-Net's validation fold; scored on the {n_test} test patients with tumorseg's `volume_metrics`, "
              "means as `metrics/<model>.json`. TTA = nnU-Net's default mirroring; no TTA = `--disable_tta`.", "",
              header, "|" + "---|" * header.count(" | ") + "---|"]
    for key, name, tkey in ROWS:
        if key not in results:
            continue
        s = results[key]["summary"]
        wall = f"{timing[tkey]:.0f}" if tkey in timing else "-"
        lines.append(f"| {name} | {s['dice_WT']:.4f} | {s['dice_TC']:.4f} | {s['dice_ET']:.4f} | **{s['dice_mean']:.4f}** "
                     f"| {s['hd95_WT']:.2f} | {s['hd95_TC']:.2f} | {s['hd95_ET']:.2f} | {s['slice_dice_WT']:.4f} "
                     f"| {s['lesion_dice_WT']:.4f} | {s['lesion_dice_TC']:.4f} | {s['lesion_dice_ET']:.4f} | {s['lesion_dice_mean']:.4f} "
                     f"| {s['fp_per_patient_WT']:.2f} | {wall} |")
    full_epochs = t["iterations"] / 250
    lines += ["",
              f"- iterations trained: {t['iterations']} (batch {t['batch']})",
              f"- epochs: {t['epochs']} started, {full_epochs:.2f} epochs' worth of nnU-Net's 250 iterations",
              f"- seconds: {t['seconds']:.1f} s of training (budget {t['limit']} s)"
              + (f"; `nnUNetv2_train` wall {timing['train']:.0f} s with set-up" if "train" in timing else ""),
              f"- batch size: {t['batch']}; patch size: {' x '.join(map(str, t['patch']))} (plans.json, {t['config']})",
              f"- machine: {platform.platform()}, {cpu_model()}, {os.cpu_count()} CPUs",
              f"- command: `{args.command}`"]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
