"""The PDF of a patient's follow-up, A4 portrait: every visit, the trend figure, each visit's readings and
the checks of the exams each reading used."""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.image import imread

from ..checks import OUTSIDE_TRAINING
from ..report import WITHHELD_TEXT, kind_standing
from ..terms import KIND_LABELS, KINDS, NOT_RECORDED, horizon_words, percent
from .layout import (
    ALERT,
    BODY,
    MARGIN_LEFT,
    MUTED,
    NOTE,
    PAGE_SIZE,
    TEXT_COLOR,
    Flow,
    Page,
    line_height,
    pdf_path,
    save_pages,
    without_ligatures,
)
from .words import CHECK_WORDS, check_state, clinical_value

PATIENT_TITLE = "MEDIMP kidney-graft follow-up"


def patient_report_pages(result, report: dict | None = None) -> list[Page]:
    """The pages of a patient's PDF (:class:`~napari_medimp.core.longitudinal.PatientResult`): who, the
    disclaimer, the trend figure at the width of the page, then per visit its date (or day after
    transplantation), clinical values, the reading from the exams so far (each kind, each horizon) and
    the input checks of every exam that reading used; notes and skipped exams last."""
    report = report or result.written_report or result.report()
    pages: list[Page] = []
    flow = Flow(pages)
    flow.page.text(Flow.fx(MARGIN_LEFT), Flow.fy(flow.y), PATIENT_TITLE, size=16, weight="bold", color=TEXT_COLOR,
                   va="top", ha="left")
    flow.space(line_height(16) + 0.05)
    flow.field("patient", str(result.patient or "not stated"))
    flow.field("visits", ", ".join(f"{v.visit} ({v.date_text})" for v in result.visits) or "none")
    flow.field("clinical values", str(result.clinical_source or "none found: the readings use the images only"))
    flow.space(0.05)
    flow.text(str(report.get("disclaimer") or ""), color=MUTED, size=BODY - 0.5)

    flow.heading("GFR, creatinine and the readings over time")
    figure = result.figure()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=150, facecolor="white")
    buffer.seek(0)
    image = imread(buffer)
    height = flow.width * image.shape[0] / image.shape[1]
    flow.room(height + 0.1)
    ax = flow.page.figure.add_axes((Flow.fx(MARGIN_LEFT), Flow.fy(flow.y + height), flow.width / PAGE_SIZE[0],
                                    height / PAGE_SIZE[1]))
    ax.imshow(image, interpolation="antialiased")
    ax.set_axis_off()
    flow.space(height + 0.05)
    _, axis_words = result.time_axis()
    timed = figure.axes[0].get_xscale() != "linear"
    flow.text(f"Time axis: {axis_words}" + (" (log scale)" if timed else "") + ". Each visit's reading uses the "
              "exams so far; a shaded visit is outside what the model was trained on.", color=MUTED,
              size=BODY - 0.5)

    def value(v, unit: str) -> str:
        return NOT_RECORDED if v is None else f"{clinical_value(float(v))} {unit}"

    for visit in result.visits:
        flow.heading(f"{visit.visit}: {visit.date_text}")
        c = visit.clinical
        flow.field("GFR", value(c.get("gfr_ml_min_1_73m2"), "mL/min/1.73 m2"))
        flow.field("creatinine", value(c.get("creatinine_umol_l"), "umol/L"))
        flow.field("donor age", value(c.get("donor_age_years"), "years"))
        flow.field("reading from", " + ".join(visit.exams_used))
        if visit.outside_training:
            flow.banner(OUTSIDE_TRAINING.upper(), visit.failed_checks)
            flow.field("prognosis", f"readings withheld: {WITHHELD_TEXT}", color=ALERT)
        for kind in KINDS:
            risks = visit.risks.get(kind)
            if risks:
                values = ", ".join(f"{horizon_words(h)} {percent(p)}" for h, p in risks.items())
                common = kind_standing(visit.standing, kind, risks)
                flow.field(KIND_LABELS[kind], f"not a finding ({common}; it reads {values})" if common else values,
                           color=MUTED if common else TEXT_COLOR)
        if not visit.risks and not visit.outside_training:
            flow.field("prognosis", "this model has no prognosis heads", color=MUTED)
        for exam, checks in visit.checks.items():
            flow.text(f"checks of the {exam} exam", weight="bold", size=BODY - 0.5)
            for check in checks:
                flow.field(CHECK_WORDS.get(check.id, check.id), f"{check_state(check.ok)}: {check.message}",
                           color=ALERT if check.ok is False else TEXT_COLOR)
            if not checks:
                flow.text("no checks recorded", color=MUTED)
        for note in visit.notes:
            flow.text(f"note: {note}", color=NOTE)
    if result.notes or result.skipped:
        flow.heading("Notes")
        for note in result.notes:
            flow.text(note, color=NOTE)
        for item in result.skipped:
            flow.text(f"skipped {item}", color=NOTE)
    for i, page in enumerate(pages):
        page.text(Flow.fx(MARGIN_LEFT), 0.35 / PAGE_SIZE[1], f"{PATIENT_TITLE}, patient {result.patient or '-'}"
                  f"  -  page {i + 1} of {len(pages)}", size=BODY - 1, color=MUTED, va="bottom", ha="left")
    without_ligatures(pages)
    return pages


def write_patient_pdf(result, path, report: dict | None = None) -> Path:
    """Write a patient's follow-up (see :func:`patient_report_pages`) as one A4 PDF at ``path``, atomically."""
    path = pdf_path(path)
    pages = patient_report_pages(result, report)
    return save_pages(pages, path, f"{PATIENT_TITLE}, patient {result.patient or '-'}")
