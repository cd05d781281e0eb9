"""Open from PACS: find a patient's exams in the hospital archive, retrieve one and open it as a DCE layer.

The dock only collects the query and shows results; queries, retrieval and reading run in worker threads
(``napari_medimp.core.pacs``), so the viewer stays responsive and a retrieval can be cancelled.
"""

from __future__ import annotations

import threading

import napari
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core import pacs

PLUGIN = "napari-medimp"
WIDGET_NAME = "Open from PACS"
COLUMNS = ("Patient", "Date", "Series", "Images")


def _person_words(value: str) -> str:
    """A DICOM person name ('Family^Given^Middle^Prefix^Suffix') as a reader writes it."""
    parts = [p for p in str(value).split("^") if p]
    return ", ".join([parts[0], " ".join(parts[1:])]) if len(parts) > 1 else (parts[0] if parts else "")


def _date_words(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else value


class _Bridge(QObject):
    """Carries progress from the network thread to the widget (queued across threads)."""

    progressed = Signal(int, int)


class PacsWidget(QWidget):
    def __init__(self, napari_viewer: napari.viewer.Viewer, settings_path=None):
        super().__init__()
        self.viewer = napari_viewer
        self._settings_path = settings_path
        self._servers: dict[str, pacs.PacsServer] = {}
        self._matches: list[pacs.SeriesMatch] = []
        self._cancel = threading.Event()
        self._worker = None
        self._bridge = _Bridge()
        self._bridge.progressed.connect(self._on_progress)

        self.server = QComboBox()
        self.reload_button = QPushButton("Reload settings")
        self.reload_button.setToolTip("Read the PACS settings file again")
        self.patient = QLineEdit()
        self.patient.setPlaceholderText("patient ID, * and ? allowed")
        self.study_date = QLineEdit()
        self.study_date.setPlaceholderText("YYYYMMDD or YYYYMMDD-YYYYMMDD")
        self.modality = QLineEdit("MR")
        self.search_button = QPushButton("Search")
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(COLUMNS.index("Series"), QHeaderView.ResizeMode.Stretch)
        self.table.setMinimumHeight(150)
        self.table.setWordWrap(False)
        self.setMinimumWidth(350)
        self.retrieve_button = QPushButton("Retrieve and open")
        self.retrieve_button.setToolTip("Download the selected series of one exam and open them as one DCE image")
        self.cancel_button = QPushButton("Cancel")
        self.progress = QProgressBar()
        self.progress.setFormat("%v of %m images")
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        form = QFormLayout()
        server_row = QHBoxLayout()
        server_row.addWidget(self.server, 1)
        server_row.addWidget(self.reload_button)
        form.addRow("PACS", server_row)
        form.addRow("Patient ID", self.patient)
        form.addRow("Study date", self.study_date)
        form.addRow("Modality", self.modality)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.search_button)
        layout.addWidget(self.table, 1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.retrieve_button, 1)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)

        self.reload_button.clicked.connect(self.load_settings)
        self.search_button.clicked.connect(self.search)
        self.patient.returnPressed.connect(self.search)
        self.study_date.returnPressed.connect(self.search)
        self.retrieve_button.clicked.connect(self.retrieve)
        self.cancel_button.clicked.connect(self.cancel)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.load_settings()

    # -- state ---------------------------------------------------------------------------------------
    def _say(self, text: str, error: bool = False) -> None:
        self.status.setText(text)
        self.status.setStyleSheet("color: #e05555;" if error else "")

    def _busy(self) -> bool:
        return self._worker is not None

    def _update_buttons(self) -> None:
        busy = self._busy()
        has_server = bool(self._servers)
        for widget in (self.server, self.reload_button, self.patient, self.study_date, self.modality):
            widget.setEnabled(not busy)
        self.search_button.setEnabled(has_server and not busy)
        self.retrieve_button.setEnabled(has_server and not busy and bool(self.selected_series()))
        self.cancel_button.setEnabled(busy)

    def load_settings(self) -> None:
        self.server.clear()
        try:
            self._servers, default = pacs.load_servers(self._settings_path)
        except pacs.PacsError as exc:
            self._servers = {}
            self._say(str(exc), error=True)
        else:
            self.server.addItems(list(self._servers))
            self.server.setCurrentText(default)
            self._say(f"{len(self._servers)} PACS in the settings. Search by patient ID or study date.")
        self._update_buttons()

    def selected_series(self) -> list[pacs.SeriesMatch]:
        rows = sorted({index.row() for index in self.table.selectionModel().selectedRows()})
        return [self._matches[r] for r in rows if r < len(self._matches)]

    # -- work ----------------------------------------------------------------------------------------
    def _start(self, function, on_done) -> None:
        from napari.qt.threading import create_worker

        self._worker = create_worker(function, _ignore_errors=True)  # errors are shown in the dock
        self._worker.returned.connect(on_done)
        self._worker.errored.connect(self._on_error)
        self._worker.finished.connect(self._on_finished)
        self._update_buttons()
        self._worker.start()

    def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, pacs.PacsCancelled):
            self._say(str(exc).capitalize())
        elif isinstance(exc, (pacs.PacsError, ValueError, OSError)):
            self._say(str(exc), error=True)
        else:
            self._say(f"Unexpected error: {type(exc).__name__}: {exc}", error=True)

    def _on_finished(self) -> None:
        self._worker = None
        self._update_buttons()

    def search(self) -> None:
        if self._busy() or not self._servers:
            return
        server = self._servers[self.server.currentText()]
        patient, date = self.patient.text().strip(), self.study_date.text().strip()
        modality = self.modality.text().strip().upper()
        self._matches = []  # the series of an earlier search (perhaps of another server) go: only this answer shows
        self.table.setRowCount(0)
        self._say(f"Searching PACS '{server.name}'...")
        self._start(lambda: pacs.find(server, patient_id=patient, study_date=date, modality=modality),
                    self._show_matches)

    def _show_matches(self, matches: list[pacs.SeriesMatch]) -> None:
        self._matches = matches
        self.table.setRowCount(len(matches))
        for row, m in enumerate(matches):
            number = "" if m.series_number is None else f"{m.series_number} "
            cells = (m.patient_id, _date_words(m.study_date), f"{number}{m.series_description}",
                     "" if m.n_images is None else str(m.n_images))
            tip = (f"{_person_words(m.patient_name)}\n{m.study_description}\nstudy {m.study_uid}\n"
                   f"series {m.series_uid}").strip()
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(tip)
                self.table.setItem(row, col, item)
        studies = {m.study_uid for m in matches}
        if len(studies) == 1:
            self.table.selectAll()
        if not matches:
            self._say("No series found.")
        else:
            self._say(f"{len(matches)} series in {len(studies)} exam(s). Select the series of one exam "
                      "(its phases) and press Retrieve and open.")
        self._update_buttons()

    def retrieve(self) -> None:
        selected = self.selected_series()
        if self._busy() or not selected:
            return
        if len({m.study_uid for m in selected}) > 1:
            self._say("The selected series belong to different exams; select the series of one exam.", error=True)
            return
        server = self._servers[self.server.currentText()]
        expected = sum(m.n_images or 0 for m in selected)
        self.progress.setRange(0, max(expected, 1))
        self.progress.setValue(0)
        self._cancel = threading.Event()
        cancel, bridge = self._cancel, self._bridge

        def work():
            from ..core.io import load_dce

            folder = pacs.retrieve(server, selected, progress=lambda n, m: bridge.progressed.emit(n, m or 0),
                                   cancel=cancel)
            return load_dce(folder), selected[0]

        how = "C-MOVE to this station" if server.retrieval == "move" else "C-GET"
        self._say(f"Retrieving {len(selected)} series from PACS '{server.name}' ({how})...")
        self._start(work, self._open)

    def _on_progress(self, received: int, expected: int) -> None:
        if expected:
            self.progress.setMaximum(expected)
        self.progress.setValue(received)

    def cancel(self) -> None:
        if self._busy():
            self._cancel.set()
            self._say("Cancelling...")

    def _open(self, result) -> None:
        from napari.layers import Layer

        from .._layers import volume_layer_data

        volume, match = result
        name = f"{match.patient_id} {_date_words(match.study_date)}"
        layer = Layer.create(*volume_layer_data(volume, name=name))
        self.viewer.add_layer(layer)
        z, y, x = volume.shape[1:]
        self._say(f"Opened '{name}': {volume.n_frames} phases of {x}x{y}x{z} voxels "
                  f"({volume.metadata.get('grouped_by', 'one series')}). Kept in {volume.source}.")


def open_pacs_dialog(viewer: napari.viewer.Viewer) -> PacsWidget:
    """Show the Open from PACS dock of ``viewer``."""
    from ._registry import show_plugin_dock

    return show_plugin_dock(viewer, WIDGET_NAME, PLUGIN)


__all__ = ["PacsWidget", "open_pacs_dialog"]
