"""The panel's results: the current layer's readings in words and its figures."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtGui import QPixmap
from qtpy.QtWidgets import QGroupBox, QLabel, QPushButton, QSizePolicy, QVBoxLayout

from ..core.card import is_synthetic
from ..core.checks import OUTSIDE_TRAINING, failed_messages
from ..core.pipeline import AnalysisResult
from ..core.report import WITHHELD_TEXT, kind_standing, note_without_path, percent, similarity_context
from ..core.terms import KIND_LABELS, KINDS, horizon_words
from ._panel_util import GREY, _escape, _key, _wrapping


class ResultsView:
    """The Results group of the MEDIMP panel (a part of :class:`~napari_medimp._widgets.medimp.MedimpWidget`)."""

    def _build_results_group(self) -> QGroupBox:
        box = self.results_box = QGroupBox("Results")
        layout = QVBoxLayout(box)
        self.results_label = QLabel("No analysis yet.")
        _wrapping(self.results_label)
        self.results_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.results_label)
        self.show_anyway_button = QPushButton("Show the readings anyway")
        self.show_anyway_button.setToolTip("The exam failed its checks, so its readings are withheld. Showing them "
                                           "is your choice, and the report records it.")
        self.show_anyway_button.clicked.connect(self.show_anyway)
        self.show_anyway_button.hide()
        layout.addWidget(self.show_anyway_button)
        # plots are rendered in the worker thread (matplotlib Agg) and only shown here
        self.results_canvas = QLabel()
        self.curves_canvas = QLabel()
        for canvas in (self.results_canvas, self.curves_canvas):
            canvas.setAlignment(Qt.AlignmentFlag.AlignCenter)
            canvas.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        layout.addWidget(self.results_canvas)
        layout.addWidget(self.curves_canvas)
        self.results_canvas.hide()
        self.curves_canvas.hide()
        return box

    # -------------------------------------------------------------------------------------- results
    def current_result(self) -> AnalysisResult | None:
        layer = self.current_layer()
        return None if layer is None else self._results.get(_key(layer))

    def _show_results(self) -> None:
        result = self.current_result()
        self._update_buttons()
        if result is None:
            text = "No analysis of this layer yet."
            layer = self.current_layer()
            failed = failed_messages(self._open_checks.get(_key(layer), [])) if layer is not None else []
            if failed:
                text += (f"<br><span style='color:#ff6b6b'><b>Checked on opening, {OUTSIDE_TRAINING}:</b> "
                         + "; ".join(_escape(m) for m in failed) + ". Its readings will be withheld.</span>")
            self.results_label.setText(text)
            self.show_anyway_button.hide()
            self.results_canvas.hide()
            self.curves_canvas.hide()
            return
        a = result.analysis
        reading = a.shown_gfr_reading
        standing = dict(a.standing or {})
        lines = [f"<b>Results for layer '{_escape(result.layer_name)}'</b> (exam {a.exam})"]
        failed = failed_messages(a.checks)
        self.show_anyway_button.setVisible(a.readings_withheld is not None)
        if a.readings_withheld is not None:
            lines.append(f"<span style='color:#ff6b6b'><b>Readings withheld:</b> {_escape(WITHHELD_TEXT)}: "
                         + "; ".join(_escape(m) for m in failed) + ".</span>")
        elif failed:
            lines.append(f"<span style='color:#ff6b6b'><b>{OUTSIDE_TRAINING.capitalize()}:</b> "
                         + "; ".join(_escape(m) for m in failed) + ". Shown anyway, by your choice (the report "
                         "says so).</span>")
        if a.shown_similarity is not None:
            lines.append(f"Image-prompt similarity: <b>{a.shown_similarity:.3f}</b><br><small>&nbsp;&nbsp;"
                         f"{_escape(similarity_context(a.shown_similarity, a.similarity_reference))}</small>")
        accuracy = a.gfr_reading_accuracy or {}
        if reading and standing.get("zero_shot_gfr"):
            best = max(reading, key=reading.get)
            lines.append(f"<span style='color:{GREY}'>Zero-shot GFR reading ({_escape(best)}, "
                         f"{percent(reading[best])}): not a finding, {_escape(standing['zero_shot_gfr'])}.</span>")
        elif reading:
            best = max(reading, key=reading.get)
            lines.append(f"Zero-shot GFR reading: <b>{_escape(best)}</b> ({percent(reading[best])})"
                         + (f"; entered GFR is <i>{_escape(result.expected_bin)}</i>" if result.expected_bin else ""))
            if accuracy.get("accuracy") is not None:
                lines.append(f"<small>This reading was right for {accuracy['accuracy']:.0%} of {accuracy['n_exams']} "
                             f"exams of patients the model never saw (always answering the commonest range: "
                             f"{accuracy['majority_accuracy']:.0%}).</small>")
        lines += prognosis_lines(a)
        if a.prognosis_note:
            lines.append(f"<span style='color:#ffb347'>{_escape(a.prognosis_note)}</span>")
        for note in result.inputs.get("reading_notes") or []:
            lines.append(f"<span style='color:#ffb347'>How the image was read: "
                         f"{_escape(note_without_path(note))}</span>")
        for section in result.saliency_sections.values():
            lines.append(f"<b>Saliency map, {_escape(section['method'])} for {_escape(section['target'])}:</b> "
                         f"<small>{_escape(section['explanation'])}</small>")
        if is_synthetic(result.model):
            lines.append("<span style='color:#ffb347'>Synthetic-data demo model: not a clinical reading.</span>")
        self.results_label.setText("<br>".join(lines))
        plots = self._plots.get(_key(self.current_layer()), (b"", b""))
        for canvas, png in zip((self.results_canvas, self.curves_canvas), plots, strict=True):
            pixmap = QPixmap()
            pixmap.loadFromData(png, "PNG")
            width = max(200, self._content.width() - 40)
            if not pixmap.isNull() and pixmap.width() > width:
                pixmap = pixmap.scaledToWidth(width, Qt.TransformationMode.SmoothTransformation)
            canvas.setPixmap(pixmap)
            canvas.setVisible(not pixmap.isNull())


def prognosis_lines(analysis) -> list[str]:
    """HTML lines of the prognosis of an :class:`~napari_medimp.core.inference.Analysis`: each kind of reading
    with its risks and what it used; a reading no better than a trivial answer greyed with why, a kind whose
    heads need not make clinical sense not shown."""
    reading = analysis.shown_reading
    inputs = reading.inputs() if reading is not None else {}
    not_shown = reading.not_shown if reading is not None else {}
    standing = dict(analysis.standing or {})
    lines = []
    for kind in KINDS:
        risks = analysis.shown_risks(kind)
        label = KIND_LABELS[kind]
        label = f"{label[0].upper()}{label[1:]}"
        why_not = (not_shown or {}).get(kind)
        if why_not:
            lines.append(f"<span style='color:{GREY}'>{_escape(label)}: not shown, {_escape(why_not)}.</span>")
            continue
        if not risks:
            continue
        used = f"<br><small>&nbsp;&nbsp;from {_escape(inputs[kind])}</small>" if inputs.get(kind) else ""
        common = kind_standing(standing, kind, risks)
        if common:
            values = ", ".join(f"{horizon_words(h)} {percent(p)}" for h, p in risks.items())
            lines.append(f"<span style='color:{GREY}'>{_escape(label)} ({values}): not a finding, "
                         f"{_escape(common)}.</span>{used}")
            continue
        values = ", ".join(
            f"<span style='color:{GREY}'>{horizon_words(h)} {percent(p)} (not a finding)</span>"
            if standing.get(f"{kind}/{h}") else f"{horizon_words(h)} <b>{percent(p)}</b>" for h, p in risks.items())
        lines.append(f"{label}: {values}{used}")
    if lines:
        visit = (reading.visit if reading is not None else None) or analysis.exam
        lines.insert(0, f"<b>Probability of graft dysfunction by year h</b> (reading at {_escape(visit)}):")
    for note in (reading.outside_range if reading is not None else None) or []:
        lines.append(f"<span style='color:#ffb347'>Outside the training range: {_escape(note)}.</span>")
    return lines
