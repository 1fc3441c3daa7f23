"""Which CPU settings change fp32 training results? A probe to run on two machines and compare, not a timed test.

The pipeline's trainings are byte-identical run to run on one machine, but not across CPUs: the weights depend on
which SIMD kernels torch (ATen) and oneDNN pick and on how many threads split the sums. This script trains the
pipeline's unet for 20 seeded AdamW steps on seeded random data (fp32, deterministic algorithms) in a fresh process
per setting and prints a sha256 of the weights: equal hashes, equal training. Run it on two CPU types: a setting
whose hash matches across them would make `dvc repro` reproduce the committed metrics there.

    python bench/cpu_determinism.py --out bench/results/cpu_determinism.md
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from _output import cpu_model, emit  # noqa: E402  (bench/ is on sys.path when a script runs)

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import hashlib, sys
import torch
sys.path.insert(0, sys.argv[1])
from tumorseg.models import build_model
torch.backends.mkldnn.enabled = sys.argv[2] == "1"  # 0: no oneDNN (convolutions by ATen's im2col and MKL's GEMM)
torch.manual_seed(0)
torch.use_deterministic_algorithms(True)
model = build_model("unet")
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
g = torch.Generator().manual_seed(1)
for _ in range(20):
    x = torch.randn(8, 4, 96, 96, generator=g)
    y = (torch.rand(8, 3, 96, 96, generator=g) > 0.7).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()[:16]
print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads(), f"{loss.item():.8f}", digest)
"""

PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2", "OMP_NUM_THREADS": "2"}

# name -> environment added to the probe's (each in a fresh process: the variables are read when torch loads);
# PROBE_ONEDNN=0 turns oneDNN off. MKL's MKL_CBWR=AVX2 branch exists on Intel CPUs only (elsewhere MKL runs its AUTO
# branch: Intel's oneMKL guide, "Getting Started with Conditional Numerical Reproducibility"); COMPATIBLE is the branch
# MKL documents as the same on every x86 CPU, and the last rows leave out oneDNN, whose kernels are not documented to
# agree across CPUs. They are candidates for one hash across vendors, to compare between an AMD and an Intel run.
SETTINGS = {
    "as installed": {},
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "2 threads": {"OMP_NUM_THREADS": "2"},
    "ATen kernels: default (no AVX)": {"ATEN_CPU_CAPABILITY": "default"},
    "oneDNN capped at SSE4.1": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "MKL_CBWR=COMPATIBLE": {"MKL_CBWR": "COMPATIBLE"},
    "AVX2 pinned (ATen, oneDNN, MKL), 2 threads": PINNED,
    "AVX2 pinned, MKL_CBWR=COMPATIBLE": {**PINNED, "MKL_CBWR": "COMPATIBLE"},
    "AVX2 pinned, oneDNN off": {**PINNED, "PROBE_ONEDNN": "0"},
    "AVX2 pinned, oneDNN off, MKL_CBWR=COMPATIBLE": {**PINNED, "PROBE_ONEDNN": "0", "MKL_CBWR": "COMPATIBLE"},
    "ATen default, oneDNN off, MKL_CBWR=COMPATIBLE, 1 thread": {"ATEN_CPU_CAPABILITY": "default", "PROBE_ONEDNN": "0",
                                                               "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1"},
}


def cpu_description() -> str:
    try:
        flags = next((set(line.split(":", 1)[1].split()) for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), set())
    except OSError:
        flags = set()
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{cpu_model()}, {os.cpu_count()} CPUs, flags {' '.join(simd) or 'unknown'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = []
    for name, extra in SETTINGS.items():
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "ATEN_CPU_CAPABILITY",
                                                                 "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")}
        env.update(extra)
        onednn = env.pop("PROBE_ONEDNN", "1")
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", PROBE, str(REPO / "src"), onednn], env=env, capture_output=True,
                             text=True)
        seconds = time.perf_counter() - t0  # the whole probe process: start-up, 20 steps, hashing
        if out.returncode != 0:
            raise SystemExit(f"probe failed for {name!r}:\n{out.stderr}")
        capability, threads, loss, digest = out.stdout.split()
        rows.append(f"| {name} | {capability} | {threads} | {loss} | `{digest}` | {seconds:.0f} |")
        print(rows[-1], flush=True)
    lines = [f"`python bench/cpu_determinism.py` on {cpu_description()}", "",
             "unet, 20 seeded AdamW steps on seeded random data, fp32; hash of the weights (equal hash: identical training)", "",
             "| setting | ATen kernels | threads | final loss | weights sha256 | s (one run, a noisy clock) |",
             "|---|---|---|---|---|---|", *rows]
    emit("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
