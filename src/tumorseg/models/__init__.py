"""Model registry: `build_model(name, **params)` for the three architectures.

Every model maps (N, in_channels=4, H, W) float to raw logits (N, num_classes=3, H, W) for the BraTS
regions WT, TC, ET (region-wise sigmoid applied by the loss and the evaluation, never in forward()).
Any H, W >= 32 works (240 x 240 included). Hyperparameters are the constructors' keyword arguments,
fed from params.yaml; unknown keys are rejected rather than ignored.

Each architecture's module is imported by name, only when that model is built: a pipeline stage
that trains one model depends on that model's module (plus blocks.py / weights.py), not on the
other two, so editing one architecture reruns only its own stages.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from torch import nn

from .runtime import cpu_has_fast_bf16, fast_autocast_dtype
from .weights import PretrainedWeightsNotFound, resolve_pretrained_weights, weights_env_var

MODEL_NAMES = ("unet", "resnet_unet", "transunet")

# name -> class name in the module tumorseg.models.<name>
_CLASS_NAMES = {"unet": "UNet", "resnet_unet": "ResNetUNet", "transunet": "TransUNet"}
# Public names re-exported lazily (PEP 562) from the architecture modules.
_LAZY = {"UNet": "unet", "ResNetUNet": "resnet_unet", "TransUNet": "transunet", "TRANSUNET_PAPER_PRESET": "transunet"}


def model_class(name: str) -> type[nn.Module]:
    """The class of model `name` (imports its module)."""
    if name not in _CLASS_NAMES:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    return getattr(importlib.import_module(f"{__name__}.{name}"), _CLASS_NAMES[name])


def model_params(name: str) -> dict[str, Any]:
    """The accepted hyperparameters of model `name` and their defaults."""
    sig = inspect.signature(model_class(name).__init__)
    return {k: p.default for k, p in sig.parameters.items() if k != "self"}


def build_model(name: str, **params: Any) -> nn.Module:
    """Instantiate model `name` with `params` (e.g. params.yaml `models.<name>.arch`)."""
    cls = model_class(name)
    accepted = model_params(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"model {name!r} got unknown parameter(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(accepted)}"
        )
    return cls(**params)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def __getattr__(attr: str) -> Any:
    if attr in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[attr]}"), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


__all__ = [
    "MODEL_NAMES",
    "TRANSUNET_PAPER_PRESET",
    "PretrainedWeightsNotFound",
    "ResNetUNet",
    "TransUNet",
    "UNet",
    "build_model",
    "count_parameters",
    "cpu_has_fast_bf16",
    "fast_autocast_dtype",
    "model_class",
    "model_params",
    "resolve_pretrained_weights",
    "weights_env_var",
]
