"""What the Streamlit page needs, without Streamlit: inputs, overlays, volumes, Dice.

Kept apart from the page so it is unit-tested directly; the page only lays things out.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
import weakref
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tumorseg.data.brats import MASK
from tumorseg.data.labels import REGION_NAMES, region_mask
from tumorseg.prediction import NIFTI_SUFFIXES, CaseInput, InputError, case_from_folder, find_volume

SAMPLE_DIR = Path(__file__).parent / "sample"
MAX_UPLOAD_MB = 200  # per upload, all files together; a BraTS case is ~15 MB compressed
# All sessions' uploads on disk together (a .zip is unpacked, up to 4x, and then deleted); the least recently used go first.
MAX_DISK_MB = int(os.environ.get("TUMORSEG_APP_MAX_DISK_MB", "2000"))
MAX_AGE_S = 6 * 3600  # a session folder unused this long is left over from a session that ended without cleaning up
UPLOADS_ROOT = Path(os.environ.get("TUMORSEG_APP_TMP") or Path(tempfile.gettempdir()) / "tumorseg-app")
# Overlay colours per BraTS label (1 necrotic core, 2 edema, 3 enhancing), as in the BraTS papers' figures.
LABEL_COLOURS = {1: (220, 40, 40), 2: (60, 200, 60), 3: (250, 220, 40)}


def sample_cases() -> dict[str, Path]:
    """Bundled sample patients (synthetic, in BraTS-Africa naming): case id -> folder."""
    return {p.name: p for p in sorted(SAMPLE_DIR.iterdir()) if p.is_dir()}


def champion_or_none(models_dir: Path, models: list[str]) -> str | None:
    """The champion (chosen on validation, as the report and `tumorseg predict` choose it) when it is among
    ``models`` and its validation figures exist; None otherwise (the page then offers the first model, unmarked)."""
    from tumorseg import paths
    from tumorseg.evaluation.champion import champion, pipeline_models

    try:
        best = champion(models_dir, pipeline_models(paths.PARAMS))
    except (FileNotFoundError, ValueError):
        return None
    return best if best in models else None


def mask_file(folder: Path) -> Path | None:
    return find_volume(folder, MASK)


def case_from_uploads(uploads: list[tuple[str, bytes]], workdir: Path) -> tuple[CaseInput, Path | None]:
    """Uploaded files -> a case folder under ``workdir``: either the four sequence files (and optionally
    the -seg mask), or one .zip holding a case folder. Returns the case and its mask file, if any."""
    from tumorseg.data.archive import UnsafeArchiveError, unpack_archive

    if not uploads:
        raise InputError("no files uploaded: give the four NIfTI files (t1n, t1c, t2w, t2f) or one .zip of a case folder")
    total = sum(len(data) for _, data in uploads)
    if total > MAX_UPLOAD_MB * 2**20:
        raise InputError(f"upload of {total / 2**20:.0f} MB exceeds the {MAX_UPLOAD_MB} MB limit")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    names = [Path(name).name for name, _ in uploads]
    if len(uploads) == 1 and names[0].lower().endswith(".zip"):
        archive = workdir / names[0]
        archive.write_bytes(uploads[0][1])
        if not zipfile.is_zipfile(io.BytesIO(uploads[0][1])):
            raise InputError(f"{names[0]}: not a valid .zip archive")
        target = workdir / "unzipped"
        try:
            unpack_archive(archive, target, max_bytes=4 * MAX_UPLOAD_MB * 2**20)
        except (UnsafeArchiveError, ValueError, OSError) as exc:
            raise InputError(f"{names[0]}: cannot unpack ({exc})") from None
        finally:
            archive.unlink()  # the unpacked files are what is read; the archive would only double the disk used
        folders = sorted({p.parent for p in target.rglob("*") if p.is_file() and p.name.endswith(NIFTI_SUFFIXES)})
        if len(folders) != 1:
            raise InputError(f"{names[0]}: expected one case folder with the four NIfTI files, found {len(folders)} folders")
        folder = folders[0]
    else:
        bad = [n for n in names if not n.endswith(NIFTI_SUFFIXES)]
        if bad:
            raise InputError(f"{', '.join(bad)}: not a NIfTI file name (.nii or .nii.gz) nor a single .zip")
        folder = workdir / "case"
        folder.mkdir(exist_ok=True)
        for name, (_, data) in zip(names, uploads):
            (folder / name).write_bytes(data)
    case = case_from_folder(folder)
    return case, mask_file(folder)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


class UploadWorkspace:
    """One browser session's upload on disk. Written once per distinct upload (the page reruns on every widget
    change, e.g. each slider move, and reuses it), replaced when the upload changes, removed when the session's
    state is dropped (the session ended) or the server exits. All sessions' folders under ``root`` stay within
    ``max_disk_mb``: before writing, folders unused for ``MAX_AGE_S`` and then the least recently used are removed
    (a session whose folder went writes it again from the upload Streamlit still holds)."""

    def __init__(self, root: Path | None = None, max_disk_mb: int | None = None):
        self.root = Path(root or UPLOADS_ROOT)
        self.max_bytes = (max_disk_mb or MAX_DISK_MB) * 2**20
        self.key: object = None
        self.folder: Path | None = None
        self.case: tuple[CaseInput, Path | None] | None = None
        self._remove: weakref.finalize | None = None

    def case_for(self, key: object, read: Callable[[], list[tuple[str, bytes]]]) -> tuple[CaseInput, Path | None]:
        """The case of the upload ``key`` identifies (e.g. names, sizes and Streamlit file ids); ``read()`` gives its
        (name, bytes) and is called only when the files must be written."""
        if key == self.key and self.folder is not None and self.folder.is_dir():
            os.utime(self.folder)  # recently used
            return self.case
        self.clear()
        uploads = read()
        incoming = sum(len(data) for _, data in uploads)
        is_zip = len(uploads) == 1 and uploads[0][0].lower().endswith(".zip")
        self.root.mkdir(parents=True, exist_ok=True)
        make_room(self.root, self.max_bytes - incoming * (5 if is_zip else 1))
        self.folder = Path(tempfile.mkdtemp(prefix="session-", dir=self.root))
        self._remove = weakref.finalize(self, shutil.rmtree, str(self.folder), True)
        try:
            self.case = case_from_uploads(uploads, self.folder)
        except BaseException:
            self.clear()
            raise
        self.key = key
        return self.case

    def clear(self) -> None:
        if self._remove is not None:
            self._remove()
        self.key = self.folder = self.case = self._remove = None


def make_room(root: Path, budget_bytes: int) -> None:
    """Remove session folders under ``root``: those unused for MAX_AGE_S, then the least recently used until the
    rest fit in ``budget_bytes``."""
    folders = sorted((p for p in Path(root).iterdir() if p.is_dir() and p.name.startswith("session-")), key=lambda p: p.stat().st_mtime)
    now, sizes = time.time(), {p: folder_bytes(p) for p in folders}
    total = sum(sizes.values())
    for folder in folders:
        if now - folder.stat().st_mtime > MAX_AGE_S or total > budget_bytes:
            shutil.rmtree(folder, ignore_errors=True)
            total -= sizes[folder]


def load_mask_for(case_shape: tuple[int, ...], path: Path | None, affine: np.ndarray | None = None) -> np.ndarray | None:
    """The expert mask (labels 0-3) on the images' voxel grid, or None; a mask of another shape, or (given the images'
    ``affine``) on another grid, e.g. saved in RAS beside LPS images, is an input error: overlaid voxel by voxel it
    would show and score a mirrored tumour."""
    if path is None:
        return None
    from tumorseg.data.brats import mask_labels, read_nifti
    from tumorseg.data.orientation import GRID_TOLERANCE, axis_codes

    try:
        image = read_nifti(path)  # read once: the voxels on the upload's grid (the app orients the case) and its affine
        mask, mask_affine = mask_labels(np.asanyarray(image.dataobj)), image.affine
    except Exception as exc:
        raise InputError(f"{path.name}: not a readable NIfTI mask ({type(exc).__name__}: {exc})") from None
    if mask.shape != tuple(case_shape):
        raise InputError(f"{path.name}: mask shape {mask.shape} disagrees with the images {tuple(case_shape)}")
    if affine is not None and not np.allclose(mask_affine, affine, rtol=0, atol=GRID_TOLERANCE):
        raise InputError(f"{path.name}: mask not on the images' voxel grid (stored {axis_codes(mask_affine)}, images "
                         f"{axis_codes(affine)}, affines differ by up to {float(np.abs(mask_affine - affine).max()):.4g}); "
                         f"save it with the images' affine")
    if mask.max() > 3:
        raise InputError(f"{path.name}: labels outside 0-3")
    return mask


def display_slice(volume: np.ndarray, z: int) -> np.ndarray:
    """One axial slice of an (X, Y, Z) volume as uint8 grey, rows = Y (radiological display: transpose)."""
    s = volume[:, :, z].T.astype(np.float32)
    lo, hi = np.percentile(volume[volume > 0], (0.5, 99.5)) if (volume > 0).any() else (0.0, 1.0)
    return (np.clip((s - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def overlay(grey: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W) uint8 grey + (H, W) labels -> (H, W, 3) uint8, each label tinted in LABEL_COLOURS."""
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    for label, colour in LABEL_COLOURS.items():
        where = labels == label
        rgb[where] = (1 - alpha) * rgb[where] + alpha * np.array(colour, dtype=np.float32)
    return rgb.round().astype(np.uint8)


def region_volumes_cm3(labels: np.ndarray, spacing_mm: tuple[float, float, float]) -> dict[str, float]:
    voxel_cm3 = float(np.prod(spacing_mm)) / 1000.0
    return {r: float(region_mask(labels, r).sum()) * voxel_cm3 for r in REGION_NAMES}


def region_dice(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    from tumorseg.evaluation.metrics import dice

    return {r: dice(region_mask(pred, r), region_mask(truth, r)) for r in REGION_NAMES}


def region_lesion_scores(pred: np.ndarray, truth: np.ndarray, spacing_mm=(1.0, 1.0, 1.0)) -> dict:
    """BraTS 2023 lesion-wise Dice, HD95 and lesion counts per region (``LesionScores``)."""
    from tumorseg.evaluation.metrics import lesion_wise

    return {r: lesion_wise(region_mask(pred, r), region_mask(truth, r), spacing_mm) for r in REGION_NAMES}


def most_tumour_slice(labels: np.ndarray) -> int:
    """The axial slice with the most predicted tumour (the middle one when there is none)."""
    per_slice = (labels > 0).sum(axis=(0, 1))
    return int(per_slice.argmax()) if per_slice.any() else labels.shape[2] // 2
