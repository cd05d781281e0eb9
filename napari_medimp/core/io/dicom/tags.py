"""Values of DICOM tags as numbers: decimal strings, vectors, dates and times; the metadata kept with a volume."""

from __future__ import annotations

import datetime as _dt
import warnings
from pathlib import Path

import numpy as np
from pydicom.valuerep import DA, DT, TM

from ...volume import DCEReadError

_DAY_S = 86400.0


def _parsed(kind, text: str):
    """``text`` as pydicom's DA, TM or DT value (a date, time or datetime), None when it is not one."""
    if not text:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns before changing a leap second 60 to 59
        try:
            return kind(text)
        except (ValueError, TypeError, OverflowError):
            return None


def _seconds_of_day(clock: _dt.time) -> float:
    return clock.hour * 3600 + clock.minute * 60 + clock.second + clock.microsecond / 1e6


def _tm_seconds(value) -> float | None:
    """Seconds since midnight of a DICOM TM ('HHMMSS.FFFFFF', also the old ACR-NEMA 'HH:MM:SS')."""
    clock = _parsed(TM, str(value).strip().replace(":", ""))
    return None if clock is None else _seconds_of_day(clock)


def _da_seconds(value) -> float | None:
    """Seconds from day 1 of year 1 to the start of a DICOM DA ('YYYYMMDD', also the old 'YYYY.MM.DD')."""
    day = _parsed(DA, str(value).strip())
    return None if day is None else float(day.toordinal()) * _DAY_S


def _dt_seconds(value) -> float | None:
    """Seconds of a DICOM DT ('YYYYMMDDHHMMSS.FFFFFF&ZZXX') on the scale of :func:`_da_seconds`; the UTC
    offset is ignored (the times of one exam share it)."""
    stamp = _parsed(DT, str(value).strip())
    if stamp is None:
        return None
    return float(stamp.date().toordinal()) * _DAY_S + _seconds_of_day(stamp.time())


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
