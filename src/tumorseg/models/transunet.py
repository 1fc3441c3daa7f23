"""TransUNet (Chen et al. 2021, arXiv:2102.04306): CNN encoder + ViT on the 1/16 grid + cascaded upsampler.

The point of the architecture is global context: self-attention lets every 1/16 token see every
other one, which a CNN's receptive field only approximates, while the CNN skips at 1/8, 1/4 and 1/2
keep the fine detail that 16-pixel tokens lose.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from timm.layers import resample_abs_pos_embed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from .blocks import ConvNormAct, DecoderBlock, segmentation_head
from .weights import create_encoder

WEIGHTS_PARAM = "models.transunet.arch.weights_file"

# The paper's R50-ViT-B/16 size (~100 M parameters). Use as build_model("transunet", **TRANSUNET_PAPER_PRESET)
# or copy the values into params.yaml (models.transunet.arch).
TRANSUNET_PAPER_PRESET = dict(
    encoder="resnet50",
    hidden_dim=768,
    depth=12,
    num_heads=12,
    mlp_ratio=4.0,
    dropout=0.1,
    decoder_channels=(256, 128, 64, 16),
    head_channels=512,
)


class TransUNet(nn.Module):
    """CNN encoder (timm ResNet, first 3 stages) -> 1x1 patch embedding (patch size 1 on the 1/16 map)
    + learned position embeddings -> `depth` ViT blocks (multi-head self-attention, `num_heads`)
    -> LayerNorm -> 3x3 conv to `head_channels` -> 4 decoder blocks (skips at 1/8, 1/4, 1/2, then
    none at full size) -> 3x3 head; raw logits out.

    Position embeddings are learned for an `img_size` grid (240 -> 15 x 15 tokens) and resampled
    (bicubic) when the input gives another grid. The light default (resnet34, 256 wide, 4 blocks of
    4 heads) has ~15.5 M parameters; TRANSUNET_PAPER_PRESET gives the paper's size.
    """

    def __init__(
        self,
        in_channels: int = 4,
        num_classes: int = 3,
        pretrained: bool = False,
        weights_file: str | os.PathLike | None = None,
        encoder: str = "resnet34",
        hidden_dim: int = 256,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        decoder_channels: Sequence[int] = (256, 128, 64, 16),
        head_channels: int = 512,
        img_size: int = 240,
        norm: str = "batch",
        upsample: str = "nearest",
        output_prior: float | None = 0.01,
    ):
        super().__init__()
        decoder_channels = tuple(int(c) for c in decoder_channels)
        if len(decoder_channels) != 4:
            raise ValueError(f"transunet decoder_channels needs 4 values (1/8, 1/4, 1/2, 1/1); got {list(decoder_channels)}")
        if hidden_dim % num_heads:
            raise ValueError(f"transunet hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})")
        # Stages at strides 2, 4, 8, 16; the 1/32 stage (most of ResNet's parameters) is not built.
        self.encoder = create_encoder(encoder, in_channels, (0, 1, 2, 3), pretrained, weights_file, WEIGHTS_PARAM)
        enc = self.encoder.feature_info.channels()  # resnet34: 64, 64, 128, 256; resnet50: 64, 256, 512, 1024

        self.patch_embed = nn.Conv2d(enc[3], hidden_dim, kernel_size=1)
        self.grid_size = (math.ceil(img_size / 16), math.ceil(img_size / 16))
        self._resample_matrices: dict[tuple[int, int], torch.Tensor] = {}  # grid -> (new, old) tokens; a cache, not state
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], hidden_dim))
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(
            *(
                Block(hidden_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, proj_drop=dropout, attn_drop=0.0)
                for _ in range(depth)
            )
        )
        self.norm = nn.LayerNorm(hidden_dim)

        self.conv_more = ConvNormAct(hidden_dim, head_channels, norm=norm)
        skip_channels = (enc[2], enc[1], enc[0], 0)
        in_ch = (head_channels, *decoder_channels[:-1])
        self.decoder = nn.ModuleList(
            DecoderBlock(i, s, o, norm=norm, upsample=upsample)
            for i, s, o in zip(in_ch, skip_channels, decoder_channels)
        )
        self.head = segmentation_head(decoder_channels[-1], num_classes, 3, output_prior)
        self._init_transformer()

    def _init_transformer(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        for m in [*self.blocks.modules(), self.norm]:
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """The learned embeddings, resampled (timm's bicubic) to `grid` tokens when the input size
        differs from img_size. The resampling is linear, so it is applied as a fixed matrix: its
        backward is a matmul, deterministic on CUDA, where the backward of bicubic interpolation is
        not (measured: two seeded trainings on patches gave different weights)."""
        grid = tuple(int(g) for g in grid)
        if grid == self.grid_size:
            return self.pos_embed
        matrix = self._resample_matrices.get(grid)
        if matrix is None:
            n_old = self.grid_size[0] * self.grid_size[1]
            with torch.no_grad():
                identity = torch.eye(n_old, dtype=torch.float64)[None]  # each old token's one-hot "embedding"
                matrix = resample_abs_pos_embed(identity, new_size=list(grid), old_size=list(self.grid_size),
                                                num_prefix_tokens=0)[0].float()  # (n_new, n_old)
            matrix = self._resample_matrices[grid] = matrix.to(self.pos_embed.device)
        return (matrix.to(self.pos_embed.device, self.pos_embed.dtype) @ self.pos_embed[0])[None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)  # strides 2, 4, 8, 16
        t = self.patch_embed(feats[3])
        n, d, h, w = t.shape
        t = t.flatten(2).transpose(1, 2)  # (N, h*w, D)
        t = self.pos_drop(t + self.position_embedding((h, w)).to(t.dtype))
        t = self.norm(self.blocks(t))
        y = self.conv_more(t.transpose(1, 2).reshape(n, d, h, w))
        for block, skip in zip(self.decoder, (feats[2], feats[1], feats[0], None)):
            y = block(y, skip, size=x.shape[-2:])
        return self.head(y)
