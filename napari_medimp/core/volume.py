"""The one DCE volume type every reader returns and every consumer takes.

Conventions
-----------
* ``data`` is indexed ``(t, z, y, x)``. After canonical reorientation the array axes x, y, z
  increase towards patient Right, Anterior and Superior (RAS+).
* ``affine`` is the 4x4 voxel-to-world matrix in the NIfTI convention: it maps a homogeneous voxel
  index ``(x, y, z, 1)`` (note: reversed with respect to the array order) to RAS millimetres.
* ``spacing`` is given in array order ``(z, y, x)`` in millimetres, derived from ``affine``.
* ``frame_times`` are seconds from the first frame when the source records them, else ``None``.

``data`` may be a lazy array (dask) so that a large file is displayed before it is fully read;
``load()`` returns a copy whose data are a NumPy array.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

AXIS_LABELS = ("t", "z", "y", "x")
#: above this many bytes of float32 voxels a reader opens a volume lazily (one dask chunk per frame)
LAZY_THRESHOLD_BYTES = 256 * 2**20


class DCEReadError(ValueError):
    """An image could not be read; the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class DCEReadWarning(UserWarning):
    """An image was read but something about it deserves the user's attention."""


#: longest acquisition accepted as frame times (a DCE series lasts minutes; a day is certainly wrong)
MAX_ACQUISITION_S = 86400.0


def frame_times_problem(times) -> str | None:
    """Why frame times (seconds from the first frame) cannot be right, or None when they can."""
    times = np.asarray(times, dtype=float)
    if times.size < 2:
        return None if times.size == 0 or np.all(np.isfinite(times)) else "are not finite numbers"
    if not np.all(np.isfinite(times)):
        return "are not all finite numbers"
    steps = np.diff(times)
    if np.all(steps == 0):
        return "are all equal"
    if np.any(steps <= 0):
        where = int(np.flatnonzero(steps <= 0)[0])
        return f"do not increase (frame {where + 2} at {times[where + 1]:g} s after frame {where + 1} at {times[where]:g} s)"
    if times[-1] - times[0] > MAX_ACQUISITION_S:
        return f"span {times[-1] - times[0]:.3g} s, more than a day"
    return None


@dataclass
class DCEVolume:
    data: Any
    affine: np.ndarray
    frame_times: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)
    source: str = ""

    def __post_init__(self):
        self.affine = np.asarray(self.affine, dtype=float)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")
        if len(self.data.shape) != 4:
            raise ValueError(f"DCE data must be 4D (t, z, y, x), got shape {tuple(self.data.shape)}")
        if self.frame_times is not None:
            self.frame_times = np.asarray(self.frame_times, dtype=float)
            if self.frame_times.shape != (self.n_frames,):
                raise ValueError(
                    f"{self.n_frames} frames but {self.frame_times.size} frame times were given"
                )
            problem = frame_times_problem(self.frame_times)
            if problem:
                warnings.warn(f"{self.source or 'image'}: frame times {problem}; they are ignored (curves use "
                              "frame numbers)", DCEReadWarning, stacklevel=3)
                self.metadata = {**self.metadata, "frame_times_ignored": problem}
                self.frame_times = None

    # -- geometry ---------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(int(s) for s in self.data.shape)

    @property
    def n_frames(self) -> int:
        return int(self.data.shape[0])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm, array order (z, y, x)."""
        sizes = np.linalg.norm(self.affine[:3, :3], axis=0)  # along x, y, z index axes
        return tuple(float(s) for s in sizes[::-1])

    @property
    def origin(self) -> tuple[float, float, float]:
        """World position (mm) of voxel (0, 0, 0), in napari's axis order (S, A, R)."""
        return tuple(float(v) for v in self.affine[:3, 3][::-1])

    @property
    def obliquity_deg(self) -> float:
        """Largest angle (degrees) between a voxel axis and the nearest world axis."""
        directions = self.affine[:3, :3] / np.linalg.norm(self.affine[:3, :3], axis=0)
        cosines = np.clip(np.abs(directions).max(axis=0), -1.0, 1.0)
        return float(np.degrees(np.arccos(cosines)).max())

    def layer_geometry(self, include_rotation: bool = False) -> dict:
        """``scale`` and ``translate`` (and optionally ``rotate``) for a napari layer.

        napari composes ``world = translate + rotate @ diag(scale) @ index`` with index and world both in
        array order; we express the NIfTI affine in that order: index (z, y, x) -> world (S, A, R).
        napari slices rotated volumes only approximately, so by default an oblique volume is shown in
        its own voxel frame (distances exact, axes not rotated); the exact affine travels in the layer
        metadata and files written from the layer keep it.
        """
        flip = np.eye(3)[::-1]
        linear = flip @ self.affine[:3, :3] @ flip
        scale = np.linalg.norm(linear, axis=0)
        rotation = linear / scale
        geometry = {
            "scale": (1.0, *[float(s) for s in scale]),
            "translate": (0.0, *self.origin),
        }
        if include_rotation and not np.allclose(rotation, np.eye(3), atol=1e-6):
            rotate4 = np.eye(4)
            rotate4[1:, 1:] = rotation
            geometry["rotate"] = rotate4
        return geometry

    # -- data -------------------------------------------------------------------------------------
    @property
    def is_lazy(self) -> bool:
        return not isinstance(self.data, np.ndarray)

    def load(self) -> DCEVolume:
        """A copy with the whole array in memory (float32, finite)."""
        if not self.is_lazy:
            return self
        array = np.asarray(self.data.compute() if hasattr(self.data, "compute") else self.data)
        return replace(self, data=sanitize(array, self.source))

    def frame(self, index: int) -> np.ndarray:
        frame = self.data[index]
        return np.asarray(frame.compute() if hasattr(frame, "compute") else frame)


def sanitize(array: np.ndarray, source: str = "", warn: bool = True) -> np.ndarray:
    """float32 copy with NaN/Inf replaced by 0; warns with the count when any are found."""
    array = np.asarray(array, dtype=np.float32)
    bad = ~np.isfinite(array)
    n_bad = int(bad.sum())
    if n_bad:
        array = np.where(bad, np.float32(0), array)
        if warn:
            warnings.warn(
                f"{source or 'image'}: {n_bad} NaN/Inf voxels ({100 * n_bad / array.size:.3g}%) "
                "were replaced by 0",
                DCEReadWarning,
                stacklevel=3,
            )
    return array


def affine_from_geometry(scale, translate, rotate=None) -> np.ndarray:
    """Inverse of :meth:`DCEVolume.layer_geometry` for the spatial axes (z, y, x) of a layer.

    ``scale``/``translate`` may carry a leading time axis; only the last three entries are used.
    """
    scale = np.asarray(scale, dtype=float)[-3:]
    translate = np.asarray(translate, dtype=float)[-3:]
    rotation = np.eye(3) if rotate is None else np.asarray(rotate, dtype=float)[-3:, -3:]
    linear = rotation @ np.diag(scale)
    flip = np.eye(3)[::-1]
    affine = np.eye(4)
    affine[:3, :3] = flip @ linear @ flip
    affine[:3, 3] = translate[::-1]
    return affine


def keeps_reading_notes(load):
    """Decorate a reader returning a :class:`DCEVolume` (or a tuple starting with one): what it had to
    assume or ignore (:class:`DCEReadWarning`) is warned as usual and also kept in the volume's
    ``metadata["reading_notes"]``, so that a report states it beside the result."""

    @functools.wraps(load)
    def reader(*args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DCEReadWarning)
            out = load(*args, **kwargs)
        volume = out[0] if isinstance(out, tuple) else out
        notes = list(volume.metadata.get("reading_notes") or [])
        for item in caught:
            if issubclass(item.category, DCEReadWarning):
                notes.append(str(item.message))
            warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)
        volume.metadata["reading_notes"] = list(dict.fromkeys(notes))
        return out

    return reader
