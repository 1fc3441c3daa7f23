"""The orientation the models see, and turning volumes into it.

BraTS volumes (SRI-24 space) and the embedded default are stored in LPS voxel order; a dataset converted by other
tools is often RAS (dcm2niix) or sagittal. Every stage reads volumes through here, so training, scoring and
``tumorseg predict`` agree on one orientation whatever the files' own, and a case whose files disagree with each
other is still read voxel-aligned.
"""

from __future__ import annotations

import numpy as np

MODEL_ORIENTATION = ("L", "P", "S")
# Files of one case must lie on one voxel grid: affines (after orientation) equal within this (mm, and unitless for the
# rotation part); co-registered BraTS volumes agree exactly, float32 round-off stays far below it.
GRID_TOLERANCE = 1e-3
NO_ORIENTATION = "none"  # a file without qform and sform: nothing says how its axes lie, so it is read as stored


def orientation_transforms(affine: np.ndarray):
    """nibabel orientation transforms (input -> MODEL_ORIENTATION, and back), or None when the input is in it."""
    from nibabel import orientations

    current = orientations.io_orientation(affine)
    target = orientations.axcodes2ornt(MODEL_ORIENTATION)
    if np.array_equal(current, target):
        return None
    return orientations.ornt_transform(current, target), orientations.ornt_transform(target, current)


def to_model_orientation(volumes: list[np.ndarray], spacing, affine: np.ndarray) -> tuple[list[np.ndarray], tuple]:
    """``volumes`` (each on ``affine``'s voxel grid) and their voxel sizes turned into MODEL_ORIENTATION (as they
    are when already in it): what the models see, and what a viewer should show as axial slices."""
    from nibabel.orientations import apply_orientation

    transforms = orientation_transforms(affine)
    if transforms is None:
        return list(volumes), tuple(float(z) for z in spacing)
    to_model = transforms[0]
    model_spacing = [0.0, 0.0, 0.0]
    for axis, target in enumerate(to_model[:, 0].astype(int)):
        model_spacing[target] = float(spacing[axis])
    return [np.ascontiguousarray(apply_orientation(v, to_model)) for v in volumes], tuple(model_spacing)


def axis_codes(affine: np.ndarray) -> str:
    """The voxel axes' directions, e.g. ``LPS``."""
    from nibabel.orientations import aff2axcodes

    return "".join(c or "?" for c in aff2axcodes(affine))


def oriented_image(img, data: np.ndarray | None = None) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray, str]:
    """A NIfTI image's voxels, voxel sizes and affine in MODEL_ORIENTATION, and the axis codes it was stored in.
    ``data``: the image's voxels as already decoded (``np.asanyarray(img.dataobj)``), so a caller that needed them
    first does not decode the file twice.

    A file with neither qform nor sform (codes 0) says nothing about its orientation (nibabel's fallback affine is a
    guess): it is read as stored, its codes reported as NO_ORIENTATION. A singular affine raises ValueError."""
    from nibabel.orientations import inv_ornt_aff

    data = np.asanyarray(img.dataobj) if data is None else data
    zooms = img.header.get_zooms()[:3]
    if int(img.header["qform_code"]) == 0 and int(img.header["sform_code"]) == 0:
        return data, tuple(float(z) for z in zooms), img.affine, NO_ORIENTATION
    affine = img.affine
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError("singular or non-finite affine (no voxel-to-world mapping)")
    codes = axis_codes(affine)
    transforms = orientation_transforms(affine)
    (data,), spacing = to_model_orientation([data], zooms, affine)
    if transforms is not None:
        affine = affine @ inv_ornt_aff(transforms[0], img.shape[:3])
    return data, spacing, affine, codes
