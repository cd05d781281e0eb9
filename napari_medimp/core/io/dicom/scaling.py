"""Stored pixel values to image values: Philips private scaling, real-world value mapping, rescale slope."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom.multival
import pydicom.sequence

from ...volume import DCEReadError
from .tags import _float

#: Philips' private scale slope SS: element 0x0E of the block of this private creator in group 2005
_PHILIPS_SCALE = (0x2005, "Philips MR Imaging DD 001", 0x0E)
#: the private per-frame item of Philips enhanced MR (2005,140F): the frame's classic-style header, which
#: holds its scale slope (the per-frame functional groups hold only the display rescaling)
_PHILIPS_FRAME_ITEM = (0x2005, "Philips MR Imaging DD 005", 0x0F)


def _private_element(ds, group: int, creator: str, offset: int):
    """The element at ``offset`` of the private block that ``creator`` owns in ``group``, else None."""
    try:
        block = ds.private_block(group, creator)
    except (KeyError, ValueError):
        return None
    tag = block.get_tag(offset)
    return ds[tag] if tag in ds else None


def _private_float(ds, group: int, creator: str, offset: int) -> float | None:
    """A float private element (its value, or the raw little-endian bytes of an implicit VR file)."""
    item = _private_element(ds, group, creator, offset)
    if item is None:
        return None
    value = item.value
    if isinstance(value, bytes):
        if len(value) < 4:
            return None
        value = float(np.frombuffer(value[:4], "<f4")[0])
    elif isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0] if value else None
    return _float(value)


def _philips_frame_item(group):
    """The Philips private per-frame item (2005,140F) of a functional group item, else None."""
    sequence = _private_element(group, *_PHILIPS_FRAME_ITEM) if group is not None else None
    value = getattr(sequence, "value", None)
    return value[0] if isinstance(value, pydicom.sequence.Sequence) and len(value) else None


def _philips_scale_slope(ds, groups=()) -> float | None:
    """Philips' private scale slope of an image: in the private per-frame item of its functional groups
    (``groups``: the frame's, then the shared one), else in the header itself; None when absent or 0."""
    for source in [*(_philips_frame_item(group) for group in groups), ds]:
        if source is not None:
            scale = _private_float(source, *_PHILIPS_SCALE)
            if scale is not None:
                return scale or None
    return None


def _given_number(ds, tag: str, default: float, where: tuple[Path, str] | None, nonzero: bool = False) -> float:
    """A numeric tag of ``ds``, ``default`` when absent; a value that is present but not a usable number
    (NaN, text, a zero slope) is refused naming the file: the stored values cannot be converted."""
    raw = ds.get(tag)
    if raw is None or str(raw).strip() == "":
        return default
    value = _float(raw)
    if value is None or (nonzero and value == 0):
        path, label = where or (Path("?"), "image")
        raise DCEReadError(path, f"{label}: {tag} is {str(raw).strip()!r}, not a usable number; the stored "
                                 "pixel values cannot be turned into image values")
    return value


def _scaling(ds, rwv_item=None, where: tuple[Path, str] | None = None,
             philips_scale: float | None = None) -> tuple[float, float, str]:
    """(slope, intercept, what they are) turning stored pixel values into the values the reader returns.

    Philips' private scale slope gives the scanner's floating-point values, which stay comparable across
    images whose display rescaling differs (as dcm2niix does by default); else a real-world value mapping;
    else the rescale slope and intercept; else the stored values. ``where``: (file, image label) named when
    a slope or intercept is present but unusable. ``philips_scale``: the scale slope SS when it was found
    outside ``ds`` (an enhanced file's per-frame private item); the value is then FP = (SV * RS + RI) / (RS * SS)
    with the stored value SV, rescale slope RS and intercept RI, dcm2niix's "Philips precise float" scaling.
    """
    rescale_slope = _given_number(ds, "RescaleSlope", 1.0, where, nonzero=True)
    rescale_intercept = _given_number(ds, "RescaleIntercept", 0.0, where)
    if "philips" in str(ds.get("Manufacturer", "")).lower():
        scale = philips_scale or _philips_scale_slope(ds)
        if scale:
            return (1.0 / scale, rescale_intercept / (rescale_slope * scale),
                    "Philips floating-point values (private scale slope)")
    mapping = rwv_item if rwv_item is not None else (ds.get("RealWorldValueMappingSequence") or [None])[0]
    if mapping is not None and mapping.get("RealWorldValueSlope") is not None:
        units = mapping.get("MeasurementUnitsCodeSequence")
        unit = str(units[0].get("CodeValue", "")) if units else ""
        return (_given_number(mapping, "RealWorldValueSlope", 1.0, where, nonzero=True),
                _given_number(mapping, "RealWorldValueIntercept", 0.0, where),
                f"real-world value mapping{f' ({unit})' if unit else ''}")
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return rescale_slope, rescale_intercept, "rescale slope and intercept"
    return 1.0, 0.0, "stored values (no rescaling in the files)"
