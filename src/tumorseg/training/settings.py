"""The ``train`` block (shared by all models) and the ``models.<name>`` blocks of params.yaml.

``TrainSettings`` extends ``RuntimeSettings`` (device, precision, CPU kernels and threads, inference batch): inference reads
those keys of the same block through ``RuntimeSettings`` alone, so an edit here never reruns it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tumorseg.config import Checked, SettingError, in_range
from tumorseg.models.runtime import RuntimeSettings


@dataclass(frozen=True)
class AugmentSettings(Checked):
    enabled: bool = True
    flip: bool = True  # left-right
    rotate_deg: float = field(default=10.0, metadata=in_range(0, 180))  # uniform in [-rotate_deg, rotate_deg]
    scale: tuple[float, float] = field(default=(0.9, 1.1), metadata=in_range(0, low_open=True))  # [low, high] zoom factor
    spatial_p: float = field(default=0.5, metadata=in_range(0, 1))  # share of samples that get rotation + scaling
    intensity: float = field(default=0.1, metadata=in_range(0, 1, high_open=True))  # gain x(1 +- intensity), shift +- intensity / 2

    def check(self) -> None:
        low, high = self.scale
        if low > high:
            raise SettingError("scale", f"= {list(self.scale)}; must be [low, high] with low <= high")


@dataclass(frozen=True)
class TrainSettings(RuntimeSettings):
    epochs: int = field(default=100, metadata=in_range(1))
    samples_per_epoch: int = field(default=0, metadata=in_range(0))  # 0: one pass over the training slices
    foreground_fraction: float = field(default=0.33, metadata=in_range(0, 1))  # nnU-Net forces a third of samples onto tumour
    # share of samples forced onto slices with tumour mimics (tumour-bright on FLAIR / T1c outside the tumour), their
    # patch centred on one: hard negatives against false-positive lesions
    mimic_fraction: float = field(default=0.0, metadata=in_range(0, 1))
    # BCE weight of tumour-mimic voxels (tumour-bright on FLAIR / T1c outside the tumour) against 1 for every other
    # voxel: false positives made costlier where they arise (1: no extra weight)
    mimic_loss_weight: float = field(default=1.0, metadata=in_range(0))
    # train on random patch_size^2 patches (0: whole slices); inference always sees whole slices
    patch_size: int = field(default=0, metadata=in_range(0))
    tumour_slices_only: bool = False  # the original project trained on tumour-bearing slices only
    # 2.5D input: each slice with this many neighbours above and below as extra channels (tumorseg.data.context)
    context_slices: int = field(default=0, metadata=in_range(0, 8))
    patience: int = field(default=20, metadata=in_range(0))  # early stopping on validation mean Dice (0: off)
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    warmup_epochs: int = field(default=0, metadata=in_range(0))
    weight_decay: float = field(default=1e-4, metadata=in_range(0))
    bce_weight: float = field(default=1.0, metadata=in_range(0))
    dice_weight: float = field(default=1.0, metadata=in_range(0))
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    seed: int = 42
    # > 0: validate, choose and save an exponential moving average of the weights with this decay per step
    # (tumorseg.training.weight_average) instead of the last step's weights; 0: off
    ema_decay: float = field(default=0.0, metadata=in_range(0, 1, high_open=True))
    # torch.compile the training step's model: pays on a GPU (bench/gpu.py measures it per model), costs compile
    # time on a small CPU run; the weights saved and validated are the same parameters either way
    compile: bool = False
    # replay each training step (forward, loss, backward, AdamW) as one captured CUDA graph, which removes the per-operation
    # launch cost that bounds an eager step on a fast GPU (tumorseg.training.cuda_graph; bench/gpu.py). CUDA only, one
    # process; the weights differ from an eager run's only as cuDNN autotuning already makes them differ
    cuda_graph: bool = False
    # where the training and validation slices live: device (loaded once onto the training device), host (host memory,
    # each batch sent), stream (each batch read from the store: host memory holds one batch, not the dataset)
    bank: Literal["device", "host", "stream"] = "device"
    # > 1: train@<model> runs under torchrun with this many processes (GPUs) on this machine, DDP; more machines:
    # TUMORSEG_TORCHRUN_ARGS (tumorseg.training.distributed)
    nproc_per_node: int = field(default=1, metadata=in_range(1))
    max_val_slices: int = field(default=0, metadata=in_range(0))  # 0: every validation slice

    @property
    def uses_mimics(self) -> bool:
        """Whether training needs the tumour-mimic levels of its bank (find_mimics)."""
        return self.mimic_fraction > 0 or self.mimic_loss_weight != 1

    def check(self) -> None:
        if self.patch_size and self.patch_size < 32:
            raise SettingError("patch_size", f"= {self.patch_size}; must be 0 (whole slices) or >= 32 (the models downsample 16x)")
        if self.foreground_fraction + self.mimic_fraction > 1:
            raise SettingError("mimic_fraction", f"= {self.mimic_fraction}; foreground_fraction + mimic_fraction must not exceed 1")
        if self.context_slices and self.tumour_slices_only:
            raise SettingError("context_slices", f"= {self.context_slices} needs every slice of a training patient (its neighbours); "
                                                 "set train.tumour_slices_only: false")
        if self.context_slices and self.max_val_slices:
            raise SettingError("context_slices", f"= {self.context_slices} needs every slice of a validation patient (its "
                                                 "neighbours); set train.max_val_slices: 0")
        if self.bank == "stream" and self.uses_mimics:
            raise SettingError("bank", "= stream cannot look for mimic slices (that reads every training slice); set "
                                       "train.mimic_fraction: 0 and train.mimic_loss_weight: 1, or train.bank: host")
        if self.cuda_graph and self.nproc_per_node > 1:
            raise SettingError("cuda_graph", "= true replays one process's step; with train.nproc_per_node > 1 (DDP) set it to false")
        if self.bce_weight == 0 and self.dice_weight == 0:
            raise SettingError("bce_weight", "and dice_weight are both 0: the loss would be zero")


@dataclass(frozen=True)
class ModelSettings(Checked):
    lr: float = field(metadata=in_range(0, low_open=True))
    batch_size: int = field(metadata=in_range(1))
    epochs: int | None = field(default=None, metadata=in_range(1))  # overrides train.epochs for this model
    arch: dict[str, Any] = field(default_factory=dict)  # constructor arguments of the model

    def check(self) -> None:
        if "in_channels" in self.arch:
            raise SettingError("arch", "sets in_channels, which the data decides: 4 sequences x (2 x train.context_slices + 1) "
                                       "slices; remove it")
