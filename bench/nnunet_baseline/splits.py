"""The project's patient split, handed to nnU-Net. Run with the project's python (tumorseg's dependencies).

    splits.py export --split data/split.parquet --raw data/raw --out WORK/cases.json
    splits.py folds --cases WORK/cases.json --out $nnUNet_preprocessed/Dataset501_SynthBraTS/splits_final.json

`export` writes {"train": [...], "val": [...], "test": [...], "case_dirs": {case_id: folder}}, so that
nnU-Net sees exactly the patients the project's models see. `folds` writes nnU-Net's splits_final.json with a
single fold 0 = our train patients vs our val patients (instead of nnU-Net's random 5-fold split of
imagesTr), so its pseudo-validation and checkpoint_best use our val patients; the test patients are never
in imagesTr at all.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from tumorseg.data.brats import discover_cases  # noqa: E402
from tumorseg.data.split import SUBSETS, read_split  # noqa: E402


def export(split_path: Path, raw: Path) -> dict:
    split = read_split(split_path)
    per_case = split.groupby("case_id")["split"].agg(set)
    mixed = sorted(c for c, s in per_case.items() if len(s) > 1)
    if mixed:
        sys.exit(f"{split_path}: {len(mixed)} patients are in more than one subset (split.level: slice?); "
                 "the nnU-Net baseline needs a patient split")
    out: dict = {s: sorted(c for c, subsets in per_case.items() if subsets == {s}) for s in SUBSETS}
    dirs = {c.case_id: str(c.path.resolve()) for c in discover_cases(raw)}
    missing = sorted(set(per_case.index) - set(dirs))
    if missing:
        sys.exit(f"{raw}: no folder for {len(missing)} patients of the split, e.g. {missing[:3]}")
    out["case_dirs"] = {c: dirs[c] for c in sorted(per_case.index)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("--split", type=Path, required=True)
    e.add_argument("--raw", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True)
    f = sub.add_parser("folds")
    f.add_argument("--cases", type=Path, required=True)
    f.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.cmd == "export":
        cases = export(args.split, args.raw)
        args.out.write_text(json.dumps(cases, indent=1) + "\n")
        print(f"{args.out}: " + ", ".join(f"{s} {len(cases[s])}" for s in SUBSETS))
    else:
        cases = json.loads(args.cases.read_text())
        args.out.write_text(json.dumps([{"train": cases["train"], "val": cases["val"]}], indent=4) + "\n")
        print(f"{args.out}: fold 0 = {len(cases['train'])} train / {len(cases['val'])} val patients")


if __name__ == "__main__":
    main()
