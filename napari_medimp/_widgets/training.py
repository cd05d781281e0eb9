"""MEDIMP training dialog: train a model on a local cohort from napari, then evaluate it.

The training runs in a child process (``python -m src_train train ... --json-progress``) handled by
:class:`~napari_medimp._widgets.training_process.ChildProcess`: the viewer stays responsive, and
everything the training holds (GPU memory included) is freed when the process ends. Its stdout carries
one JSON progress event per line (parsed by :mod:`napari_medimp._widgets.training_form`); anything else,
and stderr, goes to the log view.

Cancel sends SIGTERM: the training finishes its step, writes ``RUN/last.safetensors`` and exits with code
3; a later Start with "Resume" continues from there. A process that does not stop within
``TrainingWidget.kill_timeout_s`` is killed. Closing the viewer (or the dock) stops a running training
the same way and waits for it, so no process outlives the window.

A finished training is evaluated in a second process (``python -m src_train evaluate --write-heads``):
its table is shown, with what makes it unreliable said in words (too few patients, a weak AUC), and
"Use in MEDIMP analysis" hands the model file to the analysis widget. An output folder that holds an earlier
run shows what it left: its whole loss curve (across resumes), its evaluation table and its model.
"""

import functools
import subprocess
import sys
import traceback
import weakref
from collections import deque
from pathlib import Path

import napari
import napari.viewer
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, Qt, QTimer, Signal
from qtpy.QtGui import QBrush, QColor, QFontDatabase
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_medimp._widgets import training_form as tj

from . import _registry, _tasks
from .loss_plot import LossPlot
from .training_process import ChildProcess

PLUGIN = "napari-medimp"
WIDGET_NAME = "MEDIMP training"
ANALYSIS_WIDGET_NAME = "MEDIMP graft analysis"
_ERROR_STYLE = "color: #e0555f;"
_NOTE_STYLE = "color: #e3b617;"
_NOTE_COLOR = "#e3b617"

def _slot(method):
    """A Qt slot that reports its errors as napari notifications instead of raising into Qt."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # a slot must never raise
            self._log("".join(traceback.format_exception(exc)).rstrip())
            show_error(f"MEDIMP training: {exc}")
            return None

    return wrapper


class TrainingWidget(QWidget):
    """Train a MEDIMP model on a cohort in a child process, follow it live, evaluate it, use it."""

    #: (phase, exit code) when a child process has ended: phase "train" or "evaluate"
    run_finished = Signal(str, int)

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        #: the training or evaluation process (one at a time)
        self.child = ChildProcess(self)
        self.child.stdout_line.connect(self._on_stdout_line)
        self.child.stderr_line.connect(self._on_stderr_line)
        self.child.note.connect(self._log)
        self.child.ended.connect(self._on_child_ended)
        #: seconds a cancelled training may take to save its checkpoint before it is killed
        self.kill_timeout_s = 300.0
        self.close_timeout_s = 60.0  # closing waits this long for a running training's checkpoint
        #: progress bar, status line and loss plot refresh at most this often while a run is active
        self.redraw_interval_ms = 250
        #: the child runs at this lower CPU priority (Unix), so the viewer stays responsive on a busy CPU
        self.child_niceness = 10
        self.phase = "idle"  # idle, train, evaluate
        self.exit_code: int | None = None
        self.model_path: Path | None = None
        self.evaluation_rows: list[dict] = []
        self.progress = tj.TrainingProgress()
        self._show_all_errors = False
        self._touched: set[str] = set()
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._stderr_lines = tj.WarningLines()  # a library warning: one plain line in the log
        self._run_cohort: Path | None = None
        self._run_out: Path | None = None
        self._run_device = "auto"
        self._task_id = None
        self._task_epoch: int | None = None
        self._progress_dirty = False
        #: the devices available here, best first; None until the runtime check has run (off the event loop:
        #: it imports torch, seconds that would freeze the window while the dialog opens)
        self._devices: list[str] | None = None
        #: the output folder whose earlier run the dialog shows (None: none shown)
        self._shown_run: Path | None = None

        self._build()
        self._fill_defaults()
        self._refresh_run_folder()
        self._refresh_errors()
        self._set_running(False)
        self._runtime_worker = self._start_runtime_check()

    # ------------------------------------------------------------------------------------------------
    # what is slow to load: torch (the devices) and matplotlib (the loss plot), in a worker thread
    # ------------------------------------------------------------------------------------------------
    def _start_runtime_check(self):
        """Import torch (to list the devices) and matplotlib's Qt canvas in a worker thread; the dialog is
        usable at once and takes their results in the main thread (:meth:`_on_runtime_loaded`)."""
        from napari.qt.threading import create_worker

        ref = weakref.ref(self)

        def loaded(devices) -> None:
            widget = ref()
            if widget is not None:
                try:
                    widget._on_runtime_loaded(list(devices))
                except RuntimeError:  # the dialog was deleted meanwhile
                    pass

        def failed(exc) -> None:
            widget = ref()
            if widget is not None:
                try:
                    widget._log(f"device check failed: {exc}")
                    widget._on_runtime_loaded(["cpu"])
                except RuntimeError:
                    pass

        worker = create_worker(_load_runtime, self._available_devices, _start_thread=False)
        worker.returned.connect(loaded)
        worker.errored.connect(failed)
        worker.start()
        return worker

    def runtime_ready(self) -> bool:
        """Whether the devices are known and the loss plot is drawn (the worker of the check has returned)."""
        return self._devices is not None and self.loss_plot.built

    def _on_runtime_loaded(self, devices: list[str]) -> None:
        if self._devices is None:
            self._apply_devices(devices)
        self.loss_plot.build()

    def _apply_devices(self, devices: list[str]) -> None:
        """Offer the devices found here (the choice made so far stays) and say what the paper preset needs."""
        self._devices = list(devices)
        chosen = self.device_combo.currentData()
        self.device_combo.blockSignals(True)
        self.device_combo.clear()
        for key in tj.device_choices(self._devices):
            self.device_combo.addItem(tj.DEVICE_LABELS[key], key)
        self.device_combo.blockSignals(False)
        if not self._select(self.device_combo, chosen if "device" in self._touched else self._default_device()):
            self._select(self.device_combo, chosen)
        warning = tj.preset_warning("paper", self._devices)
        item = self.preset_combo.model().item(self.preset_combo.findData("paper"))
        item.setEnabled(not warning)
        item.setToolTip(warning or "")
        self._show_preset_note()
        self._refresh_errors()

    def _default_device(self) -> str:
        try:
            return tj.effective_defaults(self.preset_combo.currentData(), self.config_edit.text().strip())["device"]
        except Exception:
            return "auto"

    def _show_preset_note(self) -> None:
        warning = tj.preset_warning(self.preset_combo.currentData(), self._devices) if self._devices else None
        self.preset_note.setText(warning or "")
        self.preset_note.setVisible(bool(warning))

    # ------------------------------------------------------------------------------------------------
    # layout
    # ------------------------------------------------------------------------------------------------
    def _error_label(self, key: str) -> QLabel:
        label = QLabel()
        label.setWordWrap(True)
        label.setStyleSheet(_ERROR_STYLE)
        label.setVisible(False)
        label.setObjectName(f"error_{key}")
        self._errors[key] = label
        return label

    def _path_row(self, key: str, edit: QLineEdit, *buttons: QPushButton) -> QWidget:
        box = QWidget()
        column = QVBoxLayout(box)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(2)
        row = QHBoxLayout()
        row.setSpacing(4)
        row.addWidget(edit, 1)
        for button in buttons:
            button.setSizePolicy(QSizePolicy.Policy.Maximum, QSizePolicy.Policy.Fixed)
            row.addWidget(button)
        column.addLayout(row)
        column.addWidget(self._error_label(key))
        edit.textChanged.connect(lambda *_: self._touch(key))
        return box

    def _with_error(self, key: str, widget: QWidget) -> QWidget:
        box = QWidget()
        column = QVBoxLayout(box)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(2)
        column.addWidget(widget)
        column.addWidget(self._error_label(key))
        return box

    def _build(self) -> None:
        self._errors: dict[str, QLabel] = {}
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        self.content = QWidget()
        scroll.setWidget(self.content)
        outer.addWidget(scroll)
        layout = QVBoxLayout(self.content)

        # data ----------------------------------------------------------------------------------------
        data = QGroupBox("Data")
        form = QFormLayout(data)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.cohort_edit = QLineEdit()
        self.cohort_edit.setPlaceholderText("cohort folder, or its clinical.csv")
        self.cohort_edit.setToolTip(tj.COHORT_HINT)
        self.cohort_folder_button = QPushButton("Folder…")
        self.cohort_csv_button = QPushButton("CSV…")
        self.cohort_folder_button.clicked.connect(self._browse_cohort_folder)
        self.cohort_csv_button.clicked.connect(self._browse_cohort_csv)
        form.addRow("Cohort", self._path_row("cohort", self.cohort_edit, self.cohort_folder_button,
                                             self.cohort_csv_button))
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("run folder: checkpoints, model files, evaluation")
        self.out_button = QPushButton("…")
        self.out_button.clicked.connect(self._browse_out)
        form.addRow("Output", self._path_row("out", self.out_edit, self.out_button))
        self.resume_check = QCheckBox("Resume")
        self.resume_check.setToolTip("continue the run saved in the output folder (its own settings; "
                                     "only the number of epochs can change)")
        self.resume_check.toggled.connect(self._on_resume_toggled)
        form.addRow("", self.resume_check)
        self.config_edit = QLineEdit()
        self.config_edit.setPlaceholderText("optional JSON of training options (overrides the preset)")
        self.config_button = QPushButton("…")
        self.config_button.clicked.connect(self._browse_config)
        form.addRow("Config", self._path_row("config", self.config_edit, self.config_button))
        layout.addWidget(data)

        # training ------------------------------------------------------------------------------------
        training = QGroupBox("Training")
        form = QFormLayout(training)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.preset_combo = QComboBox()
        for key, label in tj.PRESET_LABELS.items():
            self.preset_combo.addItem(label, key)
        self.preset_note = QLabel()
        self.preset_note.setWordWrap(True)
        self.preset_note.setStyleSheet(_NOTE_STYLE)
        self.preset_note.setVisible(False)
        preset_box = QWidget()
        column = QVBoxLayout(preset_box)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(2)
        column.addWidget(self.preset_combo)
        column.addWidget(self.preset_note)
        column.addWidget(self._error_label("preset"))
        self.preset_combo.currentIndexChanged.connect(self._on_preset_changed)
        form.addRow("Preset", preset_box)
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(0, 100_000)
        self.epochs_spin.valueChanged.connect(lambda *_: self._touch("epochs"))
        form.addRow("Epochs", self._with_error("epochs", self.epochs_spin))
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(0, 4096)
        self.batch_spin.setToolTip("exams per contrastive batch (each exam's negatives are the others)")
        self.batch_spin.valueChanged.connect(lambda *_: self._touch("batch_size"))
        form.addRow("Batch size", self._with_error("batch_size", self.batch_spin))
        self.device_combo = QComboBox()
        for key in tj.device_choices(["cpu"]):  # the others once the devices are known
            self.device_combo.addItem(tj.DEVICE_LABELS[key], key)
        self.device_combo.setToolTip("where the training and the evaluation run; auto takes a CUDA GPU, then an "
                                     "Apple GPU, then the CPU. A resumed run may move to another device")
        self.device_combo.currentIndexChanged.connect(lambda *_: self._touch("device"))
        form.addRow("Device", self._with_error("device", self.device_combo))
        self.precision_combo = QComboBox()
        for key in tj.AMP_MODES:
            self.precision_combo.addItem(tj.PRECISION_LABELS[key], key)
        self.precision_combo.setToolTip(tj.PRECISION_HINT)
        self.precision_combo.currentIndexChanged.connect(lambda *_: self._touch("amp"))
        form.addRow("Precision", self._with_error("amp", self.precision_combo))
        attributes = QWidget()
        grid = QGridLayout(attributes)
        grid.setContentsMargins(0, 0, 0, 0)
        self.attribute_checks: dict[str, QCheckBox] = {}
        for i, key in enumerate(tj.ATTRIBUTES):
            check = QCheckBox(tj.ATTRIBUTE_LABELS[key])
            check.setChecked(True)
            check.toggled.connect(lambda *_: self._touch("attributes"))
            self.attribute_checks[key] = check
            grid.addWidget(check, i // 2, i % 2)
        form.addRow("Prompt", self._with_error("attributes", attributes))
        layout.addWidget(training)

        # evaluation ----------------------------------------------------------------------------------
        evaluation = QGroupBox("Evaluation after training")
        column = QVBoxLayout(evaluation)
        cohort_row = QHBoxLayout()
        self.eval_cohort_edit = QLineEdit()
        self.eval_cohort_edit.setPlaceholderText("other patients' cohort (empty: the training patients, in-sample)")
        self.eval_cohort_edit.setToolTip("a cohort of patients the model never saw: its numbers are a result. Left "
                                         "empty, the model is evaluated on its own training patients and the "
                                         "table is marked in-sample")
        self.eval_cohort_button = QPushButton("Browse...")
        self.eval_cohort_button.clicked.connect(self._browse_eval_cohort)
        cohort_row.addWidget(QLabel("Cohort"))
        cohort_row.addWidget(self.eval_cohort_edit, 1)
        cohort_row.addWidget(self.eval_cohort_button)
        column.addLayout(cohort_row)
        row = QHBoxLayout()
        column.addLayout(row)
        self.splits_spin = QSpinBox()
        self.splits_spin.setRange(2, 20)
        self.splits_spin.setValue(3)
        self.splits_spin.setToolTip("folds of the patient-level stratified cross-validation")
        self.repeats_spin = QSpinBox()
        self.repeats_spin.setRange(1, 100)
        self.repeats_spin.setValue(2)
        self.repeats_spin.setToolTip("repetitions of the cross-validation with other splits")
        row.addWidget(QLabel("CV splits"))
        row.addWidget(self.splits_spin)
        row.addWidget(QLabel("repeats"))
        row.addWidget(self.repeats_spin)
        row.addStretch(1)
        layout.addWidget(evaluation)

        # run -----------------------------------------------------------------------------------------
        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start")
        self.cancel_button = QPushButton("Cancel")
        self.start_button.clicked.connect(self._on_start_clicked)
        self.cancel_button.clicked.connect(self._on_cancel_clicked)
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("%v / %m steps")
        layout.addWidget(self.progress_bar)
        self.status_label = QLabel("Choose a cohort and an output folder, then Start.")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.status_label)

        self.loss_plot = LossPlot(self.viewer, build=False)  # drawn once matplotlib is loaded
        layout.addWidget(self.loss_plot)

        self.table = QTableWidget(0, len(tj.DISPLAY_COLUMNS))
        for c, (title, hint) in enumerate(zip(tj.DISPLAY_COLUMNS, tj.COLUMN_HINTS, strict=True)):
            header = QTableWidgetItem(title)
            header.setToolTip(hint)
            self.table.setHorizontalHeaderItem(c, header)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setWordWrap(False)  # the cells carry their own line breaks: a narrow dock shows them whole
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setMinimumHeight(120)
        self.table.setToolTip("prognosis of graft dysfunction by patient-level cross-validation "
                              "(AUC with its 95 % interval over patients); hover a row for details")
        layout.addWidget(self.table)
        self.evaluation_note = QLabel()
        self.evaluation_note.setWordWrap(True)
        self.evaluation_note.setStyleSheet(_NOTE_STYLE)
        self.evaluation_note.setVisible(False)
        self.evaluation_note.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.evaluation_note)
        self.use_button = QPushButton("Use in MEDIMP analysis")
        self.use_button.setToolTip("load the trained model into the MEDIMP graft analysis widget")
        self.use_button.clicked.connect(self._on_use_clicked)
        layout.addWidget(self.use_button)

        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(5000)
        self.log_view.setPlaceholderText("messages of the training and evaluation processes")
        self.log_view.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.log_view.setMinimumHeight(60)
        self.log_view.setMaximumHeight(140)
        layout.addWidget(self.log_view)

        self._form_widgets = [self.cohort_edit, self.cohort_folder_button, self.cohort_csv_button,
                              self.out_edit, self.out_button, self.resume_check, self.config_edit,
                              self.config_button, self.preset_combo, self.epochs_spin, self.batch_spin,
                              self.device_combo, self.precision_combo, *self.attribute_checks.values(),
                              self.splits_spin, self.repeats_spin]
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(300)
        self._refresh_timer.timeout.connect(self._on_form_changed)
        for edit in (self.cohort_edit, self.out_edit, self.config_edit):
            edit.textChanged.connect(lambda *_: self._refresh_timer.start())
        self.config_edit.editingFinished.connect(self._on_config_changed)
        self._plot_timer = QTimer(self)  # progress bar, status and plot
        self._plot_timer.setInterval(self.redraw_interval_ms)
        self._plot_timer.timeout.connect(self._refresh_progress_view)

    def _update_plot(self) -> None:
        self.loss_plot.show_progress(self.progress)

    @staticmethod
    def _available_devices() -> list[str]:
        """Devices usable here, best first (``core.inference.available_devices``). Slow: run it in a worker.

        Asked of torch in this process when it is loaded already, else of a short child process: loading
        torch's libraries here would hold the interpreter lock for about half a second (the window would
        pause), and the training runs in a child process anyway."""
        try:
            if "torch" in sys.modules:
                from napari_medimp.core.inference import available_devices

                return available_devices()
            probe = "from napari_medimp.core.inference import available_devices as a; print(','.join(a()))"
            done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                                  env=tj.child_environment(), cwd=tj.source_root())
            lines = done.stdout.strip().splitlines()
            devices = [d for d in (lines[-1].split(",") if lines else []) if d in tj.DEVICE_LABELS]
            return devices if devices and devices[-1] == "cpu" else ["cpu"]
        except Exception:
            return ["cpu"]

    # ------------------------------------------------------------------------------------------------
    # the form
    # ------------------------------------------------------------------------------------------------
    def options(self) -> tj.TrainingOptions:
        """The form as :class:`~napari_medimp._widgets.training_form.TrainingOptions`."""
        return tj.TrainingOptions(
            cohort=self.cohort_edit.text().strip(),
            out=self.out_edit.text().strip(),
            preset=self.preset_combo.currentData(),
            epochs=self.epochs_spin.value(),
            batch_size=self.batch_spin.value(),
            attributes=tuple(k for k, check in self.attribute_checks.items() if check.isChecked()),
            config=self.config_edit.text().strip() or None,
            resume=self.resume_check.isChecked(),
            device=self.device_combo.currentData(),
            amp=self.precision_combo.currentData(),
            devices=tuple(self._devices or ("cpu",)),
        )

    def set_form(self, *, cohort=None, out=None, preset=None, epochs=None, batch_size=None,
                 attributes=None, config=None, resume=None, splits=None, repeats=None, device=None,
                 amp=None) -> None:
        """Fill the form (what a user would type); ``None`` leaves a field as it is."""
        if cohort is not None:
            self.cohort_edit.setText(str(cohort))
        if config is not None:
            self.config_edit.setText(str(config))
            self._on_config_changed()
        if preset is not None:
            self.preset_combo.setCurrentIndex(self.preset_combo.findData(preset))
        if out is not None:
            self.out_edit.setText(str(out))
            self._refresh_run_folder()
            self._show_run_folder()
        if resume is not None:
            self.resume_check.setChecked(bool(resume))
        if epochs is not None:
            self.epochs_spin.setValue(int(epochs))
        if batch_size is not None:
            self.batch_spin.setValue(int(batch_size))
        if attributes is not None:
            for key, check in self.attribute_checks.items():
                check.setChecked(key in attributes)
        if splits is not None:
            self.splits_spin.setValue(int(splits))
        if repeats is not None:
            self.repeats_spin.setValue(int(repeats))
        if device is not None:
            self._select(self.device_combo, device)
        if amp is not None:
            self._select(self.precision_combo, amp)
        self._refresh_errors()

    @staticmethod
    def _select(combo: QComboBox, key: str) -> bool:
        index = combo.findData(key)
        if index >= 0:
            combo.setCurrentIndex(index)
        return index >= 0

    def _touch(self, key: str) -> None:
        self._touched.add(key)
        self._refresh_timer.start()

    @_slot
    def _on_form_changed(self) -> None:
        self._refresh_run_folder()
        self._show_run_folder()
        self._refresh_errors()

    def _refresh_errors(self, problems: dict | None = None) -> dict:
        problems = self.options().problems() if problems is None else problems
        for key, label in self._errors.items():
            message = problems.get(key, "")
            shown = message and (self._show_all_errors or key in self._touched)
            label.setText(message if shown else "")
            label.setVisible(bool(shown))
        return problems

    def _fill_defaults(self) -> None:
        """Epochs and batch size of the preset, overridden by the config file's."""
        try:
            values = tj.effective_defaults(self.preset_combo.currentData(), self.config_edit.text().strip())
        except Exception:
            return
        touched = set(self._touched)
        self.epochs_spin.setValue(values["epochs"])
        self.batch_spin.setValue(values["batch_size"])
        self._select(self.device_combo, values["device"])  # a device absent here stays as chosen
        self._select(self.precision_combo, values["amp"])
        self._touched = touched

    @_slot
    def _on_preset_changed(self, *_) -> None:
        self._show_preset_note()
        if not self.resume_check.isChecked():
            self._fill_defaults()
        self._refresh_errors()

    @_slot
    def _on_config_changed(self) -> None:
        if self.config_edit.text().strip():
            self._touched.add("config")
        if not self.resume_check.isChecked():
            self._fill_defaults()
        self._refresh_errors()

    def _refresh_run_folder(self) -> None:
        out = self.out_edit.text().strip()
        run = tj.inspect_run_folder(out) if out else None
        can_resume = bool(run and run.checkpoint)
        self.resume_check.setEnabled(can_resume and not self.is_running())
        self.resume_check.setText(f"Resume ({run.describe()})" if can_resume else "Resume")
        if not can_resume and self.resume_check.isChecked():
            self.resume_check.setChecked(False)

    def _reset_resume(self) -> None:
        """Untick Resume, leaving the form as it is (the run's settings stay, now editable)."""
        if self.resume_check.isChecked():
            self.resume_check.blockSignals(True)
            self.resume_check.setChecked(False)
            self.resume_check.blockSignals(False)
            self._enable_run_settings()
            self._refresh_errors()

    def _enable_run_settings(self) -> None:
        """With Resume the run's own settings apply: only the number of epochs stays editable."""
        editable = not self.resume_check.isChecked() and not self.is_running()
        for widget in (self.preset_combo, self.batch_spin, self.config_edit, self.config_button,
                       self.precision_combo, *self.attribute_checks.values()):
            widget.setEnabled(editable)

    @_slot
    def _on_resume_toggled(self, checked: bool) -> None:
        self._enable_run_settings()
        if checked:
            run = tj.inspect_run_folder(self.out_edit.text().strip())
            config = run.config or {}
            if not self.cohort_edit.text().strip() and config.get("cohort"):
                self.cohort_edit.setText(str(config["cohort"]))
            if isinstance(config.get("batch_size"), int):
                self.batch_spin.setValue(config["batch_size"])
            if run.epochs:
                self.epochs_spin.setValue(max(run.epochs, self.epochs_spin.value() if run.finished else 0))
            if config.get("attributes"):
                for key, check in self.attribute_checks.items():
                    check.setChecked(key in config["attributes"])
            if config.get("amp"):
                self._select(self.precision_combo, str(config["amp"]))
        else:
            self._fill_defaults()
        self._refresh_errors()

    def _browse_start(self, edit: QLineEdit) -> str:
        text = edit.text().strip()
        if not text:
            return str(Path.home())
        path = Path(text).expanduser()
        return str(path if path.is_dir() else path.parent)

    def _browse_folder(self, edit: QLineEdit, title: str) -> None:
        folder = QFileDialog.getExistingDirectory(self, title, self._browse_start(edit))
        if folder:
            edit.setText(folder)

    @_slot
    def _browse_cohort_folder(self, *_) -> None:
        self._browse_folder(self.cohort_edit, "Cohort folder (clinical.csv + patient folders)")

    @_slot
    def _browse_cohort_csv(self, *_) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "The cohort's clinical.csv",
                                              self._browse_start(self.cohort_edit),
                                              "Clinical table (clinical.csv);;CSV files (*.csv)")
        if path:
            self.cohort_edit.setText(path)

    @_slot
    def _browse_eval_cohort(self, *_) -> None:
        self._browse_folder(self.eval_cohort_edit, "Evaluation cohort: patients the model never saw")

    @_slot
    def _browse_out(self, *_) -> None:
        self._browse_folder(self.out_edit, "Output folder of the run")

    @_slot
    def _browse_config(self, *_) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Training options (JSON)",
                                              self._browse_start(self.config_edit), "JSON (*.json)")
        if path:
            self.config_edit.setText(path)
            self._on_config_changed()

    # ------------------------------------------------------------------------------------------------
    # running
    # ------------------------------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self.child.is_running()

    @property
    def close_timeout_s(self) -> float:
        """Seconds closing the viewer (or quitting) waits for a running process before killing it."""
        return self.child.shutdown_timeout_s

    @close_timeout_s.setter
    def close_timeout_s(self, seconds: float) -> None:
        self.child.shutdown_timeout_s = seconds

    @_slot
    def _on_start_clicked(self, *_) -> None:
        self.start()

    @_slot
    def _on_cancel_clicked(self, *_) -> None:
        self.cancel()

    def start(self) -> bool:
        """Validate the form and start the training; False (with a message) when nothing started."""
        if self.is_running():
            show_warning("A MEDIMP training is already running in this dock.")
            return False
        if self._devices is None:  # Start before the worker's check returned: the devices decide the options
            self._apply_devices(self._available_devices())
        self._show_all_errors = True
        self._refresh_run_folder()
        options = self.options()
        problems = self._refresh_errors()
        if problems:
            listed = "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in problems.items())
            self._set_status(f"Training not started: {listed}", error=True)
            show_error(f"MEDIMP training not started: {listed}")
            return False
        batch = options.batch_problem()  # exams that make no whole batch would train nothing
        if batch:
            self._refresh_errors({**problems, "batch_size": batch})
            self._set_status(f"Training not started: {batch}", error=True)
            show_error(f"MEDIMP training not started: {batch}")
            return False
        warning = tj.preset_warning(options.preset, self._devices)
        if warning and not options.resume:
            show_warning(f"MEDIMP training: {warning}")
        command = options.command()
        self.progress = tj.TrainingProgress()
        if options.resume:  # the whole curve: what the earlier parts of the run recorded, then this part
            self.progress.add_run_history(Path(options.out).expanduser())
        self.model_path = None
        self.exit_code = None
        self._fill_table([])
        self._run_cohort = tj.resolve_cohort(options.cohort).absolute()
        self._run_out = Path(options.out).expanduser().absolute()
        self._run_device = options.device
        self._shown_run = self._run_out
        self.log_view.clear()
        self.loss_plot.reset_axes()  # the first losses of this run set the axes
        self._progress_dirty = True
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self._launch("train", command)
        self._set_status("starting the training process..." + (" (resuming)" if options.resume else ""))
        return True

    def _launch(self, phase: str, command: list[str]) -> None:
        env = tj.child_environment()
        root = tj.source_root()  # the working folder: `-m src_train` finds this package, not a same-named one
        self.phase = phase
        self._stderr_tail.clear()
        self._stderr_lines = tj.WarningLines()
        self._log("$ " + " ".join(command))
        self._set_running(True)
        self._register_task()
        self.child.start(phase, command[0], command[1:], env=env, working_dir=root, niceness=self.child_niceness)

    def cancel(self) -> None:
        """Stop the running process: the training saves a checkpoint first (a second Cancel kills it)."""
        if not self.is_running():
            return
        train = self.phase == "train"
        if not self.child.cancel(self.kill_timeout_s if train else None, force_reason="on Force stop"):
            return  # a second Cancel: killed
        if train:
            self._set_status("stopping, saving checkpoint...")
            self.cancel_button.setText("Force stop")
            self.cancel_button.setToolTip("kill the training now (the step in progress is not saved)")
        else:
            self._set_status("cancelling the evaluation...")

    def shutdown(self, timeout_s: float | None = None) -> bool:
        """Stop a running process and wait for it (checkpoint saved when it stops in time, else killed).

        Used when the viewer, the dock or the application closes: no process outlives the window."""
        return self.child.shutdown(timeout_s)

    # child output --------------------------------------------------------------------------------
    @_slot
    def _on_stdout_line(self, line: str) -> None:
        event = tj.parse_event(line)
        if event is None:
            if line.strip():
                self._log(line)
            return
        self.progress.apply(event)
        self._progress_dirty = True  # shown by the refresh timer, a few times a second at most
        if event["event"] in ("start", "resumed", "stopped", "done"):
            self._log(_describe_event(event))
        if event["event"] == "epoch":
            self._log(f"epoch {event['epoch'] + 1}: {self.progress.status_text()}")

    @_slot
    def _on_stderr_line(self, line: str) -> None:
        for shown in self._stderr_lines.feed(line):
            if shown.strip():
                self._stderr_tail.append(shown)
                self._log(shown)

    def _refresh_progress_view(self) -> None:
        """Progress bar, status line and loss plot from the events received since the last refresh."""
        if not self._progress_dirty:
            return
        self._progress_dirty = False
        p = self.progress
        if p.total_steps:
            # QProgressBar repaints at once on a new value: paint it with the rest of this refresh instead
            self.progress_bar.setUpdatesEnabled(False)
            if self.progress_bar.maximum() != p.total_steps:
                self.progress_bar.setRange(0, p.total_steps)
            self.progress_bar.setValue(min(p.step, p.total_steps))
            self.progress_bar.setUpdatesEnabled(True)
        if self.phase == "train" and not self.child.stopping:
            self._set_status(p.status_text())
        self._update_plot()
        if p.epoch != self._task_epoch:  # napari keeps every update of a task: once per epoch is plenty
            self._task_epoch = p.epoch
            self._update_task(p.status_text())

    # the end of a process ------------------------------------------------------------------------
    @_slot
    def _on_child_ended(self, phase: str, code: int, crashed: bool, cancelled: bool, killed: bool,
                        message: str) -> None:
        self.exit_code = -1 if crashed else code
        self.phase = "idle"
        self._set_running(False)
        self._refresh_progress_view()
        self._log(f"[{phase} process ended: {'killed' if crashed else f'exit code {code}'}]")
        if phase == "train":
            self._train_finished(code, crashed, cancelled, killed, message)
        else:
            self._evaluation_finished(code, crashed, cancelled, message)
        self.run_finished.emit(phase, self.exit_code)

    def _train_finished(self, code: int, crashed: bool, cancelled: bool, killed: bool, message: str) -> None:
        p = self.progress
        self._reset_resume()  # a Resume choice is for one run; a stopped run offers it again below
        if not crashed and code == 0 and p.done and p.model and p.step > 0:
            self.model_path = Path(p.model)
            self._end_task("COMPLETED", "training finished")
            if cancelled:  # the stop came too late: the training had finished
                self._set_status(f"training finished; model {self.model_path} (evaluation skipped)")
                self.use_button.setEnabled(True)
                return
            self._start_evaluation()
            return
        if not crashed and code == tj.EXIT_STOPPED:
            checkpoint = p.checkpoint or str(self._run_out / tj.CHECKPOINT_FILE)
            level, text = tj.describe_exit("train", code, crashed, checkpoint=checkpoint)
            self._end_task("CANCELLED", "training stopped")
            self._set_status(text)
            self._refresh_run_folder()
            if self.resume_check.isEnabled():
                self.resume_check.setChecked(True)
            show_info(f"MEDIMP training {text}")
            return
        self._end_task("FAILED", "training failed")
        if killed:
            text = (f"training killed {message}; the last checkpoint written at the end of an "
                    "epoch (if any) is kept")
        elif cancelled and crashed and p.step:
            checkpoint = self._run_out / tj.CHECKPOINT_FILE
            text = (f"training process ended abnormally while stopping at step {p.step}; "
                    + (f"the last checkpoint {checkpoint} is kept" if checkpoint.exists() else "no checkpoint was saved"))
        elif cancelled and crashed:
            text = "training cancelled before its first step; nothing was saved"
        elif not crashed and code == 0 and p.done:  # a model that took no step is not offered
            text = (f"training took no step ({p.train_exams} training exams, {p.steps_per_epoch} steps per "
                    "epoch): no model to use")
        elif not crashed and code == 0:
            text = "training ended without reporting a model file"
        else:
            _, text = tj.describe_exit("training", code, crashed, list(self._stderr_tail)[-8:])
            if message:
                text = f"training: {message}"
        self._set_status(_short(text), error=not cancelled or killed)
        self._refresh_run_folder()
        if killed:
            show_warning(f"MEDIMP {text}")
        elif cancelled:
            show_info(f"MEDIMP {text}")
        else:
            show_error(f"MEDIMP {text}")

    def _start_evaluation(self) -> None:
        out = self._run_out / "evaluation"
        cohort, in_sample = tj.evaluation_cohort(self.eval_cohort_edit.text(), self._run_cohort)
        self._evaluation_in_sample = in_sample
        command = tj.evaluation_command(self.model_path, cohort, out, self.splits_spin.value(),
                                        self.repeats_spin.value(), allow_overlap=in_sample,
                                        device=self._run_device)
        self._launch("evaluate", command)
        where = "its own training patients (in-sample)" if in_sample else f"the patients of {cohort}"
        self._set_status(f"training finished; evaluating the model on {where} ({self.splits_spin.value()}-fold "
                         f"CV, {self.repeats_spin.value()} repeats)...")

    def _evaluation_finished(self, code: int, crashed: bool, cancelled: bool, message: str) -> None:
        self.use_button.setEnabled(self.model_path is not None)
        if not crashed and code == 0:
            self._end_task("COMPLETED", "evaluation finished")
            try:
                rows = tj.read_evaluation_table(self._run_out / "evaluation")
            except ValueError as exc:
                self._set_status(f"evaluation finished but its table cannot be read: {exc}", error=True)
                show_error(f"MEDIMP evaluation: {exc}")
                return
            self._fill_table(rows)
            self._shown_run = self._run_out
            self._set_status(f"done: model {self.model_path}; evaluation in {self._run_out / 'evaluation'}")
            if getattr(self, "_evaluation_in_sample", False):
                self._set_status(f"done: model {self.model_path}. IN-SAMPLE table: evaluated on the training "
                                 "patients, so these numbers are not a result; choose an evaluation cohort of "
                                 "other patients", error=True)
            show_info("MEDIMP training and evaluation finished")
            return
        self._end_task("CANCELLED" if cancelled else "FAILED", "evaluation ended")
        if cancelled:
            text = f"evaluation cancelled; the model {self.model_path} is usable (without prognosis heads)"
            self._set_status(text)
            show_info(f"MEDIMP {text}")
            return
        _, text = tj.describe_exit("evaluation", code, crashed, list(self._stderr_tail)[-8:])
        if message:
            text = f"evaluation: {message}"
        self._set_status(_short(text) + f"; the model {self.model_path} is usable", error=True)
        show_error(f"MEDIMP {text}")

    def _fill_table(self, rows: list[dict]) -> None:
        """The evaluation table: per horizon a heading line (patients), then a row per feature set; what
        makes it unreliable in words below it."""
        self.evaluation_rows = list(rows)
        lines = tj.evaluation_lines(rows)
        self.table.clearSpans()
        self.table.setRowCount(len(lines))
        note = QBrush(QColor(_NOTE_COLOR))
        for r, line in enumerate(lines):
            for c, text in enumerate(line.cells):
                item = QTableWidgetItem(text)
                item.setToolTip(line.tooltip)
                if line.heading:
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                elif c in (1, 2):
                    item.setTextAlignment(int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))
                if line.flagged and (line.heading or c == len(line.cells) - 1):
                    item.setForeground(note)
                self.table.setItem(r, c, item)
            if line.heading:
                self.table.setSpan(r, 0, 1, self.table.columnCount())
        self.table.resizeColumnsToContents()
        self.table.resizeRowsToContents()
        header = self.table.horizontalHeader().height() + 2 * self.table.frameWidth()
        self.table.setMinimumHeight(min(360, max(120, self.table.verticalHeader().length() + header)))
        warnings = tj.evaluation_warnings(rows)
        self.evaluation_note.setText("\n".join(warnings))
        self.evaluation_note.setVisible(bool(warnings))

    def _show_run_folder(self) -> None:
        """Show what the output folder's earlier run left (loss curve, evaluation table, model), once per
        folder chosen; a folder without a run clears what an other folder showed."""
        if self.is_running():
            return
        text = self.out_edit.text().strip()
        path = Path(text).expanduser().absolute() if text else None
        if path == self._shown_run:
            return
        self._shown_run = path
        results = tj.read_run_results(path) if path is not None else None
        if results is None or results.empty:
            self.progress = tj.TrainingProgress()
            self.model_path = None
            self._fill_table([])
            self._show_curves()
            self.use_button.setEnabled(False)
            self._set_status("Choose a cohort and an output folder, then Start.")
            return
        self.progress = results.progress or tj.TrainingProgress()
        self.model_path = results.model
        self._fill_table(results.evaluation)
        self._show_curves()
        self.use_button.setEnabled(self.model_path is not None)
        self._set_status(results.describe(), error=results.in_sample or bool(results.evaluation_problem))

    def _show_curves(self) -> None:
        """The loss plot and progress bar of :attr:`progress` with fresh axes (another run)."""
        self.loss_plot.reset_axes()
        self._update_plot()
        p = self.progress
        self.progress_bar.setRange(0, max(1, p.total_steps or p.step))
        self.progress_bar.setValue(min(p.step, max(1, p.total_steps or p.step)))

    # ------------------------------------------------------------------------------------------------
    # hand the model over
    # ------------------------------------------------------------------------------------------------
    @_slot
    def _on_use_clicked(self, *_) -> None:
        self.use_in_analysis()

    def use_in_analysis(self):
        """Give the trained model file to the MEDIMP analysis widget (docking it when needed)."""
        if self.model_path is None:
            show_warning("No trained model yet: run a training to the end first.")
            return None
        widget = _registry.medimp_widget(self.viewer)
        if widget is None:  # a tab beside this dock, in front: two docks stacked would squash each other
            dock, widget = self.viewer.window.add_plugin_dock_widget(PLUGIN, ANALYSIS_WIDGET_NAME, tabify=True)
            dock.raise_()
        widget.set_model_file(self.model_path)
        show_info(f"MEDIMP analysis now uses {self.model_path.name}")
        return widget

    # ------------------------------------------------------------------------------------------------
    # state, status, plot
    # ------------------------------------------------------------------------------------------------
    def _set_running(self, running: bool) -> None:
        for widget in self._form_widgets:
            widget.setEnabled(not running)
        if not running:
            self._refresh_run_folder()
            self._enable_run_settings()
        self.start_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.cancel_button.setText("Cancel")
        self.cancel_button.setToolTip("stop the training after its current step; a checkpoint is saved")
        self.use_button.setEnabled(not running and self.model_path is not None)
        if running:
            self._plot_timer.start()
        else:
            self._plot_timer.stop()

    def _set_status(self, text: str, error: bool = False) -> None:
        self.status_label.setText(text)
        self.status_label.setStyleSheet(_ERROR_STYLE if error else "")

    def _log(self, text: str) -> None:
        self.log_view.appendPlainText(text)

    # ------------------------------------------------------------------------------------------------
    # napari's task list (asks before closing the window; stops the process when it closes)
    # ------------------------------------------------------------------------------------------------
    def _register_task(self) -> None:
        ref = weakref.ref(self)

        def stop() -> bool:
            widget = ref()
            return widget.shutdown() if widget is not None else True

        self._task_id = _tasks.register(self.viewer, f"MEDIMP {self.phase} running", cancel=stop)

    def _update_task(self, text: str) -> None:
        _tasks.update(self.viewer, self._task_id, "BUSY", f"MEDIMP {self.phase}: {text}")

    def _end_task(self, status: str, text: str) -> None:
        _tasks.update(self.viewer, self._task_id, status, text)
        self._task_id = None

    # ------------------------------------------------------------------------------------------------
    # closing
    # ------------------------------------------------------------------------------------------------
    def event(self, event) -> bool:
        # the dock's close button takes this widget out of the window: stop the process cleanly
        if event.type() == QEvent.Type.ParentChange and self.parent() is None and self.is_running():
            self.shutdown()
        return super().event(event)

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)


def _load_runtime(available_devices) -> list[str]:
    """In a worker thread: the devices (imports torch) and matplotlib's Qt canvas modules (the loss plot's);
    no widget is touched here."""
    devices = available_devices()
    import matplotlib.backends.backend_qtagg  # noqa: F401
    import matplotlib.figure  # noqa: F401
    import matplotlib.ticker  # noqa: F401

    return devices


def _short(text: str) -> str:
    """First and last line of a message (the failure and the error that caused it)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0] if len(lines) < 2 else f"{lines[0]} {lines[-1]}"


def _describe_event(event: dict) -> str:
    kind = event["event"]
    if kind == "start":
        device = f" on {event['device']}" if isinstance(event.get("device"), str) else ""
        return (f"training{device}: {event['train_exams']} exams ({event['val_exams']} for validation), "
                f"{event['steps_per_epoch']} steps per epoch, {event['epochs']} epochs")
    if kind == "resumed":
        return f"resumed at epoch {event['epoch'] + 1}, step {event['step']}"
    if kind == "stopped":
        return f"stopped at step {event['step']}; checkpoint {event['checkpoint']}"
    if kind == "done":
        return f"model written: {event['model']}"
    return kind


def open_training_dialog(viewer: napari.viewer.Viewer) -> TrainingWidget:
    """Show the MEDIMP training dock of ``viewer`` (the docked one when there is one)."""
    return _registry.show_plugin_dock(viewer, WIDGET_NAME, PLUGIN)


__all__ = ["TrainingWidget", "open_training_dialog"]
