"""npe2 writers: image and labels layers to NIfTI, keeping their physical geometry."""

from __future__ import annotations

import numpy as np

from ._layers import layer_affine
from .core.io.nifti import save_nifti


def _affine(meta: dict) -> np.ndarray:
    return layer_affine(meta["scale"], meta["translate"], meta.get("metadata"), meta.get("rotate"))


def _frame_times(data, meta: dict):
    times = (meta.get("metadata") or {}).get("frame_times")
    if times is not None and np.ndim(data) == 4 and len(times) == np.shape(data)[0]:
        return times
    return None


def write_image(path: str, data, meta: dict) -> list[str]:
    """Save a 3D (z, y, x) or 4D (t, z, y, x) image layer, e.g. a saliency map."""
    data = np.asarray(data)
    if data.ndim not in (3, 4):
        raise ValueError(f"only 3D or 4D image layers can be saved as NIfTI (this one is {data.ndim}D)")
    out = save_nifti(path, data, _affine(meta), dtype=np.float32, frame_times=_frame_times(data, meta))
    return [str(out)]


def write_labels(path: str, data, meta: dict) -> list[str]:
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"only 3D labels layers can be saved as NIfTI (this one is {data.ndim}D)")
    dtype = np.uint8 if data.max(initial=0) < 256 and data.min(initial=0) >= 0 else np.int32
    return [str(save_nifti(path, data, _affine(meta), dtype=dtype))]
