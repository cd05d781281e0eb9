"""Folders: a DICOM series, a folder of NIfTI phases, or a MEDIMP-style cohort tree.

A cohort tree is ``cohort/<patient>/<exam>/<sequence>/*.nii.gz`` (optionally with ``clinical.csv`` at its
root). An exam folder opens as one 4D stack from its DCE sequence; a patient folder lists its exams.
"""

from __future__ import annotations

import csv
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..terms import EXAMS
from ..volume import DCEReadError, DCEReadWarning, DCEVolume, keeps_reading_notes
from .nifti import is_nifti, list_phase_files, load_nifti, load_phase_folder
from .sequences import dynamic_sequences, load_phase_sequences

#: sequence folder names that hold segmentations rather than DCE images
SEGMENTATION_NAMES = re.compile(r"^(seg|segmentation|labels?|masks?|roi)$", re.IGNORECASE)
#: preferred sequence names, best first
DCE_NAMES = re.compile(r"dce|dyn|perf|vibe|t1", re.IGNORECASE)


def _visible_children(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _has_dicom(folder: Path) -> bool:
    """True when any file of the folder is DICOM (every file is looked at: a series may sort after many
    other files; a file that is not DICOM is recognised from its first bytes or its name)."""
    from .dicom import is_dicom_file

    files = [p for p in _visible_children(folder) if p.is_file() and not is_nifti(p)]
    return any(is_dicom_file(p) for p in files)


def _holds_images(folder: Path) -> bool:
    return bool(list_phase_files(folder)) or _has_dicom(folder)


@dataclass
class FolderKind:
    kind: str  # "dicom", "nifti", "exam", "patient", "cohort"
    path: Path


def classify_folder(folder) -> FolderKind:
    """What a folder holds, judged from its files and one or two levels of sub-folders."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DCEReadError(folder, "not a folder")
    if list_phase_files(folder):
        return FolderKind("nifti", folder)
    if _has_dicom(folder):
        return FolderKind("dicom", folder)
    subdirs = [p for p in _visible_children(folder) if p.is_dir()]
    if any(_holds_images(d) for d in subdirs):
        return FolderKind("exam", folder)
    if any(any(_holds_images(s) for s in _visible_children(d) if s.is_dir()) for d in subdirs):
        return FolderKind("patient", folder)
    if (folder / "clinical.csv").exists() or any(
        any(s.is_dir() for s in _visible_children(d)) for d in subdirs
    ):
        return FolderKind("cohort", folder)
    raise DCEReadError(folder, "no NIfTI or DICOM images found in this folder or its sub-folders")


def exam_sequences(exam_folder) -> tuple[Path | None, Path | None]:
    """(DCE sequence folder, segmentation folder or None) of an exam folder."""
    exam_folder = Path(exam_folder)
    image_dirs = [d for d in _visible_children(exam_folder) if d.is_dir() and _holds_images(d)]
    seg = next((d for d in image_dirs if SEGMENTATION_NAMES.match(d.name)), None)
    candidates = [d for d in image_dirs if not SEGMENTATION_NAMES.match(d.name)]
    if not candidates:
        return None, seg
    preferred = [d for d in candidates if DCE_NAMES.search(d.name)] or candidates
    if len(preferred) > 1:
        warnings.warn(
            f"{exam_folder}: several sequences ({', '.join(d.name for d in preferred)}); "
            f"opening {preferred[0].name}",
            DCEReadWarning,
            stacklevel=3,
        )
    return preferred[0], seg


def _exam_order(name: str):
    return (EXAMS.index(name.upper()), name) if name.upper() in EXAMS else (len(EXAMS), name)


def patient_exams(patient_folder) -> dict[str, Path]:
    """Exam name -> exam folder, in follow-up order (D15, D30, M3, M12, then others by name)."""
    patient_folder = Path(patient_folder)
    exams: dict[str, Path] = {}
    for d in _visible_children(patient_folder):
        if not (d.is_dir() and any(s.is_dir() and _holds_images(s) for s in _visible_children(d))):
            continue
        # a follow-up exam is named in any case (d15 is D15); two folders for one exam are refused
        name = d.name.strip().upper() if d.name.strip().upper() in EXAMS else d.name
        if name in exams:
            raise DCEReadError(patient_folder, f"two folders hold the {name} exam ({exams[name].name} and "
                                               f"{d.name}); keep one")
        exams[name] = d
    return dict(sorted(exams.items(), key=lambda kv: _exam_order(kv[0])))


def load_sequence(folder, lazy: bool | None = None) -> DCEVolume:
    """A sequence folder: DICOM series, one 4D NIfTI, or several 3D NIfTI phases."""
    folder = Path(folder)
    files = list_phase_files(folder)
    if files:
        if len(files) == 1:
            return load_nifti(files[0], lazy=lazy)
        return load_phase_folder(folder, lazy=lazy)
    from .dicom import load_dicom_series

    return load_dicom_series(folder, lazy=lazy)


def _phase_sequence_folders(exam_folder: Path) -> list[Path]:
    """Sequence folders that each hold one phase of the dynamic series (MEDIMP's layout), else []."""
    image_dirs = [d for d in _visible_children(exam_folder) if d.is_dir() and not SEGMENTATION_NAMES.match(d.name)
                  and _holds_images(d)]
    folders = dynamic_sequences(exam_folder, image_dirs)
    return folders if len(folders) > 1 else []


@keeps_reading_notes
def load_exam(exam_folder, lazy: bool | None = None) -> tuple[DCEVolume, Path | None]:
    """The DCE volume of an exam folder and the path of its segmentation (if any).

    An exam whose dynamic series is stored one phase per sequence folder (MEDIMP's
    ``<n>_WATER_AX_LAVA-Flex_<phase>/`` layout, see :mod:`.sequences`) opens as one stacked series.
    """
    exam_folder = Path(exam_folder)
    phase_folders = _phase_sequence_folders(exam_folder)
    if phase_folders:
        seg = next((d for d in _visible_children(exam_folder)
                    if d.is_dir() and SEGMENTATION_NAMES.match(d.name) and _holds_images(d)), None)
        volume = load_phase_sequences(exam_folder, phase_folders, load_sequence, lazy=lazy)
    else:
        dce, seg = exam_sequences(exam_folder)
        if dce is None:
            raise DCEReadError(exam_folder, "exam folder has no DCE sequence sub-folder with images")
        volume = load_sequence(dce, lazy=lazy)
    volume.metadata.setdefault("exam", exam_folder.name)
    volume.metadata.setdefault("patient", exam_folder.parent.name)
    volume.metadata.setdefault("exam_folder", str(exam_folder))
    seg_file = list_phase_files(seg)[0] if seg is not None and list_phase_files(seg) else None
    return volume, seg_file


def load_folder(folder, lazy: bool | None = None) -> DCEVolume:
    """Open a folder as one DCE volume: a series, a phase folder, or an exam of a cohort tree."""
    kind = classify_folder(folder)
    if kind.kind in ("nifti", "dicom"):
        return load_sequence(kind.path, lazy=lazy)
    if kind.kind == "exam":
        return load_exam(kind.path, lazy=lazy)[0]
    if kind.kind == "patient":
        exams = list(patient_exams(kind.path))
        raise DCEReadError(
            kind.path,
            f"patient folder with exams {', '.join(exams)}: open one exam folder "
            "(or open the patient folder in napari to get every exam as a layer)",
        )
    n = sum(1 for d in _visible_children(kind.path) if d.is_dir())
    raise DCEReadError(kind.path, f"cohort folder of {n} patients: open a patient or exam folder")


def cohort_exams(path) -> list[tuple[str, str, Path]]:
    """(patient, exam, exam folder) for every exam under a cohort, patient or exam folder."""
    kind = classify_folder(path)
    if kind.kind == "exam":
        name = kind.path.name.strip().upper() if kind.path.name.strip().upper() in EXAMS else kind.path.name
        return [(kind.path.parent.name, name, kind.path)]
    if kind.kind == "patient":
        return [(kind.path.name, exam, folder) for exam, folder in patient_exams(kind.path).items()]
    if kind.kind == "cohort":
        return [
            (patient.name, exam, folder)
            for patient in _visible_children(kind.path) if patient.is_dir()
            for exam, folder in patient_exams(patient).items()
        ]
    return []


#: largest clinical table read (a cohort of thousands of patients is a few MB)
MAX_TABLE_BYTES = 64 * 2**20


def read_clinical_table(path) -> dict[str, dict]:
    """patient id -> row of ``clinical.csv``.

    Comma or semicolon separated (as spreadsheets export it in many locales), with or without a byte-order
    mark. A missing ``patient_id`` column, a patient listed twice (both rows named) or a file that is not a
    regular file of reasonable size is an error."""
    return _read_table(path)[0]


def clinical_table_lines(path) -> dict[str, int]:
    """patient id -> the line of ``clinical.csv`` holding the patient's row (the header is line 1), so
    that a value read from it can say where it came from."""
    return _read_table(path)[1]


def _read_table(path) -> tuple[dict[str, dict], dict[str, int]]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: the clinical table must be a regular file")
    if path.stat().st_size > MAX_TABLE_BYTES:
        raise ValueError(f"{path}: larger than {MAX_TABLE_BYTES // 2**20} MB; not a clinical table")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    header = text.split("\n", 1)[0]
    delimiter = ";" if header.count(";") > header.count(",") else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    fields = [f.strip() for f in (reader.fieldnames or [])]
    if "patient_id" not in fields:
        raise ValueError(f"{path}: the clinical table needs a 'patient_id' column (found: {', '.join(fields) or 'none'})")
    reader.fieldnames = fields
    rows: dict[str, dict] = {}
    first_line: dict[str, int] = {}
    for row in reader:
        line = reader.line_num  # the physical line (blank lines counted), as an editor shows it
        patient = (row.get("patient_id") or "").strip()
        if not patient:
            continue
        if patient in rows:
            raise ValueError(f"{path}: patient {patient} is listed twice (lines {first_line[patient]} and {line}); "
                             "keep one row per patient")
        rows[patient] = {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k is not None}
        first_line[patient] = line
    return rows, first_line


def find_clinical_table(path) -> Path | None:
    """The ``clinical.csv`` of the cohort ``path`` lies in: a cohort, patient or exam folder, or a file of an
    exam's sequence (up to four levels below the cohort); None if none. Nothing is read."""
    path = Path(path)
    return next((folder / "clinical.csv" for folder in [path, *path.parents][:5]
                 if (folder / "clinical.csv").is_file()), None)


def cohort_clinical_table(path) -> tuple[dict, Path | None]:
    """(patient id -> row, the table) of :func:`find_clinical_table`; ``({}, None)`` if none."""
    table = find_clinical_table(path)
    return (read_clinical_table(table), table) if table is not None else ({}, None)


def cohort_clinical_row(path, patient: str) -> tuple[dict | None, Path | None, int | None]:
    """(the row of ``patient``, the table, its line) in the ``clinical.csv`` of the cohort ``path`` lies in
    (:func:`cohort_clinical_table`); ``(None, table or None, None)`` when the patient has no row."""
    path = Path(path)
    for folder in [path, *path.parents][:5]:
        table = folder / "clinical.csv"
        if table.is_file():
            rows, lines = _read_table(table)
            return rows.get(patient), table, lines.get(patient)
    return None, None, None


def sample_ids(ids, n: int = 5) -> str:
    ids = sorted(ids)
    return ", ".join(ids[:n]) + (f", ... ({len(ids)} in all)" if len(ids) > n else "")


def match_clinical_table(table, rows: dict, patients) -> list[str]:
    """The patients (folder names) without a row in ``table``, after checking the table matches the cohort.

    Ids are matched exactly, as written (``P0001`` is neither ``p0001`` nor ``1``): a clinical value must
    never be given to another patient. A table without patient rows, or whose ids match none of the
    folders' (other spelling, another cohort, a delimiter that differs between lines), is an error naming
    the table and a sample of both sets of ids: otherwise every patient would silently be read without
    clinical values."""
    patients = sorted(set(patients))
    if not patients:
        return []
    if not rows:
        raise ValueError(f"{table}: no patient row (only a header?); the cohort has patients {sample_ids(patients)}")
    missing = [p for p in patients if p not in rows]
    if len(missing) == len(patients):
        raise ValueError(f"{table}: none of its patient ids matches a patient folder (ids must be written exactly "
                         f"as the folders are named); table: {sample_ids(rows)}; folders: {sample_ids(patients)}")
    return missing
