"""Which autocast dtype actually speeds these models up on the current machine.

bf16 autocast is 2-2.5x faster than fp32 on CPUs with native bf16 (avx512_bf16 / AMX), but on
AVX2-only CPUs (e.g. AMD Zen 3) oneDNN has no bf16 convolution kernels and it is ~10x *slower*
(measured: bench/results/models.md). So the choice is made from the CPU flags, never assumed.
"""

from __future__ import annotations

import functools

import torch

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where it does not exist)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


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
