"""The orientation the models see, and turning volumes into it.

BraTS volumes (SRI-24 space) and the embedded default are stored in LPS voxel order; a dataset converted by other
tools is often RAS (dcm2niix) or sagittal. Every stage reads volumes through here, so training, scoring and
``tumorseg predict`` agree on one orientation whatever the files' own, and a case whose files disagree with each
other is still read voxel-aligned.
"""

from __future__ import annotations

import numpy as np

MODEL_ORIENTATION = ("L", "P", "S")


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
