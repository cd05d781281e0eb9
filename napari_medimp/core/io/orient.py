"""Reorientation of (t, z, y, x) arrays to the closest canonical RAS+ frame, frame by frame."""

from __future__ import annotations

import numpy as np
from nibabel import orientations as nio

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def canonical_plan(affine: np.ndarray, spatial_shape_xyz) -> tuple[np.ndarray, np.ndarray]:
    """Orientation transform to closest canonical RAS and the affine after applying it.

    ``spatial_shape_xyz`` is the shape in index order (x, y, z) (NIfTI order).
    """
    ornt = nio.io_orientation(affine)
    new_affine = affine @ nio.inv_ornt_aff(ornt, spatial_shape_xyz)
    return ornt, new_affine


def reorient_xyz(volume_xyz: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Apply an orientation transform to one 3D (x, y, z) array; returns (z, y, x) order."""
    out = nio.apply_orientation(volume_xyz, ornt)
    return np.ascontiguousarray(out.transpose(2, 1, 0))


def reorient_tzyx(data_tzyx: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient an in-memory (t, z, y, x) array whose affine maps index (x, y, z) to RAS mm."""
    shape_xyz = data_tzyx.shape[1:][::-1]
    ornt, new_affine = canonical_plan(affine, shape_xyz)
    if np.array_equal(ornt, nio.axcodes2ornt("RAS")):
        return data_tzyx, affine
    frames = [reorient_xyz(np.asarray(f).transpose(2, 1, 0), ornt) for f in data_tzyx]
    return np.stack(frames), new_affine
