"""Where and in which precision models run: device, autocast dtype, determinism, CPU kernels.

Shared by training, evaluation and prediction (which never import ``tumorseg.training``); the
choice is made once, logged by the caller, and never silently changed.

The same fp32 training gives different weights on different CPUs, because torch (ATen), oneDNN
and MKL pick SIMD kernels by the CPU and split sums by the thread count; a few ulps grow over the
epochs into another training (bench/results/cross_cpu.md: up to 0.18 Dice). ``pin_cpu_kernels``
runs the AVX2 kernels on every x86-64 CPU that has them, with a fixed thread count: then an
AVX-512 and an AVX2-only AMD EPYC train byte-identical weights (bench/results/cpu_determinism.md,
cpu_determinism_avx512.md). Not across vendors: an Intel Xeon so pinned trains other weights
(cpu_determinism_intel.md), MKL's AVX2 reproducibility branch being Intel-only and oneDNN's
kernels not documented to agree across CPUs.

bf16 autocast is 2-2.5x faster than fp32 on CPUs with native bf16 (avx512_bf16 / AMX), but on
AVX2-only CPUs (e.g. AMD Zen 3) oneDNN has no bf16 convolution kernels and it is ~10x *slower*
(measured: bench/results/models.md). So the choice is made from the CPU flags, never assumed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass, field
from typing import Literal

import torch

from tumorseg.config import Checked, in_range

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeSettings(Checked):
    """The keys of params.yaml's ``train`` block that also govern inference (evaluate reads only these)."""

    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    amp: Literal["auto", "bf16", "off"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU (bf16 on a CPU: set bf16)
    channels_last: bool = True
    deterministic: bool = True
    eval_batch_size: int = field(default=32, metadata=in_range(1))
    # avx2: the same AVX2 kernels on every x86-64 CPU with AVX2, so AMD EPYCs with and without AVX-512 give the same
    # numbers (an Intel CPU gives others); native: each CPU's own fastest kernels (numbers of that CPU's own)
    cpu_kernels: Literal["avx2", "native"] = "avx2"
    # torch's CPU threads: part of the numbers (the sums are split by thread); 0: torch's default (all cores)
    num_threads: int = field(default=2, metadata=in_range(0))

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

# The environment that makes ATen, oneDNN and MKL run their AVX2 code whatever the CPU has beyond it. Each library
# reads its variable once, when it first runs a kernel, so it must be set before the process's first operation.
PINNED_KERNELS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}}
PINNED_CAPABILITY = {"avx2": "AVX2"}  # what torch.backends.cpu.get_cpu_capability() says once pinned
REQUIRED_FLAGS = {"avx2": ("avx2", "fma")}


class CpuKernelsError(RuntimeError):
    """The CPU kernels cannot be pinned in this process: it chose others before, or its environment asks for others."""


def _cpuinfo_field(name: str) -> str | None:
    """The first ``name`` line's value in /proc/cpuinfo (None where the file or the field does not exist)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith(name)), None)
    except OSError:
        return None


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where it does not exist)."""
    return frozenset((_cpuinfo_field("flags") or "").split())


@functools.cache
def cpu_vendor() -> str:
    """AMD, Intel or the vendor id /proc/cpuinfo names ("unknown" where it names none): pinned kernels agree within one
    vendor's CPUs only (module docstring)."""
    vendor = _cpuinfo_field("vendor_id") or "unknown"
    return {"AuthenticAMD": "AMD", "GenuineIntel": "Intel"}.get(vendor, vendor)


def cpu_has_fast_bf16() -> bool:
    """True where the CPU has native bf16 instructions (avx512_bf16 or AMX), so bf16 autocast pays."""
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


def fast_autocast_dtype(device_type: str) -> torch.dtype | None:
    """bfloat16 where autocast to it is faster on `device_type` ("cpu"/"cuda"), else None (stay fp32)."""
    if device_type == "cuda":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else None
    if device_type == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    return None


def pin_cpu_kernels(kernels: str, num_threads: int) -> str:
    """Make this process's CPU numbers those of other CPUs (AMD EPYCs checked; not across vendors): pin ``kernels``
    (``PINNED_KERNELS``) and the thread count (``num_threads`` 0: leave it). Call it before the first torch operation (stage entry points and
    commands do); calling it again with the same settings is harmless. Returns a line for the log.

    Raises ``CpuKernelsError`` where the pin cannot hold: the environment sets one of the variables to something
    else, or ATen already chose other kernels in this process. oneDNN and MKL cannot be asked which kernels they
    chose: a matrix product or convolution run before the pin keeps theirs unnoticed, hence "before the first
    operation". A CPU without the instructions (no AVX2, or not x86-64) runs torch's own choice with a warning: its
    results will differ from an AVX2 machine's. ``native`` removes the variables (inherited from a pinned parent
    process, say), so that each library takes the CPU's own kernels."""
    if num_threads:
        torch.set_num_threads(num_threads)
    threads = torch.get_num_threads()
    if kernels == "native":
        for variable in PINNED_KERNELS["avx2"]:
            os.environ.pop(variable, None)
        return (f"CPU kernels: native ({torch.backends.cpu.get_cpu_capability()}), {threads} threads; results can "
                "differ from another CPU's (train.cpu_kernels: avx2 pins them)")
    env = PINNED_KERNELS[kernels]
    conflicting = {k: os.environ[k] for k in env if os.environ.get(k, env[k]).upper() != env[k].upper()}
    if conflicting:
        raise CpuKernelsError(f"train.cpu_kernels: {kernels} pins {env}, but the environment sets {conflicting}: unset "
                              f"{', '.join(conflicting)}, or set train.cpu_kernels: native to keep them")
    os.environ.update(env)
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != PINNED_CAPABILITY[kernels]:
        missing = [f for f in REQUIRED_FLAGS[kernels] if f not in cpu_flags()]
        if not missing:
            raise CpuKernelsError(
                f"train.cpu_kernels: {kernels}: torch already runs its {capability} kernels in this process (an "
                "operation ran before the pin); set " + " ".join(f"{k}={v}" for k, v in env.items()) +
                " in the environment before Python starts, or call pin_cpu_kernels before any torch operation")
        log.warning("train.cpu_kernels: %s, but this CPU lacks %s: torch runs its %s kernels, so results here will "
                    "differ from an AVX2 machine's", kernels, "/".join(missing) or kernels,
                    capability)
        return f"CPU kernels: {capability} (this CPU has no {kernels.upper()}), {threads} threads"
    return (f"CPU kernels: pinned to {kernels.upper()} on this {cpu_vendor()} CPU, {threads} threads (pinned AMD EPYCs "
            "agree byte for byte; an Intel CPU's numbers differ from theirs: README 'Across CPUs')")


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is visible; set train.device: auto or cpu")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("train.device is 'mps' but MPS is not available; set train.device: auto or cpu")
    return torch.device(requested)


def pick_amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 autocast on CUDA GPUs that support it, fp32 everywhere else. A CPU never gets bf16
    unless asked (``amp: bf16``): CPUs with native bf16 would train faster, but their numbers would then
    differ from an AVX2 machine's by up to 0.17 Dice (measured), and the same params must give the same
    metrics on any laptop; on AVX2-only CPUs bf16 is also several times slower (``fast_autocast_dtype``)."""
    if amp == "off":
        return None
    if amp == "bf16":
        if device.type == "cpu" and not cpu_has_fast_bf16():
            log.warning("amp: bf16 on a CPU without native bf16 (avx512_bf16/AMX): expect it to be several times slower than fp32")
        return torch.bfloat16
    return fast_autocast_dtype(device.type) if device.type == "cuda" else None


def autocast(device: torch.device, dtype: torch.dtype | None, cache_enabled: bool = True):
    """``cache_enabled=False`` for a step captured as a CUDA graph: the cache of weight casts would be filled outside
    the graph and go stale inside it."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache_enabled)


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    torch.backends.cudnn.benchmark = not deterministic  # autotuning picks the fastest kernels, not the same ones each run
    torch.use_deterministic_algorithms(False)  # process-wide: a deterministic run earlier in this process must not leak
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type == "cuda":
        torch.set_float32_matmul_precision("high")
