"""MEDIMP training dialog: train a model on a local cohort from napari, then evaluate it.

The dialog is the form (cohort, run folder, preset, device, precision, prompt attributes, evaluation
settings), checked as it is typed (:mod:`napari_medimp._widgets.run_options`), and the views of a run: progress
bar, status line, loss plot (:mod:`napari_medimp._widgets.loss_plot`), evaluation table
(:mod:`napari_medimp._widgets.evaluation_view`) and the log.

The run itself is :class:`~napari_medimp._widgets.training_runner.TrainingRunner`'s: the training in a child
process (``python -m src_train train ... --json-progress``) whose progress events
(:mod:`napari_medimp._widgets.run_progress`) drive the views; Cancel saves a checkpoint (a later Start with
"Resume" continues from there); closing the viewer (or the dock) stops a running training the same way and
waits for it, so no process outlives the window; a finished training is evaluated in a second process.

"Use in MEDIMP analysis" hands the model file to the analysis widget. An output folder that holds an earlier
run shows what it left: its whole loss curve (across resumes), its evaluation table and its model.
"""

import subprocess
import sys
import weakref
from pathlib import Path

import napari
import napari.viewer
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QEvent, Qt, QTimer, Signal
from qtpy.QtGui import QFontDatabase
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.prompts import ATTRIBUTES
from ..core.training_run import AMP_MODES
from . import _registry
from .evaluation_view import NOTE_STYLE, EvaluationView
from .loss_plot import LossPlot
from .run_options import (
    ATTRIBUTE_LABELS,
    COHORT_HINT,
    DEVICE_LABELS,
    PRECISION_HINT,
    PRECISION_LABELS,
    PRESET_LABELS,
    TrainingOptions,
    child_environment,
    device_choices,
    effective_defaults,
    inspect_run_folder,
    preset_warning,
    source_root,
)
from .run_progress import TrainingProgress, read_run_results
from .training_runner import TrainingRunner, _slot

PLUGIN = "napari-medimp"
WIDGET_NAME = "MEDIMP training"
ANALYSIS_WIDGET_NAME = "MEDIMP graft analysis"
_ERROR_STYLE = "color: #e0555f;"


class TrainingWidget(TrainingRunner, QWidget):
    """Train a MEDIMP model on a cohort in a child process, follow it live, evaluate it, use it."""

    #: (phase, exit code) when a child process has ended: phase "train" or "evaluate"
    run_finished = Signal(str, int)

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._init_run()
        #: progress bar, status line and loss plot refresh at most this often while a run is active
        self.redraw_interval_ms = 250
        self.model_path: Path | None = None
        self._show_all_errors = False
        self._touched: set[str] = set()
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
        for key in device_choices(self._devices):
            self.device_combo.addItem(DEVICE_LABELS[key], key)
        self.device_combo.blockSignals(False)
        if not self._select(self.device_combo, chosen if "device" in self._touched else self._default_device()):
            self._select(self.device_combo, chosen)
        warning = preset_warning("paper", self._devices)
        item = self.preset_combo.model().item(self.preset_combo.findData("paper"))
        item.setEnabled(not warning)
        item.setToolTip(warning or "")
        self._show_preset_note()
        self._refresh_errors()

    def _default_device(self) -> str:
        try:
            return effective_defaults(self.preset_combo.currentData(), self.config_edit.text().strip())["device"]
        except Exception:
            return "auto"

    def _show_preset_note(self) -> None:
        warning = preset_warning(self.preset_combo.currentData(), self._devices) if self._devices else None
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
        self.cohort_edit.setToolTip(COHORT_HINT)
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
        for key, label in PRESET_LABELS.items():
            self.preset_combo.addItem(label, key)
        self.preset_note = QLabel()
        self.preset_note.setWordWrap(True)
        self.preset_note.setStyleSheet(NOTE_STYLE)
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
        for key in device_choices(["cpu"]):  # the others once the devices are known
            self.device_combo.addItem(DEVICE_LABELS[key], key)
        self.device_combo.setToolTip("where the training and the evaluation run; auto takes a CUDA GPU, then an "
                                     "Apple GPU, then the CPU. A resumed run may move to another device")
        self.device_combo.currentIndexChanged.connect(lambda *_: self._touch("device"))
        form.addRow("Device", self._with_error("device", self.device_combo))
        self.precision_combo = QComboBox()
        for key in AMP_MODES:
            self.precision_combo.addItem(PRECISION_LABELS[key], key)
        self.precision_combo.setToolTip(PRECISION_HINT)
        self.precision_combo.currentIndexChanged.connect(lambda *_: self._touch("amp"))
        form.addRow("Precision", self._with_error("amp", self.precision_combo))
        attributes = QWidget()
        grid = QGridLayout(attributes)
        grid.setContentsMargins(0, 0, 0, 0)
        self.attribute_checks: dict[str, QCheckBox] = {}
        for i, key in enumerate(ATTRIBUTES):
            check = QCheckBox(ATTRIBUTE_LABELS[key])
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

        self.evaluation_view = EvaluationView()
        self.table = self.evaluation_view.table
        self.evaluation_note = self.evaluation_view.note
        layout.addWidget(self.evaluation_view)
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
                                  env=child_environment(), cwd=source_root())
            lines = done.stdout.strip().splitlines()
            devices = [d for d in (lines[-1].split(",") if lines else []) if d in DEVICE_LABELS]
            return devices if devices and devices[-1] == "cpu" else ["cpu"]
        except Exception:
            return ["cpu"]

    # ------------------------------------------------------------------------------------------------
    # the form
    # ------------------------------------------------------------------------------------------------
    def options(self) -> TrainingOptions:
        """The form as :class:`~napari_medimp._widgets.run_options.TrainingOptions`."""
        return TrainingOptions(
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
            values = effective_defaults(self.preset_combo.currentData(), self.config_edit.text().strip())
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
        run = inspect_run_folder(out) if out else None
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
            run = inspect_run_folder(self.out_edit.text().strip())
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
    # what a run left: its evaluation table, its curve and its model
    # ------------------------------------------------------------------------------------------------
    def _fill_table(self, rows: list[dict]) -> None:
        """Show an evaluation table (none: empty)."""
        self.evaluation_view.show_rows(rows)

    @property
    def evaluation_rows(self) -> list[dict]:
        """The rows of the evaluation table shown."""
        return self.evaluation_view.rows

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
        results = read_run_results(path) if path is not None else None
        if results is None or results.empty:
            self.progress = TrainingProgress()
            self.model_path = None
            self._fill_table([])
            self._show_curves()
            self.use_button.setEnabled(False)
            self._set_status("Choose a cohort and an output folder, then Start.")
            return
        self.progress = results.progress or TrainingProgress()
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


def open_training_dialog(viewer: napari.viewer.Viewer) -> TrainingWidget:
    """Show the MEDIMP training dock of ``viewer`` (the docked one when there is one)."""
    return _registry.show_plugin_dock(viewer, WIDGET_NAME, PLUGIN)


__all__ = ["TrainingWidget", "open_training_dialog"]
