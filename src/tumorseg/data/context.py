"""2.5D input: each axial slice fed to a model together with its neighbours above and below.

One convention for training, inference, ``tumorseg predict`` and the app (and its own module, so
adopting it reruns neither preprocessing nor the split). ``context`` neighbours on each side turn the
4 sequences of one slice into ``4 * (2 * context + 1)`` input channels, neighbour-major: channel
``k * 4 + c`` is sequence ``c`` of slice ``z - context + k``. A model sees in 3D what tells a tumour
from a mimic that looks alike in one slice (edema-like plaques with no core above or below; vessels
that run on through the next slices).
"""

from __future__ import annotations

import numpy as np
import torch

from tumorseg.data.labels import SEQUENCES


def input_channels(context: int) -> int:
    """The model input channels for ``context`` neighbours on each side."""
    return len(SEQUENCES) * (2 * context + 1)


def context_rows(rows: np.ndarray, n_rows: int, context: int) -> np.ndarray:
    """(N,) rows of one case's slice arrays -> (N, 2 * context + 1) rows of each slice's neighbours,
    z - context .. z + context; -1 past the case's first or last stored slice. A case's stored slices are
    consecutive in z (preprocessing crops a slab), so a slice's neighbour is the next row."""
    out = np.asarray(rows, dtype=np.int64)[:, None] + np.arange(-context, context + 1)
    out[(out < 0) | (out >= n_rows)] = -1
    return out


def stack_context(slices: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """(M, C, Y, X) slices and (N, K) indices into them -> (N, K * C, Y, X). Index -1 reads zeros: past the
    stored slab there is only background, which normalisation leaves at 0."""
    valid = (neighbours >= 0).to(slices.dtype)[:, :, None, None, None]
    return (slices[neighbours.clamp(min=0)] * valid).flatten(1, 2)


def volume_batch(images: np.ndarray, start: int, stop: int, context: int) -> torch.Tensor:
    """Model input for slices ``start:stop`` of one case's (Z, C, Y, X) stored slices (e.g. memory-mapped),
    reading only the slab the batch and its neighbours need; float32."""
    if context == 0:
        return torch.from_numpy(np.array(images[start:stop], dtype=np.float32))
    low, high = max(0, start - context), min(len(images), stop + context)
    slab = torch.from_numpy(np.array(images[low:high], dtype=np.float32))
    rows = context_rows(np.arange(start, stop), len(images), context)
    return stack_context(slab, torch.from_numpy(np.where(rows >= 0, rows - low, -1)))


def centre_slice(inputs: torch.Tensor) -> torch.Tensor:
    """(N, K * 4, Y, X) model input -> (N, 4, Y, X): the sequences of the slice being segmented."""
    n_sequences = len(SEQUENCES)
    middle = inputs.shape[1] // n_sequences // 2
    return inputs[:, middle * n_sequences:(middle + 1) * n_sequences]
