"""An exam's identity: whose it is (patient), which follow-up visit (exam), when (date), and where each was
read; which exam a tissue-label map belongs to; and where each clinical value came from.

This module owns that vocabulary. Everything is read from the data, never guessed:

* the patient: DICOM ``PatientID`` (kept by the DICOM reader as ``patient_id``), a JSON sidecar's
  ``PatientID``, else the cohort's folder name (``patient/exam/...``);
* the exam: a JSON sidecar's ``Exam`` (D15, D30, M3, M12), else the cohort's folder name;
* the date: DICOM ``StudyDate`` and the like, or a sidecar's ``AcquisitionDateTime``, ``StudyDate``...

A NIfTI opened directly reads its sidecar the same way an exam folder does. Two images are of the same
exam when they were read from the same exam folder (or file), or when both state their patient and exam
and these agree (:meth:`ExamIdentity.same_exam`).

Clinical values carry their source (:data:`TYPED`, :func:`table_source` for a line of ``clinical.csv``,
or a sidecar key), which the report prints beside each value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import date, datetime
from pathlib import Path
from typing import Any

from .terms import EXAMS

__all__ = [
    "FOLDER_NAME",
    "TYPED",
    "ExamIdentity",
    "exam_date",
    "labels_mismatch",
    "patient_recorded",
    "sidecars",
    "table_source",
]

#: where a value typed by the user (panel form, command line) comes from
TYPED = "typed"
#: where a patient or exam read from a cohort's folder layout comes from
FOLDER_NAME = "folder name"

#: where a date may be recorded: volume metadata keys (DICOM readers, other readers), then sidecar keys
#: (BIDS ``AcquisitionDateTime``, DICOM-style names), best first
_METADATA_DATE_KEYS = ("exam_date", "acquisition_date", "study_date", "series_date")
_SIDECAR_DATE_KEYS = ("AcquisitionDateTime", "AcquisitionDate", "StudyDate", "SeriesDate", "ContentDate",
                      "StudyDateTime", "ExamDate")
#: where the patient's identifier may be recorded
_METADATA_PATIENT_KEYS = ("patient_id",)
_SIDECAR_PATIENT_KEYS = ("PatientID",)
_SIDECAR_EXAM_KEYS = ("Exam",)
_DATE_FORMATS = ("%Y%m%d", "%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d")


def table_source(table, line: int | None) -> str:
    """Where a value of a clinical table was read: ``clinical.csv line 4``."""
    name = Path(table).name if table else "clinical table"
    return f"{name} line {line}" if line else name


# --------------------------------------------------------------------------------------------------
# what the data says
# --------------------------------------------------------------------------------------------------
def _parse_date(value) -> date | None:
    """A calendar date from a DICOM DA/DT (``20240115``, ``20240115103000.00``) or ISO text
    (``2024-01-15``, ``2024-01-15T10:30:00``); None when it is not one."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if not isinstance(value, str):
        return None
    text = value.strip()
    match = re.match(r"^(\d{8})(\d{0,6})(\.\d+)?([+-]\d{4})?$", text)  # DICOM DA or DT
    candidates = [match.group(1)] if match else [re.split(r"[T ]", text, maxsplit=1)[0]]
    for candidate in candidates:
        for fmt in _DATE_FORMATS:
            try:
                parsed = datetime.strptime(candidate, fmt).date()
            except ValueError:
                continue
            if 1900 <= parsed.year <= 2200:
                return parsed
    return None


def _metadata(volume_or_metadata) -> dict:
    meta = getattr(volume_or_metadata, "metadata", volume_or_metadata)
    return dict(meta) if isinstance(meta, Mapping) else {}


def sidecars(volume_or_metadata) -> list[dict]:
    """The JSON sidecars a volume's reader kept (a phase folder: its first phase's), from a volume or its
    metadata."""
    meta = _metadata(volume_or_metadata)
    found = []
    if isinstance(meta.get("sidecar"), Mapping):
        found.append(dict(meta["sidecar"]))
    phases = meta.get("phase_files")
    if phases:
        from .io.nifti import read_sidecar

        try:
            side = read_sidecar(phases[0])
        except OSError:
            side = {}
        if side:
            found.append(side)
    return found


def exam_date(volume_or_metadata) -> tuple[str | None, str | None, list[str]]:
    """(ISO date, where it was read, notes) of one exam, from its metadata (DICOM ``StudyDate``, a reader's
    ``exam_date``) or its NIfTI sidecar (``AcquisitionDateTime``, ``AcquisitionDate``, ``StudyDate``...).
    ``(None, None, notes)`` when the data records no date; a recorded value that is not a date is named in
    the notes and ignored, never replaced by another date."""
    meta = _metadata(volume_or_metadata)
    notes: list[str] = []
    found: list[tuple[str, Any]] = [(f"image metadata '{k}'", meta.get(k)) for k in _METADATA_DATE_KEYS]
    for side in sidecars(meta):
        found += [(f"sidecar '{k}'", side.get(k)) for k in _SIDECAR_DATE_KEYS]
    for where, value in found:
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        parsed = _parse_date(value)
        if parsed is None:
            notes.append(f"{where} holds {str(value)[:40]!r}, not a date: ignored")
            continue
        return parsed.isoformat(), where, notes
    return None, None, notes


def patient_recorded(volume_or_metadata) -> tuple[str | None, str | None]:
    """(patient identifier, where it was read) as the image itself records it (DICOM ``PatientID``, a
    sidecar's ``PatientID``); ``(None, None)`` when it records none (a folder name is not the image's)."""
    meta = _metadata(volume_or_metadata)
    for key in _METADATA_PATIENT_KEYS:
        if str(meta.get(key) or "").strip():
            return str(meta[key]).strip(), f"image metadata '{key}'"
    for side in sidecars(meta):
        for key in _SIDECAR_PATIENT_KEYS:
            if str(side.get(key) or "").strip():
                return str(side[key]).strip(), f"sidecar '{key}'"
    return None, None


def exam_recorded(volume_or_metadata) -> tuple[str | None, str | None]:
    """(follow-up exam D15/D30/M3/M12, where it was read) as a sidecar records it; ``(None, None)`` else."""
    for side in sidecars(volume_or_metadata):
        for key in _SIDECAR_EXAM_KEYS:
            value = side.get(key)
            if isinstance(value, str) and value.strip().upper() in EXAMS:
                return value.strip().upper(), f"sidecar '{key}'"
    return None, None


# --------------------------------------------------------------------------------------------------
# the identity of one exam
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExamIdentity:
    """Patient, follow-up exam and date of one image, each with where it was read (None: not stated), and
    the exam folder and image source it was read from."""

    patient: str | None = None
    patient_from: str | None = None
    exam: str | None = None
    exam_from: str | None = None
    date: str | None = None
    date_from: str | None = None
    #: the exam folder of a cohort tree the image was read from, else None
    folder: str | None = None
    #: the image's file or folder
    source: str | None = None

    @classmethod
    def from_metadata(cls, metadata: Mapping | None, source=None) -> ExamIdentity:
        """What a reader's metadata (and the sidecars it kept) says; ``source``: the image's path."""
        meta = _metadata(metadata)
        patient, patient_from = patient_recorded(meta)
        if patient is None and str(meta.get("patient") or "").strip():
            patient, patient_from = str(meta["patient"]).strip(), FOLDER_NAME
        exam, exam_from = exam_recorded(meta)
        folder_exam = str(meta.get("exam") or "").strip().upper()
        if exam is None and folder_exam in EXAMS:
            exam, exam_from = folder_exam, FOLDER_NAME
        day, day_from, _ = exam_date(meta)
        folder = meta.get("exam_folder")
        return cls(patient=patient, patient_from=patient_from, exam=exam, exam_from=exam_from, date=day,
                   date_from=day_from, folder=str(folder) if folder else None,
                   source=str(source) if source else None)

    @classmethod
    def from_volume(cls, volume) -> ExamIdentity:
        return cls.from_metadata(volume.metadata, volume.source or None)

    @classmethod
    def from_layer_metadata(cls, metadata: Mapping | None) -> ExamIdentity:
        """The identity of a napari layer made by this plugin: an image layer's DCE metadata, or the one a
        labels layer carries (``exam_identity``); empty for a layer that states nothing (drawn by hand)."""
        meta = dict(metadata or {})
        if isinstance(meta.get("exam_identity"), Mapping):
            return cls.from_dict(meta["exam_identity"])
        if isinstance(meta.get("dce_metadata"), Mapping):
            return cls.from_metadata(meta["dce_metadata"], meta.get("source"))
        return cls()

    @classmethod
    def from_dict(cls, values: Mapping) -> ExamIdentity:
        names = {f.name for f in fields(cls)}
        return cls(**{k: (None if v is None else str(v)) for k, v in values.items() if k in names})

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)

    @property
    def stated(self) -> bool:
        """Whether the image says anything about which exam it is."""
        return bool(self.patient or self.exam or self.folder or self.source)

    def describe(self) -> str:
        """``patient P0003, exam D15`` (with ``not stated`` for what the data does not say)."""
        return (f"patient {self.patient or 'not stated'}, exam {self.exam or 'not stated'}")

    def same_exam(self, other: ExamIdentity) -> bool | None:
        """True when both were read from the same exam folder or image, or both state patient and exam and
        these agree; False when they state different ones (or come from different exam folders and do not
        both state patient and exam); None when there is nothing to compare."""
        if self.folder and other.folder and _same_path(self.folder, other.folder):
            return True
        if self.source and other.source and _same_path(self.source, other.source):
            return True
        if self.patient and self.exam and other.patient and other.exam:
            return self.patient == other.patient and self.exam == other.exam
        if self.folder and other.folder:
            return False
        if (self.patient and other.patient and self.patient != other.patient) or (
                self.exam and other.exam and self.exam != other.exam):
            return False
        return None


def _same_path(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):
        return a == b


def labels_mismatch(image: ExamIdentity, labels: ExamIdentity, image_name: str, labels_name: str) -> str | None:
    """Why a labels layer must not be used with an image (both exams named), None when it may."""
    if image.same_exam(labels) is not False:
        return None
    return (f"labels layer {labels_name!r} belongs to {labels.describe()}, but the DCE layer {image_name!r} is "
            f"{image.describe()}: its regions would be another exam's. Choose this exam's labels or none.")
