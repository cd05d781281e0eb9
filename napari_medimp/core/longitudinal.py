"""The patient view: one patient's follow-up exams read in order, visit by visit.

:func:`analyze_patient` takes a patient's exams (exam name -> DCE volume) and their clinical values (a row
of the cohort's ``clinical.csv``, or one :class:`~napari_medimp.core.clinical.ClinicalRecord` per exam)
and gives a :class:`PatientResult`: per visit, in follow-up order (D15, D30, M3, M12 as present), its
date when the data records one, the clinical values of that visit, the prognosis read at that visit from
the exams so far (images only = MEDIMP, images + clinical values, and the clinical-only reference), the
exams that reading used and each exam's input checks; plus the GFR and creatinine trend across visits.
Each exam is embedded once: the reading at a visit combines the embeddings of the earlier exams with its
own (:func:`~napari_medimp.core.inference.analyze` with ``earlier``).

:func:`analyze_patient_folder` does the same for a patient folder of a cohort tree
(``cohort/<patient>/<exam>/<sequence>/``), with the clinical values of the cohort's ``clinical.csv``.
A patient's identity and an exam's date are read from the data (DICOM tags, NIfTI sidecars, the folder
layout), never assumed: a date the data does not hold is "date unknown".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .checks import OUTSIDE_TRAINING, Check, outside_training
from .clinical import ClinicalRecord, ClinicalValueError, normalize_exam
from .identity import ExamIdentity, exam_date, exam_recorded, patient_recorded, sidecars
from .outputs import TREND_FIGURE_FILE
from .prognosis import KIND_LABELS, KINDS, RESULT_KEYS
from .prompts import build_prompt
from .report import WITHHELD_TEXT, kind_standing, percent
from .terms import EXAMS, HORIZONS, KIND_SHORT_LABELS, NOT_RECORDED, horizon_words
from .volume import DCEVolume

__all__ = [
    "DATE_UNKNOWN",
    "PATIENT_FILES",
    "TREND_FIGURE_FILE",
    "PatientResult",
    "VisitResult",
    "analyze_patient",
    "analyze_patient_folder",
    "exam_date",
    "exams_of_patient",
    "patient_recorded",
    "patient_trends_figure",
    "visit_clinical_values",
]

Progress = Callable[[str, float], None]

#: what a visit without a date in its data says
DATE_UNKNOWN = "date unknown"
#: what a value the clinical table does not hold for a visit says
#: every file a patient analysis writes in its folder (the report's JSON, CSV and PDF and the trend figure)
PATIENT_FILES = ("medimp_report.json", "medimp_report.csv", "medimp_report.pdf", TREND_FIGURE_FILE)


# --------------------------------------------------------------------------------------------------
# what the data says about an exam: its date, its patient, its exam name (owned by :mod:`.identity`)
# --------------------------------------------------------------------------------------------------
def _days_after_transplant(volume: DCEVolume) -> float | None:
    for side in sidecars(volume):
        value = side.get("DaysAfterTransplantation")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def _patient_in_data(volume: DCEVolume) -> str | None:
    return patient_recorded(volume)[0]


def _exam_in_data(volume: DCEVolume) -> str | None:
    return exam_recorded(volume)[0]


T = TypeVar("T")


def exams_of_patient(current: ExamIdentity, candidates: Iterable[tuple[ExamIdentity, T]]
                     ) -> tuple[str | None, dict[str, T]]:
    """The patient of the exam ``current`` and that patient's exams among ``candidates`` ((identity, item)
    pairs, e.g. open layers): exam -> item in follow-up order, the first item of each exam kept. Exams are
    grouped by their :class:`~napari_medimp.core.identity.ExamIdentity`, which reads the patient and the
    exam from the data (DICOM tags, a NIfTI's sidecar) before the cohort's folder names: a NIfTI opened on
    its own whose sidecar names its patient joins that patient's exams. ``(None, {})`` when ``current``
    names no patient."""
    if not current.patient:
        return None, {}
    exams: dict[str, T] = {}
    for who, item in candidates:
        if who.patient == current.patient and who.exam in EXAMS:
            exams.setdefault(who.exam, item)
    return current.patient, {exam: exams[exam] for exam in EXAMS if exam in exams}


# --------------------------------------------------------------------------------------------------
# clinical values of a visit
# --------------------------------------------------------------------------------------------------
def _row_value(row: Mapping, name: str):
    columns = {str(k).strip().lower(): k for k in row.keys()}
    key = columns.get(name.lower())
    return None if key is None else row[key]


def _is_records(clinical) -> bool:
    return isinstance(clinical, Mapping) and bool(clinical) and all(
        isinstance(v, ClinicalRecord) or v is None for v in clinical.values())


def visit_clinical_values(clinical, visit: str, creatinine_unit: str = "umol/L") -> tuple[ClinicalRecord | None, dict]:
    """(the record a reading at ``visit`` uses, the values of that visit for a person) from a
    ``clinical.csv`` row (``donor_age``, ``gfr_<exam>``, ``creatinine_<exam>``), from one record per exam,
    or None. The values: donor age, the GFR of the visit, the creatinine measured at the visit (None when
    it was not), the creatinine series known at the visit and its variability, in canonical units.
    A value outside the physiological range is a :class:`~napari_medimp.core.clinical.ClinicalValueError`
    naming it."""
    visit = normalize_exam(visit)
    values = {"donor_age_years": None, "gfr_ml_min_1_73m2": None, "creatinine_umol_l": None,
              "creatinine_series_umol_l": [], "creatinine_variability_umol_l": None}
    if clinical is None:
        return None, values
    if _is_records(clinical):
        records = {normalize_exam(k): v for k, v in clinical.items() if v is not None}
        record = records.get(visit)
        at_visit = record.creatinine[-1] if record is not None and record.creatinine else None
    elif isinstance(clinical, Mapping):
        record = ClinicalRecord.from_csv_row(clinical, visit, creatinine_unit=creatinine_unit)
        measured = ClinicalRecord.from_values(exam=visit, creatinine=[_row_value(clinical, f"creatinine_{visit}")],
                                              creatinine_unit=creatinine_unit).creatinine
        at_visit = measured[0] if measured else None
    else:
        raise ValueError(f"clinical values must be a clinical.csv row or one ClinicalRecord per exam, not "
                         f"{type(clinical).__name__}")
    if record is None:
        return None, values
    if record.exam != visit:
        raise ValueError(f"the clinical values given for {visit} are those of {record.exam}")
    values.update({"donor_age_years": record.donor_age, "gfr_ml_min_1_73m2": record.gfr,
                   "creatinine_umol_l": at_visit, "creatinine_series_umol_l": list(record.creatinine),
                   "creatinine_variability_umol_l": record.creatinine_variability})
    return record, values


# --------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------
@dataclass
class VisitResult:
    """One visit of the patient view: the reading at that visit from the exams so far.

    ``result`` is this exam's own :class:`~napari_medimp.core.pipeline.AnalysisResult` (similarity,
    zero-shot GFR bins, time-intensity curves, its checks; its prognosis is this visit's reading), so the
    panel can show the exams side by side with its usual figure."""

    visit: str
    date: str | None
    date_source: str | None
    days_after_transplant: float | None
    clinical: dict
    record: ClinicalRecord | None
    result: Any  # pipeline.AnalysisResult
    #: the input checks of every exam the reading used, by exam
    checks: dict[str, list[Check]]
    source: str | None = None
    patient_in_data: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def date_text(self) -> str:
        """The exam's date, else its day after transplantation as the data records it, else "date unknown"."""
        if self.date:
            return self.date
        if self.days_after_transplant is not None:
            return f"day {self.days_after_transplant:g} after transplantation"
        return DATE_UNKNOWN

    @property
    def reading(self):
        """This visit's :class:`~napari_medimp.core.inference.PrognosisReading` as its analysis shows it
        (None while withheld, or without prognosis heads)."""
        return self.result.analysis.shown_reading

    @property
    def exams_used(self) -> list[str]:
        reading = self.reading
        return list((reading.exams_used if reading is not None else None) or [self.visit])

    @property
    def risks(self) -> dict[str, dict[str, float]]:
        """Kind of reading (``image``, ``image+clinical``, ``clinical``) -> horizon -> probability; empty when
        the readings are withheld (:attr:`withheld`)."""
        if self.withheld:
            return {}
        reading = self.reading
        return {k: dict(v) for k, v in (reading.risks if reading is not None else {}).items()}

    @property
    def withheld(self) -> str | None:
        """Why this visit's readings are withheld: an image they use failed its checks (the panel's and
        ``medimp analyze``'s rule), or None."""
        if not self.outside_training:
            return None
        return "; ".join(self.failed_checks) or "an exam failed its checks"

    @property
    def standing(self) -> dict[str, str | None]:
        """Per reading, why it is no finding (:func:`~napari_medimp.core.card.reading_standing`)."""
        return dict(self.result.analysis.standing or {})

    @property
    def failed_checks(self) -> list[str]:
        """``"EXAM: message"`` of every failed check of the exams used."""
        return [f"{exam}: {c.message}" for exam, checks in self.checks.items() for c in checks if c.ok is False]

    @property
    def outside_training(self) -> bool:
        """True when an image the reading used failed a check."""
        return any(outside_training(checks) for checks in self.checks.values())

    @property
    def label(self) -> str | None:
        return OUTSIDE_TRAINING if self.outside_training else None

    def to_dict(self) -> dict:
        analysis = self.result.analysis
        reading = analysis.shown_gfr_reading
        prognosis = self.reading
        return {
            "visit": self.visit,
            "date": self.date,
            "date_text": self.date_text,
            "date_source": self.date_source,
            "days_after_transplant": self.days_after_transplant,
            "source_file": self.source,
            "patient_in_data": self.patient_in_data,
            "clinical": dict(self.clinical),
            "prompt": analysis.prompt,
            "exams_used": self.exams_used,
            "risks": self.risks,
            **{key: dict(self.risks.get(kind, {})) for kind, key in RESULT_KEYS.items()},
            "reading": prognosis.to_dict() if prognosis is not None else None,
            "similarity": analysis.shown_similarity,
            "zero_shot_gfr": reading,
            "zero_shot_gfr_most_likely": max(reading, key=reading.get) if reading else None,
            "roi_zyx": analysis.roi.to_list(),
            "checks": {exam: [c.to_dict() for c in checks] for exam, checks in self.checks.items()},
            "outside_training": self.outside_training,
            "label": self.label,
            "failed_checks": self.failed_checks,
            "notes": list(self.notes),
        }


@dataclass
class PatientResult:
    """Every visit of one patient, in follow-up order, and the trends across them."""

    patient: str | None
    visits: list[VisitResult]
    model: dict
    clinical_source: str | None = None
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    written_report: dict | None = field(default=None, repr=False)

    def visit(self, name: str) -> VisitResult:
        name = normalize_exam(name)
        for visit in self.visits:
            if visit.visit == name:
                return visit
        raise ValueError(f"patient {self.patient or '(unnamed)'} has no {name} visit; visits: "
                         f"{', '.join(v.visit for v in self.visits) or 'none'}")

    @property
    def horizons(self) -> list[str]:
        found = {h for v in self.visits for risks in v.risks.values() for h in risks}
        return [h for h in HORIZONS if h in found] + sorted(found - set(HORIZONS))

    def trend(self) -> dict:
        """GFR and creatinine per visit (None where not measured), with the visits' dates."""
        return {
            "visits": [v.visit for v in self.visits],
            "dates": [v.date for v in self.visits],
            "days_after_transplant": [v.days_after_transplant for v in self.visits],
            "gfr_ml_min_1_73m2": [v.clinical.get("gfr_ml_min_1_73m2") for v in self.visits],
            "creatinine_umol_l": [v.clinical.get("creatinine_umol_l") for v in self.visits],
        }

    def time_axis(self) -> tuple[np.ndarray | None, str]:
        """(time of each visit in days, what that time is): days after transplantation when every visit
        records it, else days after the first exam when every visit has a date, else ``(None, why)`` (the
        visits are then only in follow-up order)."""
        days = [v.days_after_transplant for v in self.visits]
        if self.visits and all(d is not None for d in days):
            return np.asarray(days, float), "days after transplantation"
        dates = [v.date for v in self.visits]
        if self.visits and all(dates):
            parsed = [date.fromisoformat(d) for d in dates]
            first = min(parsed)
            return np.asarray([(d - first).days for d in parsed], float), "days after the first exam"
        return None, "in follow-up order: the images record no date or day after transplantation for every visit"

    def report(self) -> dict:
        """The patient report (see the module docstring), JSON-serialisable."""
        from .configs import jsonable
        from .report import (
            DISCLAIMER,
            REPORT_VERSION,
            SYNTHETIC_DISCLAIMER,
            software_versions,
            trained_on_synthetic_data,
        )

        synthetic = trained_on_synthetic_data(self.model)
        return jsonable({
            "report_version": REPORT_VERSION,
            "kind": "patient",
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "disclaimer": DISCLAIMER + (" " + SYNTHETIC_DISCLAIMER if synthetic else ""),
            "patient": self.patient,
            "clinical_source": self.clinical_source,
            "reading_kinds": {kind: KIND_LABELS[kind] for kind in KINDS},
            "visits": [v.to_dict() for v in self.visits],
            "trend": self.trend(),
            "outside_training": any(v.outside_training for v in self.visits),
            "skipped": list(self.skipped),
            "notes": list(self.notes),
            "model": {**self.model, "trained_on_synthetic_data": synthetic},
            "software": software_versions(),
        })

    def figure(self, *, dark: bool = False):
        return patient_trends_figure(self, dark=dark)

    def panel_image(self, dpi: int = 80) -> bytes:
        """The trend figure as PNG bytes in napari's dark theme, for a dock widget (drawn off the main
        thread, as :func:`~napari_medimp.core.plots.panel_images`)."""
        import io

        figure = self.figure(dark=True)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=dpi, facecolor=figure.get_facecolor())
        return buffer.getvalue()

    def summary(self) -> str:
        """A few lines per visit for a person."""
        from .report import DISCLAIMER

        lines = [f"patient {self.patient or '(unnamed)'}: {len(self.visits)} visit(s) "
                 f"({', '.join(v.visit for v in self.visits)}); clinical values: {self.clinical_source or 'none'}"]
        for v in self.visits:
            c = v.clinical
            values = [_measured("GFR", c.get("gfr_ml_min_1_73m2"), "mL/min/1.73 m2"),
                      _measured("creatinine", c.get("creatinine_umol_l"), "umol/L"),
                      _measured("donor age", c.get("donor_age_years"), "years")]
            lines.append(f"{v.visit} ({v.date_text}): {', '.join(values)}; reading from {'+'.join(v.exams_used)}")
            if v.outside_training:
                lines.append(f"  {OUTSIDE_TRAINING.upper()}: " + "; ".join(v.failed_checks))
                lines.append(f"  readings withheld: {WITHHELD_TEXT}")
                continue
            for kind in KINDS:
                risks = v.risks.get(kind)
                if risks:
                    common = kind_standing(v.standing, kind, risks)
                    values = ", ".join(f"{h} {percent(p)}" for h, p in risks.items())
                    lines.append(f"  {KIND_LABELS[kind]}: " + (f"not a finding ({common}; it reads {values})"
                                                                 if common else values))
            if not v.risks:
                lines.append("  prognosis: this model has no prognosis heads")
        for item in self.skipped:
            lines.append(f"skipped {item}")
        lines.extend(f"note: {n}" for n in self.notes)
        lines.append((self.written_report or {}).get("disclaimer") or DISCLAIMER)
        return "\n".join(lines)

    def write(self, folder) -> dict[str, Path]:
        """The report (``medimp_report.json/.csv/.pdf``: the PDF holds every visit, the trend figure and each
        visit's checks) and the trend figure (:data:`TREND_FIGURE_FILE`) into ``folder``, each written
        atomically."""
        from .atomic import atomic_write
        from .pdf import write_patient_pdf
        from .report import write_report

        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{folder} exists and is a file; give a folder for the report")
        folder.mkdir(parents=True, exist_ok=True)
        figure = self.figure()
        files = {"figure": atomic_write(folder / TREND_FIGURE_FILE,
                                        lambda tmp: figure.savefig(tmp, format="png", dpi=110))}
        report = self.report()
        report["files"] = {**{k: str(v) for k, v in files.items()}, "pdf": str(folder / "medimp_report.pdf")}
        files.update(write_report(report, folder, stem="medimp_report"))
        self.written_report = report
        files["pdf"] = write_patient_pdf(self, folder / "medimp_report.pdf", report=report)
        return files


def _measured(name: str, value, unit: str) -> str:
    """``GFR 48 mL/min/1.73 m2``, or ``GFR: not recorded`` (never a unit after a missing value)."""
    return f"{name}: {NOT_RECORDED}" if value is None else f"{name} {value:g} {unit}"


# --------------------------------------------------------------------------------------------------
# the analysis
# --------------------------------------------------------------------------------------------------
def _ordered_exams(exams: Mapping[str, DCEVolume]) -> dict[str, DCEVolume]:
    if not exams:
        raise ValueError("no exams to analyse: give at least one exam of the patient")
    ordered: dict[str, DCEVolume] = {}
    for name, volume in exams.items():
        try:
            key = normalize_exam(name)
        except ClinicalValueError:
            raise ValueError(f"exam {name!r} is not a follow-up visit; a patient's exams are named "
                             f"{', '.join(EXAMS)}") from None
        if key in ordered:
            raise ValueError(f"two exams are named {key}; give each visit once")
        if not isinstance(volume, DCEVolume):
            raise ValueError(f"exam {key}: expected a DCE volume, got {type(volume).__name__}")
        ordered[key] = volume
    return {e: ordered[e] for e in EXAMS if e in ordered}


def _check_identity(exams: Mapping[str, DCEVolume], patient: str | None) -> list[str]:
    """Refuse exams whose data name different patients or another exam; returns notes."""
    named = {exam: _patient_in_data(volume) for exam, volume in exams.items()}
    ids = sorted({p for p in named.values() if p})
    if len(ids) > 1:
        raise ValueError("these exams belong to different patients: " + ", ".join(
            f"{exam} {pid}" for exam, pid in named.items() if pid) + "; analyse one patient's exams together")
    notes = []
    if ids and patient and ids[0] != patient:
        notes.append(f"the images name patient {ids[0]}, the folder or table {patient}")
    for exam, volume in exams.items():
        recorded = _exam_in_data(volume)
        if recorded and recorded != exam:
            raise ValueError(f"the exam given as {exam} is recorded as {recorded} in its data; give it as "
                             f"{recorded}")
    return notes


def analyze_patient(predictor, exams: Mapping[str, DCEVolume], clinical=None, *, patient: str | None = None,
                    clinical_source: str | None = None, rois: Mapping[str, Any] | None = None,
                    labels: Mapping[str, tuple[np.ndarray, Mapping[int, str] | None]] | None = None,
                    sources: Mapping[str, str] | None = None, creatinine_unit: str = "umol/L",
                    progress: Progress | None = None) -> PatientResult:
    """Read one patient's exams visit by visit (see the module docstring).

    ``exams``: exam name (D15, D30, M3, M12) -> volume, in any order. ``clinical``: the patient's
    ``clinical.csv`` row, or exam name -> :class:`ClinicalRecord`, or None (every value missing).
    ``rois``: exam -> kidney box (default: found from the enhancement); ``labels``: exam -> (label map,
    region names) for region curves; ``sources``: exam -> file or folder, for the report."""
    from .pipeline import AnalysisRequest, run_analysis
    from .report import clinical_inputs

    exams = _ordered_exams(exams)
    notes = _check_identity(exams, patient)
    if patient is None:
        patient = next((p for p in (_patient_in_data(v) for v in exams.values()) if p), None)
    say = progress or (lambda stage, fraction: None)
    embeddings: dict[str, np.ndarray] = {}
    visits: list[VisitResult] = []
    for i, (exam, volume) in enumerate(exams.items()):
        base, share = i / len(exams), 1 / len(exams)
        say(f"{exam}: reading", base)
        try:
            record, values = visit_clinical_values(clinical, exam, creatinine_unit)
        except ClinicalValueError as exc:
            where = ", ".join(filter(None, [clinical_source, f"patient {patient}" if patient else None]))
            raise ClinicalValueError(exc.field, exc.value, f"{exam} clinical values"
                                     + (f" ({where})" if where else "") + f": {exc}") from None
        values["source"] = clinical_source if record is not None else None
        prompt = build_prompt(record) if record is not None else None
        roi = (rois or {}).get(exam)
        label_map, names = (labels or {}).get(exam) or (None, None)
        request = AnalysisRequest(volume=volume, exam=exam, record=record, prompt=prompt, roi=roi,
                                  roi_source="given" if roi is not None else "automatic (enhancing kidney)",
                                  labels=label_map, region_names=names,
                                  clinical=clinical_inputs(record=record, source=clinical_source) if record else None,
                                  source=(sources or {}).get(exam), earlier=dict(embeddings))
        result = run_analysis(predictor, request, progress=_stage(say, exam, base, 0.8 * share))
        embeddings[exam] = result.embedding
        day, where, date_notes = exam_date(volume)
        checks_so_far = {v.visit: v.checks[v.visit] for v in visits}
        shown = result.analysis.shown_reading
        used = (shown.exams_used if shown is not None else None) or [exam]
        own = list(result.analysis.checks)
        visit_checks = {e: (own if e == exam else checks_so_far.get(e, [])) for e in used}
        visits.append(VisitResult(exam, day, where, _days_after_transplant(volume), values, record, result,
                                  visit_checks, source=request.source, patient_in_data=_patient_in_data(volume),
                                  notes=date_notes))
    notes += _date_order_notes(visits)
    say("done", 1.0)
    model = visits[0].result.model if visits else predictor.model_facts()
    return PatientResult(patient, visits, model, clinical_source=clinical_source if clinical is not None else None,
                         notes=notes)


def _stage(say: Progress, exam: str, start: float, share: float) -> Progress:
    return lambda stage, fraction: say(f"{exam}: {stage}", start + share * fraction)


def _date_order_notes(visits: list[VisitResult]) -> list[str]:
    dated = [(v.visit, v.date) for v in visits if v.date]
    return [f"{later} is dated {later_date}, before {earlier} ({earlier_date}): check the exam names or dates"
            for (earlier, earlier_date), (later, later_date) in zip(dated, dated[1:], strict=False)
            if later_date < earlier_date]


def analyze_patient_folder(predictor, folder, progress: Progress | None = None) -> PatientResult:
    """Every exam of a patient folder (``<patient>/<exam>/<sequence>/``) with the clinical values of its
    cohort's ``clinical.csv`` (the row named after the folder). An exam whose image cannot be read is
    skipped and listed; a cohort folder or an exam folder is refused with what to give instead."""
    from .curves import check_labels
    from .io.cohort import classify_folder, cohort_clinical_table, load_exam, patient_exams
    from .io.nifti import label_names, load_labels
    from .memory import MemoryBudgetError
    from .volume import DCEReadError

    folder = Path(folder)
    kind = classify_folder(folder).kind
    if kind == "cohort":
        raise ValueError(f"{folder} is a cohort folder: the patient view reads one patient; give a patient "
                         "folder (or use `medimp predict` for a cohort)")
    if kind != "patient":
        held = "is one exam folder" if kind == "exam" else "holds one image series"
        raise ValueError(f"{folder} is not a patient folder (it {held}); give a folder whose sub-folders are the "
                         "patient's exams (D15, D30, M3, M12)")
    patient = folder.name
    exams: dict[str, DCEVolume] = {}
    labels: dict[str, tuple] = {}
    sources: dict[str, str] = {}
    skipped: list[str] = []
    for name, exam_folder in patient_exams(folder).items():
        if name.upper() not in EXAMS:
            skipped.append(f"{name}: not a follow-up visit ({', '.join(EXAMS)})")
            continue
        try:
            volume, seg = load_exam(exam_folder)
        except (DCEReadError, MemoryBudgetError, OSError) as exc:
            skipped.append(f"{name}: {exc}")
            continue
        exams[name.upper()], sources[name.upper()] = volume, str(exam_folder)
        if seg is not None:
            try:
                label_map, _ = load_labels(seg)
                check_labels(volume, label_map)
            except (DCEReadError, ValueError, OSError):
                continue
            labels[name.upper()] = (label_map, label_names(seg))
    if not exams:
        raise ValueError(f"{folder}: none of the patient's exams could be read"
                         + (f" ({'; '.join(skipped)})" if skipped else ""))
    table, table_path = cohort_clinical_table(folder)
    row = table.get(patient)
    notes = []
    if table_path is None:
        notes.append("no clinical.csv found beside the patient folder: clinical values missing")
    elif row is None:
        notes.append(f"{table_path} has no row for patient {patient}: clinical values missing")
    result = analyze_patient(predictor, exams, row, patient=patient,
                             clinical_source=str(table_path) if row is not None else None, labels=labels,
                             sources=sources, progress=progress)
    result.skipped.extend(skipped)
    result.notes[:0] = notes
    return result


# --------------------------------------------------------------------------------------------------
# the figure
# --------------------------------------------------------------------------------------------------
def patient_trends_figure(result: PatientResult, *, dark: bool = False):
    """GFR and creatinine across the visits (left) and, per horizon, the risk read at each visit by the
    three kinds of reading (images = MEDIMP, images + clinical values, clinical values only); a visit
    outside what the model was trained on is marked. Object-oriented matplotlib (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    from .plots import FONT_SIZE, KIND_COLORS, style_axes, theme

    colors = theme(dark)
    horizons = result.horizons
    n_panels = 1 + max(1, len(horizons))
    figure = Figure(figsize=(3.3 * n_panels + 1.0, 3.6), dpi=100, facecolor=colors["background"])
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, n_panels, squeeze=False, gridspec_kw={"width_ratios": [1.4] + [1] * (n_panels - 1)})[0]
    visits = result.visits
    days, axis_words = result.time_axis()
    xs = np.arange(len(visits), dtype=float) if days is None else days
    if days is not None and days.size and (days.min() < 0 or np.unique(days).size < days.size):
        xs, axis_words = np.arange(len(visits), dtype=float), "in follow-up order (the recorded days overlap)"
    timed = xs is days
    ticks = [f"{v.visit}\n{v.date}" if v.date else (f"{v.visit}\nday {v.days_after_transplant:g}"
                                                    if timed and v.days_after_transplant is not None else v.visit)
             for v in visits]

    ax = axes[0]
    style_axes(ax, dark)
    ax.set_title(f"patient {result.patient or ''}".strip() + ": GFR and creatinine")
    trend = result.trend()
    gfr = np.array([np.nan if g is None else g for g in trend["gfr_ml_min_1_73m2"]], float)
    creat = np.array([np.nan if c is None else c for c in trend["creatinine_umol_l"]], float)
    _trend_line(ax, xs, gfr, "#4c9be8", "GFR", above=True)
    ax.set_ylabel("GFR (mL/min/1.73 m2)", color="#4c9be8")
    twin = ax.twinx()
    style_axes(twin, dark)
    twin.spines["right"].set_visible(True)
    _trend_line(twin, xs, creat, "#e8793a", "creatinine", above=False)
    twin.set_ylabel("creatinine (umol/L)", color="#e8793a")
    for axis, values in ((ax, gfr), (twin, creat)):
        if np.isfinite(values).any():
            axis.set_ylim(0.0, 1.2 * float(np.nanmax(values)))  # from zero: a change reads at its true size
        else:
            axis.set_yticks([])
    if not (np.isfinite(gfr).any() or np.isfinite(creat).any()):
        ax.text(0.5, 0.5, "no GFR or creatinine\nin the clinical values", transform=ax.transAxes, ha="center",
                va="center", color=colors["muted"], fontsize=FONT_SIZE)
    _time_axis(ax, xs, timed)
    ax.set_xticks(xs, ticks, fontsize=FONT_SIZE - 1)
    ax.minorticks_off()
    ax.grid(axis="y", color=colors["grid"], linewidth=0.6)
    ax.set_xlabel(f"{axis_words} (log scale)" if timed else f"visit, {axis_words}", fontsize=FONT_SIZE - 1)

    for ax, horizon in zip(axes[1:], horizons or [None], strict=False):
        style_axes(ax, dark)
        if horizon is None:
            ax.set_title("graft dysfunction (prognosis)")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.5, 0.5, "no prognosis heads in this model", transform=ax.transAxes, ha="center",
                    va="center", color=colors["muted"], fontsize=FONT_SIZE)
            continue
        ax.set_title(f"dysfunction at {horizon_words(horizon)}")
        for kind in KINDS:
            ys = np.array([v.risks.get(kind, {}).get(horizon, np.nan) for v in visits], float)
            if np.isfinite(ys).any():
                ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.6, color=KIND_COLORS[KIND_SHORT_LABELS[kind]],
                        linestyle="--" if kind == "clinical" else "-", label=KIND_SHORT_LABELS[kind])
        _time_axis(ax, xs, timed)
        for x, v in zip(xs, visits, strict=True):
            if v.outside_training:
                lo, hi = _around(x, timed)
                ax.axvspan(lo, hi, color=colors["highlight"], alpha=0.15, linewidth=0)
                ax.text(x, 0.97, "outside\ntraining", ha="center", va="top", fontsize=FONT_SIZE - 2,
                        color=colors["highlight"])
        ax.axhline(0.5, color=colors["reference"], linestyle=":", linewidth=1.0)
        ax.set_ylim(0.0, 1.0)
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        ax.set_xticks(xs, [v.visit for v in visits])
        ax.minorticks_off()
        ax.set_ylabel("probability of dysfunction")
        ax.grid(axis="y", color=colors["grid"], linewidth=0.6)
    if horizons:
        handles, names = axes[1].get_legend_handles_labels()
        legend = figure.legend(handles, names, loc="lower center", bbox_to_anchor=(0.64, 0.0), ncol=len(names),
                               fontsize=FONT_SIZE - 1, frameon=False)
        for text in legend.get_texts():
            text.set_color(colors["text"])
    figure.text(0.01, 0.02, "each visit's reading uses the exams so far (at D30: D15 and D30)", ha="left",
                va="bottom", fontsize=FONT_SIZE - 1, color=colors["muted"])
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    return figure


def _log_days(days):
    return np.log1p(np.maximum(np.asarray(days, float), 0.0))


def _time_axis(ax, xs, timed: bool) -> None:
    """Visits placed at their time on a log(1 + days) scale (D15, D30, M3 and M12 all readable), or evenly."""
    if timed:
        ax.set_xscale("function", functions=(_log_days, np.expm1))
        lo, hi = _log_days(xs.min()), _log_days(xs.max())
        pad = max(0.25, 0.08 * (hi - lo))
        ax.set_xlim(float(np.expm1(max(lo - pad, 0.0))), float(np.expm1(hi + pad)))
    else:
        ax.set_xlim(-0.5, len(xs) - 0.5)


def _around(x: float, timed: bool) -> tuple[float, float]:
    if not timed:
        return x - 0.4, x + 0.4
    return float(np.expm1(max(_log_days(x) - 0.12, 0.0))), float(np.expm1(_log_days(x) + 0.12))


def _trend_line(ax, xs, values, color: str, label: str, above: bool) -> None:
    """One measured value per visit (a visit without one is skipped), each written next to its point."""
    present = np.isfinite(values)
    if present.any():
        ax.plot(xs[present], values[present], color=color, marker="o", markersize=4, linewidth=1.6, label=label)
        for x, y in zip(xs[present], values[present], strict=True):
            ax.annotate(f"{y:.0f}", (x, y), textcoords="offset points", xytext=(0, 5 if above else -6),
                        ha="center", va="bottom" if above else "top", fontsize=7, color=color)
