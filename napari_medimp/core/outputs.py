"""Output files a user keeps: never overwritten without being asked, written whole or not at all, and safe
to open in a spreadsheet."""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from .atomic import atomic_write_bytes
from .terms import EXAMS, HORIZONS, SALIENCY_METHODS


class OutputExistsError(ValueError):
    """An output would replace a file the user has; the message says how to allow it."""


class OutputIsInputError(ValueError):
    """An output would replace one of the command's inputs (refused even with ``--overwrite``)."""


def input_files(paths: Iterable) -> set[Path]:
    """Every file the inputs ``paths`` name, resolved (links followed): a file with its JSON sidecar, and
    every file under a folder (an exam, a patient or a cohort)."""
    from .io.nifti import is_nifti, sidecar_path

    out: set[Path] = set()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            out.update(p.resolve() for p in path.rglob("*") if p.is_file())
        elif path.exists():
            out.add(path.resolve())
            if is_nifti(path) and sidecar_path(path).exists():
                out.add(sidecar_path(path).resolve())
    return out


def refuse_input(path, inputs: Iterable[Path], option: str = "--out") -> None:
    """OutputIsInputError when ``path`` is one of ``inputs`` (:func:`input_files`), by its resolved path or
    as the same file under another name (a hard link)."""
    path = Path(path)
    if not path.exists():
        return
    resolved = path.resolve()
    inputs = inputs if isinstance(inputs, (set, frozenset)) else set(inputs)
    # a hard link is looked for only when the file has one: a cohort's thousands of inputs are not stat-ed
    # for every planned output
    same = resolved if resolved in inputs else None
    if same is None and path.stat().st_nlink > 1:
        same = next((other for other in inputs if os.path.samefile(path, other)), None)
    if same is not None:
        raise OutputIsInputError(f"{option} {path} is one of this command's inputs ({same}); an output never "
                                 "replaces an input, even with --overwrite: choose another name")


def check_output(path, overwrite: bool, suffixes: Sequence[str] | None = None, option: str = "--out",
                 inputs: Iterable[Path] = ()) -> Path:
    """``path`` as an output file: refused when it is one of ``inputs`` (:func:`input_files`; even with
    ``overwrite``), when it exists (unless ``overwrite``), when it is a folder, or when its suffix is not
    one of ``suffixes``. Nothing is written here."""
    path = Path(path)
    refuse_input(path, inputs, option)
    if suffixes is not None and not any(path.name.lower().endswith(s) for s in suffixes):
        raise ValueError(f"{option} {path}: the file name must end with {' or '.join(suffixes)}")
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file name")
    ancestor = next((p for p in path.parents if p.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        raise ValueError(f"{option} {path}: {ancestor} is a file, not a folder")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{option} {path} exists; choose another name or pass --overwrite to replace it")
    return path


def check_output_folder(folder, owned: Iterable[str], overwrite: bool, option: str = "--out") -> Path:
    """A folder for one result: refused when it holds files of an earlier result (``owned`` names) unless
    ``overwrite``, which then removes them, so that no file of the earlier result stays beside the new
    one. Other files of the folder are left alone."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option} {folder} exists and is a file; give a folder")
    earlier = [folder / name for name in owned if (folder / name).exists()]
    if earlier and not overwrite:
        names = ", ".join(p.name for p in earlier)
        raise OutputExistsError(f"{option} {folder} already holds an earlier result ({names}); choose another "
                                "folder or pass --overwrite to replace it")
    for path in earlier:
        path.unlink()
    return folder


@contextmanager
def replacing_output_folder(folder, owned: Iterable[str], overwrite: bool, option: str = "--out"):
    """Write one result into ``folder`` in the ``with`` block so that an earlier result (``owned`` names)
    is replaced only when the new one is complete: the earlier files are first moved aside (a rename
    needs no disk space), the new ones written, and only then is the earlier result deleted. If writing
    fails (a full disk, a stop), the new files written so far are removed and the earlier ones put back,
    so the folder holds the earlier result whole, never half of each. Other files are left alone."""
    owned = tuple(owned)
    folder = Path(folder)
    if not overwrite:
        check_output_folder(folder, owned, overwrite=False, option=option)  # refuses a file or an earlier result
    elif folder.exists() and not folder.is_dir():
        raise ValueError(f"{option} {folder} exists and is a file; give a folder")
    earlier = [folder / name for name in owned if (folder / name).exists()]
    folder.mkdir(parents=True, exist_ok=True)
    aside = Path(tempfile.mkdtemp(prefix=".medimp-earlier-", dir=folder)) if earlier else None
    for path in earlier:
        os.replace(path, aside / path.name)
    try:
        yield folder
    except BaseException:
        for name in owned:  # the new result's files written so far
            if (folder / name).exists():
                (folder / name).unlink()
        if aside is not None:
            for path in aside.iterdir():
                os.replace(path, folder / path.name)
            aside.rmdir()
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def new_export_folder(parent, name: str) -> Path:
    """A new, empty folder ``parent/name`` for one export (``name-2``, ``name-3``... when taken), so that an
    export never mixes with or replaces an earlier one. Characters that are not safe in a file name become
    ``_``."""
    parent = Path(parent)
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"{parent} is a file; choose a folder for the export")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._") or "medimp-export"
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        folder = parent / (safe if n == 1 else f"{safe}-{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise ValueError(f"{parent} holds too many exports named {safe}; choose another folder")


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value):
    """A text cell that a spreadsheet would run as a formula gets a leading apostrophe (numbers pass)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        try:
            float(value)
        except ValueError:
            return "'" + value
    return value


def write_csv(path, rows: Sequence[Mapping], fieldnames: Sequence[str] | None = None) -> Path:
    """Rows to a CSV file, atomically, with formula-like text cells escaped."""
    fieldnames = list(fieldnames or (rows[0] if rows else []))
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: spreadsheet_safe(v) for k, v in row.items()})
    return atomic_write_bytes(Path(path), buffer.getvalue().encode("utf-8"))


# --------------------------------------------------------------------------------------------------
# the files of an analysis folder
# --------------------------------------------------------------------------------------------------
#: file names of an analysis folder
REPORT_STEM = "medimp_report"
FIGURE_FILE = "results.png"
SALIENCY_TARGETS = ("similarity", *HORIZONS)


def saliency_file_name(method: str, target: str, exam: str | None, prefix: str | None = None) -> str:
    """``saliency-<method>-<target>-<exam>.nii.gz`` (``<prefix>-`` in front when given): one file per map,
    so maps of several methods, targets and exams live side by side."""
    parts = [prefix, "saliency", method, target, (exam or "").upper() or None]
    return "-".join(str(p).replace("/", "_").replace(" ", "_") for p in parts if p) + ".nii.gz"


#: every saliency map file (and its JSON sidecar) an analysis folder may hold, and the single map of the
#: first release (``saliency.nii.gz``), so that an earlier analysis is never left beside a new one
SALIENCY_FILES = tuple(name for method in SALIENCY_METHODS for target in SALIENCY_TARGETS for exam in EXAMS
                       for name in (saliency_file_name(method, target, exam),
                                    saliency_file_name(method, target, exam)[:-len(".nii.gz")] + ".json")
                       ) + ("saliency.nii.gz", "saliency.json")
#: every file an analysis may leave in its folder (an export adds the viewer screenshot)
PDF_FILE = f"{REPORT_STEM}.pdf"
#: the patient view's figure (:mod:`.longitudinal`)
TREND_FIGURE_FILE = "patient_trends.png"
#: what a PACS retrieval records beside the images it brought into the cache (:mod:`.pacs`); readers of the
#: cached folder pass over it silently
RETRIEVAL_RECORD_FILE = "retrieval.json"
ANALYSIS_FILES = (f"{REPORT_STEM}.json", f"{REPORT_STEM}.csv", PDF_FILE, FIGURE_FILE, *SALIENCY_FILES,
                  "medimp_screenshot.png", TREND_FIGURE_FILE)
