"""Headers to planes: one 2D image each (a single-frame file, or one frame of an enhanced multi-frame file)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom

from ...volume import DCEReadError
from .mosaic import is_mosaic, mosaic_slices
from .scaling import _philips_frame_item, _philips_scale_slope, _scaling
from .tags import _acquisition_seconds, _dt_seconds, _float, _tm_seconds, _vector


@dataclass
class _Plane:
    """One 2D image: a single-frame file, or one frame of a multi-frame file."""

    path: Path
    frame: int | None
    position: np.ndarray
    row_cos: np.ndarray
    col_cos: np.ndarray
    pixel_spacing: tuple[float, float] | None
    shape: tuple[int, int]
    slope: float = 1.0
    intercept: float = 0.0
    scaling: str = "stored values (no rescaling in the files)"
    times: dict[str, float] = field(default_factory=dict)
    instance: int = 0
    thickness: float | None = None
    gap: float | None = None
    tile: int | None = None  # slice of a Siemens mosaic, in tile order (see :mod:`.mosaic`)

    @property
    def label(self) -> str:
        if self.tile is not None:
            return f"{self.path.name} (mosaic slice {self.tile + 1})"
        return self.path.name if self.frame is None else f"{self.path.name} (frame {self.frame + 1})"


def _cosines(path: Path, label: str, iop) -> tuple[np.ndarray, np.ndarray]:
    vec = _vector(path, label, iop, 6, "ImageOrientationPatient")
    row, col = vec[:3], vec[3:]
    if np.linalg.norm(row) < 0.5 or np.linalg.norm(col) < 0.5 or abs(np.dot(row, col)) > 1e-2:
        raise DCEReadError(path, f"{label}: ImageOrientationPatient {list(vec)} is not two orthogonal unit vectors")
    return row / np.linalg.norm(row), col / np.linalg.norm(col)


def _pixel_spacing(value) -> tuple[float, float] | None:
    if value is None or len(value) != 2:
        return None
    row, col = _float(value[0]), _float(value[1])
    return (row, col) if row and col and row > 0 and col > 0 else None


def _check_image_tags(path: Path, ds) -> tuple[int, int]:
    if "Rows" not in ds or "Columns" not in ds:
        raise DCEReadError(path, "no pixel data (Rows/Columns missing); not an image")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DCEReadError(path, f"colour images (SamplesPerPixel={ds.SamplesPerPixel}) are not supported")
    return int(ds.Rows), int(ds.Columns)


def _missing_position(path: Path, where: str) -> DCEReadError:
    return DCEReadError(
        path, f"DICOM without position tags: {where} lacks ImagePositionPatient/ImageOrientationPatient, "
        "so its slice position is unknown"
    )


def _classic_planes(path: Path, ds) -> list[_Plane]:
    shape = _check_image_tags(path, ds)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames > 1:
        raise DCEReadError(
            path, f"multi-frame file ({n_frames} frames) without per-frame geometry is not supported"
        )
    if ds.get("ImagePositionPatient") is None or ds.get("ImageOrientationPatient") is None:
        raise _missing_position(path, "the file")
    row, col = _cosines(path, path.name, ds.ImageOrientationPatient)
    slope, intercept, scaling = _scaling(ds, where=(path, path.name))
    times = {}
    if ds.get("TemporalPositionIdentifier") is not None:
        times["TemporalPositionIdentifier"] = _float(ds.TemporalPositionIdentifier)
    times["AcquisitionTime"] = _acquisition_seconds(ds)
    if ds.get("TriggerTime") is not None:
        trigger = _float(ds.TriggerTime)
        times["TriggerTime"] = None if trigger is None else trigger / 1000.0
    if ds.get("ContentTime"):
        times["ContentTime"] = _tm_seconds(ds.ContentTime)
    position, resolution = times.get("TemporalPositionIdentifier"), _float(ds.get("TemporalResolution"))
    if position is not None and resolution is not None and resolution > 0:  # TemporalResolution is in ms
        times["TemporalPositionIdentifier x TemporalResolution"] = (position - 1) * resolution / 1000.0
    return [
        _Plane(
            path=path,
            frame=None,
            position=_vector(path, path.name, ds.ImagePositionPatient, 3, "ImagePositionPatient"),
            row_cos=row,
            col_cos=col,
            pixel_spacing=_pixel_spacing(ds.get("PixelSpacing")),
            shape=shape,
            slope=slope,
            intercept=intercept,
            scaling=scaling,
            times={k: v for k, v in times.items() if v is not None},
            instance=int(_float(ds.get("InstanceNumber"), 0)),
            thickness=_float(ds.get("SliceThickness")),
            gap=_float(ds.get("SpacingBetweenSlices")),
        )
    ]


def _enhanced_planes(path: Path, ds) -> list[_Plane]:
    shape = _check_image_tags(path, ds)
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    per_frame = ds.PerFrameFunctionalGroupsSequence
    n_frames = int(ds.get("NumberOfFrames", len(per_frame)) or len(per_frame))
    if len(per_frame) != n_frames:
        raise DCEReadError(
            path, f"NumberOfFrames is {n_frames} but PerFrameFunctionalGroupsSequence has {len(per_frame)} items"
        )

    def lookup(item, sequence: str, tag: str):
        for group in (item, shared):
            if group is not None and group.get(sequence):
                value = group[sequence][0].get(tag)
                if value is not None and value != "":
                    return value
        return None

    philips = "philips" in str(ds.get("Manufacturer", "")).lower()
    planes = []
    for index, item in enumerate(per_frame):
        label = f"frame {index + 1}"
        ipp = lookup(item, "PlanePositionSequence", "ImagePositionPatient")
        iop = lookup(item, "PlaneOrientationSequence", "ImageOrientationPatient")
        if ipp is None or iop is None:
            raise _missing_position(path, label)
        row, col = _cosines(path, label, iop)
        times = {}
        temporal = lookup(item, "FrameContentSequence", "TemporalPositionIndex")
        if temporal is not None:
            times["TemporalPositionIndex"] = _float(temporal)
        stamp = lookup(item, "FrameContentSequence", "FrameAcquisitionDateTime")
        if stamp is not None:
            times["AcquisitionTime"] = _dt_seconds(stamp)
        slope = lookup(item, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = lookup(item, "PixelValueTransformationSequence", "RescaleIntercept")
        frame_ds = pydicom.Dataset()
        frame_ds.Manufacturer = ds.get("Manufacturer", "")
        # Philips: the frame's private item holds its classic header (rescale and private scale slope)
        private = (_philips_frame_item(item) or _philips_frame_item(shared)) if philips else None
        for tag, value in (("RescaleSlope", slope), ("RescaleIntercept", intercept)):
            for fallback in (private, ds):
                if value is None and fallback is not None:
                    value = fallback.get(tag)
            if value is not None:
                setattr(frame_ds, tag, value)
        rwv = next((group.RealWorldValueMappingSequence[0] for group in (item, shared)
                    if group is not None and group.get("RealWorldValueMappingSequence")), None)
        frame_slope, frame_intercept, scaling = _scaling(
            frame_ds, rwv, where=(path, label),
            philips_scale=_philips_scale_slope(ds, (item, shared)) if philips else None)
        planes.append(
            _Plane(
                path=path,
                frame=index,
                position=_vector(path, label, ipp, 3, "ImagePositionPatient"),
                row_cos=row,
                col_cos=col,
                pixel_spacing=_pixel_spacing(lookup(item, "PixelMeasuresSequence", "PixelSpacing")),
                shape=shape,
                slope=frame_slope,
                intercept=frame_intercept,
                scaling=scaling,
                times={k: v for k, v in times.items() if v is not None},
                instance=index,
                thickness=_float(lookup(item, "PixelMeasuresSequence", "SliceThickness")),
                gap=_float(lookup(item, "PixelMeasuresSequence", "SpacingBetweenSlices")),
            )
        )
    return planes


def _mosaic_planes(path: Path, ds) -> list[_Plane]:
    """One plane per slice of a Siemens mosaic: the file's tags, the slice's size and position."""
    (plane,) = _classic_planes(path, ds)
    shape, positions = mosaic_slices(path, ds)
    return [replace(plane, position=position, shape=shape, tile=k, times=dict(plane.times))
            for k, position in enumerate(positions)]


def _planes(path: Path, ds) -> list[_Plane]:
    if ds.get("PerFrameFunctionalGroupsSequence"):
        return _enhanced_planes(path, ds)
    if is_mosaic(ds):
        return _mosaic_planes(path, ds)
    return _classic_planes(path, ds)
