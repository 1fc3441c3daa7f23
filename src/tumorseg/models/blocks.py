"""Conv blocks and the U-Net decoder block shared by the three architectures.

One decoder block serves all three models so that they differ only where the
architectures really differ (encoder, bottleneck), not in incidental details.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "group", "instance")
UPSAMPLE_MODES = ("nearest", "bilinear", "transpose")
# Devices on which DecoderBlock takes the exact nearest-2x fast path (`upsample2x_conv3x3`). It saves 5/9 of the first
# conv's multiply-adds, which is what a CPU's time goes to, but doubles the operations of a step (resnet_unet: 797 ->
# 1,532 per forward + backward, counted with a dispatch counter), and an eager GPU step is bound by its operations'
# launch cost, not by arithmetic (bench/results/gpu.md). The function is the same up to float rounding.
FAST_UPSAMPLE_DEVICES = frozenset({"cpu"})


def _check_choice(kind: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{kind} must be one of {', '.join(choices)}; got {value!r}")


def _group_count(channels: int) -> int:
    """Largest of 32, 16, ... groups that leaves at least 2 channels per group."""
    for groups in (32, 16, 8, 4, 2):
        if channels % groups == 0 and channels // groups >= 2:
            return groups
    return 1


def make_norm(norm: str, channels: int) -> nn.Module:
    """BatchNorm by default; GroupNorm/InstanceNorm for tiny batches, where BN statistics are noise."""
    _check_choice("norm", norm, NORMS)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(_group_count(channels), channels)
    return nn.InstanceNorm2d(channels, affine=True)


class ConvNormAct(nn.Sequential):
    """conv (no bias: the norm has one) -> norm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, norm: str = "batch"):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            make_norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """The U-Net unit: two 3x3 conv-norm-ReLU, optional spatial dropout after them."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch", dropout: float = 0.0):
        layers: list[nn.Module] = [
            ConvNormAct(in_channels, out_channels, norm=norm),
            ConvNormAct(out_channels, out_channels, norm=norm),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


def resize_to(x: torch.Tensor, size: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """Interpolate to an exact size (the skip's), so inputs need not be multiples of 32."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "bilinear":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return F.interpolate(x, size=size, mode="nearest")


def pad_or_crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero-pad (bottom/right) or crop a tensor to `size` (after a stride-2 transposed conv)."""
    dh, dw = size[0] - x.shape[-2], size[1] - x.shape[-1]
    if dh == 0 and dw == 0:
        return x
    if dh < 0 or dw < 0:
        x = x[..., : size[0], : size[1]]
        dh, dw = max(dh, 0), max(dw, 0)
    if dh or dw:
        x = F.pad(x, (0, dw, 0, dh))
    return x


# Row/column tap sums that turn a 3x3 kernel applied after a 2x nearest upsample into four 2x2
# kernels (one per output phase) applied before it: [w0, w1+w2] for even, [w0+w1, w2] for odd rows.
_PHASE_TAPS = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def phase_taps() -> torch.Tensor:
    """(phase, tap, 3) tap sums of `upsample2x_conv3x3`, as a tensor a module can hold as a buffer: made with the model,
    it moves with it, so a step captured as a CUDA graph never copies it from host memory."""
    return torch.tensor(_PHASE_TAPS)


def upsample2x_conv3x3(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor | None = None,
                       taps: torch.Tensor | None = None) -> torch.Tensor:
    """conv3x3(nearest_upsample_2x(x), weight, padding=1) (+ `out`, accumulated in place, if given).

    The same function (up to float rounding) computed without the upsampled tensor: each of the
    four output phases is a 2x2 conv on the low-resolution input, so 4/9 of the multiply-adds, and
    the phases are written straight into the result in x's memory format (channels_last stays
    channels_last). Measured 1.3-2x faster (forward + backward) per decoder conv on CPU.
    """
    n, _, h, w = x.shape
    c_out = weight.shape[0]
    taps = (phase_taps() if taps is None else taps).to(weight.device, weight.dtype)  # (phase, tap, 3)
    kernels = torch.einsum("aip,bjq,ocpq->abocij", taps, taps, weight).reshape(4 * c_out, -1, 2, 2)
    z = F.conv2d(F.pad(x, (1, 1, 1, 1)), kernels)  # (N, 4*C_out, H+1, W+1); channel = (a, b, c)
    channels_last = z.is_contiguous(memory_format=torch.channels_last) and not z.is_contiguous()
    accumulate = out is not None
    if out is None:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        out = torch.empty((n, c_out, 2 * h, 2 * w), dtype=z.dtype, device=z.device, memory_format=fmt)
    # Output pixel (2i+a, 2j+b) is phase (a, b) of z at (i+a, j+b). The views index the same elements
    # whatever the strides; they are only ordered to walk memory in its physical order. (Views of
    # `out` are taken after each in-place write, as autograd requires.)
    for a in (0, 1):
        for b in (0, 1):
            if channels_last:
                src = z.permute(0, 2, 3, 1).unflatten(3, (2, 2, c_out))[:, a : a + h, b : b + w, a, b]
                dst = out.permute(0, 2, 3, 1).unflatten(1, (h, 2)).unflatten(3, (w, 2))[:, :, a, :, b]
            else:
                src = z.unflatten(1, (2, 2, c_out))[:, a, b, :, a : a + h, b : b + w]
                dst = out.unflatten(2, (h, 2)).unflatten(4, (w, 2))[:, :, :, a, :, b]
            if accumulate:
                dst.add_(src)
            else:
                dst.copy_(src)
    return out


class DecoderBlock(nn.Module):
    """Upsample to the skip's size, concatenate the skip, two conv-norm-ReLU.

    `upsample`: "nearest" (fastest: where the target is exactly 2x, upsample + concat + first conv
    run on a CPU as `upsample2x_conv3x3` on the low-resolution input plus a conv on the skip, the same
    function with fewer multiply-adds; elsewhere as written, see FAST_UPSAMPLE_DEVICES), "bilinear" (smoother, but its backward is
    nondeterministic on CUDA), or "transpose" (learned 2x2 stride-2 transposed conv to
    `out_channels`, the classic U-Net up-conv). Other size ratios (e.g. 8 -> 15 at 240 px) are
    interpolated (or padded, after a transposed conv) to the skip's exact size. With no skip (the
    last stage of the ResNet/TransUNet decoders) the target size must be given.
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        norm: str = "batch",
        upsample: str = "nearest",
        dropout: float = 0.0,
    ):
        super().__init__()
        _check_choice("upsample", upsample, UPSAMPLE_MODES)
        self.upsample = upsample
        self.skip_channels = skip_channels
        if upsample == "transpose":
            self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
            conv_in = out_channels + skip_channels
        else:
            self.up = None
            conv_in = in_channels + skip_channels
        self.in_channels = in_channels
        # The exact fast path for nearest 2x upsampling (an attribute so benchmarks can switch it off).
        self.fast_upsample = upsample == "nearest"
        self.register_buffer("phase_taps", phase_taps(), persistent=False)  # not saved: a constant of the fast path
        self.conv1 = ConvNormAct(conv_in, out_channels, norm=norm)
        self.conv2 = ConvNormAct(out_channels, out_channels, norm=norm)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        if skip is not None:
            size = tuple(skip.shape[-2:])
        elif size is None:
            raise ValueError("DecoderBlock without a skip needs the target size")
        if (self.fast_upsample and x.device.type in FAST_UPSAMPLE_DEVICES
                and tuple(size) == (2 * x.shape[-2], 2 * x.shape[-1])):
            # Fast exact path: conv(cat(up(x), skip)) = conv_x(up(x)) + conv_skip(skip).
            conv, norm, act = self.conv1
            y = None if skip is None else F.conv2d(skip, conv.weight[:, self.in_channels :], padding=1)
            y = act(norm(upsample2x_conv3x3(x, conv.weight[:, : self.in_channels], out=y, taps=self.phase_taps)))
        else:
            if self.up is not None:
                x = pad_or_crop_to(self.up(x), size)
            else:
                x = resize_to(x, size, self.upsample)
            if skip is not None:
                x = torch.cat([x, skip], dim=1)
            y = self.conv1(x)
        return self.dropout(self.conv2(y))


def segmentation_head(in_channels: int, num_classes: int, kernel_size: int, output_prior: float | None) -> nn.Conv2d:
    """The logits conv, its bias set so that sigmoid(logit) starts at ``output_prior`` (RetinaNet's
    prior initialisation). Tumour is ~1% of the voxels: starting at p = 0.5 everywhere, BCE and soft
    Dice spend hundreds of steps only pushing the background down (measured: a from-scratch U-Net's
    soft Dice loss stayed at 0.92 after 50 steps, 0.52 with the prior). None keeps PyTorch's init."""
    head = nn.Conv2d(in_channels, num_classes, kernel_size=kernel_size, padding=kernel_size // 2)
    if output_prior is not None:
        if not 0.0 < output_prior < 1.0:
            raise ValueError(f"output_prior must be in (0, 1) or None; got {output_prior}")
        nn.init.constant_(head.bias, math.log(output_prior / (1.0 - output_prior)))
    return head
