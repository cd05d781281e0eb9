"""The panel's model: the model file, its card's facts, and the loaded predictors kept by file and device."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
)

from ..core.card import card_facts, default_method, facts_text
from ._panel_util import _escape, _wrapping
from .jobs import _leave_a_core_to_the_viewer


class ModelChoice:
    """The model group of the MEDIMP panel and its cache of loaded predictors (a part of :class:`~napari_medimp._widgets.medimp.MedimpWidget`)."""

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
