"""What pinning the CPU kernels costs: training and inference speed of each model with `train.cpu_kernels: avx2`
(the default: the same numbers on every x86-64 CPU with AVX2) against `native` (this CPU's own fastest kernels).

Each measurement runs in a fresh process (the kernels are chosen once per process), the two settings alternate
round by round so that a slow spell of a noisy machine hits both, and the ratio is taken within the run. A step is
the pipeline's: the model of params.yaml, its batch size, 64 x 64 patches, channels_last, fp32, AdamW; inference is
whole 96 x 96 slices in batches of train.eval_batch_size, as validation and the infer stage run them.

    python bench/cpu_kernels_speed.py --out bench/results/cpu_kernels_speed.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from _output import emit  # noqa: E402  (bench/ is on sys.path when a script runs)
from cpu_determinism import cpu_description  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, sys, time
import torch
sys.path.insert(0, sys.argv[1])
from tumorseg.config import read_params
from tumorseg.models import build_model
from tumorseg.models.runtime import pin_cpu_kernels
name, kernels, steps = sys.argv[2], sys.argv[3], int(sys.argv[4])
params = read_params(sys.argv[5])
pin_cpu_kernels(kernels, params["train"]["num_threads"])
cfg = params["models"][name]
torch.manual_seed(0)
torch.use_deterministic_algorithms(True)
model = build_model(name, **cfg["arch"]).to(memory_format=torch.channels_last)
opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"])
g = torch.Generator().manual_seed(1)
bs = cfg["batch_size"]
x = torch.randn(bs, 4, 64, 64, generator=g).contiguous(memory_format=torch.channels_last)
y = (torch.rand(bs, 3, 64, 64, generator=g) > 0.7).float()
def step():
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(3):
    step()
t0 = time.perf_counter()
for _ in range(steps):
    step()
train = steps * bs / (time.perf_counter() - t0)
model.eval()
xs = torch.randn(params["train"]["eval_batch_size"], 4, 96, 96, generator=g).contiguous(memory_format=torch.channels_last)
with torch.no_grad():
    model(xs)
    t0 = time.perf_counter()
    for _ in range(4):
        model(xs)
    infer = 4 * len(xs) / (time.perf_counter() - t0)
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "train": train, "infer": infer}))
"""

MODELS = ["unet", "resnet_unet", "transunet"]
KERNELS = ["avx2", "native"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12, help="timed training steps per measurement")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    runs: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):
        for name in MODELS:
            for kernels in (KERNELS if r % 2 == 0 else KERNELS[::-1]):
                out = subprocess.run([sys.executable, "-c", PROBE, str(REPO / "src"), name, kernels, str(args.steps),
                                      str(args.params)], capture_output=True, text=True)
                if out.returncode != 0:
                    raise SystemExit(f"probe failed for {name} {kernels}:\n{out.stderr}")
                result = json.loads(out.stdout.strip().splitlines()[-1])
                runs.setdefault((name, kernels), []).append(result)
                print(name, kernels, result, flush=True)
    rows = []
    for name in MODELS:
        pinned, native = runs[(name, "avx2")], runs[(name, "native")]
        cells = []
        for what in ("train", "infer"):
            p, n = statistics.median(x[what] for x in pinned), statistics.median(x[what] for x in native)
            cells += [f"{p:.1f}", f"{n:.1f}", f"{n / p:.2f}x"]
        rows.append(f"| {name} | {native[0]['capability']} | " + " | ".join(cells) + " |")
    lines = [f"`python bench/cpu_kernels_speed.py` on {cpu_description()}; median of {args.rounds} "
             f"rounds, the settings alternating; slices/s", "",
             "| model | native kernels | train avx2 | train native | native / avx2 | infer avx2 | infer native | native / avx2 |",
             "|---|---|---|---|---|---|---|---|", *rows]
    emit("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
