"""The MEDIMP dock widget: DCE layer + kidney box + clinical values -> prompt, embeddings, zero-shot GFR
reading, prognosis, saliency overlay and time-intensity curves. Every computation is a core call run in
a worker thread; this module only moves values between Qt widgets, layers and those calls."""

from __future__ import annotations

import threading
from html import escape as _html_escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, LineEdit
from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtGui import QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .._layers import (
    box_rectangle,
    kidney_colormap,
    layer_region_names,
    roi_from_vertices,
    volume_from_layer_data,
)
from ..core.card import card_facts, default_method, facts_text, is_synthetic
from ..core.checks import OUTSIDE_TRAINING, failed_messages
from ..core.identity import TYPED, ExamIdentity, labels_mismatch, table_source
from ..core.longitudinal import exams_of_patient
from ..core.pipeline import AnalysisRequest, AnalysisResult, explain, run_analysis
from ..core.prompts import ATTRIBUTES, EXAMS, N_VARIANTS, build_prompt, check_form
from ..core.report import (
    WITHHELD_TEXT,
    clinical_inputs,
    kind_standing,
    note_without_path,
    percent,
    similarity_context,
)
from ..core.terms import DEFAULT_EXAM, KIND_LABELS, KINDS, SALIENCY_METHODS, horizon_words
from ._registry import register

if TYPE_CHECKING:
    import napari


def _escape(text: str) -> str:
    return _html_escape(str(text), quote=False)


FIELD_UNITS = {"donor_age": "years", "gfr": "mL/min/1.73 m²", "creatinine": "", "creatinine_std": "same unit"}
FIELD_HINTS = {"donor_age": "age of the kidney donor", "gfr": "estimated GFR at this exam",
               "creatinine": "serum creatinine values up to this exam, separated by ';' (e.g. 120; 135; 150)",
               "creatinine_std": "creatinine variability (standard deviation), when the values are not at hand"}
FIELD_PLACEHOLDERS = {"donor_age": "missing", "gfr": "missing", "creatinine": "e.g. 120; 135; 150",
                      "creatinine_std": "missing"}
FIELD_TITLES = {"exam": "Exam", "donor_age": "Donor age", "gfr": "GFR", "creatinine": "Creatinine",
                "creatinine_std": "Creat. std", "creatinine_unit": "Creatinine unit"}
AUTO_ROI = "automatic (from the enhancement)"
NO_LABELS = "none"
#: the form's clinical values (the exam aside)
CLINICAL_FIELDS = ("donor_age", "gfr", "creatinine", "creatinine_std")
#: where a value typed in the panel comes from
TYPED_HERE = f"{TYPED} in the MEDIMP widget"


def _same_value(a: str, b: str) -> bool:
    """Whether two form texts hold the same value(s) (``48`` and ``48.0``; ``120; 135`` and ``120;135``)."""
    import re

    def numbers(text: str):
        parts = [p for p in re.split(r"[;\s]+", str(text).strip()) if p]
        try:
            return tuple(float(p) for p in parts)
        except ValueError:
            return None

    left, right = numbers(a), numbers(b)
    if left is None or right is None:
        return str(a).strip() == str(b).strip()
    return left == right


class _ClickableLabel(QLabel):
    """A label that says when it is clicked (a figure that opens at full size)."""

    clicked = Signal()

    def mouseReleaseEvent(self, event) -> None:  # noqa: N802  (Qt's name)
        if event.button() == Qt.MouseButton.LeftButton:
            self.clicked.emit()
        super().mouseReleaseEvent(event)


class _Relay(QObject):
    """Carries progress from a worker thread to the main thread (queued connection)."""

    progress = Signal(str, float)


class MedimpWidget(QWidget):
    """Dock widget of the plugin (Plugins > MEDIMP graft analysis)."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        register(napari_viewer, self)
        self._predictors: dict[tuple, Any] = {}
        self._results: dict[int, AnalysisResult] = {}
        self._plots: dict[int, tuple[bytes, bytes]] = {}  # panel images of each result
        #: the image checks run when a layer opened (before any model work), by layer
        self._open_checks: dict[str, list] = {}
        self._check_workers: list = []
        self._auto_rois: dict[int, Any] = {}
        self._worker = None
        self._pbar = None
        self._prompt_generated = ""
        self._setting_prompt = False
        #: who and which exam the current layer is (from its data), and whose values the form holds
        self._identity: dict[str, Any] = {}
        self._form_patient: str | None = None
        #: reader notices of layers opened while the panel was not ready, shown once it is
        self._pending_notices: list[str] = []
        self._relay = _Relay()
        self._relay.progress.connect(self._on_progress)
        self._build()
        for name in ("inserted", "removed", "moved", "changed"):
            getattr(self.viewer.layers.events, name).connect(self._refresh_layers)
        self._refresh_layers()
        self.set_model_file(self._default_model())
        self._warm_up()

    def _warm_up(self) -> None:
        """Import the heavy libraries (MONAI, transformers) in the background while the user fills the form:
        their first import holds Python's lock in long stretches, which would otherwise stall the viewer
        during the first analysis."""
        from napari.qt.threading import create_worker

        _wait_for_workers_at_exit()
        self._warming = create_worker(_import_heavy_modules, _ignore_errors=True)  # the analysis says it
        self._warming.finished.connect(self._warmed_up)
        self._warming.start()

    def _warmed_up(self) -> None:
        self._warming = None
        self._flush_notices()

    @property
    def warmed_up(self) -> bool:
        return self._warming is None

    @property
    def ready(self) -> bool:
        """True once the background import has ended and no request is running."""
        return self.warmed_up and not self.busy

    def _take_notices(self, layer) -> None:
        """What the reader had to assume about a layer just opened (its ``reading_notes``) reaches the user
        once: a notice napari has not shown (a warning raised while the background import held Python's
        warning filters is dropped there) is queued and shown when the panel is ready."""
        from napari.utils.notifications import notification_manager

        meta = getattr(layer, "metadata", None) or {}
        notes = [*((meta.get("dce_metadata") or {}).get("reading_notes") or []), *(meta.get("reading_notes") or [])]
        shown = {str(getattr(n, "message", "")) for n in notification_manager.records[-500:]}
        for note in dict.fromkeys(str(n) for n in notes):
            if note not in shown and note not in self._pending_notices:
                self._pending_notices.append(note)
        self._flush_notices()

    def _flush_notices(self) -> None:
        from napari.utils.notifications import show_warning

        if not self.ready:
            return
        while self._pending_notices:
            show_warning(self._pending_notices.pop(0))

    @property
    def pending_notices(self) -> list[str]:
        return list(self._pending_notices)

    # ---------------------------------------------------------------------------------------- layout
    def _build(self) -> None:
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addWidget(self._build_image_group())
        layout.addWidget(self._build_clinical_group())
        layout.addWidget(self._build_prompt_group())
        layout.addWidget(self._build_model_group())
        layout.addWidget(self._build_actions_group())
        layout.addWidget(self._build_results_group())
        layout.addWidget(self._build_patient_group())
        layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(content)
        self._content = content
        self._scroll = scroll
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        self.setMinimumWidth(max(380, content.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width() + 4))

    def _build_image_group(self) -> QGroupBox:
        box = QGroupBox("Image")
        form = QFormLayout(box)
        # each field under its name, across the whole dock: a choice such as "automatic (from the
        # enhancement)" reads in full at napari's default window size
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapAllRows)
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("the 4D DCE-MRI layer (t, z, y, x) to analyse")
        self.layer_combo.currentIndexChanged.connect(self._on_layer_changed)
        self.labels_combo = QComboBox()
        self.labels_combo.setToolTip("optional tissue labels for a curve per region (named as in the label file, "
                                     "else 'label N')")
        self.roi_combo = QComboBox()
        self.roi_combo.setToolTip("a Shapes layer with a box around the kidney, or the automatic box")
        self.roi_combo.currentIndexChanged.connect(lambda *_: self._update_roi_label())
        self.show_box_button = QPushButton("Show kidney box")
        self.show_box_button.setToolTip("find the kidney automatically and show it as an editable box")
        self.show_box_button.clicked.connect(self.show_kidney_box)
        self.roi_label = QLabel("")
        _wrapping(self.roi_label)
        for combo in (self.layer_combo, self.labels_combo, self.roi_combo):
            _shrinkable(combo)
        form.addRow("DCE layer", self.layer_combo)
        form.addRow("Tissue labels", self.labels_combo)
        form.addRow("Kidney box", self.roi_combo)
        form.addRow(self.show_box_button, self.roi_label)
        return box

    def _build_clinical_group(self) -> QGroupBox:
        box = QGroupBox("Clinical values")
        self.fields: dict[str, Any] = {"exam": ComboBox(choices=list(EXAMS), value=DEFAULT_EXAM, label=FIELD_TITLES["exam"])}
        self.errors: dict[str, Label] = {}
        rows: list = [self.fields["exam"]]
        self.errors["exam"] = Label(value="", label="")
        rows.append(self.errors["exam"])
        for name in ("donor_age", "gfr", "creatinine", "creatinine_std"):
            edit = LineEdit(value="", label=FIELD_TITLES[name], tooltip=FIELD_HINTS[name])
            edit.native.setPlaceholderText(FIELD_PLACEHOLDERS[name])
            self.fields[name] = edit
            parts = [edit]
            if FIELD_UNITS[name]:
                parts.append(Label(value=FIELD_UNITS[name]))
            if name == "creatinine":
                self.fields["creatinine_unit"] = ComboBox(choices=["umol/L", "mg/dL"], value="umol/L",
                                                          tooltip="unit of the creatinine values and std")
                parts.append(self.fields["creatinine_unit"])
            rows.append(Container(widgets=parts, layout="horizontal", labels=False, label=FIELD_TITLES[name]))
            self.errors[name] = Label(value="", label="")
            rows.append(self.errors[name])
        self.errors["creatinine_unit"] = self.errors["creatinine"]
        self.form = Container(widgets=rows)
        self.form.margins = (0, 0, 0, 0)
        for row in rows:
            if isinstance(row, Container):
                row.margins = (0, 0, 0, 0)
        for label in set(self.errors.values()):
            label.native.setStyleSheet("color: #ff6b6b;")
            _wrapping(label.native)
            label.visible = False
        for widget in self.fields.values():
            widget.changed.connect(self._on_form_changed)
        layout = QVBoxLayout(box)
        layout.addWidget(self.form.native)
        self.identity_label = QLabel("")
        _wrapping(self.identity_label)
        self.identity_label.setVisible(False)
        layout.addWidget(self.identity_label)
        self.exam_confirm = QCheckBox("Analyse as the exam typed above")
        self.exam_confirm.setToolTip("the image says another exam; tick to analyse it as the exam in the form")
        self.exam_confirm.setVisible(False)
        self.exam_confirm.toggled.connect(lambda *_: self._update_buttons())
        layout.addWidget(self.exam_confirm)
        return box

    def _build_prompt_group(self) -> QGroupBox:
        box = QGroupBox("Prompt")
        layout = QVBoxLayout(box)
        row = QHBoxLayout()
        row.addWidget(QLabel("Paraphrase"))
        self.variant_spin = QSpinBox()
        self.variant_spin.setRange(1, N_VARIANTS)
        self.variant_spin.setToolTip(f"one of the {N_VARIANTS} paraphrases of each sentence")
        self.variant_spin.valueChanged.connect(lambda *_: self._regenerate_prompt(force=False))
        row.addWidget(self.variant_spin)
        row.addStretch(1)
        layout.addLayout(row)
        self.prompt_edit = QPlainTextEdit()
        self.prompt_edit.setPlaceholderText("type clinical values above, or a prompt here")
        self.prompt_edit.setMaximumHeight(90)
        self.prompt_edit.textChanged.connect(self._on_prompt_edited)
        layout.addWidget(self.prompt_edit)
        row = QHBoxLayout()
        self.prompt_state = QLabel("")
        row.addWidget(self.prompt_state)
        row.addStretch(1)
        self.regenerate_button = QPushButton("Regenerate")
        self.regenerate_button.setToolTip("replace the text by the prompt generated from the values")
        self.regenerate_button.clicked.connect(lambda: self._regenerate_prompt(force=True))
        row.addWidget(self.regenerate_button)
        layout.addLayout(row)
        return box

    def _build_model_group(self) -> QGroupBox:
        from ..core.inference import available_devices

        box = QGroupBox("Model")
        form = QFormLayout(box)
        row = QHBoxLayout()
        self.model_edit = QLineEdit()
        self.model_edit.setToolTip("model file (.safetensors with its .json card)")
        self.model_edit.editingFinished.connect(lambda: self.set_model_file(self.model_edit.text()))
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse_model)
        row.addWidget(self.model_edit, 1)
        row.addWidget(browse)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", *available_devices()])
        self.device_combo.setToolTip("auto picks cuda, then mps, then cpu")
        self.card_label = QLabel("")
        _wrapping(self.card_label)
        self.card_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        form.addRow("File", row)
        form.addRow("Device", self.device_combo)
        form.addRow(self.card_label)
        return box

    def _build_actions_group(self) -> QGroupBox:
        box = QGroupBox("Run")
        layout = QVBoxLayout(box)
        self.analyze_button = QPushButton("Analyze")
        self.analyze_button.setToolTip("embed image and prompt: similarity, zero-shot GFR bins, prognosis")
        self.analyze_button.clicked.connect(self.analyze)
        layout.addWidget(self.analyze_button)
        row = QHBoxLayout()
        self.method_combo = QComboBox()
        self.method_combo.addItems(SALIENCY_METHODS)
        self.method_combo.setToolTip("how the map is computed")
        self.target_combo = QComboBox()
        self.target_combo.setToolTip("explain the image-prompt similarity or the prognosis at one horizon")
        for combo in (self.method_combo, self.target_combo):
            _shrinkable(combo, 3)
        self.saliency_button = QPushButton("Saliency")
        self.saliency_button.setToolTip("add a saliency overlay (where the model looked) over the kidney")
        self.saliency_button.clicked.connect(self.saliency)
        # one drop-down a row, each as wide as the dock: "integrated-gradients" and "similarity" read in full
        choices = QFormLayout()
        choices.setContentsMargins(0, 0, 0, 0)
        choices.addRow("Saliency method", self.method_combo)
        choices.addRow("Explain", self.target_combo)
        layout.addLayout(choices)
        row.addStretch(1)
        row.addWidget(self.saliency_button)
        layout.addLayout(row)
        self.export_button = QPushButton("Export report…")
        self.export_button.setToolTip("report (JSON + CSV), results figure, screenshot and saliency NIfTI")
        self.export_button.clicked.connect(self._choose_export_folder)
        layout.addWidget(self.export_button)
        self.status_label = QLabel("")
        _wrapping(self.status_label)
        layout.addWidget(self.status_label)
        return box

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

    # ------------------------------------------------------------------------------------ layer lists
    def _layers_of(self, kind: str) -> list:
        import napari.layers

        cls = {"image": napari.layers.Image, "labels": napari.layers.Labels, "shapes": napari.layers.Shapes}[kind]
        layers = [layer for layer in self.viewer.layers if isinstance(layer, cls)]
        if kind == "image":  # a dynamic series: 4D with more than one frame
            layers = [layer for layer in layers if layer.ndim == 4 and not layer.rgb and layer.data.shape[0] > 1]
        return layers

    def _pick_exam_labels(self) -> None:
        """Choose the labels layer of the current exam (same exam folder or file, or the same patient and
        exam read from the data); "none" when no open labels layer is that exam's."""
        layer = self.current_layer()
        if layer is None:
            return
        image = ExamIdentity.from_layer_metadata(layer.metadata)
        for labels in self._layers_of("labels"):
            if image.same_exam(ExamIdentity.from_layer_metadata(labels.metadata)):
                self.labels_combo.setCurrentText(labels.name)
                return
        self.labels_combo.setCurrentText(NO_LABELS)

    def labels_mismatch(self) -> str | None:
        """Why the chosen labels layer is not the current exam's (both exams named), None when it may be used."""
        layer, name = self.current_layer(), self.labels_combo.currentText()
        if layer is None or name == NO_LABELS or name not in self.viewer.layers:
            return None
        return labels_mismatch(ExamIdentity.from_layer_metadata(layer.metadata),
                               ExamIdentity.from_layer_metadata(self.viewer.layers[name].metadata), layer.name, name)

    @staticmethod
    def _fill(combo: QComboBox, names: list[str], keep: str | None, first: str | None = None) -> None:
        combo.blockSignals(True)
        combo.clear()
        if first:
            combo.addItem(first)
        combo.addItems(names)
        index = combo.findText(keep) if keep else -1
        combo.setCurrentIndex(index if index >= 0 else 0 if combo.count() else -1)
        combo.blockSignals(False)

    def _refresh_layers(self, event=None) -> None:
        current = before = self.layer_combo.currentText()
        images = [layer.name for layer in self._layers_of("image")]
        inserted = getattr(event, "value", None) if getattr(event, "type", "") == "inserted" else None
        if inserted is not None:
            self._take_notices(inserted)
        if inserted is not None and inserted.name in images:
            current = inserted.name  # an exam just opened is the one the panel reads
            self._check_on_open(inserted)
        if inserted is not None and kidney_colormap((inserted.metadata or {}).get("region_names")):
            inserted.contour = 1  # kidney regions outlined: the DCE image stays readable underneath
        self._fill(self.layer_combo, images, current)
        self._fill(self.labels_combo, [layer.name for layer in self._layers_of("labels")],
                   self.labels_combo.currentText(), NO_LABELS)
        self._fill(self.roi_combo, [layer.name for layer in self._layers_of("shapes")],
                   self.roi_combo.currentText(), AUTO_ROI)
        if self.layer_combo.currentText() != before:
            self._on_layer_changed()
        elif self.labels_combo.currentText() == NO_LABELS:
            self._pick_exam_labels()  # the exam's labels, opened after it
        self._show_patient()
        self._update_buttons()

    def _check_on_open(self, layer) -> None:
        """The image checks that need no model (dynamic series, enhancing kidney, frame times, voxel size),
        run off the event loop as soon as a layer opens; a failed one is said at once, and the layer's
        readings will be withheld after Analyze."""
        from napari.qt.threading import create_worker

        from ..core.checks import image_checks
        from ..core.preprocess import PreprocessConfig, find_kidney_roi

        card = getattr(self, "_card", None) or {}
        try:
            config = PreprocessConfig.from_dict(card["preprocessing"]) if card.get("preprocessing") else \
                PreprocessConfig()
            volume = self._volume(layer)
        except (ValueError, KeyError, TypeError):
            return  # not a DCE series: the layer list already says why it is not offered

        def run():
            return image_checks(volume, find_kidney_roi(volume), config.target_spacing, config.baseline_frames)

        def done(checks):
            if not self._layer_alive(layer):
                return
            self._open_checks[_key(layer)] = checks
            failed = failed_messages(checks)
            if failed:
                self._notify_warning(f"{layer.name}: {OUTSIDE_TRAINING}: {'; '.join(failed)}. Its readings will be "
                                     "withheld after Analyze.")
            current = self.current_layer()
            if current is not None and _key(current) == _key(layer):
                self._show_results()

        worker = create_worker(run, _ignore_errors=True)
        worker.returned.connect(lambda checks: self._safe(done, checks))
        worker.finished.connect(lambda: self._check_workers.remove(worker) if worker in self._check_workers else None)
        self._check_workers.append(worker)
        worker.start()

    def current_layer(self):
        name = self.layer_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _layer_alive(self, layer) -> bool:
        return any(_key(other) == _key(layer) for other in self.viewer.layers)

    def _on_layer_changed(self, *_) -> None:
        layer = self.current_layer()
        if layer is not None:
            self._take_identity(layer)
            self._pick_exam_labels()
        self._show_patient()
        self._update_roi_label()
        self._show_results()

    # ------------------------------------------------------------------------------ exam identity
    def _take_identity(self, layer) -> None:
        """The exam and patient come from the layer's data (sidecar, DICOM tags, cohort folders:
        :class:`~napari_medimp.core.identity.ExamIdentity`); another patient's values never stay in the form;
        the cohort's clinical.csv fills the form when it has the patient."""
        who = ExamIdentity.from_layer_metadata(layer.metadata)
        meta = layer.metadata.get("dce_metadata") or {}
        source = str(layer.metadata.get("source") or meta.get("source") or "")
        self._identity = {"exam": who.exam, "patient": who.patient, "table": None, "line": None,
                          "table_values": {}, "layer": layer.name, "who": who}
        if who.patient != self._form_patient:
            self.prefill(**{name: "" for name in CLINICAL_FIELDS})
            self._form_patient = who.patient
        if who.exam:
            self.fields["exam"].value = who.exam
        if who.patient and source and who.exam:
            self._fill_from_table(Path(source), who.patient, who.exam)
        self.exam_confirm.setChecked(False)
        self._show_identity()

    def _cohort_table(self, source, patient: str) -> tuple[dict, Path | None]:
        """The cohort's ``clinical.csv`` beside ``source`` (rows, path); ``({}, None)`` when there is none, or
        after saying why it could not be read."""
        from ..core.io.cohort import cohort_clinical_table

        try:
            return cohort_clinical_table(Path(source))
        except (OSError, ValueError) as exc:
            self._notify_warning(f"clinical values of {patient} not read from the cohort's table: {exc}")
            return {}, None

    def _fill_from_table(self, source: Path, patient: str, exam: str) -> None:
        from ..core.io.cohort import cohort_clinical_row
        from ..core.prompts import ClinicalRecord

        try:
            row, table, line = cohort_clinical_row(source, patient)
            if row is None:
                return
            record = ClinicalRecord.from_csv_row(row, exam)
        except (OSError, ValueError) as exc:
            self._notify_warning(f"clinical values of {patient} not read from the cohort's table: {exc}")
            return
        self.prefill(donor_age=record.donor_age, gfr=record.gfr, creatinine=list(record.creatinine),
                     creatinine_std=record.creatinine_std, creatinine_unit="umol/L")
        self._identity.update(table=str(table), line=line,
                              table_values={name: str(self.fields[name].value) for name in CLINICAL_FIELDS})
        self._show_identity()

    def value_sources(self) -> dict[str, str]:
        """Where each clinical value of the form came from: the cohort's table (``clinical.csv line N``) while
        it still holds the value filled in from there, else typed in the widget."""
        identity, out = self._identity, {}
        table_values = identity.get("table_values") or {}
        for name in CLINICAL_FIELDS:
            filled = table_values.get(name)
            current = str(self.fields[name].value)
            if filled and _same_value(current, filled):
                out[name] = table_source(identity["table"], identity.get("line"))
            else:
                out[name] = TYPED_HERE
        return out

    def values_differing(self) -> dict[str, dict]:
        """The clinical values typed against the cohort's table: name -> ``{"source", "value"}`` of the
        table's value (empty when the form agrees with the table, or has none)."""
        identity, out = self._identity, {}
        for name, filled in (identity.get("table_values") or {}).items():
            if filled and not _same_value(str(self.fields[name].value), filled):
                out[name] = {"source": table_source(identity["table"], identity.get("line")), "value": filled}
        return out

    def exam_source(self) -> str:
        """Where the form's exam came from: the image's data when it agrees with it, else typed."""
        who = self._identity.get("who")
        if who is not None and who.exam and str(self.fields["exam"].value) == who.exam:
            return who.exam_from or TYPED_HERE
        return TYPED_HERE

    def exam_mismatch(self) -> str | None:
        """Why the form's exam is not the layer's (None when they agree or the layer does not say)."""
        exam = self._identity.get("exam")
        typed = str(self.fields["exam"].value)
        if not exam or typed == exam:
            return None
        who = self._identity.get("who")
        where = f"from its {who.exam_from}" if who is not None and who.exam_from else "from its folder or file"
        return (f"The form says exam {typed}, but layer '{self._identity['layer']}' is exam {exam} ({where}). "
                f"Choose {exam} above, or tick the box to analyse it as {typed}.")

    def values_mismatch(self) -> str | None:
        """The clinical values typed against the cohort's table, in words (None when none)."""
        differing = self.values_differing()
        if not differing:
            return None
        exam = self._identity.get("exam") or str(self.fields["exam"].value)
        parts = []
        for name, other in differing.items():
            typed = str(self.fields[name].value).strip()
            title = FIELD_TITLES[name]
            parts.append(f"{title} {typed} typed here, {other['source']} says {other['value']} at {exam}" if typed
                         else f"{title} left empty, {other['source']} says {other['value']} at {exam}")
        return ("; ".join(parts) + ". Tick the box to analyse with the values typed above, or "
                "retype the table's.")

    def _show_identity(self) -> None:
        identity, lines = self._identity, []
        who = identity.get("who")
        if identity.get("patient") or identity.get("exam"):
            text = f"patient {identity['patient']}, " if identity.get("patient") else ""
            where = []
            if who is not None and who.patient_from:
                where.append(f"patient from the {who.patient_from}")
            if who is not None and who.exam_from:
                where.append(f"exam from the {who.exam_from}")
            lines.append(_escape(f"Image: {text}exam {identity.get('exam') or 'not stated'}"
                                 + (f" ({'; '.join(where)})." if where else ".")))
        differing = self.values_mismatch() if identity.get("table") else None
        if identity.get("table") and differing is None:
            lines.append(_escape(f"Values filled in from {table_source(identity['table'], identity.get('line'))} "
                                 "of the cohort; edit them to use others."))
        mismatch = self.exam_mismatch()
        for warning in (mismatch, differing):
            if warning:
                lines.append(f"<span style='color:#ffb347'>{_escape(warning)}</span>")
        self.identity_label.setText("<br>".join(lines))
        self.identity_label.setVisible(bool(lines))
        needs = mismatch is not None or differing is not None
        self.exam_confirm.setText("Analyse as the exam typed above" if differing is None else
                                  "Analyse with the values typed above" if mismatch is None else
                                  "Analyse with the exam and values typed above")
        self.exam_confirm.setVisible(needs)
        if not needs:
            self.exam_confirm.setChecked(False)

    # ------------------------------------------------------------------------------------- clinical
    def form_values(self) -> dict[str, Any]:
        return {name: widget.value for name, widget in self.fields.items()}

    def prefill(self, **values) -> None:
        """Set form fields (exam, donor_age, gfr, creatinine, creatinine_std, creatinine_unit)."""
        for name, value in values.items():
            if name not in self.fields:
                raise ValueError(f"unknown clinical field {name!r}; known: {', '.join(self.fields)}")
            widget = self.fields[name]
            if isinstance(widget, LineEdit):
                if isinstance(value, list | tuple):
                    value = "; ".join(f"{v:g}" for v in value)
                value = "" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))
            widget.value = value
        self._on_form_changed()

    def validate_form(self):
        """The clinical record, or ``None`` after showing each invalid field's message next to it."""
        record, errors = check_form(self.form_values())
        shown = {id(label): "" for label in self.errors.values()}
        for name, message in errors.items():
            label = self.errors.get(name)
            if label is not None:
                shown[id(label)] = (shown[id(label)] + " " + message).strip()
        for label in set(self.errors.values()):
            label.value = shown[id(label)]
            label.visible = bool(shown[id(label)])
        return record, errors

    def _on_form_changed(self, *_) -> None:
        self.validate_form()
        self._regenerate_prompt(force=False)
        if hasattr(self, "identity_label"):
            self._show_identity()

    def _attributes(self) -> tuple[str, ...]:
        card = getattr(self, "_card", None) or {}
        attributes = ((card.get("training") or {}).get("config") or {}).get("attributes")
        return tuple(attributes) if attributes else ATTRIBUTES

    def generated_prompt(self) -> str | None:
        record, errors = check_form(self.form_values())
        if record is None:
            return None
        return build_prompt(record, variant=self.variant_spin.value() - 1, attributes=self._attributes())

    def _regenerate_prompt(self, force: bool) -> None:
        text = self.generated_prompt()
        edited = self.prompt_edit.toPlainText() != self._prompt_generated
        if text is None:  # an invalid value: a generated sentence built from it must not stay on screen
            if not edited:
                self._prompt_generated = ""
                self._setting_prompt = True
                self.prompt_edit.setPlainText("")
                self._setting_prompt = False
                self.prompt_state.setText("waiting for valid clinical values")
                self.regenerate_button.setEnabled(False)
            return
        self._prompt_generated = text
        if force or not edited:
            self._setting_prompt = True
            self.prompt_edit.setPlainText(text)
            self._setting_prompt = False
        self._on_prompt_edited()

    def _on_prompt_edited(self) -> None:
        if self._setting_prompt:
            return
        edited = self.prompt_edit.toPlainText() != self._prompt_generated
        self.prompt_state.setText("edited by hand" if edited else "generated")
        self.regenerate_button.setEnabled(edited)

    def prompt(self) -> str | None:
        text = self.prompt_edit.toPlainText().strip()
        return text or None

    # ----------------------------------------------------------------------------------------- model
    @staticmethod
    def _default_model() -> str:
        from ..core.checkpoint import ModelFileError
        from ..core.sample import default_model_path

        try:
            return str(default_model_path())
        except ModelFileError:
            return ""

    def set_model_file(self, path) -> bool:
        """Use the model file ``path`` for the next analyses; shows its card. False when unreadable."""
        from ..core.checkpoint import ModelFileError, read_card

        path = str(path or "").strip()
        self.model_edit.setText(path)
        self._card = None
        if not path:
            self.card_label.setText("<b>No model file.</b> Choose one, or train one (Layers > Classify).")
            self._update_buttons()
            return False
        try:
            self._card = read_card(path)
        except (ModelFileError, OSError) as exc:
            self.card_label.setText(f"<span style='color:#ff6b6b'>{_escape(str(exc))}</span>")
            self._notify_error(f"model file not usable: {exc}")
            self._update_buttons()
            return False
        facts = card_facts(self._card)
        lines = facts_text(facts).split("\n")
        html = "<br>".join(f"<b style='color:#ffb347'>{_escape(line)}</b>" if line.startswith(("CAUTION", "SYNTHETIC"))
                           else _escape(line) for line in lines if line)
        self.card_label.setText(html)
        self.target_combo.clear()
        self.target_combo.addItems(["similarity", *facts["horizons"]])
        self.method_combo.setCurrentText(default_method(self._card))  # the most faithful this model measured
        self._regenerate_prompt(force=False)
        self._update_buttons()
        return True

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "MEDIMP model file", str(Path(self.model_edit.text()).parent),
                                              "MEDIMP model (*.safetensors)")
        if path:
            self.set_model_file(path)

    def _predictor(self, path: str, device: str):
        """Loaded once per (file, modification time, device); called from the worker thread."""
        from ..core.inference import Predictor

        key = (str(Path(path).resolve()), Path(path).stat().st_mtime_ns, device)
        if key not in self._predictors:
            self._predictors.clear()  # one model in memory at a time
            _leave_a_core_to_the_viewer()
            self._predictors[key] = Predictor.from_file(path, device=device)
        return self._predictors[key]

    # ------------------------------------------------------------------------------------------- ROI
    def _roi_source(self, layer):
        """(RoiBox or None for automatic, description)."""
        choice = self.roi_combo.currentText()
        if not choice or choice == AUTO_ROI or choice not in self.viewer.layers:
            auto = self._auto_rois.get(_key(layer))
            return auto, "automatic" if auto is None else "automatic (shown)"
        shapes = self.viewer.layers[choice]
        if len(shapes.data) == 0:
            raise ValueError(f"Shapes layer {choice!r} has no box; draw a rectangle around the kidney")
        selected = sorted(shapes.selected_data)
        vertices = np.asarray(shapes.data[selected[-1] if selected else len(shapes.data) - 1], dtype=float)
        world = np.array([shapes.data_to_world(v) for v in vertices])
        t0 = np.zeros((len(world), max(0, layer.ndim - world.shape[1])))
        voxels = np.array([layer.world_to_data(w) for w in np.hstack([t0, world])])[:, -3:]
        fallback = shapes.metadata.get("medimp_roi")
        if fallback is not None:
            from ..core.preprocess import RoiBox

            fallback = RoiBox.from_sequence(fallback)
        else:
            fallback = self._auto_rois.get(_key(layer))
        return roi_from_vertices(voxels, layer.data.shape[-3:], fallback), f"from {choice!r}"

    def _update_roi_label(self) -> None:
        layer = self.current_layer()
        if layer is None:
            self.roi_label.setText("")
            return
        try:
            roi, how = self._roi_source(layer)
        except ValueError as exc:
            self.roi_label.setText(f"<span style='color:#ff6b6b'>{_escape(str(exc))}</span>")
            return
        if roi is None:
            self.roi_label.setText("found from the enhancement when you analyse")
        else:
            self.roi_label.setText(f"{how}: z {roi.z0}-{roi.z1 - 1}, y {roi.y0}-{roi.y1 - 1}, "
                                   f"x {roi.x0}-{roi.x1 - 1} (voxels)")

    def show_kidney_box(self) -> None:
        """Find the kidney (worker thread) and show the box as an editable Shapes layer."""
        layer = self.current_layer()
        if layer is None:
            self._notify_error("choose a 4D DCE layer first")
            return
        try:
            volume = self._volume(layer)
        except ValueError as exc:
            self._notify_error(str(exc))
            return
        card = getattr(self, "_card", None)

        def job():
            from ..core.preprocess import PreprocessConfig, find_kidney_roi

            config = PreprocessConfig.from_dict(card["preprocessing"]) if card else PreprocessConfig()
            return find_kidney_roi(volume, margin_mm=config.roi_margin_mm, baseline_frames=config.baseline_frames)

        self._start(job, lambda roi: self._add_box_layer(layer, roi), "finding the kidney")

    def _add_box_layer(self, layer, roi) -> None:
        if not self._layer_alive(layer):
            self._notify_warning(f"layer {layer.name!r} was removed; kidney box discarded")
            return
        self._auto_rois[_key(layer)] = roi
        name = f"kidney box · {layer.name}"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        self.viewer.add_shapes(
            [box_rectangle(roi)], shape_type="rectangle", ndim=3, name=name, edge_color="#ffd700",
            face_color="transparent", edge_width=1.0, scale=tuple(layer.scale[-3:]),
            translate=tuple(layer.translate[-3:]), metadata={"medimp_roi": roi.to_list(), "source_layer": layer.name},
            **_spatial_axes(layer))
        self.viewer.layers.selection.active = layer
        self.roi_combo.setCurrentText(name)
        self._update_roi_label()

    # ------------------------------------------------------------------------------------- run jobs
    def _volume(self, layer):
        return volume_from_layer_data(layer.data, layer.scale, layer.translate, layer.metadata, layer.name)

    def _region_names(self) -> dict[int, str] | None:
        name = self.labels_combo.currentText()
        if name == NO_LABELS or name not in self.viewer.layers:
            return None
        return layer_region_names(self.viewer.layers[name].metadata)

    def _labels(self, layer):
        name = self.labels_combo.currentText()
        if not name or name == NO_LABELS or name not in self.viewer.layers:
            return None
        mismatch = self.labels_mismatch()
        if mismatch:
            raise ValueError(mismatch)
        labels = np.asarray(self.viewer.layers[name].data)
        if labels.shape != tuple(layer.data.shape[-3:]):
            raise ValueError(f"labels layer {name!r} has shape {labels.shape}, the DCE layer's grid is "
                             f"{tuple(layer.data.shape[-3:])}; choose matching labels or none")
        return labels

    def _labels_origin(self) -> dict | None:
        """The chosen labels layer's file and exam, for the report."""
        name = self.labels_combo.currentText()
        if name == NO_LABELS or name not in self.viewer.layers:
            return None
        meta = self.viewer.layers[name].metadata or {}
        return {"layer": name, "file": meta.get("labels_file"),
                "identity": ExamIdentity.from_layer_metadata(meta).to_dict()}

    def _inputs(self, need_prompt: bool = False):
        """Everything a job needs, checked in the main thread; None after telling the user why."""
        layer = self.current_layer()
        if layer is None:
            self._notify_error("no 4D DCE layer: open a DCE-MRI series (File > Open, or the sample)")
            return None
        record, errors = self.validate_form()
        if errors:
            count = f"{len(errors)} clinical values need" if len(errors) > 1 else "a clinical value needs"
            self._notify_error(f"{count} correcting (shown in red under each field)")
            return None
        if self._card is None:
            self._notify_error("no usable model file; choose one in the Model section")
            return None
        prompt = self.prompt()
        if need_prompt and not prompt:
            self._notify_error("the similarity target needs a prompt; enter clinical values or type one")
            return None
        try:
            volume = self._volume(layer)
            roi, roi_how = self._roi_source(layer)
            labels = self._labels(layer)
        except ValueError as exc:
            self._notify_error(str(exc))
            return None
        form = self.form_values()
        clinical = clinical_inputs(gfr=form["gfr"], donor_age=form["donor_age"], creatinine=form["creatinine"],
                                   creatinine_std=form["creatinine_std"], creatinine_unit=form["creatinine_unit"],
                                   record=record, source=TYPED_HERE, sources=self.value_sources(),
                                   table=self._identity.get("table"), differs=self.values_differing())
        request = AnalysisRequest(volume=volume, exam=record.exam, record=record, prompt=prompt, roi=roi,
                                  roi_source=roi_how, labels=labels, region_names=self._region_names(), clinical=clinical,
                                  layer_name=layer.name, exam_source=self.exam_source(),
                                  labels_origin=self._labels_origin() if labels is not None else None)
        try:
            request.check()
        except ValueError as exc:
            self._notify_error(str(exc))
            return None
        return {"layer": layer, "layer_name": layer.name, "request": request, "model": self.model_edit.text(),
                "device": self.device_combo.currentText()}

    def analyze(self) -> None:
        """Image-prompt similarity, zero-shot GFR bins, prognosis and curves of the chosen layer."""
        mismatch = self.exam_mismatch() or self.values_mismatch()
        if mismatch and not self.exam_confirm.isChecked():
            self._notify_error(mismatch)
            return
        spec = self._inputs()
        if spec is None:
            return
        relay = self._relay

        def job():
            relay.progress.emit("loading model", 0.02)
            predictor = self._predictor(spec["model"], spec["device"])
            result = run_analysis(predictor, spec["request"],
                                  progress=lambda stage, f: relay.progress.emit(stage, 0.05 + 0.85 * f))
            relay.progress.emit("plots", 0.95)
            return result, result.panel_images()

        self._start(job, lambda out: self._analysis_done(spec, *out), f"analysing {spec['layer_name']!r}")

    def _analysis_done(self, spec: dict, result: AnalysisResult, plots: tuple[bytes, bytes]) -> None:
        layer = spec["layer"]
        if not self._layer_alive(layer):
            self._notify_warning(f"layer {spec['layer_name']!r} was removed during the analysis; result discarded")
            return
        self._results[_key(layer)] = result
        self._plots[_key(layer)] = plots
        current = self.current_layer()
        if current is None or _key(current) != _key(layer):
            self._notify_info(f"analysis of {spec['layer_name']!r} finished; select that layer to see it")
        self._show_results()
        if current is not None and _key(current) == _key(layer):
            QTimer.singleShot(0, self.scroll_to_results)  # once the results are laid out

    def show_anyway(self) -> None:
        """Show the withheld readings of the current layer's exam (outside what the model was trained on)."""
        result = self.current_result()
        layer = self.current_layer()
        if result is None or not result.withheld or self.busy:
            return
        result.show_anyway()

        def job():
            return result.panel_images()

        def done(plots):
            if self._layer_alive(layer):
                self._plots[_key(layer)] = plots
            self._show_results()

        self._start(job, done, "drawing the readings shown anyway")

    def scroll_to_results(self) -> None:
        """Bring the results to the top of the panel (they sit below the form, out of view)."""
        self._content.layout().activate()
        self._scroll.verticalScrollBar().setValue(self.results_box.y())

    def saliency(self) -> None:
        """Grad-CAM / occlusion map of the chosen target, added over the source layer."""
        target = self.target_combo.currentText() or "similarity"
        spec = self._inputs(need_prompt=target == "similarity")
        if spec is None:
            return
        method = self.method_combo.currentText()
        relay = self._relay

        def job():
            relay.progress.emit("loading model", 0.02)
            predictor = self._predictor(spec["model"], spec["device"])
            return explain(predictor, spec["request"], method, target,
                           progress=lambda stage, f: relay.progress.emit(stage, 0.05 + 0.9 * f))

        self._start(job, lambda smap: self._saliency_done(spec, smap),
                    f"{method} saliency of {spec['layer_name']!r}")

    def _saliency_done(self, spec: dict, smap) -> None:
        layer = spec["layer"]
        if not self._layer_alive(layer):
            self._notify_warning(f"layer {spec['layer_name']!r} was removed; saliency discarded")
            return
        scale = np.asarray(layer.scale[-3:], dtype=float)
        translate = np.asarray(layer.translate[-3:], dtype=float) + np.asarray(smap.roi.start) * scale
        words = " ".join(w for w in ("saliency", smap.method, smap.target, smap.exam) if w)
        name = f"{words} · {spec['layer_name']}"
        result = self._results.get(_key(layer))
        info = result.attach_saliency(smap) if result is not None else {
            "method": smap.method, "target": smap.target, "score": smap.score, "roi_zyx": smap.roi.to_list()}
        metadata = {"affine": np.asarray(smap.roi_affine).tolist(), "source_layer": spec["layer_name"],
                    "medimp_saliency": info}
        if name in self.viewer.layers:
            overlay = self.viewer.layers[name]
            overlay.data, overlay.scale, overlay.translate = smap.data, scale, translate
            overlay.metadata = metadata
        else:
            overlay = self.viewer.add_image(smap.data, name=name, colormap=saliency_colormap(), blending="additive",
                                            opacity=0.8, contrast_limits=(0.0, 1.0), scale=scale, rendering="mip",
                                            translate=translate, metadata=metadata, **_spatial_axes(layer))
        self.viewer.layers.selection.active = overlay
        self.status_label.setText(f"{smap.method} map of {smap.target} added over {spec['layer_name']!r}; "
                                  "opacity in the layer controls")
        self._show_results()
        if not np.any(smap.data > 0):
            self._notify_warning(f"the {smap.method} map is zero everywhere: this target does not respond to the "
                                 "image at that layer; try occlusion")

    # ----------------------------------------------------------------------------------- the worker
    def _start(self, fn, on_done, description: str) -> None:
        from napari.qt.threading import create_worker
        from napari.utils import progress

        if self._worker is not None:
            self._notify_warning("MEDIMP is still busy with the previous request")
            return
        self._pbar = progress(total=100, desc=f"MEDIMP: {description}")
        def run():
            _import_heavy_modules()
            return fn()

        # errors are shown once, as this panel's notification (not re-raised as a second, raw one)
        worker = create_worker(run, _ignore_errors=True)
        worker.returned.connect(lambda value: self._safe(on_done, value))
        worker.errored.connect(lambda exc: self._notify_error(f"{description} failed: {exc}"))
        worker.finished.connect(self._finished)
        self._worker = worker
        self.status_label.setText(f"{description}…")
        self._update_buttons()
        worker.start()

    def _safe(self, fn, value) -> None:
        try:
            fn(value)
        except Exception as exc:  # a slot must never let an exception reach Qt
            self._notify_error(f"could not show the result: {exc}")

    def _on_progress(self, stage: str, fraction: float) -> None:
        pbar = self._pbar  # updating it may process events, and the job may finish meanwhile
        if pbar is None:
            return
        target = min(99, int(round(100 * min(1.0, max(0.0, fraction)))))
        pbar.set_description(f"MEDIMP: {stage}")
        if target > pbar.n:
            pbar.update(target - pbar.n)
        if self._worker is not None:
            self.status_label.setText(f"{stage}…")

    def _finished(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        if self.status_label.text().endswith("…"):
            self.status_label.setText("")
        self._worker = None
        self._update_buttons()
        self._flush_notices()

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _update_buttons(self) -> None:
        ready = not self.busy and self.layer_combo.count() > 0 and getattr(self, "_card", None) is not None
        for button in (self.analyze_button, self.saliency_button, self.patient_button):
            button.setEnabled(ready)
        self.show_box_button.setEnabled(not self.busy and self.layer_combo.count() > 0)
        self.export_button.setEnabled(not self.busy and self.current_result() is not None)

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

    # --------------------------------------------------------------------------------------- export
    def _choose_export_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export MEDIMP report to folder")
        if folder:
            self.export_report(folder)

    def export_report(self, folder) -> dict[str, Path] | None:
        """Report (JSON, CSV and PDF), results figure (PNG), viewer screenshot (PNG) and the saliency maps
        (NIfTI, in the ROI's geometry) of the current layer's result, into a new folder inside ``folder``
        named after the patient, exam and time (an earlier export is never mixed with or replaced)."""
        from datetime import datetime

        from ..core.outputs import new_export_folder

        result = self.current_result()
        if result is None:
            self._notify_error("nothing to export: analyse the current layer first")
            return None
        patient = ExamIdentity.from_volume(result.request.volume).patient
        who = "-".join(str(v) for v in (patient, result.analysis.exam) if v)
        name = f"{who or 'medimp'}-{datetime.fromtimestamp(result.finished):%Y%m%d-%H%M%S}"
        try:
            folder = new_export_folder(folder, name)
        except (OSError, ValueError) as exc:
            self._notify_error(f"export failed: {exc}")
            return None
        return self.write_export(folder)

    def write_export(self, folder) -> dict[str, Path] | None:
        """The current layer's export written into ``folder`` itself (a folder the caller owns)."""
        result = self.current_result()
        if result is None:
            self._notify_error("nothing to export: analyse the current layer first")
            return None
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            screenshot = folder / "medimp_screenshot.png"
            self.viewer.screenshot(str(screenshot), canvas_only=False)
            files = result.write(folder, extra={"screenshot": screenshot})
        except (OSError, ValueError) as exc:
            self._notify_error(f"export failed: {exc}")
            return None
        self.status_label.setText(f"report written to {folder}")
        return files

    def save_panel(self, path) -> Path:
        """PNG of the whole panel (all sections, not only the part scrolled into view)."""
        path = Path(path)
        self._content.grab().save(str(path))
        return path

    # -------------------------------------------------------------------------------------- messages
    def _notify_error(self, message: str) -> None:
        from napari.utils.notifications import show_error

        self.status_label.setText(f"<span style='color:#ff6b6b'>{_escape(message)}</span>")
        show_error(message)

    def _notify_warning(self, message: str) -> None:
        from napari.utils.notifications import show_warning

        self.status_label.setText(_escape(message))
        show_warning(message)

    def _notify_info(self, message: str) -> None:
        from napari.utils.notifications import show_info

        show_info(message)


_IMPORTS_LOCK = threading.Lock()
_IMPORTED = threading.Event()


_EXIT_HOOKED = []


def _wait_for_workers_at_exit() -> None:
    """Let background work (the warm-up import, an analysis) end before Python tears Qt down: a worker
    that signals into deleted Qt objects at exit would abort the process."""
    if _EXIT_HOOKED:
        return
    import atexit

    from qtpy.QtCore import QThreadPool

    atexit.register(lambda: QThreadPool.globalInstance().waitForDone(120_000))
    _EXIT_HOOKED.append(True)


def _import_heavy_modules() -> None:
    """Import MONAI, transformers and the model code once. Every job calls this first: importing the same
    lazily-initialised package (transformers) from two threads at once can fail half-way."""
    if _IMPORTED.is_set():
        return
    import importlib

    with _IMPORTS_LOCK:
        if _IMPORTED.is_set():
            return
        for name in ("monai.transforms", "monai.visualize", "transformers", "napari_medimp.core.inference",
                     "napari_medimp.core.saliency", "napari_medimp.core.plots", "matplotlib.backends.backend_agg"):
            importlib.import_module(name)
        from transformers import AutoConfig, AutoModel, AutoTokenizer  # noqa: F401  (resolve the lazy names)

        _IMPORTED.set()


def _leave_a_core_to_the_viewer() -> None:
    """CPU inference uses all cores but one, so that drawing and the event loop never starve."""
    import os

    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores > 1 and torch.get_num_threads() >= cores:
        torch.set_num_threads(cores - 1)


#: the colour of a reading that is no finding (no better than a trivial answer)
GREY = "#8a8f98"


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


def saliency_colormap():
    """Dark red to yellow, low values fully transparent: over the image in 2D, and in 3D the map's
    important voxels without the box around them."""
    from napari.utils.colormaps import Colormap

    return Colormap(colors=[[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.75, 0.1, 0.05, 0.5],
                            [1.0, 0.55, 0.0, 0.85], [1.0, 1.0, 0.3, 1.0]],
                    controls=[0.0, 0.2, 0.45, 0.75, 1.0], name="saliency")


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


def _grid(viewer):
    """The viewer's grid settings (``viewer.canvas.grid`` since napari 0.9, ``viewer.grid`` before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def _key(layer) -> str:
    """A layer's identity that survives the viewer proxy napari hands to plugin widgets."""
    return str(getattr(layer, "unique_id", id(layer)))


def _wrapping(label: QLabel) -> None:
    """A label that wraps at the dock's width and never widens it (long words included)."""
    label.setWordWrap(True)
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    label.setMinimumWidth(40)


def _shrinkable(combo: QComboBox, characters: int = 12) -> None:
    """Long names must not widen the dock: show them elided, full name in the list."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(characters)


def _spatial_axes(layer) -> dict:
    """Axis labels and units of a 3D layer laid over the spatial axes of ``layer``."""
    return {"axis_labels": tuple(layer.axis_labels[-3:]), "units": tuple(str(u) for u in layer.units[-3:])}


