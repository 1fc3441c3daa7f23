"""Training data: the slices of one subset held as tensors, and how samples and patches are drawn.

The whole subset is loaded once from the memory-mapped slice store (float16, 4 sequences): the default's
2.8k training slices of 96 x 96 are ~100 MB; BraTS-Africa's train + validation slices at 240 x 240 are ~8 GB. Batches are then
drawn by indexing, and augmented on the batch (``tumorseg.training.augment``), with no DataLoader
worker processes (which cost more than they give on 2 cores).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tumorseg.data.context import centre_slice, context_rows, stack_context
from tumorseg.data.slices import SliceStore, image_file, label_file


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor on ``device``; to a GPU through pinned memory without blocking, because a plain copy of pageable
    memory makes the host wait until the GPU has finished every queued step (a sync in each training step)."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


FLAIR, T1C = 3, 1  # channels of t2f and t1c in the stacked input (SEQUENCES order)
UNIFORM, TUMOUR, MIMIC = 0, 1, 2  # how a sample was drawn (and where its patch is centred)


@dataclass
class SliceBank:
    images: torch.Tensor  # (N, 4, H, W) float16
    labels: torch.Tensor  # (N, H, W) uint8
    has_tumour: torch.Tensor  # (N,) bool
    index: pd.DataFrame  # the slice index rows, in bank order
    has_mimic: torch.Tensor | None = None  # (N,) bool: tumour-bright voxels outside the tumour (see find_mimics)
    mimic_thresholds: tuple[float, float] = (float("inf"), float("inf"))  # FLAIR, T1c levels of "tumour-bright"
    neighbours: torch.Tensor | None = None  # (N, 2k + 1) bank rows of each slice's neighbours (-1: none), for 2.5D input
    target: torch.device | None = None  # train.bank: host -> the device batches are sent to; None: where the bank is

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def rows_device(self) -> torch.device:
        """Where the row indices given to ``batch`` must be."""
        return self.labels.device

    @property
    def device(self) -> torch.device:
        """Where ``batch`` delivers."""
        return self.target or self.labels.device

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(float32 model input, uint8 labels) of bank ``rows``, on ``device``; from a host bank the float16 slices
        travel, half the bytes of the float32 input."""
        images = self.images[rows] if self.neighbours is None else stack_context(self.images, self.neighbours[rows])
        labels = self.labels[rows]
        if self.target is not None:
            images, labels = to_device(images, self.target), to_device(labels, self.target)
        return images.float(), labels

    def to(self, device: torch.device) -> "SliceBank":
        return replace(self, images=self.images.to(device), labels=self.labels.to(device), has_tumour=self.has_tumour.to(device),
                       has_mimic=None if self.has_mimic is None else self.has_mimic.to(device),
                       neighbours=None if self.neighbours is None else self.neighbours.to(device))


def load_bank(store_dir: Path, slices: pd.DataFrame, context: int = 0) -> SliceBank:
    """Load the given slice-index rows (any order) into one bank, sorted by case and slice. With ``context``
    neighbours on each side (2.5D input) the bank also maps every slice to its neighbours' rows in the bank, so
    each slice is held once; a neighbour that exists in the store must be in ``slices`` too.

    Host memory stays near the bank's own size: the bank is allocated once and filled case by case from a
    memory map that is closed after each case (its pages leave the process), instead of per-case copies joined
    at the end (measured before: a peak of 3x the bank)."""
    if slices.empty:
        raise ValueError(f"{store_dir}: no slices to load")
    slices = slices.sort_values(["case_id", "slice"]).reset_index(drop=True)
    store = SliceStore(store_dir)
    images = labels = None
    neighbours, offset = [], 0
    for case_id, rows in slices.groupby("case_id", sort=True):
        r = rows["row"].to_numpy()
        case_images, case_labels = store.images(case_id), store.labels(case_id)
        if images is None:
            images = np.empty((len(slices),) + case_images.shape[1:], dtype=case_images.dtype)
            labels = np.empty((len(slices),) + case_labels.shape[1:], dtype=case_labels.dtype)
        images[offset:offset + len(r)] = case_images[r]
        labels[offset:offset + len(r)] = case_labels[r]
        if context:
            neighbours.append(_bank_neighbours(case_id, r, len(case_images), context, offset))
        del case_images, case_labels  # unmapped: the pages read stop counting against this process
        offset += len(r)
    return SliceBank(
        torch.from_numpy(images),
        torch.from_numpy(labels),
        torch.from_numpy(np.array(slices["has_tumour"], dtype=bool)),
        slices,
        neighbours=torch.from_numpy(np.concatenate(neighbours)) if context else None,
    )


class NpyRows:
    """Rows of a stored ``.npy`` array read with plain file reads: nothing is memory-mapped, so what is read
    leaves no pages in this process (a memory map's touched pages count against its RSS until it is closed)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                self.shape, fortran, self.dtype = read_header(f)
            except ValueError as exc:
                raise ValueError(f"{self.path}: not a .npy slice array ({exc}); rerun `dvc repro preprocess`") from None
            self.offset = f.tell()
        if fortran:
            raise ValueError(f"{self.path}: stored in Fortran order, which the slice store never writes; rerun `dvc repro preprocess`")
        self.row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The given rows (sorted, unique), reading each run of consecutive rows at once."""
        out = np.empty((len(rows),) + tuple(self.shape[1:]), dtype=self.dtype)
        if len(rows) == 0:
            return out
        starts = np.concatenate([[0], np.flatnonzero(np.diff(rows) != 1) + 1])
        ends = np.concatenate([starts[1:], [len(rows)]])
        with open(self.path, "rb", buffering=0) as f:
            for a, b in zip(starts.tolist(), ends.tolist()):
                f.seek(self.offset + int(rows[a]) * self.row_bytes)
                view = memoryview(out[a:b]).cast("B")
                got = f.readinto(view)
                if got != len(view):
                    raise ValueError(f"{self.path}: truncated: rows {int(rows[a])}-{int(rows[b - 1])} end past the file "
                                     f"({got} of {len(view)} bytes); rerun `dvc repro preprocess`")
        return out


@dataclass
class StreamBank:
    """The slices of ``index`` read from the store batch by batch (``train.bank: stream``): host memory holds the
    index and one batch, not the dataset, so a laptop trains the full BraTS-Africa (~8 GB of float16 slices).
    Batches equal a SliceBank's, value for value."""

    store_dir: Path
    index: pd.DataFrame  # slice-index rows, in bank order (sorted by case and slice)
    target: torch.device
    context: int = 0
    has_mimic: torch.Tensor | None = None
    mimic_thresholds: tuple[float, float] = (float("inf"), float("inf"))

    def __post_init__(self):
        self.index = self.index.sort_values(["case_id", "slice"]).reset_index(drop=True)
        self.store_dir = Path(self.store_dir)
        self.target = torch.device(self.target)
        self.has_tumour = torch.from_numpy(np.array(self.index["has_tumour"], dtype=bool))
        codes, self._case_ids = pd.factorize(self.index["case_id"], sort=True)
        self._case_of = codes.astype(np.int64)
        self._row_of = self.index["row"].to_numpy(dtype=np.int64)
        self._files: dict[int, tuple[NpyRows, NpyRows]] = {}

    def __len__(self) -> int:
        return len(self.index)

    @property
    def rows_device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def device(self) -> torch.device:
        return self.target

    def _case_files(self, code: int) -> tuple[NpyRows, NpyRows]:
        if code not in self._files:
            case_id = self._case_ids[code]
            images, labels = NpyRows(self.store_dir / image_file(case_id)), NpyRows(self.store_dir / label_file(case_id))
            if len(images) != len(labels):
                raise ValueError(f"{case_id}: {images.path} holds {len(images)} slices but {labels.path} {len(labels)}; "
                                 f"rerun `dvc repro preprocess`")
            self._files[code] = images, labels
        return self._files[code]

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = rows.cpu().numpy().astype(np.int64)
        cases, store_rows = self._case_of[rows], self._row_of[rows]
        images_out = labels_out = None
        for code in np.unique(cases).tolist():
            where = np.flatnonzero(cases == code)
            images, labels = self._case_files(code)
            wanted = context_rows(store_rows[where], len(images), self.context)  # (n, 2k + 1); -1: past the slab
            needed = np.unique(wanted[wanted >= 0])
            slab = torch.from_numpy(images.read(needed))
            x = stack_context(slab, torch.from_numpy(np.where(wanted >= 0, np.searchsorted(needed, wanted), -1)))
            centre = np.unique(store_rows[where])
            y = labels.read(centre)[np.searchsorted(centre, store_rows[where])]
            if images_out is None:
                images_out = torch.empty((len(rows),) + tuple(x.shape[1:]), dtype=x.dtype)
                labels_out = torch.empty((len(rows),) + y.shape[1:], dtype=torch.uint8)
            images_out[where] = x
            labels_out[where] = torch.from_numpy(y)
        return to_device(images_out, self.target).float(), to_device(labels_out, self.target)


def _bank_neighbours(case_id: str, rows: np.ndarray, n_rows: int, context: int, offset: int) -> np.ndarray:
    """Bank positions of the neighbours of one case's ``rows`` (placed in the bank from ``offset``, in row order)."""
    wanted = context_rows(rows, n_rows, context)
    position = np.full(n_rows, -1, dtype=np.int64)
    position[rows] = offset + np.arange(len(rows))
    found = np.where(wanted >= 0, position[np.maximum(wanted, 0)], -1)
    missing = (wanted >= 0) & (found < 0)
    if missing.any():
        raise ValueError(f"{case_id}: 2.5D input (train.context_slices = {context}) needs slice row(s) "
                         f"{sorted(set(wanted[missing].tolist()))[:5]} of this patient, which are not in the same subset "
                         f"(train.tumour_slices_only, train.max_val_slices or split.level: slice leave them out)")
    return found



BANK_MODES = ("device", "host", "stream")


def open_bank(store_dir: Path, slices: pd.DataFrame, context: int, mode: str, device: torch.device,
              mimics: bool = False) -> "SliceBank | StreamBank":
    """The slices to train or validate on, held as ``train.bank`` says: ``device`` loads them once onto the training
    device (fastest: no transfer per step), ``host`` keeps them in host memory and sends each batch (when the GPU
    cannot hold them), ``stream`` reads each batch from the store (when host memory cannot hold them either).
    Every mode gives the same batches, value for value."""
    if mode not in BANK_MODES:
        raise ValueError(f"train.bank = {mode!r}; expected one of {list(BANK_MODES)}")
    if mode == "stream":
        if mimics:
            raise ValueError("train.bank: stream cannot look for mimic slices (that reads every training slice); "
                             "set train.mimic_fraction: 0 and train.mimic_loss_weight: 1, or train.bank: host")
        return StreamBank(store_dir, slices, device, context)
    bank = load_bank(store_dir, slices, context)
    if mimics:
        bank = find_mimics(bank)
    return bank.to(device) if mode == "device" else replace(bank, target=torch.device(device))


def mimic_voxels(images: torch.Tensor, tumour: torch.Tensor, thresholds: tuple[float, float]) -> torch.Tensor:
    """(N, H, W) voxels that look like tumour but are not: brain, outside the tumour, and at least as bright
    as typical edema on FLAIR or typical enhancing tumour on T1c (the false positives' usual cause)."""
    flair_min, t1c_min = thresholds
    brain = (images != 0).any(dim=1)
    bright = (images[:, FLAIR] >= flair_min) | (images[:, T1C] >= t1c_min)
    return bright & brain & ~tumour


def find_mimics(bank: SliceBank, quantile: float = 0.75, min_voxels: int = 20, chunk: int = 256) -> SliceBank:
    """The bank with ``has_mimic`` set: slices holding at least ``min_voxels`` tumour-bright voxels outside the
    tumour. "Tumour-bright" is the ``quantile`` of FLAIR in edema and of T1c in enhancing tumour over the bank
    itself (its own training patients: no other subset is read), so it adapts to any normalisation. Measured on
    the default's 2,828 training slices: the 0.25 quantile calls 88% of slices mimic-bearing (normal T1c reaches
    low ET levels), 0.75 with 20 voxels 31% (876), a third of them without tumour."""
    flair = bank.images[:, FLAIR][bank.labels == 2].float()
    t1c = bank.images[:, T1C][bank.labels == 3].float()
    if len(flair) == 0 or len(t1c) == 0:
        return bank
    thresholds = (float(torch.quantile(flair[:: max(1, len(flair) // 100_000)], quantile)),
                  float(torch.quantile(t1c[:: max(1, len(t1c) // 100_000)], quantile)))
    counts = torch.cat([mimic_voxels(bank.images[i:i + chunk].float(), bank.labels[i:i + chunk] > 0, thresholds).sum((1, 2))
                        for i in range(0, len(bank), chunk)])
    return replace(bank, has_mimic=counts >= min_voxels, mimic_thresholds=thresholds)  # neighbours kept (2.5D)


def epoch_indices(bank: SliceBank, n: int, foreground_fraction: float, generator: torch.Generator,
                  mimic_fraction: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sample indices, a ``foreground_fraction`` share forced onto tumour slices, a ``mimic_fraction``
    share onto slices with tumour mimics (hard negatives), the rest uniform, shuffled; and how each was drawn
    (UNIFORM, TUMOUR, MIMIC: its patch is centred on tumour or on a mimic). With no mimic share the random
    numbers drawn are the same as before that option existed."""
    tumour = torch.nonzero(bank.has_tumour.cpu()).flatten()
    mimics = torch.nonzero(bank.has_mimic.cpu()).flatten() if bank.has_mimic is not None else tumour[:0]
    n_fg = int(round(n * foreground_fraction)) if len(tumour) else 0
    n_mimic = min(int(round(n * mimic_fraction)), n - n_fg) if len(mimics) else 0
    uniform = torch.randint(len(bank), (n - n_fg - n_mimic,), generator=generator)
    forced = tumour[torch.randint(len(tumour), (n_fg,), generator=generator)] if n_fg else uniform[:0]
    hard = mimics[torch.randint(len(mimics), (n_mimic,), generator=generator)] if n_mimic else uniform[:0]
    idx = torch.cat([uniform, forced, hard])
    kinds = torch.cat([torch.full((len(uniform),), UNIFORM), torch.full((n_fg,), TUMOUR), torch.full((n_mimic,), MIMIC)])
    order = torch.randperm(len(idx), generator=generator)
    return idx[order], kinds[order].to(torch.int8)


def tumour_class_mask(targets: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool: per sample, the voxels of one tumour class its region targets (WT, TC, ET) hold, the class
    chosen uniformly among those present by ``picks`` (uniform in [0, 1), one per sample): edema (WT outside TC),
    necrotic / non-enhancing core (TC outside ET) or enhancing tumour (ET). All False for a sample without tumour."""
    regions = targets > 0
    classes = torch.stack([regions[:, 0] & ~regions[:, 1], regions[:, 1] & ~regions[:, 2], regions[:, 2]], 1)
    present = classes.flatten(2).any(2)  # (N, 3)
    n_present = present.sum(1)
    k = torch.minimum((to_device(picks, present.device) * n_present).long(), (n_present - 1).clamp(min=0))
    chosen = torch.searchsorted(present.long().cumsum(1), (k + 1)[:, None]).squeeze(1).clamp(max=2)  # k-th present class
    return classes[torch.arange(len(targets), device=targets.device), chosen]


def random_patches(images: torch.Tensor, targets: torch.Tensor, size: int, centre_on: torch.Tensor,
                   generator: torch.Generator, mimic_thresholds: tuple[float, float] | None = None,
                   by_class: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut one ``size`` x ``size`` patch per sample, as nnU-Net trains on patches rather than
    whole images: the cost of a step falls with the patch area while the models stay fully
    convolutional, so inference still runs on whole slices. ``centre_on`` says per sample where
    (bool: True = TUMOUR, or the kinds of ``epoch_indices``): a TUMOUR sample's patch is centred on
    a random tumour voxel, a MIMIC sample's on a random tumour-bright voxel outside the tumour
    (``mimic_thresholds``), the others placed uniformly. ``by_class``: a TUMOUR sample's centre is a random voxel of
    one of the tumour classes its slice holds (edema, necrotic / non-enhancing core, enhancing tumour), each class
    equally likely, as nnU-Net samples foreground; otherwise of the whole tumour, where edema dominates. Random
    numbers come from ``generator`` (CPU); ``by_class`` draws one more per sample, so the default stream is unchanged."""
    n, _, h, w = images.shape
    if size <= 0 or (size >= h and size >= w):
        return images, targets
    kinds = centre_on.long().cpu()
    ph, pw = min(size, h), min(size, w)
    tops = (torch.rand(n, generator=generator) * (h - ph + 1)).long().clamp(max=h - ph)
    lefts = (torch.rand(n, generator=generator) * (w - pw + 1)).long().clamp(max=w - pw)
    picks = torch.rand(n, generator=generator)  # drawn for every sample, so the stream never depends on the data
    class_picks = torch.rand(n, generator=generator) if by_class else None
    if (kinds != UNIFORM).any():
        # The centre is the k-th voxel (row-major) of the sample's tumour (or mimic) mask, k = pick x count: found for
        # the whole batch at once by a cumulative count, with no per-sample loop or host round trip.
        wt = targets[:, 0] > 0
        where = (tumour_class_mask(targets, class_picks) if by_class else wt) & to_device(kinds == TUMOUR, wt.device)[:, None, None]
        if mimic_thresholds is not None and (kinds == MIMIC).any():
            mimic = mimic_voxels(centre_slice(images), wt, mimic_thresholds)
            where = where | (mimic & to_device(kinds == MIMIC, wt.device)[:, None, None])
        running = where.flatten(1).cumsum(1)  # (N, H * W)
        counts = running[:, -1]
        k = torch.minimum((to_device(picks, counts.device) * counts).long(), (counts - 1).clamp(min=0))
        flat = torch.searchsorted(running, (k + 1)[:, None]).squeeze(1)
        found = (counts > 0).cpu()
        cy, cx = (flat // w).cpu(), (flat % w).cpu()
        tops = torch.where(found, (cy - ph // 2).clamp(0, h - ph), tops)
        lefts = torch.where(found, (cx - pw // 2).clamp(0, w - pw), lefts)
    rows = to_device(tops[:, None] + torch.arange(ph), images.device)  # (N, ph)
    cols = to_device(lefts[:, None] + torch.arange(pw), images.device)  # (N, pw)
    batch = torch.arange(n, device=images.device)[:, None, None]
    cut = lambda t: t.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()
    return cut(images), cut(targets)
