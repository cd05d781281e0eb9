"""Finding the DICOM files of a folder or DICOMDIR, grouped by series, and choosing the series to read."""

from __future__ import annotations

import warnings
from collections import defaultdict
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import pydicom

from ...outputs import RETRIEVAL_RECORD_FILE
from ...volume import DCEReadError, DCEReadWarning

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


#: the series chosen for a whole command (:func:`chosen_series`)
_CHOSEN_SERIES: ContextVar[str | None] = ContextVar("chosen_dicom_series", default=None)
_DICOMDIR_UID = "1.2.840.10008.1.3.10"


class _NotDicom(Exception):
    pass


def _has_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_header(path: Path) -> pydicom.Dataset:
    """Header without pixel data; raises ``_NotDicom`` for files that are not DICOM at all."""
    magic = _has_magic(path)
    if not magic and path.suffix.lower() not in DICOM_SUFFIXES:
        raise _NotDicom(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
    except Exception as exc:
        if not magic:
            raise _NotDicom(path) from None
        raise DCEReadError(path, f"unreadable or corrupt DICOM file ({exc})") from None
    if "DirectoryRecordSequence" in ds or any(tag in ds for tag in ("SOPClassUID", "SeriesInstanceUID", "Modality")):
        return ds
    if magic:
        raise DCEReadError(path, "corrupt or truncated DICOM header (no SOPClassUID, SeriesInstanceUID or Modality)")
    raise _NotDicom(path)


def is_dicom_file(path) -> bool:
    """True for a DICOM file: 'DICM' after the 128-byte preamble, or a readable preamble-less .dcm file."""
    path = Path(path)
    if not path.is_file():
        return False
    if _has_magic(path):
        return True
    try:
        _read_header(path)
    except (_NotDicom, DCEReadError):
        return False
    return True


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _dicomdir_files(path: Path, ds) -> tuple[list[Path], int]:
    """Files a DICOMDIR refers to (its IMAGE and other instance records) and how many of them are missing."""
    files, missing = [], 0
    for record in ds.get("DirectoryRecordSequence", []):
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        parts = [file_id] if isinstance(file_id, str) else list(file_id)
        target = path.parent.joinpath(*[str(part) for part in parts])
        if not target.is_file():  # media written in upper case, read on a case-sensitive file system
            match = [p for p in target.parent.glob("*") if p.name.lower() == target.name.lower()] \
                if target.parent.is_dir() else []
            target = match[0] if match else target
        if target.is_file():
            files.append(target)
        else:
            missing += 1
    return files, missing


def _scan(folder: Path, first: Path | None = None):
    """Headers of the folder's DICOM files grouped by series, the files that could not be read, the names
    of the files that are not DICOM, and the DICOMDIR files found (path and header)."""
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    unreadable: list[DCEReadError] = []
    skipped: list[str] = []
    dicomdirs: list[tuple[Path, pydicom.Dataset]] = []
    files = _folder_files(folder)
    if first is not None:
        files = [first] + [f for f in files if f.name != first.name]
    for path in files:
        try:
            ds = _read_header(path)
        except _NotDicom:
            if path.name != RETRIEVAL_RECORD_FILE:  # the record of a PACS retrieval, beside its images
                skipped.append(path.name)
            continue
        except DCEReadError as exc:
            unreadable.append(exc)
            continue
        media_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
        if media_class == _DICOMDIR_UID or "DirectoryRecordSequence" in ds:
            dicomdirs.append((path, ds))
            continue
        series[str(ds.get("SeriesInstanceUID", ""))].append((path, ds))
    return dict(series), unreadable, skipped, dicomdirs


def _follow_dicomdir(path: Path, ds):
    """The series of the files a DICOMDIR lists (a CD or USB export), like ``_scan`` of a folder."""
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    unreadable: list[DCEReadError] = []
    files, missing = _dicomdir_files(path, ds)
    if missing:
        warnings.warn(f"{path}: {missing} file(s) listed in this DICOMDIR are missing beside it; the others are read",
                      DCEReadWarning, stacklevel=4)
    for target in files:
        try:
            header = _read_header(target)
        except _NotDicom:
            unreadable.append(DCEReadError(target, "listed in the DICOMDIR but not a DICOM file"))
            continue
        except DCEReadError as exc:
            unreadable.append(exc)
            continue
        if "DirectoryRecordSequence" not in header:
            series[str(header.get("SeriesInstanceUID", ""))].append((target, header))
    return dict(series), unreadable, missing


def find_series(folder) -> dict[str, list[Path]]:
    """DICOM files of a folder (not its subfolders) grouped by SeriesInstanceUID.

    Non-DICOM files, DICOMDIR files and files whose header cannot be read are left out.
    """
    series = _scan(Path(folder))[0]
    return {uid: [p for p, _ in items] for uid, items in series.items()}


def _select_series(path: Path, series_uid: str | None):
    """Folder, the series' (path, header) pairs and the unreadable files of the folder."""
    if path.is_dir():
        folder, first = path, None
    elif path.is_file():
        folder, first = path.parent, path
        try:
            header = _read_header(path)
        except _NotDicom:
            raise DCEReadError(path, "not a DICOM file") from None
        if series_uid is None:
            series_uid = str(header.get("SeriesInstanceUID", ""))
    else:
        raise DCEReadError(path, "no such file or folder")

    series, unreadable, skipped, dicomdirs = _scan(folder, first)
    if not series and dicomdirs:
        directory, header = dicomdirs[0]
        series, unreadable, missing = _follow_dicomdir(directory, header)
        skipped = []
        if not series:
            raise DCEReadError(directory, f"this DICOMDIR lists no readable image files beside it ({missing} listed "
                                          "file(s) missing); open the folder that holds the images instead")
        first = None
    if not series:
        if unreadable:
            names = "; ".join(f"{Path(e.path).name}: {e.problem}" for e in unreadable)
            raise DCEReadError(folder, f"no readable DICOM files in this folder ({names})")
        raise DCEReadError(folder, "no DICOM files in this folder")
    if unreadable and first is None:
        names = ", ".join(Path(e.path).name for e in unreadable)
        warnings.warn(
            f"{folder}: {len(unreadable)} unreadable DICOM file(s) ignored: {names}", DCEReadWarning, stacklevel=3
        )
    if skipped and first is None:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        warnings.warn(f"{folder}: {len(skipped)} file(s) that are not DICOM skipped: {shown}", DCEReadWarning,
                      stacklevel=3)
    if series_uid is None and len(series) > 1:
        series_uid = _CHOSEN_SERIES.get()  # a choice made for a whole command applies where there is a choice
    if series_uid is None:
        return folder, series, unreadable
    uid = _find_series(series, str(series_uid))
    if uid is None:
        raise DCEReadError(folder, f"no DICOM series with SeriesInstanceUID or SeriesNumber {series_uid} in this "
                                   f"folder: {_series_listing(series)}")
    return folder, {uid: series[uid]}, unreadable


def _find_series(series: dict, choice: str) -> str | None:
    """The UID of the series that ``choice`` names: its SeriesInstanceUID, else its SeriesNumber when one
    series alone has that number."""
    if choice in series:
        return choice
    numbered = [uid for uid, items in series.items() if str(items[0][1].get("SeriesNumber", "")).strip() == choice.strip()]
    return numbered[0] if len(numbered) == 1 else None


@contextmanager
def chosen_series(choice: str | int | None):
    """Within this block, a DICOM folder holding several series opens the one that ``choice`` names
    (SeriesInstanceUID or SeriesNumber), wherever the folder is opened from: the ``--series`` of the
    ``medimp`` commands. Folders holding one series are not affected; ``None`` chooses nothing."""
    token = _CHOSEN_SERIES.set(None if choice is None else str(choice))
    try:
        yield
    finally:
        _CHOSEN_SERIES.reset(token)


def _series_listing(series: dict) -> str:
    return "; ".join(
        f"{uid or '(no SeriesInstanceUID)'} (number {items[0][1].get('SeriesNumber', '?')}) "
        f"'{items[0][1].get('SeriesDescription', '')}' ({len(items)} files)"
        for uid, items in series.items()
    )


def _several_series(folder: Path, series: dict) -> DCEReadError:
    return DCEReadError(
        folder, f"this folder holds {len(series)} DICOM series; put the series to read in a folder of its own, "
        "or name it by SeriesInstanceUID or SeriesNumber (the --series option of medimp info, embed, predict, "
        f"saliency and analyze; load_dce(path, series=...) in Python): {_series_listing(series)}"
    )
