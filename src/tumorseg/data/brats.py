"""The BraTS-Africa layout and the validated case manifest.

One module owns the naming (``BraTS-SSA-NNNNN-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``) and the manifest
schema, so every other module imports them instead of re-spelling them; the label scheme it
validates against is ``tumorseg.data.labels``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from isal import igzip

from tumorseg.data.ids import CASE_ID_RE
from tumorseg.data.labels import LABELS, LEGACY_ET_LABEL, SEQUENCES
from tumorseg.data.orientation import GRID_TOLERANCE, MODEL_ORIENTATION, NO_ORIENTATION, oriented_image
from tumorseg.fileio import sha256_file

log = logging.getLogger(__name__)

MASK = "seg"
FILE_KINDS: tuple[str, ...] = SEQUENCES + (MASK,)  # one file per sequence, then the expert mask

COHORT_DIRS = {"Glioma": "glioma", "OtherNeoplasms": "other_neoplasm"}
COHORT_FOLDER = {"glioma": "95_Glioma", "other_neoplasm": "51_OtherNeoplasms"}


def read_nifti(path: str | Path) -> nib.Nifti1Image:
    """Load a .nii or .nii.gz fully into memory.

    Decompressing with ISA-L (``isal``) instead of zlib cuts the dominant cost of every stage
    that reads the dataset; the bytes and the resulting image are the same as nibabel's own.
    """
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = igzip.decompress(raw)
    return nib.Nifti1Image.from_bytes(raw)


def case_filename(case_id: str, kind: str) -> str:
    return f"{case_id}-{kind}.nii.gz"


def cohort_of(folder_name: str) -> str:
    """``95_Glioma`` -> ``glioma``; an unrecognised parent folder gives ``unknown``."""
    stem = folder_name.split("_", 1)[-1]
    return COHORT_DIRS.get(stem, "unknown")


@dataclass(frozen=True)
class CaseDir:
    case_id: str
    cohort: str
    path: Path


def discover_cases(root: str | Path) -> list[CaseDir]:
    """Every ``BraTS-XXX-NNNNN-NNN`` folder below ``root``, sorted by case id."""
    root = Path(root)
    found: dict[str, CaseDir] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_dir() and CASE_ID_RE.match(p.name)):
        if path.name in found:
            raise ValueError(
                f"case {path.name} appears twice: {found[path.name].path} and {path}; remove one copy"
            )
        found[path.name] = CaseDir(path.name, cohort_of(path.parent.name), path)
    return [found[k] for k in sorted(found)]


# ---------------------------------------------------------------------------------------------
# Manifest: one row per case.

MANIFEST_STATUS = ("ok", "skipped")


@dataclass
class ManifestRow:
    case_id: str
    cohort: str
    status: str = "ok"
    reason: str = ""
    nx: int = 0
    ny: int = 0
    nz: int = 0
    spacing_x: float = 0.0
    spacing_y: float = 0.0
    spacing_z: float = 0.0
    # the files' stored voxel orientation (e.g. LPS; per file when they differ); shape and spacing above are in
    # MODEL_ORIENTATION, as every stage reads the volumes (read_volume, load_mask)
    orientation: str = ""
    label4_voxels: int = 0  # legacy ET voxels that preprocessing remaps to 3
    files: dict[str, dict] = field(default_factory=dict)

    def flat(self) -> dict:
        row = asdict(self)
        files = row.pop("files")
        for kind in FILE_KINDS:
            info = files.get(kind, {})
            row[f"{kind}_path"] = info.get("path", "")
            row[f"{kind}_dtype"] = info.get("dtype", "")
            row[f"{kind}_bytes"] = int(info.get("bytes", 0))
            row[f"{kind}_sha256"] = info.get("sha256", "")
        return row


MANIFEST_COLUMNS: tuple[str, ...] = tuple(ManifestRow("x", "y").flat())


def manifest_frame(rows: list[ManifestRow]) -> pd.DataFrame:
    df = pd.DataFrame([r.flat() for r in sorted(rows, key=lambda r: r.case_id)], columns=list(MANIFEST_COLUMNS))
    return df


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and check the manifest contract; the error names the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found; run `dvc repro download` (or `tumorseg download`) first")
    df = pd.read_parquet(path)
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: columns missing: {missing}; not a tumorseg manifest, or one written by an older "
                         f"tumorseg: rerun `dvc repro download` (or `tumorseg download`)")
    bad_status = sorted(set(df["status"]) - set(MANIFEST_STATUS))
    if bad_status:
        raise ValueError(f"{path}: unknown status values {bad_status}")
    if df["case_id"].duplicated().any():
        raise ValueError(f"{path}: duplicate case ids {sorted(df.loc[df['case_id'].duplicated(), 'case_id'])}")
    return df


# ---------------------------------------------------------------------------------------------
# Validation of one case folder.


class BadCaseError(ValueError):
    """One or more cases failed validation and ``data.on_bad_case`` is ``fail``."""


def validate_case(case: CaseDir, root: str | Path) -> ManifestRow:
    """Read every file of ``case`` fully and record what is wrong, file by file.

    Reading the voxels (not only the header) is what catches truncated gzip streams, which real
    TCIA downloads are known to contain along with zero-byte files.
    """
    root = Path(root)
    row = ManifestRow(case.case_id, case.cohort)
    problems: list[str] = []
    shapes: dict[str, tuple[int, ...]] = {}
    spacings: dict[str, tuple[float, ...]] = {}
    orientations: dict[str, str] = {}
    affines: dict[str, np.ndarray] = {}
    for kind in FILE_KINDS:
        path = case.path / case_filename(case.case_id, kind)
        rel = path.relative_to(root).as_posix()
        if not path.is_file():
            problems.append(f"{kind}: missing file {rel}")
            continue
        size = path.stat().st_size
        info = {"path": rel, "bytes": size, "sha256": sha256_file(path)}
        row.files[kind] = info
        if size == 0:
            problems.append(f"{kind}: zero-byte file {rel}")
            continue
        try:
            img = read_nifti(path)
            data = np.asanyarray(img.dataobj)
        except Exception as exc:  # any parse failure is this file's defect; reported, never raised
            problems.append(f"{kind}: unreadable or truncated NIfTI {rel} ({type(exc).__name__}: {exc})")
            continue
        info["dtype"] = str(data.dtype)
        if data.ndim != 3:
            problems.append(f"{kind}: expected a 3D volume, got shape {data.shape} in {rel}")
            continue
        try:
            data, spacing, affines[kind], orientations[kind] = oriented_image(img, data)
        except ValueError as exc:
            problems.append(f"{kind}: unusable affine in {rel} ({exc})")
            continue
        shapes[kind] = tuple(int(s) for s in data.shape)
        spacings[kind] = tuple(round(float(z), 6) for z in spacing)
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            problems.append(f"{kind}: {int((~np.isfinite(data)).sum())} non-finite voxels in {rel}")
        if kind == MASK:
            problems += _check_labels(data, rel, row)
    if len(set(shapes.values())) > 1:
        problems.append("shapes disagree: " + ", ".join(f"{k} {'x'.join(map(str, s))}" for k, s in shapes.items()))
    elif shapes:
        row.nx, row.ny, row.nz = next(iter(shapes.values()))
    if len(set(spacings.values())) > 1:
        problems.append("voxel spacings disagree: " + ", ".join(f"{k} {s}" for k, s in spacings.items()))
    elif spacings:
        row.spacing_x, row.spacing_y, row.spacing_z = next(iter(spacings.values()))
    unknown = [k for k, o in orientations.items() if o == NO_ORIENTATION]
    if unknown and len(unknown) < len(orientations):
        problems.append(f"{', '.join(unknown)}: no qform or sform, unlike the other files: cannot tell whether they share a "
                        f"voxel grid; save them with the images' affine")
    elif len(set(shapes.values())) == 1 and affines:
        # stored in different orientations is fine (each is read in LPS); on different grids is not
        first = next(iter(affines))
        for kind, affine in affines.items():
            diff = float(np.abs(affine - affines[first]).max())
            if not diff <= GRID_TOLERANCE:
                problems.append(f"{kind}: not on {first}'s voxel grid (affine in LPS differs by up to {diff:.4g}, tolerance "
                                f"{GRID_TOLERANCE}; stored {orientations[kind]} vs {orientations[first]}); co-register the files")
    if len(set(orientations.values())) > 1:
        row.orientation = ", ".join(f"{k} {o}" for k, o in orientations.items())
    elif orientations:
        row.orientation = next(iter(orientations.values()))
    if row.orientation == NO_ORIENTATION:
        log.warning("%s: no qform or sform in its files: read as stored, taken to be %s", row.case_id, "".join(MODEL_ORIENTATION))
    elif row.orientation and row.orientation != "".join(MODEL_ORIENTATION):
        log.info("%s: files stored in %s; read in %s, as the models see every case", row.case_id, row.orientation,
                 "".join(MODEL_ORIENTATION))
    if problems:
        row.status, row.reason = "skipped", "; ".join(problems)
    return row


def _check_labels(mask: np.ndarray, rel: str, row: ManifestRow) -> list[str]:
    if mask.dtype.kind == "f":
        if not np.isfinite(mask).all():
            return []  # already reported as non-finite
        if not np.array_equal(mask, np.round(mask)):
            return [f"seg: non-integer label values in {rel}"]
    values, counts = np.unique(mask.astype(np.int64, copy=False), return_counts=True)
    unexpected = sorted(set(values.tolist()) - set(LABELS) - {LEGACY_ET_LABEL})
    if unexpected:
        return [f"seg: labels {unexpected} outside {{{','.join(map(str, LABELS))}}} in {rel}"]
    if LEGACY_ET_LABEL in values:
        row.label4_voxels = int(counts[values.tolist().index(LEGACY_ET_LABEL)])
        if 3 in values:
            return [f"seg: both label 3 and legacy label {LEGACY_ET_LABEL} present in {rel}; cannot tell which scheme it uses"]
        log.warning("%s: legacy label %d (ET, BraTS <= 2021) found in %s; it will be remapped to 3", row.case_id, LEGACY_ET_LABEL, rel)
    return []


def read_volume(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A volume's voxels and voxel sizes (mm) in MODEL_ORIENTATION: how the pipeline reads its dataset."""
    data, spacing, _, _ = oriented_image(read_nifti(path))
    return data, spacing


def load_mask(path: str | Path, *, in_model_orientation: bool = True) -> np.ndarray:
    """A label map as uint8 with legacy label 4 remapped to 3; in MODEL_ORIENTATION, as the pipeline scores it, or
    on the file's own voxel grid (``in_model_orientation=False``, for a viewer that orients the case itself)."""
    if in_model_orientation:
        mask, _ = read_volume(path)
    else:
        mask = np.asanyarray(read_nifti(path).dataobj)
    return mask_labels(mask)


def mask_labels(mask: np.ndarray) -> np.ndarray:
    """A decoded label map as uint8 labels 0-3 (float labels rounded, legacy label 4 -> 3)."""
    mask = np.rint(mask).astype(np.uint8) if mask.dtype.kind == "f" else mask.astype(np.uint8, copy=False)
    if (mask == LEGACY_ET_LABEL).any():
        mask = np.where(mask == LEGACY_ET_LABEL, np.uint8(3), mask)
    return mask
