"""One preprocessing chain for training and inference: DCE volume -> model input tensor.

A model never sees data prepared differently than it was trained on: the :class:`PreprocessConfig`
used for training is saved inside the model file and :func:`prepare` is the only way images reach a
model, in ``src_train`` as in the viewer.

Axis conventions
----------------
* Source volumes (:class:`~napari_medimp.core.volume.DCEVolume`) are arrays ``(t, z, y, x)`` with a
  NIfTI affine mapping voxel ``(x, y, z)`` to RAS mm. ROI boxes (:class:`RoiBox`) index the source
  array in ``(z, y, x)`` order, half-open.
* MONAI works on channel-first arrays whose spatial axes follow the NIfTI affine, i.e. ``(C, x, y, z)``;
  the crop is transposed to that order, carried through the MONAI chain as a ``MetaTensor`` and
  transposed back at the end.
* The model input (:attr:`PreparedInput.tensor`) is ``float32 (C, z, y, x)`` = PyTorch's ``(C, D, H, W)``
  on a RAS grid: index ``z`` runs Inferior->Superior, ``y`` Posterior->Anterior, ``x`` Left->Right, with
  voxel size ``target_spacing`` (``pad_crop``) and shape ``input_size``, both given in ``(z, y, x)``.
  :attr:`PreparedInput.input_affine` maps a model voxel ``(x, y, z, 1)`` (NIfTI order) to RAS mm.

Pipeline of :func:`prepare`: read the frames needed by the phase selectors (one at a time, through
``volume.frame``), crop the ROI, build one channel per selector, compute the intensity normalisation
on the ROI at source resolution, anti-alias where the target grid is coarser, then the MONAI chain
``Orientation(RAS) -> Spacing -> NormalizeIntensity -> clip -> ResizeWithPadOrCrop(input_size)``.
``Spacing`` resamples once, to ``target_spacing`` (``resize_mode="pad_crop"``) or to the voxel size
that makes the ROI fill ``input_size`` (``"resize"``), so every model voxel has an exact affine.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from .configs import strict_from_dict
from .memory import check_memory
from .paper import PAPER_INPUT_SIZE
from .volume import DCEVolume

if TYPE_CHECKING:
    import torch

__all__ = [
    "PAPER_INPUT_SIZE",
    "PREPROCESS_VERSION",
    "PreparedInput",
    "PreprocessConfig",
    "PreprocessWarning",
    "RoiBox",
    "find_kidney_roi",
    "parse_phase",
    "prepare",
    "prepare_batch",
    "roi_translate_offset",
    "select_frames",
]

#: bump when a change alters the tensors produced for a given config (saved inside model files)
PREPROCESS_VERSION = 1


PHASE_KEYWORDS = ("baseline", "first-pass", "peak", "late")
NORMALIZATION_MODES = ("robust", "zscore", "none")
RESIZE_MODES = ("pad_crop", "resize")
_TIME_SELECTOR = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*s\s*$", re.IGNORECASE)
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


class PreprocessWarning(UserWarning):
    """Preprocessing went ahead but lost something the user should know about (e.g. a cropped ROI)."""


# --------------------------------------------------------------------------------------------------
# ROI box
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RoiBox:
    """Voxel box in a source volume, array order ``(z, y, x)``, half-open: ``z0 <= z < z1`` etc."""

    z0: int
    z1: int
    y0: int
    y1: int
    x0: int
    x1: int

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or int(value) != value:
                raise ValueError(f"RoiBox.{f.name} must be an integer, got {value!r}")
            object.__setattr__(self, f.name, int(value))

    @classmethod
    def from_sequence(cls, values: Sequence[int]) -> RoiBox:
        """From ``(z0, z1, y0, y1, x0, x1)``."""
        if isinstance(values, RoiBox):
            return values
        values = list(values)
        if len(values) != 6:
            raise ValueError(f"a ROI box needs 6 numbers (z0, z1, y0, y1, x0, x1), got {values}")
        return cls(*values)

    @classmethod
    def full(cls, shape_zyx: Sequence[int]) -> RoiBox:
        """The whole grid of a volume of spatial shape ``(z, y, x)``."""
        z, y, x = (int(s) for s in shape_zyx[-3:])
        return cls(0, z, 0, y, 0, x)

    @property
    def start(self) -> tuple[int, int, int]:
        """First voxel index ``(z0, y0, x0)``."""
        return (self.z0, self.y0, self.x0)

    @property
    def stop(self) -> tuple[int, int, int]:
        return (self.z1, self.y1, self.x1)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.z1 - self.z0, self.y1 - self.y0, self.x1 - self.x0)

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return (slice(self.z0, self.z1), slice(self.y0, self.y1), slice(self.x0, self.x1))

    @property
    def is_empty(self) -> bool:
        return any(s <= 0 for s in self.shape)

    def to_list(self) -> list[int]:
        return [self.z0, self.z1, self.y0, self.y1, self.x0, self.x1]

    def contains(self, index_zyx: Sequence[int]) -> bool:
        return all(a <= int(i) < b for i, a, b in zip(index_zyx, self.start, self.stop, strict=True))

    def clipped(self, shape_zyx: Sequence[int]) -> RoiBox:
        """This box intersected with a grid of spatial shape ``(z, y, x)`` (may become empty)."""
        lo = [min(max(a, 0), int(s)) for a, s in zip(self.start, shape_zyx[-3:], strict=True)]
        hi = [min(max(b, 0), int(s)) for b, s in zip(self.stop, shape_zyx[-3:], strict=True)]
        return RoiBox(lo[0], hi[0], lo[1], hi[1], lo[2], hi[2])

    def validate(self, shape_zyx: Sequence[int]) -> RoiBox:
        """Raise ``ValueError`` (naming box and shape) unless the box is non-empty and inside the grid."""
        shape = tuple(int(s) for s in shape_zyx[-3:])
        if self.is_empty:
            raise ValueError(
                f"ROI box {self.to_list()} (z0, z1, y0, y1, x0, x1) is empty (size {self.shape}); "
                f"the volume has shape (z, y, x) = {shape}"
            )
        if any(a < 0 for a in self.start) or any(b > s for b, s in zip(self.stop, shape, strict=True)):
            raise ValueError(
                f"ROI box {self.to_list()} (z0, z1, y0, y1, x0, x1) lies outside the volume of shape "
                f"(z, y, x) = {shape}; draw or give it inside the image"
            )
        return self


def roi_translate_offset(roi: RoiBox) -> tuple[int, int, int]:
    """First voxel index ``(z0, y0, x0)`` of a ROI box in the source grid.

    A layer holding data on the ROI grid sits at ``source translate + offset * spacing`` (axis-aligned
    volumes; in general ``affine @ (x0, y0, z0, 1)``, see :attr:`PreparedInput.roi_affine`).
    """
    return roi.start


def _index_to_xyz_affine(affine: np.ndarray, start_zyx: Sequence[int]) -> np.ndarray:
    """NIfTI affine of a sub-grid starting at array index ``start_zyx``."""
    shift = np.eye(4)
    shift[:3, 3] = np.asarray(start_zyx, dtype=float)[::-1]
    return np.asarray(affine, dtype=float) @ shift


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------
def parse_phase(selector: int | str) -> tuple[str, Any]:
    """Validate one phase selector; returns ``(kind, value)``.

    ``kind`` is ``"index"`` (value: int, negative counts from the end), ``"baseline"``, ``"first-pass"``,
    ``"peak"``,
    ``"late"`` (value ``None``) or ``"time"`` (value: seconds, from strings like ``"60s"``).
    """
    if isinstance(selector, bool):
        raise ValueError(f"phase selector {selector!r} is not a frame index, keyword or time")
    if isinstance(selector, (int, np.integer)):
        return ("index", int(selector))
    if isinstance(selector, str):
        text = selector.strip().lower()
        if text in PHASE_KEYWORDS:
            return (text, None)
        if re.fullmatch(r"-?[0-9]+", text):
            return ("index", int(text))
        match = _TIME_SELECTOR.match(text)
        if match:
            return ("time", float(match.group(1)))
    raise ValueError(
        f"phase selector {selector!r} not understood: use a frame index (int), "
        f"one of {PHASE_KEYWORDS}, or a time in seconds such as '60s'"
    )


def _normalize_selector(selector: int | str) -> int | str:
    kind, value = parse_phase(selector)
    if kind == "index":
        return value
    if kind == "time":
        return f"{value:g}s"
    return kind


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything that decides what a model sees; JSON-safe through :meth:`to_dict` / :meth:`from_dict`.

    Attributes
    ----------
    target_spacing
        Voxel size of the model grid in mm, ``(z, y, x)`` = (S-I, A-P, R-L) after RAS orientation.
    input_size
        Model grid shape ``(z, y, x)``. The paper used ``PAPER_INPUT_SIZE``; the default is CPU-sized.
    phases
        One channel per selector: frame index (int), ``"baseline"`` (mean of the first
        ``baseline_frames`` frames), ``"first-pass"`` (the first frame where the ROI's mean signal
        reaches a local maximum at least half of its largest rise over the baseline: the first-pass
        peak, before the tubules and the collecting system fill), ``"peak"`` (frame of maximum mean
        signal inside the ROI: in a kidney usually a late, excretory frame), ``"late"`` (last frame)
        or a time like ``"60s"`` (nearest frame by ``frame_times``).
    baseline_frames
        Number of pre-contrast frames averaged for ``"baseline"`` and for the normalisation offset
        (capped by the number of frames); set it to the protocol's pre-contrast acquisitions.
    normalization
        ``"robust"``: subtract the median of the baseline image inside the ROI and divide by the
        ``percentile`` of the baseline-subtracted ROI signal over all selected phases jointly (so the
        relative enhancement between phases is kept); invariant to a global intensity gain.
        ``"zscore"``: joint mean/std of the selected phases in the ROI. ``"none"``: raw intensities.
    percentile
        High percentile used by ``"robust"``.
    clip_range
        Normalised values are clipped to this ``(low, high)`` range (``None``: no clipping; raw
        intensities, ``normalization="none"``, are never clipped).
    roi_margin_mm
        Margin added around an automatically found kidney.
    resize_mode
        ``"pad_crop"`` keeps the physical size (centre pad/crop to ``input_size`` at
        ``target_spacing``); ``"resize"`` resamples the ROI to the voxel size that makes it fill
        ``input_size`` (anisotropic stretch; ``target_spacing`` is then unused).
    antialias
        Gaussian pre-filter (sigma = (factor - 1) / 2 voxels) along axes that are downsampled.
    version
        :data:`PREPROCESS_VERSION` of the code that wrote the config.
    """

    target_spacing: tuple[float, float, float] = (4.0, 2.5, 2.5)
    input_size: tuple[int, int, int] = (32, 64, 64)
    phases: tuple[int | str, ...] = ("peak",)
    baseline_frames: int = 2
    normalization: str = "robust"
    percentile: float = 99.5
    clip_range: tuple[float, float] | None = (-1.0, 2.0)
    roi_margin_mm: float = 10.0
    resize_mode: str = "pad_crop"
    antialias: bool = True
    version: int = PREPROCESS_VERSION

    def __post_init__(self):
        def setattr_(name, value):
            object.__setattr__(self, name, value)

        spacing = tuple(float(s) for s in self.target_spacing)
        if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"target_spacing must be 3 positive numbers (z, y, x) in mm, got {self.target_spacing}")
        size = tuple(int(s) for s in self.input_size)
        if len(size) != 3 or not all(s > 0 for s in size) or list(size) != list(self.input_size):
            raise ValueError(f"input_size must be 3 positive integers (z, y, x), got {self.input_size}")
        phases = (self.phases,) if isinstance(self.phases, (str, int)) else tuple(self.phases)
        if not phases:
            raise ValueError("phases must name at least one phase (one phase = one channel)")
        phases = tuple(_normalize_selector(p) for p in phases)
        if int(self.baseline_frames) < 1:
            raise ValueError(f"baseline_frames must be >= 1, got {self.baseline_frames}")
        if self.normalization not in NORMALIZATION_MODES:
            raise ValueError(f"normalization must be one of {NORMALIZATION_MODES}, got {self.normalization!r}")
        if not 50.0 < float(self.percentile) <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")
        clip = self.clip_range
        if clip is not None:
            clip = tuple(float(c) for c in clip)
            if len(clip) != 2 or not clip[0] < clip[1]:
                raise ValueError(f"clip_range must be (low, high) with low < high, got {self.clip_range}")
        if not (math.isfinite(float(self.roi_margin_mm)) and float(self.roi_margin_mm) >= 0):
            raise ValueError(f"roi_margin_mm must be >= 0, got {self.roi_margin_mm}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if int(self.version) > PREPROCESS_VERSION:
            raise ValueError(
                f"preprocessing config version {self.version} was written by a newer napari-medimp "
                f"(this one knows up to {PREPROCESS_VERSION}); upgrade to use this model"
            )
        setattr_("target_spacing", spacing)
        setattr_("input_size", size)
        setattr_("phases", phases)
        setattr_("baseline_frames", int(self.baseline_frames))
        setattr_("percentile", float(self.percentile))
        setattr_("clip_range", clip)
        setattr_("roi_margin_mm", float(self.roi_margin_mm))
        setattr_("antialias", bool(self.antialias))
        setattr_("version", int(self.version))

    @property
    def n_channels(self) -> int:
        return len(self.phases)

    def to_dict(self) -> dict:
        """JSON-safe dict (lists instead of tuples)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`. Unknown keys are refused: they could change what a model sees."""
        return strict_from_dict(cls, data, "preprocessing option(s)")


# --------------------------------------------------------------------------------------------------
# reading frames
# --------------------------------------------------------------------------------------------------
def baseline_and_robust_peak(volume: DCEVolume, roi: RoiBox, baseline_frames: int = 2
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Inside ``roi``: the mean of the first ``baseline_frames`` frames (at least one, leaving one after),
    and the robust maximum of the frames after them (the second largest value per voxel, so one spiking
    frame does not count; the largest when only one frame follows). Frames are read one at a time."""
    n = volume.n_frames
    nb = max(1, min(int(baseline_frames), n - 1))
    baseline = sum(_read_crop(volume, t, roi).astype(np.float64) for t in range(nb)) / nb
    first = second = None
    for t in range(nb, n):
        frame = _read_crop(volume, t, roi)
        if first is None:
            first, second = frame.copy(), frame.copy()
            continue
        second = np.maximum(second, np.minimum(first, frame))
        first = np.maximum(first, frame)
    return baseline, (second if n - nb >= 2 else first)


def _read_crop(volume: DCEVolume, index: int, roi: RoiBox) -> np.ndarray:
    """One frame's ROI as float32, NaN/Inf replaced by 0 (readers already do this; be defensive)."""
    crop = np.array(volume.frame(index)[roi.slices], dtype=np.float32)
    if not np.isfinite(crop).all():
        crop = np.nan_to_num(crop, nan=0.0, posinf=0.0, neginf=0.0)
    return crop


def _check_frame(kind: str, selector, index: int, n_frames: int) -> int:
    if not -n_frames <= index < n_frames:
        raise ValueError(
            f"phase selector {selector!r} asks for frame {index} but the series has only "
            f"{n_frames} frame(s) (indices 0..{n_frames - 1})"
        )
    return index % n_frames


def _nearest_time_frame(volume: DCEVolume, selector, seconds: float) -> int:
    times = volume.frame_times
    if times is None:
        raise ValueError(
            f"phase {selector!r} (the frame nearest {seconds:g} s) needs frame times, but this series has none: "
            "open it with its timing (sidecar FrameTimes, DICOM acquisition times or the NIfTI time step), or "
            "use phases given as frame indices or 'baseline' / 'first-pass' / 'peak' / 'late'"
        )
    tolerance = 0.5 * float(np.median(np.diff(times))) if times.size > 1 else 0.0
    if seconds < times[0] - tolerance - 1e-6 or seconds > times[-1] + tolerance + 1e-6:
        raise ValueError(
            f"phase {selector!r} (the frame nearest {seconds:g} s) is beyond the series, which spans "
            f"{times[0]:g}-{times[-1]:g} s over {times.size} frame(s): this is not a dynamic series the model "
            "can read"
        )
    return int(np.argmin(np.abs(times - seconds)))


def select_frames(volume: DCEVolume, config: PreprocessConfig, roi: RoiBox) -> tuple[tuple[int, ...], ...]:
    """Frame indices per channel (``"baseline"`` gives several). ``"peak"`` reads every frame's ROI."""
    crops: dict[int, np.ndarray] = {}
    frames, _ = _select(volume, config, roi, crops)
    return frames


def _select(volume, config, roi, crops) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
    n = volume.n_frames
    baseline = tuple(range(min(config.baseline_frames, n)))
    frames: list[tuple[int, ...]] = []
    for selector in config.phases:
        kind, value = parse_phase(selector)
        if kind == "index":
            frames.append((_check_frame(kind, selector, value, n),))
        elif kind == "baseline":
            frames.append(baseline)
        elif kind == "late":
            frames.append((n - 1,))
        elif kind == "time":
            frames.append((_nearest_time_frame(volume, selector, value),))
        elif kind == "first-pass":
            frames.append((_first_pass_frame(volume, roi, baseline, crops),))
        else:  # peak: frame of maximum mean signal in the ROI; keep only the best crop in memory
            best, best_mean, best_crop = 0, -np.inf, None
            for t in range(n):
                crop = crops.get(t)
                if crop is None:
                    crop = _read_crop(volume, t, roi)
                    if t in baseline:
                        crops[t] = crop
                mean = float(crop.mean(dtype=np.float64))
                if mean > best_mean:
                    best, best_mean, best_crop = t, mean, crop
            crops[best] = best_crop
            frames.append((best,))
    return tuple(frames), baseline


def first_pass_index(curve: Sequence[float], n_baseline: int) -> int:
    """Index of the first-pass peak of a mean-signal curve: the first local maximum (after the baseline
    frames) whose rise over the baseline mean is at least half of the curve's largest rise; the largest
    rise itself when the curve never falls back (a monotone curve peaks at its end)."""
    values = np.asarray(curve, dtype=np.float64)
    n = values.size
    base = float(values[:max(1, min(n_baseline, n - 1))].mean())
    rise = values - base
    top = float(rise.max())
    if n < 3 or top <= 0:
        return int(np.argmax(values))
    for t in range(max(1, n_baseline), n - 1):
        if rise[t] >= 0.5 * top and values[t] >= values[t - 1] and values[t] > values[t + 1]:
            return t
    return int(np.argmax(values))


def _first_pass_frame(volume: DCEVolume, roi: RoiBox, baseline: Sequence[int], crops: dict) -> int:
    """:func:`first_pass_index` of the ROI's mean curve. One crop at a time is held while walking the frames
    (as for ``"peak"``), so the chosen frame is read again when it was not cached: one more frame read
    rather than every frame's crop in memory."""
    means = []
    for t in range(volume.n_frames):
        crop = crops.get(t)
        if crop is None:
            crop = _read_crop(volume, t, roi)
        means.append(float(crop.mean(dtype=np.float64)))
    best = first_pass_index(means, len(baseline))
    if best not in crops:
        crops[best] = _read_crop(volume, best, roi)
    return best


# --------------------------------------------------------------------------------------------------
# automatic kidney ROI
# --------------------------------------------------------------------------------------------------
def _otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centers = 0.5 * (edges[:-1] + edges[1:])
    weight = hist.astype(float)
    w0 = np.cumsum(weight)
    w1 = w0[-1] - w0
    m0 = np.cumsum(weight * centers)
    mean0 = m0 / np.maximum(w0, 1e-12)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centers[int(np.argmax(between[:-1]))]) if bins > 1 else float(centers[0])


def _margin_voxels(spacing_zyx: Sequence[float], margin_mm: float) -> np.ndarray:
    return np.ceil(margin_mm / np.asarray(spacing_zyx, dtype=float) - 1e-9).astype(int)


def find_kidney_roi(
    volume: DCEVolume,
    *,
    margin_mm: float = 10.0,
    baseline_frames: int = 2,
    smooth_mm: float = 3.0,
) -> RoiBox:
    """Box around the largest strongly enhancing region (the graft), in source ``(z, y, x)`` indices.

    Enhancement map = robust maximum over the post-baseline frames (the second largest value per
    voxel, so one spiking frame does not count) minus the mean of the first ``baseline_frames``
    frames; Gaussian-smoothed (``smooth_mm``), thresholded with Otsu's method, largest 6-connected
    component kept, bounding box grown by ``margin_mm`` and clipped to the volume. Frames are read one
    at a time. Raises ``ValueError`` when the series has fewer than 2 frames or nothing enhances.
    """
    n = volume.n_frames
    shape = volume.shape[1:]
    if n < 2:
        raise ValueError(
            f"automatic kidney detection needs a dynamic series (>= 2 frames), this volume has {n}; "
            "draw a ROI box instead"
        )
    baseline, robust_max = baseline_and_robust_peak(volume, RoiBox.full(shape), baseline_frames)
    enhancement = robust_max - baseline
    sigma = [smooth_mm / s for s in volume.spacing]
    enhancement = ndimage.gaussian_filter(enhancement, sigma=sigma, mode="nearest")
    if not np.isfinite(enhancement).all() or float(enhancement.max()) <= 0 or np.ptp(enhancement) <= 0:
        raise ValueError(
            f"no enhancing region found in {volume.source or 'the volume'}: the series has no signal "
            "change after the baseline frames; draw a ROI box instead"
        )
    threshold = max(_otsu_threshold(enhancement.ravel()), 0.0)
    labels, count = ndimage.label(enhancement > threshold)
    if count == 0:
        raise ValueError("no enhancing region found above the Otsu threshold; draw a ROI box instead")
    sizes = np.bincount(labels.ravel())[1:]
    largest = int(np.argmax(sizes)) + 1
    box = ndimage.find_objects((labels == largest).astype(np.int8))[0]
    margin = _margin_voxels(volume.spacing, margin_mm)
    lo = [max(0, sl.start - m) for sl, m in zip(box, margin, strict=True)]
    hi = [min(s, sl.stop + m) for sl, m, s in zip(box, margin, shape, strict=True)]
    return RoiBox(lo[0], hi[0], lo[1], hi[1], lo[2], hi[2])


# --------------------------------------------------------------------------------------------------
# prepared input
# --------------------------------------------------------------------------------------------------
@dataclass
class PreparedInput:
    """A model-ready tensor and the geometry that links it back to the source volume.

    Attributes
    ----------
    tensor
        ``torch.float32`` of shape ``(C, z, y, x)`` = ``(C,) + config.input_size``; one channel per
        phase selector; RAS grid (``x`` -> Right, ``y`` -> Anterior, ``z`` -> Superior; an oblique
        source keeps its small rotation, which ``input_affine`` carries).
    input_affine
        4x4 NIfTI affine of the model grid: model voxel ``(x, y, z, 1)`` -> RAS mm. (Tensor element
        ``tensor[c, k, j, i]`` sits at ``input_affine @ (i, j, k, 1)``.)
    roi
        The ROI box used, in source ``(z, y, x)`` indices.
    source_affine, source_shape
        Affine and spatial shape ``(z, y, x)`` of the source volume.
    frame_indices
        Source frames per channel (``"baseline"`` lists the averaged frames).
    config
        The :class:`PreprocessConfig` that produced the tensor.
    intensity_offset, intensity_scale
        ``tensor = clip((signal - offset) / scale)`` (before padding).
    """

    tensor: torch.Tensor
    input_affine: np.ndarray
    roi: RoiBox
    source_affine: np.ndarray
    source_shape: tuple[int, int, int]
    frame_indices: tuple[tuple[int, ...], ...]
    config: PreprocessConfig
    intensity_offset: float = 0.0
    intensity_scale: float = 1.0

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(str(p) for p in self.config.phases)

    @property
    def roi_affine(self) -> np.ndarray:
        """NIfTI affine of the ROI sub-grid of the source (voxel ``(x, y, z)`` of the crop -> RAS mm)."""
        return _index_to_xyz_affine(self.source_affine, self.roi.start)

    def roi_translate_offset(self) -> tuple[int, int, int]:
        """First voxel ``(z0, y0, x0)`` of the ROI: translate a ROI-grid layer by ``offset * spacing``."""
        return roi_translate_offset(self.roi)

    def to_source(self, map_zyx, order: int = 1) -> tuple[np.ndarray, RoiBox]:
        """Resample a map on the model grid ``(z, y, x)`` onto the source voxel grid inside the ROI.

        Returns ``(array of shape roi.shape, roi)``: same spacing and orientation as the source volume,
        starting at source index ``roi.start``; linear interpolation (``order``), 0 outside the model
        grid. Leading singleton axes (batch, channel) and torch tensors are accepted.
        """
        array = _to_numpy(map_zyx)
        while array.ndim > 3 and array.shape[0] == 1:
            array = array[0]
        expected = tuple(int(s) for s in self.tensor.shape[-3:])
        if array.shape != expected:
            raise ValueError(f"map has shape {array.shape}; expected the model grid (z, y, x) = {expected}")
        # source ROI voxel (x, y, z) -> world -> model voxel (x, y, z); then express in (z, y, x) order
        to_model = np.linalg.inv(self.input_affine) @ self.roi_affine
        flip = np.eye(3)[::-1]
        matrix = flip @ to_model[:3, :3] @ flip
        offset = flip @ to_model[:3, 3]
        out = ndimage.affine_transform(
            np.asarray(array, dtype=np.float32), matrix, offset=offset, output_shape=self.roi.shape,
            order=order, mode="constant", cval=0.0,
        )
        return out.astype(np.float32, copy=False), self.roi

    def to_source_volume(self, map_zyx, order: int = 1) -> np.ndarray:
        """Like :meth:`to_source`, placed in a zero array of the full source shape ``(z, y, x)``."""
        crop, roi = self.to_source(map_zyx, order=order)
        full = np.zeros(self.source_shape, dtype=np.float32)
        full[roi.slices] = crop
        return full


def _to_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _intensity_stats(channels: np.ndarray, baseline_image: np.ndarray, config: PreprocessConfig,
                     where: str) -> tuple[float, float]:
    """``(offset, scale)`` of the normalisation, computed on the ROI at source resolution."""
    values = channels.astype(np.float64)
    reference = max(float(np.abs(values).max()), float(np.abs(baseline_image).max()))
    if np.ptp(values) == 0 and np.ptp(baseline_image) == 0:
        raise ValueError(
            f"the ROI {where} has no signal: every voxel of the selected phases equals {values.flat[0]:g}; "
            "check the ROI box and the image"
        )
    if config.normalization == "none":
        return 0.0, 1.0
    if config.normalization == "zscore":
        offset, scale = float(values.mean()), float(values.std())
    else:
        offset = float(np.median(baseline_image))
        enhanced = values - offset
        scale = float(np.percentile(enhanced, config.percentile))
        if scale <= 1e-6 * reference:  # no positive enhancement: fall back to the magnitude
            scale = float(np.percentile(np.abs(enhanced), config.percentile))
    if not scale > 1e-6 * reference:
        raise ValueError(
            f"the ROI {where} has no signal to normalise ({config.normalization} scale {scale:g}); "
            "check the ROI box and the image"
        )
    return offset, scale


def _world_axes(affine: np.ndarray) -> list[int]:
    """World axis (0=R, 1=A, 2=S) nearest to each source index axis x, y, z."""
    linear = np.asarray(affine, dtype=float)[:3, :3]
    return [int(np.argmax(np.abs(linear[:, j]))) for j in range(3)]


def _grid_spacing(config: PreprocessConfig, affine: np.ndarray, roi: RoiBox) -> tuple[float, float, float]:
    """Voxel size ``(z, y, x)`` of the model grid: ``target_spacing``, or for ``"resize"`` the size that
    makes the ROI's physical extent fill ``input_size``."""
    if config.resize_mode == "pad_crop":
        return config.target_spacing
    sizes = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)  # along x, y, z
    extent_ras = np.zeros(3)
    for j, world_axis in enumerate(_world_axes(affine)):
        extent_ras[world_axis] = roi.shape[::-1][j] * sizes[j]
    return tuple(float(e / n) for e, n in zip(extent_ras[::-1], config.input_size, strict=True))


def _antialias_sigmas(affine: np.ndarray, spacing_zyx: Sequence[float]) -> list[float]:
    """Gaussian sigma (voxels) per source array axis ``(z, y, x)`` before downsampling to ``spacing_zyx``."""
    sizes = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)  # along x, y, z
    target_ras = np.asarray(spacing_zyx, dtype=float)[::-1]
    sigmas_xyz = [max(0.0, (target_ras[w] / sizes[j] - 1.0) / 2.0) for j, w in enumerate(_world_axes(affine))]
    return sigmas_xyz[::-1]


def prepare(volume: DCEVolume, config: PreprocessConfig | None = None,
            roi: RoiBox | Sequence[int] | None = None) -> PreparedInput:
    """Turn a DCE volume into the model input described by ``config`` (see the module docstring).

    ``roi``: a :class:`RoiBox` (or 6 ints ``z0, z1, y0, y1, x0, x1``) in source indices; ``None`` finds
    the graft with :func:`find_kidney_roi`. Only the frames the selectors need are read (``"peak"``
    and automatic ROI detection read all frames, one at a time).
    Raises ``ValueError`` for an empty box or one outside the volume, a selector beyond the series,
    and a ROI without signal.
    """
    import torch
    from monai.data import MetaTensor
    from monai.transforms import NormalizeIntensity, Orientation, ResizeWithPadOrCrop, Spacing

    config = config or PreprocessConfig()
    shape = volume.shape[1:]
    if roi is None:
        roi = find_kidney_roi(volume, margin_mm=config.roi_margin_mm, baseline_frames=config.baseline_frames)
    roi = RoiBox.from_sequence(roi).validate(shape)

    crops: dict[int, np.ndarray] = {}
    frames, baseline = _select(volume, config, roi, crops)

    def crop(t: int) -> np.ndarray:
        if t not in crops:
            crops[t] = _read_crop(volume, t, roi)
        return crops[t]

    channels = np.stack([np.mean([crop(t) for t in group], axis=0) for group in frames]).astype(np.float32)
    if config.normalization == "robust":
        baseline_image = np.mean([crop(t) for t in baseline], axis=0, dtype=np.float64)
    else:
        baseline_image = channels
    crops.clear()
    where = f"{roi.to_list()} of {volume.source or 'the volume'}"
    offset, scale = _intensity_stats(channels, baseline_image, config, where)

    spacing = _grid_spacing(config, volume.affine, roi)
    resampled = float(np.prod(roi.shape, dtype=np.float64)) * float(np.prod(volume.spacing)) / float(np.prod(spacing))
    # MONAI's resampling holds the input, the grid and the output: about three float32 copies
    check_memory(3 * 4 * channels.shape[0] * max(resampled, float(np.prod(config.input_size))),
                 f"resampling box {roi.to_list()} of {volume.source or 'the image'} (voxels of "
                 f"{' x '.join(f'{s:g}' for s in volume.spacing)} mm) to {' x '.join(f'{s:g}' for s in spacing)} mm")
    if config.antialias:
        sigmas = _antialias_sigmas(volume.affine, spacing)
        if any(s > 0 for s in sigmas):
            for c in range(channels.shape[0]):
                channels[c] = ndimage.gaussian_filter(channels[c], sigma=sigmas, mode="nearest")

    roi_affine = _index_to_xyz_affine(volume.affine, roi.start)
    data = MetaTensor(
        torch.from_numpy(np.ascontiguousarray(channels.transpose(0, 3, 2, 1))),  # (C, x, y, z)
        affine=torch.as_tensor(roi_affine, dtype=torch.float64),
    )
    data = Orientation(axcodes="RAS", labels=_RAS_LABELS)(data)
    data = Spacing(pixdim=spacing[::-1], mode="bilinear", padding_mode="border")(data)
    if config.normalization != "none":
        data = NormalizeIntensity(subtrahend=offset, divisor=scale)(data)
        if config.clip_range is not None:
            data = data.clamp(*config.clip_range)
    size_xyz = config.input_size[::-1]
    too_big = any(s > t + 1 for s, t in zip(data.shape[1:], size_xyz, strict=True))
    if config.resize_mode == "pad_crop" and too_big:
        warnings.warn(
            f"ROI {roi.to_list()} spans {tuple(int(s) for s in data.shape[1:][::-1])} voxels (z, y, x) "
            f"at {config.target_spacing} mm, more than the model input {config.input_size}: "
            "its borders are cropped",
            PreprocessWarning,
            stacklevel=2,
        )
    data = ResizeWithPadOrCrop(spatial_size=size_xyz, mode="constant")(data)

    input_affine = np.asarray(data.affine, dtype=float)
    tensor = data.as_tensor().permute(0, 3, 2, 1).contiguous().to(torch.float32)
    return PreparedInput(
        tensor=tensor,
        input_affine=input_affine,
        roi=roi,
        source_affine=np.asarray(volume.affine, dtype=float).copy(),
        source_shape=tuple(int(s) for s in shape),
        frame_indices=frames,
        config=config,
        intensity_offset=offset,
        intensity_scale=scale,
    )


def prepare_batch(volumes: Sequence[DCEVolume], config: PreprocessConfig | None = None,
                  rois: Sequence[RoiBox | Sequence[int] | None] | None = None) -> torch.Tensor:
    """``torch.float32`` batch ``(B, C, z, y, x)`` of :func:`prepare` tensors (``rois`` per volume)."""
    import torch

    volumes = list(volumes)
    rois = [None] * len(volumes) if rois is None else list(rois)
    if len(rois) != len(volumes):
        raise ValueError(f"{len(volumes)} volumes but {len(rois)} ROI boxes")
    if not volumes:
        raise ValueError("prepare_batch needs at least one volume")
    return torch.stack([prepare(v, config, r).tensor for v, r in zip(volumes, rois, strict=True)])
