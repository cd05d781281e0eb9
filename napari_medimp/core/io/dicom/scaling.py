"""Stored pixel values to image values: Philips private scaling, real-world value mapping, rescale slope."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom.multival

from ...volume import DCEReadError
from .tags import _float

_PHILIPS_CREATOR = "Philips MR Imaging DD 001"


def _private_float(ds, group: int, element: int, creator: str) -> float | None:
    """A float private element, found through its private creator (any block), value or raw bytes."""
    for block in range(0x10, 0x100):
        owner = ds.get((group, block))
        if owner is None:
            continue
        if str(owner.value).strip() != creator:
            continue
        item = ds.get((group, (block << 8) | element))
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


def _scaling(ds, rwv_item=None, where: tuple[Path, str] | None = None) -> tuple[float, float, str]:
    """(slope, intercept, what they are) turning stored pixel values into the values the reader returns.

    Philips' private scale slope gives the scanner's floating-point values, which stay comparable across
    images whose display rescaling differs (as dcm2niix does by default); else a real-world value mapping;
    else the rescale slope and intercept; else the stored values. ``where``: (file, image label) named when
    a slope or intercept is present but unusable.
    """
    rescale_slope = _given_number(ds, "RescaleSlope", 1.0, where, nonzero=True)
    rescale_intercept = _given_number(ds, "RescaleIntercept", 0.0, where)
    if "philips" in str(ds.get("Manufacturer", "")).lower():
        scale = _private_float(ds, 0x2005, 0x0E, _PHILIPS_CREATOR)
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
