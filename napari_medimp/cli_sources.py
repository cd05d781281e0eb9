"""The exams a ``medimp`` command reads: one file or series, or every exam of a cohort tree, each carried
with its :class:`~napari_medimp.core.identity.ExamIdentity` (never as a ``patient/exam`` string to split
again); the exam of an image on its own; the cohort's clinical rows; and running a command exam by exam."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .core.terms import DEFAULT_EXAM

if TYPE_CHECKING:
    from .core.identity import ExamIdentity


@dataclass(frozen=True)
class ExamSource:
    """One exam a command reads: its image and its identity as a cohort tree names it (patient and exam from
    the folders); a file or series on its own carries an empty identity (its data state it when read)."""

    path: Path
    who: ExamIdentity

    @property
    def in_tree(self) -> bool:
        """True for an exam folder of a cohort tree (``<patient>/<exam>/``)."""
        return self.who.folder is not None

    @property
    def patient(self) -> str | None:
        return self.who.patient

    @property
    def exam(self) -> str | None:
        return self.who.exam

    @property
    def label(self) -> str:
        """The exam's id in outputs and messages: ``patient/exam`` in a cohort tree, else the file's name."""
        return f"{self.patient}/{self.exam}" if self.in_tree else self.path.name


def exam_sources(path: Path) -> list[ExamSource]:
    """Every exam under ``path``: one file/series, or the exams of a cohort tree."""
    from .core.identity import FOLDER_NAME, ExamIdentity
    from .core.io.cohort import classify_folder, cohort_exams

    if path.is_dir() and classify_folder(path).kind in ("exam", "patient", "cohort"):
        sources = [ExamSource(Path(folder), ExamIdentity(patient=str(patient), patient_from=FOLDER_NAME, exam=str(exam),
                                                         exam_from=FOLDER_NAME, folder=str(folder), source=str(folder)))
                   for patient, exam, folder in cohort_exams(path)]
        if not sources:
            raise ValueError(f"{path}: no exam with images in this folder (expected "
                             "<patient>/<exam>/<sequence>/ image folders); nothing to do")
        return sources
    return [ExamSource(path, ExamIdentity())]


def exam_of(typed: str | None, who, path) -> tuple[str, str]:
    """(exam, where it came from) of an image on its own: the typed ``--exam`` (with a warning when the image
    states another), else the exam the image states (``who``: its ExamIdentity), else :data:`DEFAULT_EXAM`."""
    from .core.clinical import normalize_exam

    if typed:
        exam = normalize_exam(typed)
        if who.exam and exam != who.exam:
            print(f"medimp: warning: --exam {exam} typed, but {path} is exam {who.exam} (from its "
                  f"{who.exam_from}); read as {exam}", file=sys.stderr)
        return exam, "typed (--exam)"
    if who.exam:
        return who.exam, who.exam_from
    return DEFAULT_EXAM, f"default ({DEFAULT_EXAM})"


def input_paths(path) -> set[Path]:
    """Every file a command reads from ``path`` (with the cohort's clinical table): never an output."""
    from .core.io.cohort import find_clinical_table
    from .core.outputs import input_files

    table = find_clinical_table(path)
    return input_files([path, *([table] if table is not None else [])])


def cohort_records(path: Path, sources) -> dict:
    """patient id -> clinical.csv row, when ``path`` is (inside) a cohort with a clinical table.

    The exams of patients without a row are named in one warning line; a table that matches none of the
    patients of several exams is refused (it would leave every exam without its clinical values)."""
    from .core.io.cohort import cohort_clinical_table, match_clinical_table, sample_ids

    rows, table = cohort_clinical_table(path)
    patients = {s.patient for s in sources if s.in_tree}
    if table is None or not patients:
        return rows
    try:
        missing = set(match_clinical_table(table, rows, patients))
    except ValueError:
        if len(sources) > 1:
            raise
        missing = patients  # one exam: said below, the exam is read without the table's values
    if missing:
        exams = [s.label for s in sources if s.in_tree and s.patient in missing]
        print(f"medimp: warning: {table} has no row for {len(exams)} of {len(sources)} exams ({sample_ids(exams)}); "
              "they are read without clinical values (ids are matched exactly)", file=sys.stderr)
    return rows


def each_exam(sources, work):
    """``work(source)`` for every exam (:class:`ExamSource`); in a cohort an exam whose image or clinical row cannot be
    read is skipped and listed (the others are processed); a single exam's failure is the command's."""
    from .core.failures import failure_message

    done, skipped = 0, []
    for source in sources:
        try:
            work(source)
            done += 1
        except (ValueError, OSError, RecursionError, MemoryError) as exc:
            # the exam's own problem (unreadable, RGB, nothing enhances, a bad clinical cell, too large)
            if len(sources) == 1:
                raise
            why = failure_message(exc)[1]
            skipped.append(f"{source.label}: {why}")
            print(f"medimp: skipped {source.label}: {why}", file=sys.stderr)
    if skipped and not done:
        raise ValueError(f"none of the {len(sources)} exams could be read (first: {skipped[0]})")
    if skipped:
        print(f"medimp: {len(skipped)} of {len(sources)} exams skipped (listed above)", file=sys.stderr)
    return skipped


def exam_label_file(path: Path) -> Path | None:
    """The segmentation of an exam folder (its ``seg`` sequence holding one file), else None."""
    if not path.is_dir():
        return None
    from .core.io.cohort import classify_folder, exam_sequences

    if classify_folder(path).kind != "exam":
        return None
    from .core.io.nifti import list_phase_files

    seg = exam_sequences(path)[1]
    files = list_phase_files(seg) if seg is not None else []
    return files[0] if len(files) == 1 else None


def exam_labels(path: Path, volume):
    """(labels on the exam's grid, their region names) from an exam folder's segmentation, else (None, None)."""
    from .core.io.nifti import label_names, load_labels

    label_file = exam_label_file(path)
    if label_file is None:
        return None, None
    labels, _ = load_labels(label_file)
    if labels.shape != volume.shape[1:]:
        return None, None
    return labels, label_names(label_file)
