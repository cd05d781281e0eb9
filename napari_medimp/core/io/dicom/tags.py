"""Values of DICOM tags as numbers: decimal strings, vectors, dates and times; the metadata kept with a volume."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np

from ...volume import DCEReadError


def _tm_seconds(value) -> float | None:
    """Seconds since midnight of a DICOM TM ('HHMMSS.FFFFFF', also the old 'HH:MM:SS')."""
    text = str(value).strip().replace(":", "")
    if len(text) < 2 or not text[:2].isdigit():
        return None
    try:
        hours = int(text[:2])
        minutes = int(text[2:4]) if len(text) >= 4 else 0
        seconds = float(text[4:]) if len(text) > 4 else 0.0
    except ValueError:
        return None
    return hours * 3600 + minutes * 60 + seconds


def _da_seconds(value) -> float | None:
    text = str(value).strip().replace(".", "")
    try:
        return float(_dt.date(int(text[:4]), int(text[4:6]), int(text[6:8])).toordinal()) * 86400
    except (ValueError, IndexError):
        return None


def _dt_seconds(value) -> float | None:
    """Seconds of a DICOM DT ('YYYYMMDDHHMMSS.FFFFFF&ZZXX'); the UTC offset is ignored."""
    text = str(value).strip()
    for sign in "+-":
        if sign in text[8:]:
            text = text[: 8 + text[8:].index(sign)]
    day = _da_seconds(text[:8])
    if day is None:
        return None
    clock = _tm_seconds(text[8:]) if len(text) > 8 else 0.0
    return None if clock is None else day + clock


def _acquisition_seconds(ds) -> float | None:
    if ds.get("AcquisitionDateTime"):
        return _dt_seconds(ds.AcquisitionDateTime)
    if not ds.get("AcquisitionTime"):
        return None
    clock = _tm_seconds(ds.AcquisitionTime)
    day = _da_seconds(ds.AcquisitionDate) if ds.get("AcquisitionDate") else None
    return clock if clock is None or day is None else day + clock


def _float(value, default: float | None = None) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if np.isfinite(out) else default


def _vector(path: Path, label: str, value, n: int, tag: str) -> np.ndarray:
    try:
        vec = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        vec = np.array([])
    if vec.shape != (n,) or not np.all(np.isfinite(vec)):
        raise DCEReadError(path, f"{label}: {tag} must hold {n} numbers, found {value!r}")
    return vec


def _metadata(ds, **extra) -> dict:
    tags = {
        "series_description": "SeriesDescription",
        "modality": "Modality",
        "manufacturer": "Manufacturer",
        "model": "ManufacturerModelName",
        "patient_id": "PatientID",
        "study_date": "StudyDate",
        "study_uid": "StudyInstanceUID",
        "sop_class_uid": "SOPClassUID",
        "repetition_time_ms": "RepetitionTime",
        "echo_time_ms": "EchoTime",
        "flip_angle_deg": "FlipAngle",
        "field_strength_t": "MagneticFieldStrength",
    }
    meta = {"format": "dicom"}
    for key, tag in tags.items():
        value = ds.get(tag)
        if value is None or value == "":
            continue
        meta[key] = _float(value) if key.endswith(("_ms", "_deg", "_t")) else str(value)
    meta.update(extra)
    return meta
