"""The panel's patient over time: the open exams of the current layer's patient read visit by visit."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtGui import QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from ..core.checks import OUTSIDE_TRAINING
from ..core.identity import ExamIdentity
from ..core.longitudinal import exams_of_patient
from ..core.report import kind_standing, percent
from ..core.terms import KIND_LABELS, horizon_words
from ._panel_util import GREY, _ClickableLabel, _escape, _grid, _wrapping


class PatientPanel:
    """The Patient-over-time group of the MEDIMP panel (a part of :class:`~napari_medimp._widgets.medimp.MedimpWidget`)."""

    def _build_patient_group(self) -> QGroupBox:
        box = self.patient_box = QGroupBox("Patient over time")
        layout = QVBoxLayout(box)
        self.patient_label = QLabel("")
        _wrapping(self.patient_label)
        layout.addWidget(self.patient_label)
        row = QHBoxLayout()
        self.patient_button = QPushButton("Read every visit")
        self.patient_button.setToolTip("a reading at each visit from the exams so far, with the clinical values "
                                       "of each visit and their trends")
        self.patient_button.clicked.connect(self.analyze_patient)
        self.side_by_side = QCheckBox("Exams side by side")
        self.side_by_side.setToolTip("napari's grid view: one exam per cell, the same slice and time in each")
        self.side_by_side.toggled.connect(self._show_side_by_side)
        row.addWidget(self.patient_button)
        row.addWidget(self.side_by_side)
        layout.addLayout(row)
        self.patient_results = QLabel("")
        _wrapping(self.patient_results)
        self.patient_results.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.patient_results)
        self.patient_canvas = _ClickableLabel()
        self.patient_canvas.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.patient_canvas.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.patient_canvas.setToolTip("click to open the figure at full size")
        self.patient_canvas.setCursor(Qt.CursorShape.PointingHandCursor)
        self.patient_canvas.clicked.connect(self.open_patient_figure)
        self.patient_canvas.hide()
        layout.addWidget(self.patient_canvas)
        self.patient_figure_button = QPushButton("Open the figure at full size")
        self.patient_figure_button.setToolTip("the trend figure in its own window, at its full size (scrolls when "
                                              "larger than the screen)")
        self.patient_figure_button.clicked.connect(self.open_patient_figure)
        self.patient_figure_button.hide()
        layout.addWidget(self.patient_figure_button)
        self.patient_figure_window = None
        box.setVisible(False)
        self._patient_results: dict[str, Any] = {}
        return box

    # -------------------------------------------------------------------------------------- patient
    def patient_layers(self) -> tuple[str | None, dict[str, Any]]:
        """The patient of the current layer and its open exams (exam -> layer), as the layers' data say."""
        layer = self.current_layer()
        if layer is None:
            return None, {}
        return exams_of_patient(ExamIdentity.from_layer_metadata(layer.metadata),
                                ((ExamIdentity.from_layer_metadata(other.metadata), other)
                                 for other in self._layers_of("image")))

    def _show_patient(self) -> None:
        if not hasattr(self, "patient_box"):
            return
        patient, exams = self.patient_layers()
        self.patient_box.setVisible(len(exams) >= 2)
        if len(exams) < 2:
            return
        self.patient_label.setText(f"Patient <b>{_escape(patient)}</b>: {len(exams)} exams open "
                                   f"({', '.join(exams)}).")
        result = self._patient_results.get(patient)
        if result is None:
            self.patient_results.setText("")
            self.patient_canvas.hide()
            self.patient_figure_button.hide()
            return
        self.patient_results.setText("<br>".join(patient_lines(result)))
        pixmap = QPixmap()
        pixmap.loadFromData(result.panel_image(), "PNG")
        self.patient_figure_button.setVisible(not pixmap.isNull())
        width = max(200, self._content.width() - 40)
        if not pixmap.isNull() and pixmap.width() > width:
            pixmap = pixmap.scaledToWidth(width, Qt.TransformationMode.SmoothTransformation)
        self.patient_canvas.setPixmap(pixmap)
        self.patient_canvas.setVisible(not pixmap.isNull())

    def open_patient_figure(self) -> QWidget | None:
        """The current patient's trend figure in its own window at its full size (the panel shows it shrunk to
        the dock's width), scrolling when it is larger than the screen."""
        patient, _ = self.patient_layers()
        result = self._patient_results.get(patient)
        if result is None:
            return None
        pixmap = QPixmap()
        pixmap.loadFromData(result.panel_image(dpi=100), "PNG")
        if pixmap.isNull():
            return None
        label = QLabel()
        label.setPixmap(pixmap)
        scroll = QScrollArea()
        scroll.setWidget(label)
        scroll.setWindowTitle(f"MEDIMP: patient {patient} over time")
        screen = self.screen().availableGeometry() if self.screen() is not None else None
        width, height = pixmap.width() + 2 * scroll.frameWidth() + 2, pixmap.height() + 2 * scroll.frameWidth() + 2
        if screen is not None:
            width, height = min(width, screen.width() - 40), min(height, screen.height() - 80)
        scroll.resize(width, height)
        scroll.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        if self.patient_figure_window is not None:
            try:
                self.patient_figure_window.close()
            except RuntimeError:  # already deleted
                pass
        self.patient_figure_window = scroll
        scroll.destroyed.connect(lambda *_: setattr(self, "patient_figure_window", None))
        scroll.show()
        return scroll

    def _show_side_by_side(self, on: bool) -> None:
        _grid(self.viewer).enabled = bool(on)

    def analyze_patient(self) -> None:
        """A reading at each open visit of the current layer's patient, from the exams so far."""
        patient, layers = self.patient_layers()
        if len(layers) < 2:
            self._notify_error("open two or more exams of one patient (a patient folder) to read them over time")
            return
        if self._card is None:
            self._notify_error("no usable model file; choose one in the Model section")
            return
        try:
            exams = {exam: self._volume(layer) for exam, layer in layers.items()}
        except ValueError as exc:
            self._notify_error(str(exc))
            return
        sources = {exam: str(layer.metadata.get("source") or layer.name) for exam, layer in layers.items()}
        rows, table = {}, None
        for source in sources.values():
            rows, table = self._cohort_table(source, patient)
            if table is not None:
                break
        spec = {"model": self.model_edit.text(), "device": self.device_combo.currentText()}
        relay = self._relay

        def job():
            from ..core.longitudinal import analyze_patient

            relay.progress.emit("loading model", 0.02)
            predictor = self._predictor(spec["model"], spec["device"])
            result = analyze_patient(predictor, exams, rows.get(patient), patient=patient,
                                     clinical_source=str(table) if patient in rows else None, sources=sources,
                                     progress=lambda stage, f: relay.progress.emit(stage, 0.05 + 0.9 * f))
            result.panel_image()  # rendered here, not in the viewer's thread
            return result

        def done(result) -> None:
            self._patient_results[patient] = result
            self._show_patient()

        self._start(job, done, f"reading every visit of {patient}")


def patient_lines(result) -> list[str]:
    """The patient view in a few lines: each visit's date, values and risks from the exams so far."""
    lines = []
    for visit in result.visits:
        c = visit.clinical
        values = ", ".join(f"{name}{':' if c.get(key) is None else ''} {_escape(_value(c.get(key)))}"
                           for name, key in (("GFR", "gfr_ml_min_1_73m2"), ("creatinine", "creatinine_umol_l")))
        lines.append(f"<b>{visit.visit}</b> ({_escape(visit.date_text)}): {values}; "
                     f"reading from {' + '.join(visit.exams_used)}")
        if visit.outside_training:
            lines.append(f"<span style='color:#ff6b6b'>{OUTSIDE_TRAINING.capitalize()}: "
                         f"{_escape('; '.join(visit.failed_checks))}. Readings withheld.</span>")
        for kind, label in KIND_LABELS.items():
            risks = visit.risks.get(kind)
            if not risks:
                continue
            values = ", ".join(f"{horizon_words(h)} {percent(p)}" for h, p in risks.items())
            common = kind_standing(visit.standing, kind, risks)
            if common:
                lines.append(f"&nbsp;&nbsp;<span style='color:{GREY}'>{_escape(label)} ({values}): not a finding, "
                             f"{_escape(common)}.</span>")
            else:
                lines.append(f"&nbsp;&nbsp;{_escape(label)}: {values}")
    lines += [f"<span style='color:#ffb347'>{_escape(note)}</span>" for note in result.notes]
    if result.clinical_source is None:
        lines.append("No clinical table found beside the exams: the readings use the images only.")
    return lines


def _value(value) -> str:
    from ..core.longitudinal import NOT_RECORDED

    return NOT_RECORDED if value is None else f"{value:g}"
