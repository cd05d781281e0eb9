"""The MEDIMP dock widget: DCE layer + kidney box + clinical values -> prompt, embeddings, zero-shot GFR
reading, prognosis, saliency overlay and time-intensity curves. Every computation is a core call run in
a worker thread; this module only moves values between Qt widgets, layers and those calls."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QScrollArea, QVBoxLayout, QWidget

from ..core.pipeline import AnalysisResult
from ._panel_util import _escape
from ._registry import register
from .clinical_form import ClinicalForm
from .exam_identity import ExamIdentityPart
from .export import Export
from .jobs import Jobs, _import_heavy_modules, _Relay, _wait_for_workers_at_exit
from .kidney_box import KidneyBox
from .layer_lists import LayerLists
from .model_choice import ModelChoice
from .patient_panel import PatientPanel
from .results_view import ResultsView

if TYPE_CHECKING:
    import napari


class MedimpWidget(LayerLists, ExamIdentityPart, ClinicalForm, ModelChoice, KidneyBox, Jobs, ResultsView, PatientPanel,
                   Export, QWidget):
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
