"""Device and numeric-precision choice, made once and logged, never silently changed."""

from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger(__name__)


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
    """bf16 autocast where it pays: on GPUs, and on CPUs with native bf16 (measured: on AVX2-only
    CPUs oneDNN has no bf16 convolutions and autocast is several times slower)."""
    from tumorseg.models.runtime import fast_autocast_dtype

    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    return fast_autocast_dtype(device.type)


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
        if device.type == "cuda":
            import os

            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type == "cuda":
        torch.set_float32_matmul_precision("high")
