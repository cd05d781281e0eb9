"""Slice order and the voxel-to-world affine of a series; comparing the geometry of two series."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ...volume import DCEReadError, DCEReadWarning
from ..orient import LPS_TO_RAS
from .planes import _Plane

_POSITION_TOL_MM = 0.01


_ORIENTATION_TOL = 1e-4


def _check_consistent(planes: list[_Plane]) -> None:
    ref = planes[0]
    for plane in planes[1:]:
        if plane.shape != ref.shape:
            raise DCEReadError(
                plane.path,
                f"{plane.label} is {plane.shape[0]} rows x {plane.shape[1]} columns but {ref.label} is "
                f"{ref.shape[0]} x {ref.shape[1]}: all slices of a series must have the same size",
            )
        if (np.abs(plane.row_cos - ref.row_cos).max() > _ORIENTATION_TOL
                or np.abs(plane.col_cos - ref.col_cos).max() > _ORIENTATION_TOL):
            raise DCEReadError(
                plane.path, f"{plane.label} has a different ImageOrientationPatient from {ref.label}"
            )
        if (plane.pixel_spacing is None) != (ref.pixel_spacing is None) or (
            plane.pixel_spacing is not None and not np.allclose(plane.pixel_spacing, ref.pixel_spacing, rtol=1e-4)
        ):
            raise DCEReadError(
                plane.path, f"{plane.label} has PixelSpacing {plane.pixel_spacing}, {ref.label} has {ref.pixel_spacing}"
            )


def _slice_indices(planes: list[_Plane], normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slice index of every plane and the sorted distinct positions along the normal."""
    keys = np.array([float(np.dot(normal, p.position)) for p in planes])
    order = np.argsort(keys, kind="stable")
    index = np.empty(len(planes), dtype=int)
    levels: list[float] = []
    anchors: list[np.ndarray] = []
    for i in order:
        if not levels or keys[i] - levels[-1] > _POSITION_TOL_MM:
            levels.append(keys[i])
            anchors.append(planes[i].position)
        elif np.linalg.norm(planes[i].position - anchors[-1]) > 10 * _POSITION_TOL_MM:
            raise DCEReadError(
                planes[i].path,
                f"{planes[i].label} lies in the same plane as another slice but at a different in-plane "
                f"position ({list(planes[i].position)} vs {list(anchors[-1])})",
            )
        index[i] = len(levels) - 1
    return index, np.array(levels)


def _affine(planes: list[_Plane], normal: np.ndarray, levels: np.ndarray, slice_index: np.ndarray,
            source: Path) -> np.ndarray:
    """Voxel index (column, row, slice) to RAS mm."""
    ref = planes[0]
    if ref.pixel_spacing is None:
        warnings.warn(f"{source}: no PixelSpacing; 1 mm pixels assumed", DCEReadWarning, stacklevel=3)
        row_spacing, col_spacing = 1.0, 1.0
    else:
        row_spacing, col_spacing = ref.pixel_spacing
    first = planes[int(np.flatnonzero(slice_index == 0)[0])].position
    if len(levels) > 1:
        gaps = np.diff(levels)
        gap = float((levels[-1] - levels[0]) / (len(levels) - 1))
        if np.abs(gaps - gap).max() > max(_POSITION_TOL_MM, 0.01 * gap):
            warnings.warn(
                f"{source}: slice gaps are not uniform (from {gaps.min():.4g} to {gaps.max():.4g} mm); "
                f"the mean gap {gap:.4g} mm is used",
                DCEReadWarning,
                stacklevel=3,
            )
        offsets = np.array([p.position - first - normal * (lv - levels[0])
                            for p, lv in zip(planes, levels[slice_index], strict=True)])
        if np.abs(offsets).max() > 10 * _POSITION_TOL_MM:
            warnings.warn(
                f"{source}: slice positions are not stacked along the slice normal (sheared/tilted stack); "
                "the geometry is approximated",
                DCEReadWarning,
                stacklevel=3,
            )
    else:
        gap = ref.gap or ref.thickness
        if not gap or gap <= 0:
            warnings.warn(f"{source}: one slice position and neither SpacingBetweenSlices nor SliceThickness; "
                          "1 mm slices assumed", DCEReadWarning, stacklevel=3)
            gap = 1.0
    lps = np.eye(4)
    lps[:3, 0] = ref.row_cos * col_spacing
    lps[:3, 1] = ref.col_cos * row_spacing
    lps[:3, 2] = normal * gap
    lps[:3, 3] = first
    return LPS_TO_RAS @ lps


def _series_geometry(planes: list[_Plane], normal: np.ndarray, levels: np.ndarray) -> tuple:
    first = min(planes, key=lambda p: float(np.dot(normal, p.position)))
    return planes[0].shape, planes[0].row_cos, planes[0].col_cos, planes[0].pixel_spacing, levels, first.position


def _geometry_words(name: str, geometry: tuple) -> str:
    (rows, cols), _, _, spacing, levels, origin = geometry
    pixel = "unknown pixel size" if spacing is None else f"{spacing[1]:.3g}x{spacing[0]:.3g} mm pixels"
    return (f"{name} has {len(levels)} slices of {cols}x{rows} ({pixel}), first at ImagePositionPatient "
            f"({', '.join(f'{v:.1f}' for v in origin)})")


def _same_geometry(a: tuple, b: tuple) -> bool:
    return (a[0] == b[0] and np.allclose(a[1], b[1], atol=_ORIENTATION_TOL) and np.allclose(a[2], b[2], atol=_ORIENTATION_TOL)
            and (a[3] is None) == (b[3] is None) and (a[3] is None or np.allclose(a[3], b[3], rtol=1e-4))
            and len(a[4]) == len(b[4]) and np.allclose(a[4], b[4], atol=10 * _POSITION_TOL_MM)
            and np.allclose(a[5], b[5], atol=10 * _POSITION_TOL_MM))
