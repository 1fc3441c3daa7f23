"""ResNetUNet: a U-Net decoder on a (pretrained) timm ResNet-34 encoder.

ImageNet features transfer well to MRI slices and converge in far fewer steps than a U-Net from
scratch; the decoder uses the encoder's features at every scale (1/2 ... 1/16) as skips.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from .blocks import DecoderBlock, segmentation_head
from .weights import create_encoder

WEIGHTS_PARAM = "models.resnet_unet.arch.weights_file"


class ResNetUNet(nn.Module):
    """timm `encoder` (features_only, strides 2..32) + 5 decoder blocks + 3x3 head; raw logits out.

    Same layout as segmentation-models-pytorch `Unet("resnet34")`: decoder block i upsamples to the
    next encoder scale (interpolating to the skip's exact size, so 240 x 240 works), concatenates that
    skip, and applies two 3x3 conv-norm-ReLU; the last block goes back to the input size with no skip.
    `pretrained=True` loads ImageNet weights offline (see `weights.py`), adapted to `in_channels`.
    """

    def __init__(
        self,
        in_channels: int = 4,
        num_classes: int = 3,
        pretrained: bool = False,
        weights_file: str | os.PathLike | None = None,
        encoder: str = "resnet34",
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        norm: str = "batch",
        upsample: str = "nearest",
        output_prior: float | None = 0.01,
    ):
        super().__init__()
        decoder_channels = tuple(int(c) for c in decoder_channels)
        self.encoder = create_encoder(
            encoder, in_channels, (0, 1, 2, 3, 4), pretrained, weights_file, WEIGHTS_PARAM
        )
        enc = self.encoder.feature_info.channels()  # resnet34: 64, 64, 128, 256, 512
        if len(decoder_channels) != len(enc):
            raise ValueError(
                f"resnet_unet decoder_channels needs {len(enc)} values (one per encoder scale); "
                f"got {list(decoder_channels)}"
            )
        skip_channels = list(enc[-2::-1]) + [0]  # 256, 128, 64, 64, then none at full size
        in_ch = [enc[-1], *decoder_channels[:-1]]
        self.decoder = nn.ModuleList(
            DecoderBlock(i, s, o, norm=norm, upsample=upsample)
            for i, s, o in zip(in_ch, skip_channels, decoder_channels)
        )
        self.head = segmentation_head(decoder_channels[-1], num_classes, 3, output_prior)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)
        y = feats[-1]
        skips = [*feats[-2::-1], None]
        for block, skip in zip(self.decoder, skips):
            y = block(y, skip, size=x.shape[-2:])
        return self.head(y)
