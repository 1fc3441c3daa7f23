"""The embedded default: a seeded synthetic dataset in the exact BraTS-Africa layout.

Real BraTS-Africa cannot be downloaded here, so the pipeline runs end to end on brains built
from the same ingredients a model has to learn from in real MRI:

* anatomy: a skull-stripped brain with a folded grey-matter ribbon, white matter, deep grey
  nuclei, ventricles and sulcal CSF;
* tumours: 1-3 lesions of varying size and position, each with a necrotic / non-enhancing core
  (label 1), an enhancing rim (label 3) and surrounding edema (label 2); gliomas sit deep,
  "other neoplasms" are meningioma-like (peripheral, solidly enhancing) or metastasis-like
  (several small ring-enhancing lesions with large edema);
* contrast: each tissue has a sequence-specific brightness as in real MRI (edema bright on
  FLAIR and T2, the rim bright on T1c, CSF bright on T2 and dark on FLAIR), plus FLAIR-bright
  non-tumour white-matter lesions, so no single threshold on one sequence segments the tumour;
* tumour mimics labelled background: edema-like plaques with no core and thin vessels bright on
  T1c, the false positives a model must learn to leave out (as in real brains);
* acquisition: partial-volume blur, Rician noise, a smooth multiplicative bias field per
  sequence, and a per-patient, per-sequence intensity scale, stored as int16 like scanner data.

Each case is seeded by (seed, case number) alone, so cases are identical whatever the worker
count or order, and the .nii.gz bytes are identical run to run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from tumorseg.config import Checked, SettingError, in_range
from tumorseg.data.brats import COHORT_FOLDER, FILE_KINDS, MASK, case_filename
from tumorseg.data.labels import SEQUENCES
from tumorseg.fileio import atomic_file


@dataclass(frozen=True)
class SyntheticSettings(Checked):
    n_patients: int = field(default=40, metadata=in_range(1, 99_999))
    shape: tuple[int, int, int] = field(default=(128, 128, 80), metadata=in_range(16))  # smaller has no room for a brain
    seed: int = 2026
    glioma_fraction: float = field(default=95 / 146, metadata=in_range(0, 1))  # BraTS-Africa: 95 gliomas, 51 other neoplasms
    first_case_number: int = field(default=2, metadata=in_range(0, 99_999))  # BraTS-SSA numbering starts at 00002

    def check(self) -> None:
        if self.first_case_number + self.n_patients - 1 > 99_999:
            raise SettingError("n_patients", f"= {self.n_patients} from case {self.first_case_number} runs past the five-digit case number 99999")


# Tissue classes used while composing a brain.
BG, CSF, GM, WM, WML, EDEMA, NECROSIS, ENHANCING, PLAQUE, VESSEL = range(10)

# Relative brightness per sequence and tissue (bg, CSF, GM, WM, WM lesion, edema, necrosis, ET, plaque, vessel).
# Ordered as in real MRI: T1 WM>GM>CSF; T2 CSF>GM>WM; FLAIR suppresses CSF; T1c lights up ET.
# Two tumour mimics that are not tumour (label 0): plaques (demyelination / gliosis: FLAIR- and T2-bright like
# edema, a little less dark on T1, never around a core) and vessels (bright on T1c like enhancing tumour, thin).
TISSUE_MEANS: dict[str, tuple[float, ...]] = {
    "t1n": (0.0, 0.22, 0.56, 0.76, 0.62, 0.46, 0.30, 0.52, 0.54, 0.50),
    "t1c": (0.0, 0.22, 0.58, 0.74, 0.62, 0.46, 0.28, 1.00, 0.56, 1.10),
    "t2w": (0.0, 1.00, 0.62, 0.42, 0.78, 0.80, 0.92, 0.64, 0.80, 0.55),
    "t2f": (0.0, 0.12, 0.58, 0.46, 0.80, 0.86, 0.52, 0.76, 0.84, 0.50),
}


def case_id(number: int) -> str:
    return f"BraTS-SSA-{number:05d}-000"


def cohorts(settings: SyntheticSettings) -> list[str]:
    """Deterministic cohort per patient, in the dataset's glioma / other-neoplasm proportion."""
    n_glioma = round(settings.n_patients * settings.glioma_fraction)
    rng = np.random.default_rng([settings.seed, 0])
    labels = np.array(["glioma"] * n_glioma + ["other_neoplasm"] * (settings.n_patients - n_glioma))
    return list(rng.permutation(labels))


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cell: float) -> np.ndarray:
    """Unit-variance noise smooth over about ``cell`` voxels, cheap at 240 x 240 x 155."""
    coarse_shape = tuple(max(2, int(np.ceil(s / cell)) + 1) for s in shape)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape).astype(np.float32), 0.7)
    coarse /= coarse.std() + 1e-6
    # Trilinear upsampling through torch: ~20x faster than ndimage.zoom at full BraTS size.
    t = torch.from_numpy(coarse)[None, None]
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(shape)]
    return F.interpolate(t, size=shape, mode=mode, align_corners=False)[0, 0].numpy()


def _grid(shape):
    return np.meshgrid(*(np.arange(s, dtype=np.float32) for s in shape), indexing="ij", sparse=True)


def _ellipsoid_distance(grid, centre, radii):
    return np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)))


def generate_case(number: int, cohort: str, settings: SyntheticSettings) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Return ({t1n, t1c, t2w, t2f: int16, seg: uint8}, affine) for one patient."""
    rng = np.random.default_rng([settings.seed, number])
    shape = tuple(settings.shape)
    grid = _grid(shape)
    size = np.array(shape, dtype=np.float32)

    # --- anatomy -------------------------------------------------------------------------
    centre = size / 2 + rng.uniform(-0.03, 0.03, 3) * size
    radii = size * np.array([0.36, 0.43, 0.40]) * rng.uniform(0.92, 1.05)
    r = _ellipsoid_distance(grid, centre, radii)
    r = r + 0.05 * smooth_noise(rng, shape, 24)  # lobes: irregular outline
    brain = r < 1.0
    depth = 1.0 - r  # 0 at the surface, ~1 at the centre

    folds = smooth_noise(rng, shape, 6)  # gyri: the grey ribbon's thickness varies
    tissue = np.full(shape, BG, dtype=np.uint8)
    tissue[brain] = WM
    ribbon = brain & (depth < 0.13 + 0.05 * folds)
    tissue[ribbon] = GM
    tissue[brain & (depth < 0.05 + 0.04 * folds) & (folds > 0.9)] = CSF  # sulci
    for side in (-1, 1):  # deep grey nuclei and lateral ventricles
        nuc_c = centre + np.array([side * 0.22, 0.05, -0.05]) * radii
        tissue[_ellipsoid_distance(grid, nuc_c, radii * np.array([0.12, 0.16, 0.13])) < 1] = GM
        vent_c = centre + np.array([side * 0.09, -0.02, 0.08]) * radii
        vent_r = radii * np.array([0.06, 0.30, 0.10]) * rng.uniform(0.7, 1.4)
        vent = _ellipsoid_distance(grid, vent_c, vent_r)
        tissue[vent < 1] = CSF
        tissue[(vent >= 1) & (vent < 1.35) & brain & (rng.random() < 0.6)] = WML  # periventricular caps
    for _ in range(rng.integers(0, 7)):  # small FLAIR-bright white-matter lesions (not tumour)
        c = centre + rng.uniform(-0.6, 0.6, 3) * radii
        rad = rng.uniform(1.5, 4.0, 3) * size.min() / 128
        blob = (_ellipsoid_distance(grid, c, rad) < 1) & (tissue == WM)
        tissue[blob] = WML
    _add_mimics(np.random.default_rng([settings.seed, number, 1]), grid, shape, centre, radii, depth, brain, tissue)

    # --- tumours -------------------------------------------------------------------------
    seg = np.zeros(shape, dtype=np.uint8)
    edema_w = np.zeros(shape, dtype=np.float32)  # soft edema weight, so edges are not trivial
    kind = "glioma" if cohort == "glioma" else rng.choice(["meningioma", "metastasis"])
    n_lesions = {"glioma": rng.choice([1, 1, 1, 2]), "meningioma": 1, "metastasis": rng.integers(2, 4)}[kind]
    for _ in range(n_lesions):
        _add_lesion(rng, kind, grid, shape, centre, radii, depth, brain, seg, edema_w)
    seg[~brain] = 0

    # --- intensities -----------------------------------------------------------------------
    lesion_tissue = tissue.copy()
    lesion_tissue[seg == 1] = NECROSIS
    lesion_tissue[seg == 3] = ENHANCING
    volumes: dict[str, np.ndarray] = {}
    for seq in SEQUENCES:
        means = np.array(TISSUE_MEANS[seq], dtype=np.float32) * rng.uniform(0.94, 1.06, len(TISSUE_MEANS[seq]))
        means[BG] = 0.0
        img = means[lesion_tissue]
        edema_mean = means[EDEMA] * rng.uniform(0.9, 1.05)
        soft = edema_w * (seg != 1) * (seg != 3)
        img = img * (1 - soft) + edema_mean * soft
        img *= 1 + 0.05 * smooth_noise(rng, shape, 4)  # tissue texture
        img = ndimage.gaussian_filter(img, 0.6)  # partial volume
        img *= np.exp(0.18 * smooth_noise(rng, shape, 48))  # bias field
        sigma = 0.035 * rng.uniform(0.6, 1.4)
        img = np.hypot(img + sigma * rng.standard_normal(shape, dtype=np.float32),
                       sigma * rng.standard_normal(shape, dtype=np.float32))  # Rician noise
        img[~brain] = 0.0  # skull-stripped
        scale = rng.uniform(300, 3000)  # scanner units differ between patients and sequences
        volumes[seq] = np.clip(np.rint(img * scale), 0, np.iinfo(np.int16).max).astype(np.int16)
    volumes[MASK] = seg

    affine = np.array(
        [[-1.0, 0, 0, 0], [0, -1.0, 0, shape[1] - 1.0], [0, 0, 1.0, 0], [0, 0, 0, 1]]
    )  # 1 mm isotropic, LPS-flipped like the SRI24 grid BraTS uses
    return volumes, affine



def _add_mimics(mrng, grid, shape, centre, radii, depth, brain, tissue) -> None:
    """Tumour mimics, labelled background: 0-3 plaques (irregular, 3-7 voxels across at 128, edema-like on FLAIR
    and T2 but with no core) and 0-3 vessels (thin tubes bright on T1c, like enhancing tumour rims). ``mrng`` is
    their own random stream (seed, case, 1), so they change no other part of a patient."""
    scale = float(min(shape[:2])) / 128
    for _ in range(mrng.integers(0, 4)):
        inside = np.argwhere(depth[::4, ::4, ::4] > 0.2) * 4
        c = inside[mrng.integers(len(inside))].astype(np.float32)
        rad = mrng.uniform(3.0, 7.0, 3) * scale
        box = tuple(slice(max(0, int(ci - 2 * r)), min(s, int(ci + 2 * r) + 1)) for ci, r, s in zip(c, rad, shape))
        rough = np.zeros(shape, dtype=np.float32)
        rough[box] = smooth_noise(mrng, tuple(b.stop - b.start for b in box), max(2.0, float(rad.mean()) / 1.5))
        tissue[(_ellipsoid_distance(grid, c, rad) + 0.25 * rough < 1) & brain & (tissue != CSF)] = PLAQUE
    for _ in range(mrng.integers(0, 4)):
        start = centre + mrng.uniform(-0.7, 0.7, 3) * radii
        direction = mrng.normal(size=3)
        direction /= np.linalg.norm(direction) + 1e-6
        length, width = mrng.uniform(10, 24) * scale, mrng.uniform(1.2, 2.0) * scale
        # distance of every voxel to the segment start + t * direction, t in [0, length]
        rel = [g - s for g, s in zip(grid, start)]
        t = np.clip(sum(r * d for r, d in zip(rel, direction)), 0, length)
        dist = np.sqrt(sum((r - t * d) ** 2 for r, d in zip(rel, direction)))
        tissue[(dist < width) & brain] = VESSEL


def _add_lesion(rng, kind, grid, shape, centre, radii, depth, brain, seg, edema_w):
    scale = min(shape[0], shape[1]) / 240.0
    if kind == "glioma":
        core_r = rng.uniform(9, 24) * scale
        edema_factor = rng.uniform(1.4, 2.3)
        necrotic_frac = rng.uniform(0.0, 0.7)
        rim = rng.uniform(0.18, 0.45)
        enhancing = rng.random() < 0.8  # some gliomas (low grade) do not enhance
        min_depth = 0.25
    elif kind == "meningioma":
        core_r = rng.uniform(8, 18) * scale
        edema_factor = rng.uniform(1.15, 1.6)
        necrotic_frac, rim, enhancing, min_depth = 0.0, 1.0, True, 0.08
    else:  # metastasis
        core_r = rng.uniform(3, 9) * scale
        edema_factor = rng.uniform(1.8, 3.0)
        necrotic_frac = rng.uniform(0.0, 0.5)
        rim, enhancing, min_depth = rng.uniform(0.3, 0.6), True, 0.12
    core_r = max(core_r, 2.0)
    inside = np.argwhere(depth[::4, ::4, ::4] > min_depth) * 4
    if kind == "meningioma":
        inside = np.argwhere((depth[::4, ::4, ::4] > 0.04) & (depth[::4, ::4, ::4] < 0.15)) * 4
    c = inside[rng.integers(len(inside))].astype(np.float32)
    anis = rng.uniform(0.75, 1.3, 3)
    d = _ellipsoid_distance(grid, c, core_r * anis)
    # Irregular outline: the noise is evaluated only in the lesion's bounding box.
    box = tuple(slice(max(0, int(ci - 4 * core_r * edema_factor)), min(s, int(ci + 4 * core_r * edema_factor) + 1))
                for ci, s in zip(c, shape))
    sub = tuple(b.stop - b.start for b in box)
    rough = np.zeros(shape, dtype=np.float32)
    rough[box] = smooth_noise(rng, sub, max(3.0, core_r / 1.5))
    d_core = d + 0.18 * rough
    d_edema = d / edema_factor + 0.15 * np.roll(rough, 3, axis=0)
    core = (d_core < 1) & brain
    edema = (d_edema < 1) & brain
    edema_w[:] = np.maximum(edema_w, np.clip((1.15 - d_edema) / 0.3, 0, 1) * brain)
    seg[edema & (seg == 0)] = 2
    if enhancing:
        seg[core & (d_core >= 1 - rim)] = 3
        seg[core & (d_core < 1 - rim)] = 1
    else:
        seg[core] = 1
    if necrotic_frac > 0:
        seg[(d_core < necrotic_frac * (1 - rim)) & brain] = 1


def write_dataset(root: str | Path, settings: SyntheticSettings, workers: int = 1, progress: bool = True) -> Path:
    """Write the whole synthetic dataset under ``root/BraTS-Africa``; returns that folder."""
    from tumorseg.parallel import parallel_map

    dataset = Path(root) / "BraTS-Africa"
    jobs = [(settings.first_case_number + i, cohort, settings, dataset) for i, cohort in enumerate(cohorts(settings))]
    parallel_map(_write_case, jobs, workers=workers, desc="synthetic cases", progress=progress)
    return dataset


def _write_case(job) -> str:
    number, cohort, settings, dataset = job
    cid = case_id(number)
    folder = dataset / COHORT_FOLDER[cohort] / cid
    folder.mkdir(parents=True, exist_ok=True)
    volumes, affine = generate_case(number, cohort, settings)
    for kind in FILE_KINDS:
        write_nifti(volumes[kind], affine, folder / case_filename(cid, kind))
    return cid


def write_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    with atomic_file(path) as tmp:
        nib.save(img, tmp)
