"""The panel's jobs: analysis and saliency requests built from the panel, run in a worker thread (the
layers are touched only in the main thread), and the heavy imports made once in the background."""

from __future__ import annotations

import threading

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from .._layers import layer_region_names, volume_from_layer_data
from ..core.identity import ExamIdentity
from ..core.pipeline import AnalysisRequest, AnalysisResult, explain, run_analysis
from ..core.report import clinical_inputs
from ..core.terms import SALIENCY_METHODS
from ._panel_util import _key, _shrinkable, _spatial_axes, _wrapping
from .exam_identity import TYPED_HERE
from .layer_lists import NO_LABELS


class _Relay(QObject):
    """Carries progress from a worker thread to the main thread (queued connection)."""

    progress = Signal(str, float)


class Jobs:
    """The Run group of the MEDIMP panel and its analysis and saliency jobs (a part of :class:`~napari_medimp._widgets.medimp.MedimpWidget`)."""

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


def saliency_colormap():
    """Dark red to yellow, low values fully transparent: over the image in 2D, and in 3D the map's
    important voxels without the box around them."""
    from napari.utils.colormaps import Colormap

    return Colormap(colors=[[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.75, 0.1, 0.05, 0.5],
                            [1.0, 0.55, 0.0, 0.85], [1.0, 1.0, 0.3, 1.0]],
                    controls=[0.0, 0.2, 0.45, 0.75, 1.0], name="saliency")
