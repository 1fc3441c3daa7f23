"""BaselineUNet: the classic U-Net (Ronneberger et al. 2015), trained from scratch.

The baseline the other two are measured against: no pretrained weights, no attention.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import DecoderBlock, DoubleConv, segmentation_head


class UNet(nn.Module):
    """`depth` max-pool downsamplings and as many up-steps with skips; widths base_channels * 2**level.

    Outputs raw logits (N, num_classes, H, W) (no activation: the loss and the evaluation apply the
    sigmoid). Any H, W >= 2**depth work: odd sizes are handled by padding/interpolating to the skip.
    """

    def __init__(
        self,
        in_channels: int = 4,
        num_classes: int = 3,
        base_channels: int = 32,
        depth: int = 4,
        norm: str = "batch",
        dropout: float = 0.0,
        upsample: str = "transpose",
        output_prior: float | None = 0.01,
    ):
        super().__init__()
        if depth < 1:
            raise ValueError(f"unet depth must be >= 1; got {depth}")
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.stem = DoubleConv(in_channels, widths[0], norm=norm)
        # Dropout only in the bottleneck, where the original U-Net put it and where it regularises most.
        self.down = nn.ModuleList(
            nn.Sequential(
                nn.MaxPool2d(2),
                DoubleConv(widths[i], widths[i + 1], norm=norm, dropout=dropout if i == depth - 1 else 0.0),
            )
            for i in range(depth)
        )
        self.up = nn.ModuleList(
            DecoderBlock(widths[i + 1], widths[i], widths[i], norm=norm, upsample=upsample)
            for i in reversed(range(depth))
        )
        self.head = segmentation_head(widths[0], num_classes, 1, output_prior)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.up:
            y = up(y, skips.pop())
        return self.head(y)
