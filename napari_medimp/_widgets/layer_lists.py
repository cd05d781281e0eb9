"""The panel's layer choices: the DCE layer, its tissue labels and kidney-box layers, kept in step with
the viewer's layers, and the image checks run when a layer opens."""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox, QFormLayout, QGroupBox, QLabel, QPushButton

from .._layers import kidney_colormap
from ..core.checks import OUTSIDE_TRAINING, failed_messages
from ..core.identity import ExamIdentity, labels_mismatch
from ._panel_util import _key, _shrinkable, _wrapping
from .kidney_box import AUTO_ROI

NO_LABELS = "none"


class LayerLists:
    """The image group of the MEDIMP panel (a part of :class:`~napari_medimp._widgets.medimp.MedimpWidget`)."""

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
