"""The PDF of one analysis, A4 portrait: one document per analysis.

Page 1: who and what (patient, exam and date as the image states them, never guessed), the acquisition,
the clinical values as they were typed and where they came from, the input checks (with a banner when the
exam is outside what the model was trained on), the results (prompt similarity, zero-shot GFR reading,
probability of graft dysfunction per horizon for each kind of reading, each with how well that reading did
on unseen patients), the model card's facts and the disclaimer. Then the key slices
(:mod:`~napari_medimp.core.pdf.slices`). Last, the time-intensity curves (seconds when the image states
frame times, frame numbers otherwise; the page says which).

:func:`report_pages` draws the pages and keeps each page's text; :func:`write_pdf` writes them into one
file, atomically."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.lines import Line2D

from ..card import EVALUATED_AS, cv_auc
from ..checks import OUTSIDE_TRAINING, failed_messages
from ..curves import ENHANCEMENT_DEFINITION, ROI_CURVE
from ..identity import ExamIdentity
from ..plots import LIGHT, plot_curves
from ..prognosis import OUTCOME_DEFINITION, RESULT_KEYS
from ..report import WITHHELD_TEXT, note_without_path, similarity_text
from ..terms import KIND_LABELS, horizon_words, percent
from .layout import (
    ALERT,
    BODY,
    MARGIN_BOTTOM,
    MARGIN_LEFT,
    MARGIN_RIGHT,
    MARGIN_TOP,
    MUTED,
    NOTE,
    PAGE_SIZE,
    TEXT_COLOR,
    TEXT_WIDTH,
    Flow,
    Page,
    line_height,
    new_page,
    pdf_path,
    save_pages,
    without_ligatures,
    wrap,
)
from .slices import key_slices, region_names, slice_pages
from .words import CHECK_WORDS, CLINICAL_WORDS, check_state, clinical_value

TITLE = "MEDIMP kidney-graft analysis"
#: what the report says of an identifier the image does not carry (nothing is ever made up)
NOT_STATED = "{} not stated in the image"


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
# page 1: identity, acquisition, inputs, checks, results, model, disclaimer
# --------------------------------------------------------------------------------------------------
def _auc_words(auc: tuple | None) -> str:
    if auc is None:
        return "not measured on unseen patients"
    estimate, low, high = auc
    if low is None or high is None:
        return f"AUC {estimate:.2f} on unseen patients"
    return f"AUC {estimate:.2f} (95 % CI {low:.2f}-{high:.2f})"


def _identity_page(flow: Flow, result, report: dict) -> None:
    volume = result.request.volume
    who = exam_identity(volume)
    inputs = result.inputs or {}
    page = flow.page
    page.text(flow.fx(MARGIN_LEFT), flow.fy(flow.y), TITLE, size=16, weight="bold", color=TEXT_COLOR, va="top")
    page.text(flow.fx(PAGE_SIZE[0] - MARGIN_RIGHT), flow.fy(flow.y + 0.04),
              "research software, not for clinical use", size=BODY, color=ALERT, weight="bold", va="top", ha="right")
    flow.y += 0.38
    flow.banner("DISCLAIMER", [report.get("disclaimer") or ""])
    for key, label in (("patient", "patient"), ("exam", "exam in the image"), ("date", "exam date")):
        if who[key]:
            flow.field(label, f"{who[key]}  (read from the {who[key + '_from']})")
        else:
            flow.field(label, NOT_STATED.format(key), color=NOTE)
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
        flow.field("how it was read", note_without_path(note), color=NOTE)

    flow.heading("Inputs")
    clinical = inputs.get("clinical") or {}
    entered = clinical.get("entered") or {}
    if entered:
        for name, item in entered.items():
            where = item.get("source") or clinical.get("source") or "source not recorded"
            flow.field(CLINICAL_WORDS.get(name, name.replace("_", " ")),
                       f"{clinical_value(item.get('value'))} {item.get('unit', '')}".strip() + f"  ({where})")
            other = item.get("differs_from")
            if other:
                flow.field("", f"differs from {other.get('source')}: {clinical_value(other.get('value'))}",
                           color=NOTE)
        used = clinical.get("used") or {}
        if entered.get("creatinine", {}).get("unit") not in (None, "umol/L") and used.get("creatinine_umol_l"):
            values = used["creatinine_umol_l"]
            values = values if isinstance(values, (list, tuple)) else [values]
            flow.field("creatinine used", ", ".join(f"{float(v):.0f}" for v in values) + " umol/L (converted)")
    else:
        flow.field("clinical values", "none given", color=NOTE)
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
    flow.field("tissue labels", "given: " + ", ".join(region_names(result)) if labels is not None and
               region_names(result) else ("given, without kidney region names" if labels is not None else "none"))
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
        flow.field(f"{CHECK_WORDS.get(check.get('id'), check.get('id'))}",
                   f"{check_state(check.get('ok'))}: {check.get('message')}",
                   color=ALERT if check.get("ok") is False else TEXT_COLOR)
    if not checks:
        flow.text("no checks recorded", color=MUTED)

    _results_section(flow, result, report)
    _model_section(flow, report)


def _results_section(flow: Flow, result, report: dict) -> None:
    results = report.get("results") or {}
    model = report.get("model") or {}
    flow.heading(f"Results (exam {results.get('exam') or result.request.exam})")
    if results.get("readings_withheld"):
        flow.text(f"Readings withheld: {WITHHELD_TEXT}. See the checks above.", color=ALERT, weight="bold")
        return
    if results.get("outside_training"):
        flow.text(f"{OUTSIDE_TRAINING.capitalize()}: see the checks above. The readings below are shown because "
                  "the user chose to see them anyway.", color=ALERT, weight="bold")
    if results.get("similarity") is not None:
        flow.field("image-prompt similarity", similarity_text(results) + "; -1 to 1, higher: the image matches "
                                                                         "the prompt better")
    reading = results.get("zero_shot_gfr") or {}
    standing = results.get("reading_standing") or {}
    if reading and standing.get("zero_shot_gfr"):
        flow.field("zero-shot GFR reading", f"not a finding: {standing['zero_shot_gfr']}", color=MUTED)
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
                           f"{percent(accuracy.get('majority_accuracy') or 0)})", color=MUTED)
        else:
            flow.field("", "this model's GFR reading was not checked on unseen patients", color=MUTED)
    kinds = [kind for kind, key in RESULT_KEYS.items() if results.get(key)]
    not_shown = (results.get("prognosis_reading") or {}).get("not_shown") or {}
    for kind, why in not_shown.items():
        flow.field(KIND_LABELS[kind], f"not shown: {why}", color=MUTED)
    if not kinds:
        if not not_shown:
            flow.field("prognosis", "this model has no prognosis heads")
        return
    prognosis = results.get("prognosis_reading") or {}
    aucs = {kind: cv_auc(model, EVALUATED_AS[kind]) for kind in kinds}
    measured = any(aucs.values())
    in_sample = bool(((model.get("metrics") or {}).get("evaluation_protocol") or {}).get("in_sample_warning"))
    flow.space(0.05)
    flow.text(f"Probability of graft dysfunction by year h, reading at "
              f"{prognosis.get('visit') or results.get('exam')}", weight="bold")
    if measured:
        flow.text("Below each: how well that reading did on unseen patients (AUC with its 95 % interval, from the model "
                  "card; 0.5: chance, 1: perfect); one exam's probability has no interval of its own.", color=MUTED,
                  size=BODY - 0.5)
    horizons = list(dict.fromkeys(h for kind in kinds for h in results[RESULT_KEYS[kind]]))
    columns = [(0.0, "horizon")] + [(1.0 + 2.0 * i, KIND_LABELS[kind]) for i, kind in enumerate(kinds)]
    rows = []
    for h in horizons:
        row = [[horizon_words(h)]]
        for kind in kinds:
            p = results[RESULT_KEYS[kind]].get(h)
            shown = "-" if p is None else percent(p) + (" (not a finding)" if standing.get(f"{kind}/{h}") else "")
            row.append([shown] + ([_auc_words(aucs[kind].get(h))] if measured else []))
        rows.append(row)
    flow.table(columns, rows)
    reasons = dict.fromkeys(standing.get(f"{kind}/{h}") for kind in kinds for h in horizons) if measured else {}
    for reason in (r for r in reasons if r):
        flow.text(f"Not a finding: {reason}.", color=MUTED, size=BODY - 0.5)
    for note in prognosis.get("outside_range") or []:
        flow.text(f"Outside the training range: {note}.", color=NOTE)
    flow.text(f"Outcome: {OUTCOME_DEFINITION}.", color=MUTED, size=BODY - 0.5)
    if not measured:
        flow.text("This model's card records no evaluation on unseen patients: how well these readings do is not "
                  "known.", color=NOTE)
    elif in_sample:
        flow.text("The card's AUCs were measured on the model's own training patients (in-sample): they are not a "
                  "result.", color=ALERT)
    used = {kind: words for kind, words in (prognosis.get("inputs") or {}).items() if kind in kinds}
    if "image+clinical" in used:  # the images of the image-only reading and the values of the clinical-only one
        flow.text(f"The readings used {used['image+clinical']}.", color=MUTED, size=BODY - 0.5)
    else:
        for kind, words in used.items():
            flow.text(f"The {KIND_LABELS[kind]} reading used {words}.", color=MUTED, size=BODY - 0.5)
    if results.get("prognosis_note"):
        flow.field("note", results["prognosis_note"], color=NOTE)


def _model_section(flow: Flow, report: dict) -> None:
    model = report.get("model") or {}
    flow.heading("Model")
    encoder = model.get("architecture") or "image encoder not recorded"
    flow.field("name", f"{model.get('name') or 'unnamed model'} ({encoder}); weights sha256 "
                       + str(model.get("weights_sha256") or "not recorded")[:12])
    flow.field("trained on", str(model.get("training_data") or "not recorded"))
    synthetic = bool(model.get("trained_on_synthetic_data") or model.get("synthetic"))
    flow.field("synthetic data", "yes: a demonstration model; its outputs say nothing about a real patient"
               if synthetic else "no", color=ALERT if synthetic else TEXT_COLOR)
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
# curves
# --------------------------------------------------------------------------------------------------
def _curves_page(pages: list[Page], result, report: dict, chosen: dict) -> None:
    page = new_page()
    pages.append(page)
    figure = page.figure
    times = result.request.volume.frame_times
    curves = result.curves or {}
    top = 1.0 - MARGIN_TOP / PAGE_SIZE[1]
    page.text(MARGIN_LEFT / PAGE_SIZE[0], top, "Time-intensity curves", size=13, weight="bold", color=TEXT_COLOR, va="top")
    axis = ("time axis: seconds from the first frame, as the image states them" if times is not None else
            "time axis: frame numbers (from 0), because the image states no frame times")
    lines = wrap(f"Mean signal per frame in the kidney box and in each labelled region; {axis}. Dotted line: the "
                  "phase of the key slices.", TEXT_WIDTH, BODY)
    for i, line in enumerate(lines):
        page.text(MARGIN_LEFT / PAGE_SIZE[0], top - (0.32 + i * line_height(BODY)) / PAGE_SIZE[1], line,
                  size=BODY, color=TEXT_COLOR, va="top")
    width = (TEXT_WIDTH - 0.55) / PAGE_SIZE[0]
    left = (MARGIN_LEFT + 0.55) / PAGE_SIZE[0]
    height = 2.7
    tops = (MARGIN_TOP + 0.75 + len(lines) * line_height(BODY), 0.0)
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
            ax.axvline(x, color=MUTED, linestyle=":", linewidth=1.2)
    for ax in axes:
        page.texts.extend([ax.get_title(), ax.get_xlabel(), ax.get_ylabel()])
        if ax.get_legend():
            page.texts.extend(t.get_text() for t in ax.get_legend().get_texts())
    section = (report.get("curves") or {}).get("regions") or {}
    if section:
        suffix = "s" if times is not None else "frame"
        y = tops[1] + height + 0.6
        page.text(MARGIN_LEFT / PAGE_SIZE[0], 1 - y / PAGE_SIZE[1],
                  f"Per region (times in {'seconds' if times is not None else 'frame numbers'})",
                  size=BODY, weight="bold", color=TEXT_COLOR, va="top")
        y += line_height(BODY) + 0.02
        page.text(MARGIN_LEFT / PAGE_SIZE[0], 1 - y / PAGE_SIZE[1], ENHANCEMENT_DEFINITION[0].upper()
                  + ENHANCEMENT_DEFINITION[1:] + "; the input check states the same for the box.", size=BODY - 1,
                  color=TEXT_COLOR, va="top")
        y += line_height(BODY) + 0.05
        columns = [(0.0, "region"), (1.7, "baseline"), (2.6, "peak rise"), (3.5, "relative peak"),
                   (4.6, "time to peak"), (5.7, "time to half peak")]
        for x, header in columns:
            page.text((MARGIN_LEFT + x) / PAGE_SIZE[0], 1 - y / PAGE_SIZE[1], header, size=BODY - 0.5,
                      weight="bold", color=TEXT_COLOR, va="top")
        for name, summary in section.items():
            y += line_height(BODY) + 0.02
            if y > PAGE_SIZE[1] - MARGIN_BOTTOM - 0.2:
                break
            relative = summary.get("relative_peak_enhancement")
            cells = [name, f"{summary.get('baseline', float('nan')):.4g}",
                     f"{summary.get('peak_enhancement', float('nan')):.4g}",
                     percent(relative) if relative is not None and np.isfinite(relative) else "-",
                     f"{summary.get(f'time_to_peak_{suffix}', float('nan')):g}",
                     f"{summary.get(f'time_to_half_peak_{suffix}', float('nan')):.3g}"]
            for (x, _), cell in zip(columns, cells, strict=True):
                page.text((MARGIN_LEFT + x) / PAGE_SIZE[0], 1 - y / PAGE_SIZE[1], cell, size=BODY - 0.5,
                          color=TEXT_COLOR, va="top")


# --------------------------------------------------------------------------------------------------
# the document
# --------------------------------------------------------------------------------------------------
def _footers(pages: list[Page], result, report: dict) -> None:
    who = exam_identity(result.request.volume)
    patient = f"patient {who['patient']}" if who["patient"] else NOT_STATED.format("patient")
    disclaimer = wrap(report.get("disclaimer") or "", TEXT_WIDTH, BODY - 1.5)
    for number, page in enumerate(pages, 1):
        y = MARGIN_BOTTOM - 0.35
        page.figure.add_artist(Line2D([MARGIN_LEFT / PAGE_SIZE[0], 1 - MARGIN_RIGHT / PAGE_SIZE[0]],
                                      [(y + 0.08) / PAGE_SIZE[1]] * 2, color=LIGHT["grid"], linewidth=0.6))
        page.text(MARGIN_LEFT / PAGE_SIZE[0], y / PAGE_SIZE[1], f"{TITLE} - {patient} - exam {result.request.exam}",
                  size=BODY - 1, color=MUTED, va="top")
        page.text(1 - MARGIN_RIGHT / PAGE_SIZE[0], y / PAGE_SIZE[1], f"page {number} of {len(pages)}",
                  size=BODY - 1, color=MUTED, va="top", ha="right")
        for i, line in enumerate(disclaimer):
            page.text(MARGIN_LEFT / PAGE_SIZE[0], (y - 0.17 - i * line_height(BODY - 1.5)) / PAGE_SIZE[1],
                      line, size=BODY - 1.5, color=ALERT, va="top")


def report_pages(result, saliency_maps: Sequence | None = None, report: dict | None = None) -> list[Page]:
    """The pages of the PDF of ``result`` (:class:`~napari_medimp.core.pipeline.AnalysisResult`): the summary
    (one page, or more when it holds much), the key slices (one row per saliency map, three rows a page),
    the curves. ``saliency_maps``: the maps to overlay (None: every map of the result; ``()``: none);
    ``report``: the report to print (default: the one the result last wrote, else :meth:`report`), so that
    the PDF and the JSON of an export agree."""
    report = report or result.written_report or result.report()
    chosen = key_slices(result.request.volume, result.roi, (result.curves or {}).get(ROI_CURVE))
    pages: list[Page] = []
    _identity_page(Flow(pages), result, report)
    slice_pages(pages, result, saliency_maps, chosen)
    _curves_page(pages, result, report, chosen)
    _footers(pages, result, report)
    without_ligatures(pages)
    return pages


def write_pdf(result, path, saliency_maps: Sequence | None = None, report: dict | None = None) -> Path:
    """Write the analysis as one A4 PDF at ``path`` (atomically; see :func:`report_pages`); returns the path."""
    path = pdf_path(path)
    pages = report_pages(result, saliency_maps, report)
    who = exam_identity(result.request.volume)
    title = f"{TITLE}, exam {result.request.exam}" + (f", patient {who['patient']}" if who["patient"] else "")
    return save_pages(pages, path, title)
