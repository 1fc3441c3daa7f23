"""The ``train`` block (shared by all models) and the ``models.<name>`` blocks of params.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class AugmentSettings:
    enabled: bool = True
    flip: bool = True  # left-right
    rotate_deg: float = 10.0  # uniform in [-rotate_deg, rotate_deg]
    scale: tuple[float, float] = (0.9, 1.1)
    spatial_p: float = 0.5  # share of samples that get rotation + scaling
    intensity: float = 0.1  # per-channel gain jitter (x(1 +- intensity)) and shift (+- intensity / 2)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 100
    samples_per_epoch: int = 0  # 0: one pass over the training slices
    foreground_fraction: float = 0.33  # nnU-Net forces a third of samples to contain tumour
    patch_size: int = 0  # train on random patch_size^2 patches (0: whole slices); inference always sees whole slices
    tumour_slices_only: bool = False  # the original project trained on tumour-bearing slices only
    patience: int = 20  # early stopping on validation mean Dice (0: off)
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    warmup_epochs: int = 0
    weight_decay: float = 1e-4
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    amp: Literal["auto", "bf16", "off"] = "auto"  # auto: bf16 on GPU and on CPUs where it is faster
    channels_last: bool = True
    deterministic: bool = True
    seed: int = 42
    num_threads: int = 0  # CPU threads for torch (0: torch's default)
    eval_batch_size: int = 32
    max_val_slices: int = 0  # 0: every validation slice


@dataclass(frozen=True)
class ModelSettings:
    lr: float
    batch_size: int
    epochs: int | None = None  # overrides train.epochs for this model
    arch: dict[str, Any] = field(default_factory=dict)  # constructor arguments of the model
