"""Siemens MOSAIC images: the slices of one 3D volume tiled side by side in one 2D image.

The number of slices (NumberOfImagesInMosaic) and the slice normal come from the Siemens CSA image header,
read by nibabel (:mod:`nibabel.nicom.csareader`); the position of the first slice is nibabel's
``MosaicWrapper.image_position`` (the ImagePositionPatient of a mosaic is that of the whole tiled image, not
of its first slice). Each tile becomes one plane, so slices are sorted and phases grouped like any other
series: each mosaic file of a series is one phase.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from ...volume import DCEReadError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # nibabel says on import that its DICOM readers are experimental
    from nibabel.nicom import csareader
    from nibabel.nicom.dicomwrappers import MosaicWrapper


def is_mosaic(ds) -> bool:
    """True when the header's ImageType names a Siemens MOSAIC."""
    return "MOSAIC" in [str(v).upper() for v in (ds.get("ImageType") or [])]


def _refusal(path: Path, ds, problem: str) -> DCEReadError:
    return DCEReadError(path, f"a Siemens mosaic ({ds.get('Rows')}x{ds.get('Columns')} image holding several "
                              f"slices side by side) {problem}, so its slices cannot be placed")


def mosaic_slices(path: Path, ds) -> tuple[tuple[int, int], list[np.ndarray]]:
    """The (rows, columns) of one slice and the LPS position of each slice's first pixel, in tile order.

    Refused (:class:`DCEReadError` naming the problem) when the CSA header is missing or unreadable, lacks
    NumberOfImagesInMosaic, or the tiles do not fit the image matrix.
    """
    try:
        csa = csareader.get_csa_header(ds)
    except (csareader.CSAReadError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise _refusal(path, ds, f"whose Siemens CSA image header cannot be read ({exc})") from None
    if csa is None:
        raise _refusal(path, ds, "has no Siemens CSA image header (private tag 0029,xx10)")
    try:
        n_slices = csareader.get_n_mosaic(csa)
    except (KeyError, IndexError, ValueError):
        n_slices = None
    if not n_slices or int(n_slices) < 1:
        raise _refusal(path, ds, "has no NumberOfImagesInMosaic in its Siemens CSA image header")
    n_slices = int(n_slices)
    rows, cols = int(ds.Rows), int(ds.Columns)
    side = math.ceil(math.sqrt(n_slices))
    if rows % side or cols % side:
        raise _refusal(path, ds, f"whose {n_slices} slices (NumberOfImagesInMosaic), {side} per row and column, "
                                 f"do not fit its {rows}x{cols} matrix")
    if n_slices > 1 and ds.get("SpacingBetweenSlices") in (None, "") and ds.get("SliceThickness") in (None, ""):
        raise _refusal(path, ds, "has neither SpacingBetweenSlices nor SliceThickness")
    wrapper = MosaicWrapper(ds, csa, n_slices)
    first = wrapper.image_position
    if first is None:
        raise _refusal(path, ds, "lacks ImagePositionPatient, ImageOrientationPatient or PixelSpacing")
    step = np.asarray(wrapper.slice_normal, dtype=float) * float(wrapper.voxel_sizes[2])
    return (rows // side, cols // side), [np.asarray(first, dtype=float) + k * step for k in range(n_slices)]


def mosaic_tile(array: np.ndarray, tile: int, shape: tuple[int, int]) -> np.ndarray | None:
    """Slice ``tile`` (in tile order) of a mosaic image, None when the image is not a mosaic of ``shape`` tiles."""
    rows, cols = shape
    if array.ndim != 2 or array.shape[0] % rows or array.shape[1] % cols:
        return None
    side = array.shape[0] // rows
    if array.shape[1] // cols != side or tile >= side * side:
        return None
    row, col = divmod(tile, side)
    return array[row * rows:(row + 1) * rows, col * cols:(col + 1) * cols]
