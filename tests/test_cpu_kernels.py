"""CPU kernels pinned so that the numbers do not depend on the machine (tumorseg.models.runtime.pin_cpu_kernels).

What cannot be tested on one machine is the point itself, two CPU types training the same weights: that is
bench/cpu_determinism.py's job, run on each CPU type (bench/results/cpu_determinism.md). Here: the pin takes effect
when a process calls it (as the stages do) exactly as when the environment sets it before Python starts, and it
refuses, naming the fix, wherever it could not hold."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tumorseg.models.runtime import PINNED_KERNELS, CpuKernelsError, cpu_flags, pin_cpu_kernels

SRC = str(Path(__file__).resolve().parents[1] / "src")
HAS_AVX2 = {"avx2", "fma"} <= cpu_flags()

# A few seeded AdamW steps of the pipeline's unet and transunet (convolutions through oneDNN, attention and linear
# layers through ATen/MKL); prints the capability torch runs and a hash of both models' weights.
TRAIN = r"""
import hashlib, os, sys
import torch
from tumorseg.models import build_model
from tumorseg.models.runtime import pin_cpu_kernels
if sys.argv[1] != "none":
    pin_cpu_kernels(sys.argv[1], 2)
torch.use_deterministic_algorithms(True)
digest = hashlib.sha256()
for name, arch in (("unet", {"base_channels": 8}), ("transunet", {"hidden_dim": 64, "depth": 1, "num_heads": 2})):
    torch.manual_seed(0)
    model = build_model(name, **arch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(4, 4, 64, 64, generator=g)
        y = (torch.rand(4, 3, 64, 64, generator=g) > 0.7).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in model.parameters():
        digest.update(p.detach().numpy().tobytes())
print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads(), digest.hexdigest())
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PINNED_KERNELS["avx2"] and k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_python(code: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.skipif("avx512f" not in cpu_flags(), reason="needs a CPU with kernels beyond AVX2 (AVX-512): on an "
                    "AVX2-only CPU a pin that came too late would train the same weights, and the test could not fail")
def test_pin_in_the_process_trains_as_the_environment_pinned_before_python_starts():
    """The stages pin after `import torch`: that must be early enough for ATen, oneDNN and MKL alike. On an AVX-512
    CPU a pin that came too late would train with AVX-512 kernels and give another hash."""
    in_process = run_python(TRAIN, "avx2", env=clean_env())
    in_environment = run_python(TRAIN, "none", env=clean_env(OMP_NUM_THREADS="2", **PINNED_KERNELS["avx2"]))
    assert in_process.returncode == 0, in_process.stderr
    assert in_environment.returncode == 0, in_environment.stderr
    assert in_process.stdout.split()[0] == "AVX2"
    assert in_process.stdout == in_environment.stdout


def test_pin_refuses_an_environment_that_asks_for_other_kernels(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    with pytest.raises(CpuKernelsError, match=r"environment sets \{'ONEDNN_MAX_CPU_ISA': 'AVX512_CORE'\}.*"
                                              r"train.cpu_kernels: native"):
        pin_cpu_kernels("avx2", 0)


@pytest.mark.skipif(not HAS_AVX2, reason="this CPU has no AVX2/FMA: the avx2 pin cannot hold here (it warns instead)")
def test_pin_refuses_once_torch_has_chosen_other_kernels():
    """An operation before the pin fixes torch's kernels for the process: the pin must say so, not pass silently."""
    code = ("import os, torch\n"
            "torch.ones(64).add_(1)\n"
            "del os.environ['ATEN_CPU_CAPABILITY']\n"
            "from tumorseg.models.runtime import pin_cpu_kernels\n"
            "pin_cpu_kernels('avx2', 0)\n")
    out = run_python(code, env=clean_env(ATEN_CPU_CAPABILITY="default"))
    assert out.returncode != 0
    assert "CpuKernelsError" in out.stderr and "already runs its DEFAULT kernels" in out.stderr
    assert "ATEN_CPU_CAPABILITY=avx2" in out.stderr  # the fix


def test_native_leaves_the_kernels_to_the_cpu():
    """Also where a pinned parent process left the variables in the environment (a pytest or bench child)."""
    code = ("import os, torch\n"
            "from tumorseg.models.runtime import pin_cpu_kernels\n"
            "print(pin_cpu_kernels('native', 1))\n"
            "print(sorted(k for k in ('ATEN_CPU_CAPABILITY', 'ONEDNN_MAX_CPU_ISA', 'MKL_CBWR') if k in os.environ), "
            "torch.get_num_threads())\n")
    out = run_python(code, env=clean_env(**PINNED_KERNELS["avx2"]))
    assert out.returncode == 0, out.stderr
    assert "native" in out.stdout and out.stdout.strip().endswith("[] 1")
