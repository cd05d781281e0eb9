"""The analysis as a PDF a clinician can file: one document per analysis, A4 portrait.

Page 1: who and what (patient, exam and date as the image states them, never guessed), the acquisition,
the clinical values as they were typed and where they came from, the input checks (with a banner when the
exam is outside what the model was trained on), the results (prompt similarity, zero-shot GFR reading,
probability of graft dysfunction per horizon for each kind of reading, each with how well that reading did
on unseen patients), the model card's facts and the disclaimer. Then the key slices: three slices through
the kidney box at the frame where the box's mean signal is highest (named by its number and time, not
as a phase), with the tissue-label outlines and each saliency map, a
scale bar in millimetres and the patient-orientation letters. Last, the time-intensity curves (seconds when
the image states frame times, frame numbers otherwise; the page says which).

:func:`report_pages` draws the pages (matplotlib figures, object-oriented API only: no pyplot, no Qt) and
keeps each page's text; :func:`write_pdf` writes them into one file, atomically. Text is embedded as
TrueType (fonttype 42), so the PDF can be searched and its text copied.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from .checks import OUTSIDE_TRAINING, failed_messages
from .outputs import PDF_FILE
from .plots import LIGHT, REGION_COLORS, plot_curves
from .prognosis import KIND_LABELS, OUTCOME_DEFINITION, RESULT_KEYS
from .report import WITHHELD_TEXT, kind_standing, percent, similarity_text

__all__ = [
    "NOT_STATED",
    "PATIENT_TITLE",
    "PDF_FILE",
    "Page",
    "exam_identity",
    "key_slices",
    "orientation_letters",
    "pdf_text",
    "report_pages",
    "patient_report_pages",
    "write_patient_pdf",
    "write_pdf",
]

#: A4 portrait, inches
PAGE_SIZE = (8.27, 11.69)
TITLE = "MEDIMP kidney-graft analysis"
#: what the report says of an identifier the image does not carry (nothing is ever made up)
NOT_STATED = "{} not stated in the image"

#: the model card's name of each kind of reading (``metrics.evaluation[].feature_set``)
CARD_FEATURE_SETS = {"image": "MEDIMP", "image+clinical": "MEDIMP + clinical", "clinical": "clinical values only"}
#: clinical values in words
CLINICAL_WORDS = {"gfr": "GFR", "donor_age": "donor age", "creatinine": "creatinine",
                  "creatinine_std": "creatinine variability (standard deviation)"}
#: check ids in words
CHECK_WORDS = {"dynamic": "dynamic series", "enhancement": "enhancing kidney", "frame_times": "frame times",
               "voxel_size": "voxel size", "embedding": "like the training exams"}

_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 0.6, 0.6, 0.55, 0.95  # inches
_TEXT = LIGHT["text"]
_MUTED = LIGHT["muted"]
_ALERT = "#b42318"
_ALERT_BACKGROUND = "#fdecea"
_NOTE = "#9a6700"
_BODY = 8.5  # points
#: HarfBuzz features that keep every letter a glyph of its own (a ligature breaks searching the PDF's text)
NO_LIGATURES = ("-liga", "-clig", "-dlig")
#: average width of a character of DejaVu Sans, in ems (wrapping; a little wide to stay inside the margins)
_CHAR_EM = 0.56


@dataclass
class Page:
    """One page: its figure and every text drawn on it, in drawing order."""

    figure: Figure
    texts: list[str] = field(default_factory=list)

    def text(self, x, y, s, **kwargs):
        self.texts.append(str(s))
        return self.figure.text(x, y, s, **kwargs)


def _new_page() -> Page:
    figure = Figure(figsize=PAGE_SIZE, dpi=100, facecolor="white")
    return Page(figure)


# --------------------------------------------------------------------------------------------------
# what the image says about itself
# --------------------------------------------------------------------------------------------------
def _first(mapping: Mapping, keys: Sequence[str], where: str) -> tuple[str | None, str | None]:
    for key in keys:
        value = mapping.get(key)
        if value is not None and str(value).strip():
            return str(value).strip(), where.format(key)
    return None, None


def exam_identity(volume) -> dict[str, str | None]:
    """Patient id, exam id and exam date as the image states them, and where each was read (``patient_from``,
    ``exam_from``, ``date_from``): DICOM tags, a NIfTI's JSON sidecar, a cohort's folder names
    (``patient/exam/...``); None for what the image does not state, never a guess. The exam is the study's
    accession number or UID when the image has one, else the follow-up exam of
    :class:`~napari_medimp.core.identity.ExamIdentity` (a sidecar's ``Exam``, the folder name)."""
    from .identity import ExamIdentity

    meta = dict(volume.metadata or {})
    sidecar = meta.get("sidecar") if isinstance(meta.get("sidecar"), Mapping) else {}
    who = ExamIdentity.from_volume(volume)
    exam, exam_from = _first(meta, ("accession_number", "study_uid"), "image metadata '{}'")
    if exam is None:
        exam, exam_from = _first(sidecar, ("AccessionNumber", "StudyInstanceUID", "StudyID"), "sidecar '{}'")
    if exam is None:
        exam, exam_from = who.exam, who.exam_from
    return {"patient": who.patient, "exam": exam, "date": who.date,
            "patient_from": who.patient_from, "exam_from": exam_from, "date_from": who.date_from}


def _from_words(where: str) -> str:
    """'read from the sidecar 'Exam'' / 'typed' in a sentence."""
    return where if where.startswith(("typed", "chosen")) else f"read from the {where}"


def _labels_origin_words(origin: Mapping | None) -> str:
    """The tissue labels' file and exam in words."""
    if not origin:
        return "file and exam not recorded"
    from .identity import ExamIdentity

    who = ExamIdentity.from_dict(origin.get("identity") or {})
    file = origin.get("file") or (f"layer '{origin['layer']}'" if origin.get("layer") else "file not recorded")
    exam = who.describe() if (who.patient or who.exam) else "exam not stated"
    return f"{file} ({exam})"


def _acquisition_lines(volume) -> list[tuple[str, str]]:
    t, nz, ny, nx = volume.shape
    sz, sy, sx = volume.spacing
    rows = [("matrix", f"{nx} x {ny} x {nz} voxels (x, y, z)"),
            ("voxel size", f"{sx:.3g} x {sy:.3g} x {sz:.3g} mm (field of view {nx * sx:.0f} x {ny * sy:.0f} x "
                           f"{nz * sz:.0f} mm)")]
    times = volume.frame_times
    if times is None:
        rows.append(("frames", f"{t} frame{'s' if t != 1 else ''}; frame times not stated in the image "
                               "(curves in frame numbers)"))
    elif t > 1:
        step = float(np.median(np.diff(times)))
        rows.append(("frames", f"{t} frames from {times[0]:g} s to {times[-1]:g} s (span {times[-1] - times[0]:g} s, "
                               f"median interval {step:.4g} s)"))
    else:
        rows.append(("frames", "1 frame"))
    meta = volume.metadata or {}
    scanner = [str(meta[k]) for k in ("manufacturer", "model") if meta.get(k)]
    if meta.get("field_strength_t"):
        scanner.append(f"{meta['field_strength_t']:g} T")
    sequence = [f"{name} {meta[key]:g} {unit}" for key, name, unit in (
        ("repetition_time_ms", "TR", "ms"), ("echo_time_ms", "TE", "ms"), ("flip_angle_deg", "flip angle", "deg"))
        if isinstance(meta.get(key), (int, float))]
    if meta.get("series_description"):
        sequence.insert(0, str(meta["series_description"]))
    if scanner:
        rows.append(("scanner", " ".join(scanner)))
    if sequence:
        rows.append(("sequence", ", ".join(sequence)))
    if meta.get("source_orientation"):
        rows.append(("stored orientation", f"{meta['source_orientation']} (shown here in the patient's axes)"))
    return rows


# --------------------------------------------------------------------------------------------------
# text layout
# --------------------------------------------------------------------------------------------------
def _wrap(text: str, width_in: float, size: float) -> list[str]:
    chars = max(10, int(width_in * 72 / (size * _CHAR_EM)))
    lines: list[str] = []
    for paragraph in str(text).split("\n"):
        lines.extend(textwrap.wrap(paragraph, chars, break_long_words=True, break_on_hyphens=False) or [""])
    return lines


class _Flow:
    """Text laid out from the top of A4 pages down; a full page starts the next."""

    def __init__(self, pages: list[Page]):
        self.pages = pages
        self.page = _new_page()
        pages.append(self.page)
        self.y = _MARGIN_TOP  # inches from the top
        self.width = PAGE_SIZE[0] - _MARGIN_LEFT - _MARGIN_RIGHT

    # positions: inches from the page's top-left corner -> figure fractions
    @staticmethod
    def _fx(x_in: float) -> float:
        return x_in / PAGE_SIZE[0]

    @staticmethod
    def _fy(y_in: float) -> float:
        return 1.0 - y_in / PAGE_SIZE[1]

    def room(self, height_in: float) -> None:
        if self.y + height_in > PAGE_SIZE[1] - _MARGIN_BOTTOM:
            self.page = _new_page()
            self.pages.append(self.page)
            self.y = _MARGIN_TOP

    def space(self, inches: float) -> None:
        self.y += inches

    @staticmethod
    def line_height(size: float) -> float:
        return size * 1.32 / 72

    def text(self, s: str, *, x: float = 0.0, size: float = _BODY, color: str = _TEXT, weight: str = "normal",
             width: float | None = None, style: str = "normal") -> int:
        """Wrapped text at ``x`` inches from the left margin; returns the number of lines."""
        lines = _wrap(s, (width if width is not None else self.width - x), size)
        for line in lines:
            self.room(self.line_height(size))
            self.page.text(self._fx(_MARGIN_LEFT + x), self._fy(self.y), line, size=size, color=color,
                           weight=weight, style=style, va="top", ha="left")
            self.y += self.line_height(size)
        return len(lines)

    def heading(self, s: str) -> None:
        size = _BODY + 2.5
        self.room(self.line_height(size) + 3 * self.line_height(_BODY))  # never a heading alone at a page end
        self.space(0.04)
        self.page.text(self._fx(_MARGIN_LEFT), self._fy(self.y), s, size=size, weight="bold", color=_TEXT,
                       va="top", ha="left")
        self.y += self.line_height(size)
        self.page.figure.add_artist(Line2D([self._fx(_MARGIN_LEFT), self._fx(_MARGIN_LEFT + self.width)],
                                           [self._fy(self.y - 0.02)] * 2, color=LIGHT["grid"], linewidth=0.8))
        self.y += 0.03

    def field(self, label: str, value: str, *, label_width: float = 1.62, color: str = _TEXT) -> None:
        """``label`` in grey, ``value`` wrapped beside it."""
        lines = _wrap(value, self.width - label_width, _BODY)
        self.room(self.line_height(_BODY))
        self.page.text(self._fx(_MARGIN_LEFT), self._fy(self.y), label, size=_BODY, color=_MUTED, va="top",
                       ha="left")
        for line in lines:
            self.room(self.line_height(_BODY))
            self.page.text(self._fx(_MARGIN_LEFT + label_width), self._fy(self.y), line, size=_BODY, color=color,
                           va="top", ha="left")
            self.y += self.line_height(_BODY)

    def banner(self, title: str, lines: Sequence[str], color: str = _ALERT,
               background: str = _ALERT_BACKGROUND) -> None:
        """A framed box: ``title`` in bold capitals, then ``lines`` wrapped."""
        pad = 0.08
        wrapped = [w for line in lines for w in _wrap(line, self.width - 2 * pad - 0.15, _BODY)]
        height = 2 * pad + self.line_height(_BODY + 1.5) + len(wrapped) * self.line_height(_BODY)
        self.room(height + 0.05)
        top = self.y
        frame = Rectangle((self._fx(_MARGIN_LEFT), self._fy(top + height)), self.width / PAGE_SIZE[0],
                          height / PAGE_SIZE[1], transform=self.page.figure.transFigure, facecolor=background,
                          edgecolor=color, linewidth=1.2, zorder=0)
        self.page.figure.add_artist(frame)
        self.y = top + pad
        self.page.text(self._fx(_MARGIN_LEFT + pad), self._fy(self.y), title, size=_BODY + 1.5, weight="bold",
                       color=color, va="top", ha="left")
        self.y += self.line_height(_BODY + 1.5)
        for line in wrapped:
            self.page.text(self._fx(_MARGIN_LEFT + pad + 0.15), self._fy(self.y), line, size=_BODY, color=color,
                           va="top", ha="left")
            self.y += self.line_height(_BODY)
        self.y = top + height + 0.05

    def table(self, columns: Sequence[tuple[float, str]], rows: Sequence[Sequence[Sequence[str]]],
              size: float = _BODY) -> None:
        """``columns``: (x in inches from the margin, header); each row holds per column one or more lines."""
        self.room(self.line_height(size) * 2)
        for x, header in columns:
            self.page.text(self._fx(_MARGIN_LEFT + x), self._fy(self.y), header, size=size, weight="bold",
                           color=_TEXT, va="top", ha="left")
        self.y += self.line_height(size)
        for row in rows:
            height = max(len(cell) for cell in row) * self.line_height(size)
            self.room(height)
            for (x, _), cell in zip(columns, row, strict=True):
                for i, line in enumerate(cell):
                    self.page.text(self._fx(_MARGIN_LEFT + x), self._fy(self.y + i * self.line_height(size)), line,
                                   size=size if i == 0 else size - 1, color=_TEXT if i == 0 else _MUTED, va="top",
                                   ha="left")
            self.y += height + 0.03


# --------------------------------------------------------------------------------------------------
# page 1: identity, acquisition, inputs, checks, results, model, disclaimer
# --------------------------------------------------------------------------------------------------
def _auc_words(auc: tuple | None) -> str:
    if auc is None:
        return "not measured on unseen patients"
    estimate, low, high = auc
    if low is None or high is None:
        return f"AUC {estimate:.2f} on unseen patients"
    return f"AUC {estimate:.2f} (95 % CI {low:.2f}-{high:.2f})"


def _horizon_words(horizon: str) -> str:
    text = str(horizon)
    return f"{text[:-1]} years" if text.endswith("y") and text[:-1].isdigit() else text


def _clinical_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _identity_page(flow: _Flow, result, report: dict) -> None:
    volume = result.request.volume
    who = exam_identity(volume)
    inputs = result.inputs or {}
    page = flow.page
    page.text(flow._fx(_MARGIN_LEFT), flow._fy(flow.y), TITLE, size=16, weight="bold", color=_TEXT, va="top")
    page.text(flow._fx(PAGE_SIZE[0] - _MARGIN_RIGHT), flow._fy(flow.y + 0.04),
              "research software, not for clinical use", size=_BODY, color=_ALERT, weight="bold", va="top", ha="right")
    flow.y += 0.38
    flow.banner("DISCLAIMER", [report.get("disclaimer") or ""])
    for key, label in (("patient", "patient"), ("exam", "exam in the image"), ("date", "exam date")):
        if who[key]:
            flow.field(label, f"{who[key]}  (read from the {who[key + '_from']})")
        else:
            flow.field(label, NOT_STATED.format(key), color=_NOTE)
        if key == "patient":
            exam_from = inputs.get("exam_source")
            flow.field("exam", f"{result.request.exam} (follow-up visit after transplant, as chosen for the "
                               "analysis" + (f"; {_from_words(exam_from)}" if exam_from else "") + ")")
    source = inputs.get("source_file") or volume.source or "not recorded"
    flow.field("image", str(source) + (f" (layer '{inputs['layer_name']}')" if inputs.get("layer_name") else ""))
    software = ", ".join(f"{k} {v}" for k, v in (report.get("software") or {}).items() if v)
    flow.field("report made", str(report.get("created_utc", "")).replace("T", " ").replace("+00:00", " UTC")
               + (f" by {software}" if software else ""))

    flow.heading("Acquisition")
    for label, value in _acquisition_lines(volume):
        flow.field(label, value)
    for note in inputs.get("reading_notes") or []:
        from .report import note_without_path

        flow.field("how it was read", note_without_path(note), color=_NOTE)

    flow.heading("Inputs")
    clinical = inputs.get("clinical") or {}
    entered = clinical.get("entered") or {}
    if entered:
        for name, item in entered.items():
            where = item.get("source") or clinical.get("source") or "source not recorded"
            flow.field(CLINICAL_WORDS.get(name, name.replace("_", " ")),
                       f"{_clinical_value(item.get('value'))} {item.get('unit', '')}".strip() + f"  ({where})")
            other = item.get("differs_from")
            if other:
                flow.field("", f"differs from {other.get('source')}: {_clinical_value(other.get('value'))}",
                           color=_NOTE)
        used = clinical.get("used") or {}
        if entered.get("creatinine", {}).get("unit") not in (None, "umol/L") and used.get("creatinine_umol_l"):
            values = used["creatinine_umol_l"]
            values = values if isinstance(values, (list, tuple)) else [values]
            flow.field("creatinine used", ", ".join(f"{float(v):.0f}" for v in values) + " umol/L (converted)")
    else:
        flow.field("clinical values", "none given", color=_NOTE)
    flow.field("prompt", report.get("prompt") or "none")
    roi = inputs.get("roi") or {}
    if roi:
        size = roi.get("size_zyx_mm") or []
        box = roi.get("voxels_zyx")
        words = f"voxels z {box[0]}-{box[1]}, y {box[2]}-{box[3]}, x {box[4]}-{box[5]}" if box else ""
        if len(size) == 3:
            words += f" ({size[2]:.0f} x {size[1]:.0f} x {size[0]:.0f} mm)"
        flow.field("kidney box", f"{words}; {roi.get('source') or 'source not recorded'}")
    labels = result.request.labels
    flow.field("tissue labels", "given: " + ", ".join(_region_names(result)) if labels is not None and
               _region_names(result) else ("given, without kidney region names" if labels is not None else "none"))
    if labels is not None:
        flow.field("labels from", _labels_origin_words(inputs.get("labels")))

    flow.heading("Checks of the input")
    checks = report.get("checks") or []
    failed = failed_messages(checks)
    if failed:
        n = len(failed)
        flow.banner(OUTSIDE_TRAINING.upper(), [
            f"{n} check{'s' if n > 1 else ''} below failed. The results are shown, but they are {OUTSIDE_TRAINING}: "
            "read them with that in mind."])
    for check in checks:
        state = {True: "passed", False: "FAILED", None: "not made"}[check.get("ok")]
        flow.field(f"{CHECK_WORDS.get(check.get('id'), check.get('id'))}",
                   f"{state}: {check.get('message')}", color=_ALERT if check.get("ok") is False else _TEXT)
    if not checks:
        flow.text("no checks recorded", color=_MUTED)

    _results_section(flow, result, report)
    _model_section(flow, report)


def _results_section(flow: _Flow, result, report: dict) -> None:
    results = report.get("results") or {}
    model = report.get("model") or {}
    flow.heading(f"Results (exam {results.get('exam') or result.request.exam})")
    if results.get("readings_withheld"):
        flow.text(f"Readings withheld: {WITHHELD_TEXT}. See the checks above.", color=_ALERT, weight="bold")
        return
    if results.get("outside_training"):
        flow.text(f"{OUTSIDE_TRAINING.capitalize()}: see the checks above. The readings below are shown because "
                  "the user chose to see them anyway.", color=_ALERT, weight="bold")
    if results.get("similarity") is not None:
        flow.field("image-prompt similarity", similarity_text(results) + "; -1 to 1, higher: the image matches "
                                                                         "the prompt better")
    reading = results.get("zero_shot_gfr") or {}
    standing = results.get("reading_standing") or {}
    if reading and standing.get("zero_shot_gfr"):
        flow.field("zero-shot GFR reading", f"not a finding: {standing['zero_shot_gfr']}", color=_MUTED)
    elif reading:
        best = results.get("zero_shot_gfr_most_likely") or max(reading, key=reading.get)
        words = f"most likely {best} ({percent(reading[best])}); " + ", ".join(
            f"{name} {percent(p)}" for name, p in reading.items())
        given = results.get("entered_gfr_bin")
        if given:
            words += f". The entered GFR is {given}"
        flow.field("zero-shot GFR reading", words)
        accuracy = results.get("zero_shot_gfr_accuracy") or {}
        if accuracy.get("accuracy") is not None:
            flow.field("", f"how well this reading did on unseen patients: right for {percent(accuracy['accuracy'])} "
                           f"of {accuracy.get('n_exams')} exams (always answering the commonest range: "
                           f"{percent(accuracy.get('majority_accuracy') or 0)})", color=_MUTED)
        else:
            flow.field("", "this model's GFR reading was not checked on unseen patients", color=_MUTED)
    kinds = [kind for kind, key in RESULT_KEYS.items() if results.get(key)]
    not_shown = (results.get("prognosis_reading") or {}).get("not_shown") or {}
    for kind, why in not_shown.items():
        flow.field(KIND_LABELS[kind], f"not shown: {why}", color=_MUTED)
    if not kinds:
        if not not_shown:
            flow.field("prognosis", "this model has no prognosis heads")
        return
    from .card import cv_auc

    prognosis = results.get("prognosis_reading") or {}
    aucs = {kind: cv_auc(model, CARD_FEATURE_SETS[kind]) for kind in kinds}
    measured = any(aucs.values())
    in_sample = bool(((model.get("metrics") or {}).get("evaluation_protocol") or {}).get("in_sample_warning"))
    flow.space(0.05)
    flow.text(f"Probability of graft dysfunction by year h, reading at "
              f"{prognosis.get('visit') or results.get('exam')}", weight="bold")
    if measured:
        flow.text("Below each: how well that reading did on unseen patients (AUC with its 95 % interval, from the model "
                  "card; 0.5: chance, 1: perfect); one exam's probability has no interval of its own.", color=_MUTED,
                  size=_BODY - 0.5)
    horizons = list(dict.fromkeys(h for kind in kinds for h in results[RESULT_KEYS[kind]]))
    columns = [(0.0, "horizon")] + [(1.0 + 2.0 * i, KIND_LABELS[kind]) for i, kind in enumerate(kinds)]
    rows = []
    for h in horizons:
        row = [[_horizon_words(h)]]
        for kind in kinds:
            p = results[RESULT_KEYS[kind]].get(h)
            shown = "-" if p is None else percent(p) + (" (not a finding)" if standing.get(f"{kind}/{h}") else "")
            row.append([shown] + ([_auc_words(aucs[kind].get(h))] if measured else []))
        rows.append(row)
    flow.table(columns, rows)
    reasons = dict.fromkeys(standing.get(f"{kind}/{h}") for kind in kinds for h in horizons) if measured else {}
    for reason in (r for r in reasons if r):
        flow.text(f"Not a finding: {reason}.", color=_MUTED, size=_BODY - 0.5)
    for note in prognosis.get("outside_range") or []:
        flow.text(f"Outside the training range: {note}.", color=_NOTE)
    flow.text(f"Outcome: {OUTCOME_DEFINITION}.", color=_MUTED, size=_BODY - 0.5)
    if not measured:
        flow.text("This model's card records no evaluation on unseen patients: how well these readings do is not "
                  "known.", color=_NOTE)
    elif in_sample:
        flow.text("The card's AUCs were measured on the model's own training patients (in-sample): they are not a "
                  "result.", color=_ALERT)
    used = {kind: words for kind, words in (prognosis.get("inputs") or {}).items() if kind in kinds}
    if "image+clinical" in used:  # the images of the image-only reading and the values of the clinical-only one
        flow.text(f"The readings used {used['image+clinical']}.", color=_MUTED, size=_BODY - 0.5)
    else:
        for kind, words in used.items():
            flow.text(f"The {KIND_LABELS[kind]} reading used {words}.", color=_MUTED, size=_BODY - 0.5)
    if results.get("prognosis_note"):
        flow.field("note", results["prognosis_note"], color=_NOTE)


def _model_section(flow: _Flow, report: dict) -> None:
    model = report.get("model") or {}
    flow.heading("Model")
    encoder = model.get("architecture") or "image encoder not recorded"
    flow.field("name", f"{model.get('name') or 'unnamed model'} ({encoder}); weights sha256 "
                       + str(model.get("weights_sha256") or "not recorded")[:12])
    flow.field("trained on", str(model.get("training_data") or "not recorded"))
    synthetic = bool(model.get("trained_on_synthetic_data") or model.get("synthetic"))
    flow.field("synthetic data", "yes: a demonstration model; its outputs say nothing about a real patient"
               if synthetic else "no", color=_ALERT if synthetic else _TEXT)
    protocol = (model.get("metrics") or {}).get("evaluation_protocol") or {}
    if protocol:
        parts = [f"{protocol['n_patients']} patients" if protocol.get("n_patients") else None,
                 f"cohort {protocol['cohort']}" if protocol.get("cohort") else None,
                 f"{protocol['repeats']} x {protocol['splits']}-fold cross-validation"
                 if protocol.get("repeats") and protocol.get("splits") else None,
                 f"{protocol['bootstrap']} bootstrap resamples for the 95 % intervals" if protocol.get("bootstrap")
                 else None]
        flow.field("evaluation", ", ".join(p for p in parts if p))
    if model.get("licence"):
        flow.field("licence", str(model["licence"]))


# --------------------------------------------------------------------------------------------------
# key slices
# --------------------------------------------------------------------------------------------------
_POSITIVE, _NEGATIVE = ("R", "A", "S"), ("L", "P", "I")


def _direction_letters(affine, index_axis: int) -> tuple[str, str]:
    """(letter towards which voxel index ``index_axis`` (0: x, 1: y, 2: z) increases, the opposite letter)."""
    column = np.asarray(affine, float)[:3, index_axis]
    world = int(np.argmax(np.abs(column)))
    if column[world] >= 0:
        return _POSITIVE[world], _NEGATIVE[world]
    return _NEGATIVE[world], _POSITIVE[world]


def orientation_letters(affine) -> dict[str, Any]:
    """How to show an axial slice ``data[z]`` (rows y, columns x) in the radiological convention (the
    patient's right on the viewer's left, anterior or superior at the top) and the letters at its sides:
    ``flip_rows``, ``flip_columns`` (to apply to the slice before showing it with row 0 at the top) and
    ``left``, ``right``, ``top``, ``bottom``."""
    x_up, x_down = _direction_letters(affine, 0)
    y_up, y_down = _direction_letters(affine, 1)
    # columns: increasing x to the right unless that puts the patient's right (or anterior) on the right
    flip_columns = x_up in ("R", "A")
    left, right = (x_up, x_down) if flip_columns else (x_down, x_up)
    # rows: row 0 at the top; flip when increasing y goes anterior or superior, so that those end up on top
    flip_rows = y_up in ("A", "S")
    top, bottom = (y_up, y_down) if flip_rows else (y_down, y_up)
    return {"flip_rows": flip_rows, "flip_columns": flip_columns, "left": left, "right": right, "top": top,
            "bottom": bottom}


def key_slices(volume, roi, curve=None, n_slices: int = 3, n_baseline: int = 2) -> dict[str, Any]:
    """The frame where the kidney box's mean signal ``curve`` is highest (often a late frame; it is named by
    its number and time, see :func:`~napari_medimp.core.curves.describe_frame`) and
    ``n_slices`` slices through the box: the slice whose mean enhancement over the baseline is highest and its
    neighbours, a quarter of the box apart (inside the box). Returns ``frame``, ``slices`` (z indices,
    increasing) and ``peak_slice``. Reads only the baseline and peak frames."""
    from .curves import roi_curve
    from .preprocess import RoiBox

    box = RoiBox.from_sequence(roi)
    (z0, z1), zyx = (box.start[0], box.stop[0]), box.slices
    curve = np.asarray(roi_curve(volume, box) if curve is None else curve, float)
    frame = int(np.argmax(curve)) if curve.size else 0
    peak = volume.frame(frame)[zyx].astype(np.float64)
    nb = max(1, min(n_baseline, volume.n_frames - 1))
    if volume.n_frames > 1 and frame >= nb:
        baseline = sum(volume.frame(t)[zyx].astype(np.float64) for t in range(nb)) / nb
        per_slice = (peak - baseline).mean(axis=(1, 2))
    else:  # no enhancement to measure: the brightest slice
        per_slice = peak.mean(axis=(1, 2))
    centre = z0 + int(np.argmax(per_slice))
    step = max(1, (z1 - z0) // 4)
    half = (n_slices - 1) // 2
    wanted = [centre + step * k for k in range(-half, n_slices - half)]
    slices = sorted({min(max(z, z0), z1 - 1) for z in wanted})
    return {"frame": frame, "slices": slices, "peak_slice": centre}


def _region_names(result) -> list[str]:
    return list(_region_values(result).values())


def _region_values(result) -> dict[int, str]:
    """label value -> region name of the regions the tissue labels hold (those the curves show)."""
    labels = result.request.labels
    if labels is None:
        return {}
    from .curves import default_region_names

    names = result.request.region_names
    names = default_region_names(labels) if names is None else dict(names)
    present = set(np.unique(np.asarray(labels)).tolist())
    return {int(v): n for v, n in names.items() if int(v) in present}


def _curve_color(result, name: str) -> str:
    names = list(result.curves or {})
    return REGION_COLORS[names.index(name) % len(REGION_COLORS)] if name in names else "#ffffff"


def _scale_bar_mm(width_mm: float) -> float:
    for length in (100, 50, 20, 10, 5, 2, 1):
        if length <= 0.3 * width_mm:
            return float(length)
    return round(0.3 * width_mm, 1) or 1.0


def _draw_slice(ax, result, z: int, frame_image: np.ndarray, crop, orientation: dict, window, smap=None,
                saliency_range: tuple[float, float] = (0.0, 1.0)):
    """One key slice: the peak-phase image, the tissue outlines, the kidney box, the map, scale and letters."""
    from .curves import ROI_CURVE

    volume = result.request.volume
    sz, sy, sx = volume.spacing
    (y0, y1), (x0, x1) = crop

    def shown(a):
        a = a[::-1] if orientation["flip_rows"] else a
        return a[:, ::-1] if orientation["flip_columns"] else a

    height_mm, width_mm = (y1 - y0) * sy, (x1 - x0) * sx
    extent = (0.0, width_mm, height_mm, 0.0)
    ax.imshow(shown(frame_image[z, y0:y1, x0:x1]), cmap="gray", vmin=window[0], vmax=window[1], extent=extent,
              interpolation="nearest")

    def to_mm(y, x):  # voxel corner (y, x) of the crop -> display mm
        u = (x - x0) * sx
        v = (y - y0) * sy
        if orientation["flip_columns"]:
            u = width_mm - u
        if orientation["flip_rows"]:
            v = height_mm - v
        return u, v

    image = None
    if smap is not None:
        rz0, rz1, ry0, ry1, rx0, rx1 = smap.roi.to_list()
        if rz0 <= z < rz1:
            overlay = np.full((y1 - y0, x1 - x0), np.nan)
            values = np.asarray(smap.data, float)[z - rz0]
            ys, xs = slice(max(ry0, y0), min(ry1, y1)), slice(max(rx0, x0), min(rx1, x1))
            overlay[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = \
                values[ys.start - ry0:ys.stop - ry0, xs.start - rx0:xs.stop - rx0]
            low, high = saliency_range
            overlay = np.where(overlay > low + 0.15 * (high - low), overlay, np.nan)
            image = ax.imshow(shown(overlay), cmap="inferno", vmin=low, vmax=high, alpha=0.55, extent=extent,
                              interpolation="nearest")
    for value, name in _region_values(result).items():
        mask = np.asarray(result.request.labels)[z, y0:y1, x0:x1] == value
        if mask.any() and not mask.all():
            ax.contour((np.arange(x1 - x0) + 0.5) * sx, (np.arange(y1 - y0) + 0.5) * sy, shown(mask.astype(float)),
                       levels=[0.5], colors=[_curve_color(result, name)], linewidths=0.9)
    box = result.roi.to_list()
    if box[0] <= z < box[1]:
        (u0, v0), (u1, v1) = to_mm(box[2], box[4]), to_mm(box[3], box[5])
        ax.add_patch(Rectangle((min(u0, u1), min(v0, v1)), abs(u1 - u0), abs(v1 - v0), fill=False,
                               edgecolor=_curve_color(result, ROI_CURVE), linestyle="--", linewidth=0.9))
    ax.set_xlim(0.0, width_mm)
    ax.set_ylim(height_mm, 0.0)
    ax.set_xticks([])
    ax.set_yticks([])
    bar = _scale_bar_mm(width_mm)
    margin = 0.05 * width_mm
    ax.plot([margin, margin + bar], [height_mm - 0.06 * height_mm] * 2, color="white", linewidth=2.5,
            solid_capstyle="butt")
    ax.text(margin + bar / 2, height_mm - 0.09 * height_mm, f"{bar:g} mm", color="white", ha="center",
            va="bottom", fontsize=_BODY - 1)
    sides = {"left": (0.02, 0.5, "left", "center"), "right": (0.98, 0.5, "right", "center"),
             "top": (0.5, 0.98, "center", "top"), "bottom": (0.5, 0.02, "center", "bottom")}
    for side, (x, y, ha, va) in sides.items():
        ax.text(x, y, orientation[side], transform=ax.transAxes, ha=ha, va=va, color="#ffd33d", fontsize=_BODY + 1,
                weight="bold")
    return image


def _crop(roi, shape_yx, margin: float = 0.3) -> tuple[tuple[int, int], tuple[int, int]]:
    box = roi.to_list()
    out = []
    for (a, b), n in zip(((box[2], box[3]), (box[4], box[5])), shape_yx, strict=True):
        pad = max(4, int(round(margin * (b - a))))
        out.append((max(0, a - pad), min(int(n), b + pad)))
    return out[0], out[1]


def _saliency_title(smap) -> str:
    words = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "occlusion": "occlusion",
             "integrated-gradients": "integrated gradients"}
    target = "the prompt similarity" if smap.target == "similarity" else \
        f"the image-only prognosis at {_horizon_words(smap.target)}"
    return f"{words.get(smap.method, smap.method)} map of {target} (score {float(smap.score):.3f})"


def _map_caption(smap, section: Mapping | None) -> tuple[list[str], bool]:
    """The lines under a map's slices (its report section in words) and whether they start with the notice of
    an empty map."""
    explanation = str((section or {}).get("explanation") or "")
    noted = not np.any(np.asarray(smap.data) > 0) and "zero everywhere" not in explanation
    text = ("The map is zero everywhere: nothing to overlay. " if noted else "") + explanation
    return _wrap(text, PAGE_SIZE[0] - _MARGIN_LEFT - _MARGIN_RIGHT, _BODY - 1) if text else [], noted


def _maps(result, saliency_maps) -> list[tuple[Any, dict | None]]:
    if saliency_maps is None:
        maps = list((result.saliency_maps or {}).values()) or ([result.saliency_map] if result.saliency_map else [])
    else:
        maps = list(saliency_maps)
    sections = result.saliency_sections or {}
    return [(m, sections.get((m.method, m.target))) for m in maps]


def _slice_pages(pages: list[Page], result, saliency_maps, chosen: dict) -> None:
    volume = result.request.volume
    frame_image = np.asarray(volume.frame(chosen["frame"]), float)
    crop = _crop(result.roi, frame_image.shape[1:])
    region = frame_image[:, crop[0][0]:crop[0][1], crop[1][0]:crop[1][1]]
    window = tuple(float(v) for v in np.percentile(region, (1.0, 99.5)))
    if window[1] <= window[0]:
        window = (window[0], window[0] + 1.0)
    orientation = orientation_letters(volume.affine)
    times = volume.frame_times
    from .curves import describe_frame

    shown = describe_frame(chosen["frame"], volume.n_frames, times)
    regions = _region_values(result)
    rows: list[tuple[str, Any, dict | None]] = [("image", None, None)]
    rows += [("map", smap, section) for smap, section in _maps(result, saliency_maps)]
    per_page = 3
    for start in range(0, len(rows), per_page):
        page = _new_page()
        pages.append(page)
        figure = page.figure
        top = 1.0 - _MARGIN_TOP / PAGE_SIZE[1]
        page.text(_MARGIN_LEFT / PAGE_SIZE[0], top, "Key slices" + (" (continued)" if start else ""), size=13,
                  weight="bold", color=_TEXT, va="top")
        lines = _wrap(f"Frame shown: {shown}, where the kidney box's mean signal is highest. "
                      f"Axial slices {', '.join(str(z + 1) for z in chosen['slices'])} of {volume.shape[1]} "
                      f"(slice {chosen['peak_slice'] + 1} enhances most in the kidney box), radiological "
                      "convention: the patient's right on the left. Dashed: the kidney box analysed"
                      + (f"; outlines: the tissue labels ({', '.join(regions.values())})" if regions else
                         "; no tissue labels given") + ".", PAGE_SIZE[0] - _MARGIN_LEFT - _MARGIN_RIGHT, _BODY)
        for i, line in enumerate(lines):
            page.text(_MARGIN_LEFT / PAGE_SIZE[0], top - (0.32 + i * _Flow.line_height(_BODY)) / PAGE_SIZE[1], line,
                      size=_BODY, color=_TEXT, va="top")
        row_top = _MARGIN_TOP + 0.42 + len(lines) * _Flow.line_height(_BODY) + 0.1
        legend_height, row_gap = 0.35, 0.5  # row_gap: a row's title, the slice titles, the space below
        width = (PAGE_SIZE[0] - _MARGIN_LEFT - _MARGIN_RIGHT - 0.75 - 2 * 0.2) / 3  # 0.75: the map's colour bar
        on_page = rows[start:start + per_page]
        captions = [_map_caption(smap, section) if kind == "map" else ([], False) for kind, smap, section in on_page]
        heights = [len(c) * _Flow.line_height(_BODY - 1) + row_gap for c, _ in captions]
        free = PAGE_SIZE[1] - row_top - _MARGIN_BOTTOM - legend_height - sum(heights)
        size = min(width, free / per_page)  # room for three rows
        y = row_top
        for (kind, smap, _), (caption, noted), height in zip(on_page, captions, heights, strict=True):
            title = "Peak-phase image" + (" with the tissue outlines" if regions else "") if kind == "image" else \
                _saliency_title(smap)
            page.text(_MARGIN_LEFT / PAGE_SIZE[0], 1 - y / PAGE_SIZE[1], title, size=_BODY + 1, weight="bold",
                      color=_TEXT, va="top")
            image_top = y + 0.3
            high = float(np.max(smap.data)) if smap is not None and np.size(smap.data) else 1.0
            overlay = None
            for c, z in enumerate(chosen["slices"]):
                left = _MARGIN_LEFT + c * (width + 0.2) + (width - size) / 2
                ax = figure.add_axes((left / PAGE_SIZE[0], 1 - (image_top + size) / PAGE_SIZE[1],
                                      size / PAGE_SIZE[0], size / PAGE_SIZE[1]))
                drawn = _draw_slice(ax, result, z, frame_image, crop, orientation, window, smap,
                                    (0.0, high if high > 0 else 1.0))
                overlay = drawn if drawn is not None else overlay
                ax.set_title(f"slice {z + 1}" + (" (most enhancing)" if z == chosen["peak_slice"] else ""), fontsize=_BODY,
                             color=_TEXT, pad=2)
                page.texts.append(ax.get_title())
            if overlay is not None and high > 0:
                cax = figure.add_axes(((PAGE_SIZE[0] - _MARGIN_RIGHT - 0.45) / PAGE_SIZE[0],
                                       1 - (image_top + size) / PAGE_SIZE[1], 0.1 / PAGE_SIZE[0],
                                       size / PAGE_SIZE[1]))
                bar = figure.colorbar(overlay, cax=cax)
                bar.ax.tick_params(labelsize=_BODY - 2)
                bar.set_label("map (relative)", fontsize=_BODY - 1)
            for i, line in enumerate(caption):
                page.text(_MARGIN_LEFT / PAGE_SIZE[0],
                          1 - (image_top + size + 0.08 + i * _Flow.line_height(_BODY - 1)) / PAGE_SIZE[1], line,
                          size=_BODY - 1, color=_ALERT if noted and i == 0 else _MUTED, va="top")
            y += size + height
        handles = [Line2D([], [], color=_curve_color(result, "kidney ROI"), linestyle="--", label="kidney box")]
        handles += [Line2D([], [], color=_curve_color(result, name), label=name) for name in regions.values()]
        figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False, fontsize=_BODY,
                      bbox_to_anchor=(0.5, (_MARGIN_BOTTOM - 0.05) / PAGE_SIZE[1]))
        page.texts.extend(h.get_label() for h in handles)


# --------------------------------------------------------------------------------------------------
# curves
# --------------------------------------------------------------------------------------------------
def _curves_page(pages: list[Page], result, report: dict, chosen: dict) -> None:
    from .curves import ENHANCEMENT_DEFINITION

    page = _new_page()
    pages.append(page)
    figure = page.figure
    times = result.request.volume.frame_times
    curves = result.curves or {}
    top = 1.0 - _MARGIN_TOP / PAGE_SIZE[1]
    page.text(_MARGIN_LEFT / PAGE_SIZE[0], top, "Time-intensity curves", size=13, weight="bold", color=_TEXT, va="top")
    axis = ("time axis: seconds from the first frame, as the image states them" if times is not None else
            "time axis: frame numbers (from 0), because the image states no frame times")
    lines = _wrap(f"Mean signal per frame in the kidney box and in each labelled region; {axis}. Dotted line: the "
                  "phase of the key slices.", PAGE_SIZE[0] - _MARGIN_LEFT - _MARGIN_RIGHT, _BODY)
    for i, line in enumerate(lines):
        page.text(_MARGIN_LEFT / PAGE_SIZE[0], top - (0.32 + i * _Flow.line_height(_BODY)) / PAGE_SIZE[1], line,
                  size=_BODY, color=_TEXT, va="top")
    width = (PAGE_SIZE[0] - _MARGIN_LEFT - _MARGIN_RIGHT - 0.55) / PAGE_SIZE[0]
    left = (_MARGIN_LEFT + 0.55) / PAGE_SIZE[0]
    height = 2.7
    tops = (_MARGIN_TOP + 0.75 + len(lines) * _Flow.line_height(_BODY), 0.0)
    tops = (tops[0], tops[0] + height + 0.85)
    axes = [figure.add_axes((left, 1 - (t + height) / PAGE_SIZE[1], width, height / PAGE_SIZE[1])) for t in tops]
    unit = "s" if times is not None else "frame"
    plot_curves(axes[0], curves, times, unit, relative=True)
    plot_curves(axes[1], curves, times, unit, relative=False)
    axes[0].set_title("relative enhancement")
    axes[1].set_title("mean signal")
    if curves:
        x = times[chosen["frame"]] if times is not None else chosen["frame"]
        for ax in axes:
            ax.axvline(x, color=_MUTED, linestyle=":", linewidth=1.2)
    for ax in axes:
        page.texts.extend([ax.get_title(), ax.get_xlabel(), ax.get_ylabel()])
        if ax.get_legend():
            page.texts.extend(t.get_text() for t in ax.get_legend().get_texts())
    section = (report.get("curves") or {}).get("regions") or {}
    if section:
        suffix = "s" if times is not None else "frame"
        y = tops[1] + height + 0.6
        page.text(_MARGIN_LEFT / PAGE_SIZE[0], 1 - y / PAGE_SIZE[1],
                  f"Per region (times in {'seconds' if times is not None else 'frame numbers'})",
                  size=_BODY, weight="bold", color=_TEXT, va="top")
        y += _Flow.line_height(_BODY) + 0.02
        page.text(_MARGIN_LEFT / PAGE_SIZE[0], 1 - y / PAGE_SIZE[1], ENHANCEMENT_DEFINITION[0].upper()
                  + ENHANCEMENT_DEFINITION[1:] + "; the input check states the same for the box.", size=_BODY - 1,
                  color=_TEXT, va="top")
        y += _Flow.line_height(_BODY) + 0.05
        columns = [(0.0, "region"), (1.7, "baseline"), (2.6, "peak rise"), (3.5, "relative peak"),
                   (4.6, "time to peak"), (5.7, "time to half peak")]
        for x, header in columns:
            page.text((_MARGIN_LEFT + x) / PAGE_SIZE[0], 1 - y / PAGE_SIZE[1], header, size=_BODY - 0.5,
                      weight="bold", color=_TEXT, va="top")
        for name, summary in section.items():
            y += _Flow.line_height(_BODY) + 0.02
            if y > PAGE_SIZE[1] - _MARGIN_BOTTOM - 0.2:
                break
            relative = summary.get("relative_peak_enhancement")
            cells = [name, f"{summary.get('baseline', float('nan')):.4g}",
                     f"{summary.get('peak_enhancement', float('nan')):.4g}",
                     percent(relative) if relative is not None and np.isfinite(relative) else "-",
                     f"{summary.get(f'time_to_peak_{suffix}', float('nan')):g}",
                     f"{summary.get(f'time_to_half_peak_{suffix}', float('nan')):.3g}"]
            for (x, _), cell in zip(columns, cells, strict=True):
                page.text((_MARGIN_LEFT + x) / PAGE_SIZE[0], 1 - y / PAGE_SIZE[1], cell, size=_BODY - 0.5,
                          color=_TEXT, va="top")


# --------------------------------------------------------------------------------------------------
# the document
# --------------------------------------------------------------------------------------------------
def _footers(pages: list[Page], result, report: dict) -> None:
    who = exam_identity(result.request.volume)
    patient = f"patient {who['patient']}" if who["patient"] else NOT_STATED.format("patient")
    disclaimer = _wrap(report.get("disclaimer") or "", PAGE_SIZE[0] - _MARGIN_LEFT - _MARGIN_RIGHT, _BODY - 1.5)
    for number, page in enumerate(pages, 1):
        y = _MARGIN_BOTTOM - 0.35
        page.figure.add_artist(Line2D([_MARGIN_LEFT / PAGE_SIZE[0], 1 - _MARGIN_RIGHT / PAGE_SIZE[0]],
                                      [(y + 0.08) / PAGE_SIZE[1]] * 2, color=LIGHT["grid"], linewidth=0.6))
        page.text(_MARGIN_LEFT / PAGE_SIZE[0], y / PAGE_SIZE[1], f"{TITLE} - {patient} - exam {result.request.exam}",
                  size=_BODY - 1, color=_MUTED, va="top")
        page.text(1 - _MARGIN_RIGHT / PAGE_SIZE[0], y / PAGE_SIZE[1], f"page {number} of {len(pages)}",
                  size=_BODY - 1, color=_MUTED, va="top", ha="right")
        for i, line in enumerate(disclaimer):
            page.text(_MARGIN_LEFT / PAGE_SIZE[0], (y - 0.17 - i * _Flow.line_height(_BODY - 1.5)) / PAGE_SIZE[1],
                      line, size=_BODY - 1.5, color=_ALERT, va="top")


def report_pages(result, saliency_maps: Sequence | None = None, report: dict | None = None) -> list[Page]:
    """The pages of the PDF of ``result`` (:class:`~napari_medimp.core.pipeline.AnalysisResult`): the summary
    (one page, or more when it holds much), the key slices (one row per saliency map, three rows a page),
    the curves. ``saliency_maps``: the maps to overlay (None: every map of the result; ``()``: none);
    ``report``: the report to print (default: the one the result last wrote, else :meth:`report`), so that
    the PDF and the JSON of an export agree."""
    report = report or result.written_report or result.report()
    chosen = key_slices(result.request.volume, result.roi, (result.curves or {}).get("kidney ROI"))
    pages: list[Page] = []
    _identity_page(_Flow(pages), result, report)
    _slice_pages(pages, result, saliency_maps, chosen)
    _curves_page(pages, result, report, chosen)
    _footers(pages, result, report)
    for page in pages:  # letters, not ligatures: "field" stays searchable as "field"
        for text in page.figure.findobj(Text):
            text.set_fontfeatures(NO_LIGATURES)
    return pages


def pdf_text(pages: Sequence[Page]) -> str:
    """Every text of the pages, one per line, page by page (what a search of the PDF finds)."""
    return "\n".join(t for page in pages for t in page.texts)


def write_pdf(result, path, saliency_maps: Sequence | None = None, report: dict | None = None) -> Path:
    """Write the analysis as one A4 PDF at ``path`` (atomically; see :func:`report_pages`); returns the path."""
    import matplotlib
    from matplotlib.backends.backend_pdf import PdfPages

    from .. import __version__
    from .atomic import atomic_write

    path = Path(path)
    if path.exists() and path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name for the PDF")
    pages = report_pages(result, saliency_maps, report)
    who = exam_identity(result.request.volume)

    def write(tmp: str) -> None:
        # TrueType text (searchable, copyable); set for this file only
        with matplotlib.rc_context({"pdf.fonttype": 42}), PdfPages(tmp, metadata={
                "Title": f"{TITLE}, exam {result.request.exam}" + (f", patient {who['patient']}"
                                                                    if who["patient"] else ""),
                "Subject": "research software, not for clinical use",
                "Creator": f"napari-medimp {__version__}"}) as pdf:
            for page in pages:
                pdf.savefig(page.figure)

    return atomic_write(os.fspath(path), write)


# --------------------------------------------------------------------------------------------------
# the patient view: every visit, the trend figure, each visit's checks
# --------------------------------------------------------------------------------------------------
PATIENT_TITLE = "MEDIMP kidney-graft follow-up"


def _check_state(ok) -> str:
    return {True: "passed", False: "FAILED"}.get(ok, "not made")


def patient_report_pages(result, report: dict | None = None) -> list[Page]:
    """The pages of a patient's PDF (:class:`~napari_medimp.core.longitudinal.PatientResult`): who, the
    disclaimer, the trend figure at the width of the page, then per visit its date (or day after
    transplantation), clinical values, the reading from the exams so far (each kind, each horizon) and
    the input checks of every exam that reading used; notes and skipped exams last."""
    import io

    from matplotlib.image import imread

    from .prognosis import KIND_LABELS, KINDS
    from .report import percent
    from .terms import NOT_RECORDED

    report = report or result.written_report or result.report()
    pages: list[Page] = []
    flow = _Flow(pages)
    flow.page.text(_Flow._fx(_MARGIN_LEFT), _Flow._fy(flow.y), PATIENT_TITLE, size=16, weight="bold", color=_TEXT,
                   va="top", ha="left")
    flow.space(_Flow.line_height(16) + 0.05)
    flow.field("patient", str(result.patient or "not stated"))
    flow.field("visits", ", ".join(f"{v.visit} ({v.date_text})" for v in result.visits) or "none")
    flow.field("clinical values", str(result.clinical_source or "none found: the readings use the images only"))
    flow.space(0.05)
    flow.text(str(report.get("disclaimer") or ""), color=_MUTED, size=_BODY - 0.5)

    flow.heading("GFR, creatinine and the readings over time")
    figure = result.figure()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=150, facecolor="white")
    buffer.seek(0)
    image = imread(buffer)
    height = flow.width * image.shape[0] / image.shape[1]
    flow.room(height + 0.1)
    ax = flow.page.figure.add_axes((_Flow._fx(_MARGIN_LEFT), _Flow._fy(flow.y + height), flow.width / PAGE_SIZE[0],
                                    height / PAGE_SIZE[1]))
    ax.imshow(image, interpolation="antialiased")
    ax.set_axis_off()
    flow.space(height + 0.05)
    _, axis_words = result.time_axis()
    timed = figure.axes[0].get_xscale() != "linear"
    flow.text(f"Time axis: {axis_words}" + (" (log scale)" if timed else "") + ". Each visit's reading uses the "
              "exams so far; a shaded visit is outside what the model was trained on.", color=_MUTED,
              size=_BODY - 0.5)

    def value(v, unit: str) -> str:
        return NOT_RECORDED if v is None else f"{_clinical_value(float(v))} {unit}"

    for visit in result.visits:
        flow.heading(f"{visit.visit}: {visit.date_text}")
        c = visit.clinical
        flow.field("GFR", value(c.get("gfr_ml_min_1_73m2"), "mL/min/1.73 m2"))
        flow.field("creatinine", value(c.get("creatinine_umol_l"), "umol/L"))
        flow.field("donor age", value(c.get("donor_age_years"), "years"))
        flow.field("reading from", " + ".join(visit.exams_used))
        if visit.outside_training:
            flow.banner(OUTSIDE_TRAINING.upper(), visit.failed_checks)
            flow.field("prognosis", f"readings withheld: {WITHHELD_TEXT}", color=_ALERT)
        for kind in KINDS:
            risks = visit.risks.get(kind)
            if risks:
                values = ", ".join(f"{_horizon_words(h)} {percent(p)}" for h, p in risks.items())
                common = kind_standing(visit.standing, kind, risks)
                flow.field(KIND_LABELS[kind], f"not a finding ({common}; it reads {values})" if common else values,
                           color=_MUTED if common else _TEXT)
        if not visit.risks and not visit.outside_training:
            flow.field("prognosis", "this model has no prognosis heads", color=_MUTED)
        for exam, checks in visit.checks.items():
            flow.text(f"checks of the {exam} exam", weight="bold", size=_BODY - 0.5)
            for check in checks:
                flow.field(CHECK_WORDS.get(check.id, check.id), f"{_check_state(check.ok)}: {check.message}",
                           color=_ALERT if check.ok is False else _TEXT)
            if not checks:
                flow.text("no checks recorded", color=_MUTED)
        for note in visit.notes:
            flow.text(f"note: {note}", color=_NOTE)
    if result.notes or result.skipped:
        flow.heading("Notes")
        for note in result.notes:
            flow.text(note, color=_NOTE)
        for item in result.skipped:
            flow.text(f"skipped {item}", color=_NOTE)
    for i, page in enumerate(pages):
        page.text(_Flow._fx(_MARGIN_LEFT), 0.35 / PAGE_SIZE[1], f"{PATIENT_TITLE}, patient {result.patient or '-'}"
                  f"  -  page {i + 1} of {len(pages)}", size=_BODY - 1, color=_MUTED, va="bottom", ha="left")
        for text in page.figure.findobj(Text):
            text.set_fontfeatures(NO_LIGATURES)
    return pages


def write_patient_pdf(result, path, report: dict | None = None) -> Path:
    """Write a patient's follow-up (see :func:`patient_report_pages`) as one A4 PDF at ``path``, atomically."""
    import matplotlib
    from matplotlib.backends.backend_pdf import PdfPages

    from .. import __version__
    from .atomic import atomic_write

    path = Path(path)
    if path.exists() and path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name for the PDF")
    pages = patient_report_pages(result, report)

    def write(tmp: str) -> None:
        with matplotlib.rc_context({"pdf.fonttype": 42}), PdfPages(tmp, metadata={
                "Title": f"{PATIENT_TITLE}, patient {result.patient or '-'}",
                "Subject": "research software, not for clinical use",
                "Creator": f"napari-medimp {__version__}"}) as pdf:
            for page in pages:
                pdf.savefig(page.figure)

    return Path(atomic_write(os.fspath(path), write))
