"""The training dialog in a real napari viewer: child process, live progress, cancel, evaluation, hand-over.

Run under a display: ``xvfb-run -a -s "-screen 0 1600x1000x24" python -m pytest tests/test_widget_training.py``.
With ``MEDIMP_UPDATE_DOCS_IMAGES=1`` the full-run test also refreshes ``docs/images/training_dialog.png``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from napari_medimp._widgets.run_progress import TrainingProgress
from napari_medimp.core.training_run import PRESETS

pytestmark = pytest.mark.gui

REPO = Path(__file__).resolve().parent.parent
SCREENSHOT = REPO / "docs" / "images" / "training_dialog.png"
#: a tick of the responsiveness probe; its longest gap is printed (a wall-clock bound would fail on a loaded
#: machine without anything being wrong), the tests assert that the main thread kept serving it
TICK_MS = 15


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Four patients (two with graft dysfunction at every horizon, all exams present): a tiny model can
    be trained on it and evaluated by 2-fold cross-validation."""
    from napari_medimp.core import synth

    out = tmp_path_factory.mktemp("cohort")
    synth.generate_cohort(out, n_patients=4, seed=29, grid=(16, 40, 48), spacing=(6.0, 4.0, 4.0), n_jobs=2)
    return out


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    """The tiny model of tests/test_train_loop.py as a config file."""
    from napari_medimp.core.preprocess import PreprocessConfig

    path = tmp_path_factory.mktemp("config") / "tiny.json"
    path.write_text(json.dumps({
        "image_encoder": "clip_resnet_tiny", "image_encoder_kwargs": {}, "embed_dim": 16,
        "text_trainable_layers": 1, "warmup_steps": 2, "val_fraction": 0.34,
        "preprocessing": PreprocessConfig(target_spacing=(6.0, 4.0, 4.0), input_size=(8, 16, 16)).to_dict()}))
    return path


@pytest.fixture
def dialog(make_napari_viewer, qtbot):
    from napari_medimp._widgets.training import TrainingWidget, open_training_dialog

    viewer = make_napari_viewer(show=True)
    widget = open_training_dialog(viewer)
    assert isinstance(widget, TrainingWidget)
    qtbot.waitUntil(widget.runtime_ready, timeout=60_000)  # devices known, loss plot drawn (a worker's)
    yield viewer, widget
    widget.shutdown(timeout_s=30)


@pytest.fixture
def notes(monkeypatch):
    """Notifications the dialog shows, by level."""
    from napari_medimp._widgets import training, training_runner

    shown: dict[str, list[str]] = {"error": [], "warning": [], "info": []}
    for module in (training, training_runner):  # the dialog and its run
        for level in shown:
            real = getattr(module, f"show_{level}", None)
            if real is None:
                continue

            def record(message, level=level, real=real):
                shown[level].append(str(message))
                real(message)

            monkeypatch.setattr(module, f"show_{level}", record)
    return shown


class GapProbe:
    """A QTimer in the main thread: the longest interval between two of its ticks."""

    def __init__(self):
        from qtpy.QtCore import QTimer

        self.timer = QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self._tick)
        self.last = None
        self.max_gap = 0.0
        self.ticks = 0
        self.t0 = self.worst_at = 0.0

    def _tick(self):
        now = time.perf_counter()
        if self.last is not None and now - self.last > self.max_gap:
            self.max_gap, self.worst_at = now - self.last, self.last - self.t0
        self.last = now
        self.ticks += 1

    def report(self, what):
        print(f"\nlongest main-thread gap while training ({what}): {self.max_gap * 1000:.1f} ms, "
              f"{self.worst_at:.2f} s after Start, over {self.ticks} ticks of {TICK_MS} ms")

    def start(self):
        self.last = None
        self.t0 = time.perf_counter()
        self.timer.start()

    def stop(self):
        self.timer.stop()


def _click(qtbot, button):
    from qtpy.QtCore import Qt

    assert button.isEnabled(), button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_menu_command_docks_one_dialog(dialog):
    from napari._app_model import get_app_model
    from npe2 import PluginManifest

    from napari_medimp._widgets.training import open_training_dialog

    viewer, widget = dialog
    assert open_training_dialog(viewer) is widget  # reused, not a second dock
    # the menu item runs the command with this viewer injected
    assert get_app_model().commands.execute_command("napari-medimp.open_training").result() is widget
    manifest = PluginManifest.from_distribution("napari-medimp")
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    assert commands["napari-medimp.open_training"].endswith("training:open_training_dialog")
    assert [m.command for m in manifest.contributions.menus["napari/layers/classify"]] == [
        "napari-medimp.open_training"]
    assert not widget.cancel_button.isEnabled() and not widget.use_button.isEnabled()
    small = PRESETS["cpu-small"]
    assert widget.epochs_spin.value() == small["epochs"] and widget.batch_spin.value() == small["batch_size"]


def test_opening_the_dialog_leaves_torch_and_matplotlib_to_a_worker(make_napari_viewer, qtbot, monkeypatch):
    """The constructor returns before the slow check (torch's devices) has run, and that check runs in
    another thread; its result then reaches the form in the main thread."""
    import threading

    from napari_medimp._widgets.training import TrainingWidget

    release = threading.Event()
    ran: dict = {}

    def slow_devices():
        ran["started"] = True
        ran["main_thread"] = threading.current_thread() is threading.main_thread()
        release.wait(timeout=30)  # held until the constructor has returned (a fail-safe bound, not a race)
        ran["finished"] = True
        return ["cuda", "cpu"]

    monkeypatch.setattr(TrainingWidget, "_available_devices", staticmethod(slow_devices))
    viewer = make_napari_viewer(show=True)
    widget = TrainingWidget(viewer)
    assert "finished" not in ran and not widget.runtime_ready()
    assert not widget.loss_plot.built  # matplotlib's canvas comes with the worker's result
    assert [widget.device_combo.itemData(i) for i in range(widget.device_combo.count())] == ["auto", "cpu"]
    release.set()
    qtbot.waitUntil(widget.runtime_ready, timeout=30_000)
    assert ran == {"started": True, "main_thread": False, "finished": True}
    assert [widget.device_combo.itemData(i) for i in range(widget.device_combo.count())] == ["auto", "cuda", "cpu"]
    paper = widget.preset_combo.model().item(widget.preset_combo.findData("paper"))
    assert paper.isEnabled() and widget.loss_plot.built
    widget.close()


def test_library_warnings_of_the_child_show_as_one_plain_line(dialog, qtbot, tmp_path):
    _, widget = dialog
    with qtbot.waitSignal(widget.run_finished, timeout=20_000):
        _fake_run(widget, tmp_path, "warn")
    # what the child wrote to stderr, as the log shows it: the warning in one plain line, the error whole
    shown = ["warning: Using a target size that is different to the input size", "Traceback (most recent call last):",
             "ValueError: the cohort is broken"]
    assert list(widget._stderr_tail) == shown
    assert widget.log_view.toPlainText().endswith("\n".join([*shown, "[train process ended: exit code 1]"]))


def test_bad_form_values_show_a_message_and_start_nothing(dialog, notes, qtbot, cohort, tmp_path):
    _, widget = dialog
    cases = [
        (dict(cohort=""), "cohort", "choose a cohort folder"),
        (dict(cohort=cohort / "ground_truth.json"), "cohort", "neither a cohort folder nor its clinical.csv"),
        (dict(cohort=cohort, epochs=0), "epochs", "at least 1 epoch"),
        (dict(epochs=2, config=tmp_path / "missing.json"), "config", "does not exist"),
    ]
    for form, field, message in cases:
        widget.set_form(out=tmp_path / "run", **form)
        _click(qtbot, widget.start_button)
        assert widget.child.process is None and widget.phase == "idle"
        label = widget._errors[field]
        assert label.isVisible() and message in label.text(), (field, label.text())
        assert message in notes["error"][-1] and "not started" in widget.status_label.text()
    assert not (tmp_path / "run").exists()
    # fixing the fields clears their messages
    widget.set_form(cohort=cohort, epochs=2, config="")
    assert not any(label.isVisible() for label in widget._errors.values())
    # a folder holding a previous run is refused unless resumed
    run = tmp_path / "previous"
    run.mkdir()
    (run / "log.csv").write_text("epoch\n")
    widget.set_form(out=run)
    _click(qtbot, widget.start_button)
    assert widget.child.process is None and "previous run" in widget._errors["out"].text()
    assert not widget.resume_check.isEnabled()


def _start(qtbot, widget, cohort, tiny_config, out, epochs, probe=None):
    widget.set_form(cohort=cohort / "clinical.csv", out=out, config=tiny_config, epochs=epochs, batch_size=2,
                    splits=2, repeats=1)
    assert widget.options().problems() == {}
    qtbot.wait(300)  # the form is painted; what follows is the run
    if probe is not None:
        probe.start()
    _click(qtbot, widget.start_button)
    assert widget.is_running() and widget.phase == "train"
    assert not widget.start_button.isEnabled() and not widget.cohort_edit.isEnabled()


def test_cancel_saves_a_checkpoint_resume_continues_and_closing_stops(dialog, notes, qtbot, cohort, tiny_config,
                                                                     tmp_path):
    from napari_medimp._widgets.run_options import inspect_run_folder
    from napari_medimp.core.training_run import read_checkpoint_state

    viewer, widget = dialog
    run = tmp_path / "run"
    probe = GapProbe()
    _start(qtbot, widget, cohort, tiny_config, run, epochs=50, probe=probe)
    pid = widget.child.process.processId()
    qtbot.waitUntil(lambda: widget.progress_bar.value() > 0, timeout=120_000)
    assert widget.progress_bar.maximum() == 50 * widget.progress.steps_per_epoch
    assert "epoch 1/50" in widget.status_label.text() and "loss" in widget.status_label.text()
    with qtbot.waitSignal(widget.run_finished, timeout=120_000) as finished:
        _click(qtbot, widget.cancel_button)
        assert widget.status_label.text() == "stopping, saving checkpoint..."
        assert widget.cancel_button.text() == "Force stop"
    probe.stop()
    probe.report("cancel test")
    assert finished.args == ["train", 3] and widget.exit_code == 3
    checkpoint = run / "last.safetensors"
    assert checkpoint.exists()
    assert widget.status_label.text() == (f"stopped; checkpoint saved at {checkpoint}; "
                                          "Start with resume to continue")
    assert notes["info"] and not notes["error"]
    assert not _pid_alive(pid)
    stopped_at = widget.progress.step
    assert inspect_run_folder(run).step == stopped_at

    first_losses = dict(widget.progress.step_losses)
    assert sorted(first_losses) == list(range(1, stopped_at + 1))

    # Start again: Resume is offered, the run's own settings apply, training goes on from the checkpoint
    assert widget.resume_check.isEnabled() and widget.resume_check.isChecked()
    assert not widget.preset_combo.isEnabled() and not widget.precision_combo.isEnabled()
    assert widget.epochs_spin.isEnabled() and widget.device_combo.isEnabled()
    results = []
    widget.run_finished.connect(lambda phase, code: results.append((phase, code)))
    _click(qtbot, widget.start_button)
    assert "--resume" in widget.log_view.toPlainText()
    qtbot.waitUntil(lambda: widget.progress.step > stopped_at, timeout=120_000)
    assert widget.progress.first_step == stopped_at  # the "resumed" event
    pid = widget.child.process.processId()
    # the loss plot shows the whole curve: the steps before the stop (read back from the run folder), then these
    qtbot.waitUntil(lambda: len(widget.loss_plot.train_line.get_xdata()) > stopped_at, timeout=30_000)
    steps, losses, _, _ = widget.progress.curves()
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > stopped_at
    assert list(widget.loss_plot.train_line.get_xdata()[:stopped_at]) == list(range(1, stopped_at + 1))
    assert losses[:stopped_at] == pytest.approx([first_losses[s] for s in range(1, stopped_at + 1)])

    # closing the viewer stops the run the same way (napari lists it among the window's busy tasks)
    assert any("napari-medimp" in task for task in viewer.window._task_status_manager.get_status())
    viewer.close()
    assert results == [("train", 3)] and not _pid_alive(pid)
    assert inspect_run_folder(run).step > stopped_at
    assert probe.ticks > 10  # the main thread kept running while the child process trained
    # the run folder holds the loss of every step of both parts, as the dialog saw them
    state = read_checkpoint_state(run)
    assert len(state["loss_history"]) == state["step"]
    seen = dict(widget.progress.step_losses)
    assert state["loss_history"] == pytest.approx([seen[s] for s in range(1, state["step"] + 1)])


@pytest.mark.slow  # a 2-epoch training and its evaluation: about 40 s on 2 idle cores
def test_full_run_evaluation_and_hand_over(dialog, notes, qtbot, cohort, tiny_config, tmp_path):
    from napari_medimp._widgets import _registry
    from napari_medimp.core.evaluation_table import evaluation_lines

    viewer, widget = dialog
    run = tmp_path / "run"
    probe = GapProbe()
    phases = []
    widget.run_finished.connect(lambda phase, code: phases.append((phase, code)))
    _start(qtbot, widget, cohort, tiny_config, run, epochs=2, probe=probe)
    qtbot.waitUntil(lambda: phases[:1] == [("train", 0)], timeout=180_000)
    probe.stop()
    probe.report("full run")
    assert widget.phase == "evaluate" and "evaluating" in widget.status_label.text()
    qtbot.waitUntil(lambda: len(phases) == 2, timeout=240_000)
    assert phases == [("train", 0), ("evaluate", 0)], widget.log_view.toPlainText()[-2000:]
    assert widget.progress.done and widget.progress_bar.value() == widget.progress_bar.maximum()
    model = Path(widget.progress.model)
    assert widget.model_path == model and model.exists()
    assert widget.status_label.text().startswith("done: model")
    # the table of the evaluation
    assert widget.table.rowCount() == len(evaluation_lines(widget.evaluation_rows)) > len(widget.evaluation_rows) > 0
    assert widget.table.item(0, 0).text().startswith("Graft dysfunction at")  # a horizon's heading
    assert widget.table.item(1, 0).text() == "MEDIMP"
    assert re.fullmatch(r"\d\.\d\d \(\d\.\d\d–\d\.\d\d\)", widget.table.item(1, 1).text())  # AUC (95 % CI)
    assert "only 4 patients" in widget.evaluation_note.text() and widget.evaluation_note.isVisible()
    assert (run / "evaluation" / "evaluation.csv").exists()
    assert json.loads(model.with_suffix(".json").read_text())["prognosis"], "heads stored in the model file"
    # the loss plot holds every step and both epochs
    steps, _, val_steps, _ = widget.progress.curves()
    assert len(steps) == widget.progress.total_steps and len(val_steps) == 2
    assert len(widget.loss_plot.train_line.get_xdata()) == len(steps)

    # hand-over to the analysis widget of this viewer
    class FakeAnalysis:
        received = None

        def set_model_file(self, path):
            self.received = path

    fake = FakeAnalysis()
    _registry.register(viewer, fake)
    _click(qtbot, widget.use_button)
    assert Path(fake.received) == model
    assert not notes["error"]

    widget.setMinimumWidth(560)  # a wider dock for the picture: the whole table is readable
    qtbot.wait(100)
    widget.loss_plot.canvas.draw()
    content = widget.content
    content.resize(content.width(), content.sizeHint().height())
    shot = tmp_path / "training_dialog.png"
    assert content.grab().save(str(shot))
    _assert_not_blank(shot)
    if os.environ.get("MEDIMP_UPDATE_DOCS_IMAGES") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
    assert probe.ticks > 10  # the main thread kept running while the child process trained


def _assert_not_blank(path):
    import numpy as np
    from PIL import Image

    image = np.asarray(Image.open(path).convert("L"), dtype=float)
    assert image.shape[0] > 600 and image.std() > 20, "the screenshot is blank"


def test_use_hands_the_model_to_the_analysis_widget(dialog, notes, qtbot, monkeypatch, tmp_path):
    from napari_medimp._widgets import _registry

    viewer, widget = dialog
    received = []

    class FakeAnalysis:
        def set_model_file(self, path):
            received.append(path)

    docked = []

    class FakeDock:
        raised = False

        def raise_(self):
            self.raised = True

    dock = FakeDock()

    def add_plugin_dock_widget(plugin, name, tabify=False):
        docked.append((plugin, name, tabify))
        return dock, FakeAnalysis()

    monkeypatch.setattr(viewer.window, "add_plugin_dock_widget", add_plugin_dock_widget)
    assert not widget.use_button.isEnabled()
    widget.use_in_analysis()  # no model yet: a warning, nothing docked
    assert docked == [] and "No trained model" in notes["warning"][-1]
    widget.model_path = tmp_path / "model.safetensors"
    # no analysis widget in this viewer: it is docked, then given the model
    widget.use_in_analysis()
    # as a tab in front of the training dock (stacked, the two docks squashed each other)
    assert docked == [("napari-medimp", "MEDIMP graft analysis", True)] and dock.raised
    assert received == [widget.model_path]
    # the analysis widget registered for this viewer gets it directly
    registered = FakeAnalysis()
    _registry.register(viewer, registered)
    widget.use_button.setEnabled(True)
    _click(qtbot, widget.use_button)
    assert received == [widget.model_path] * 2 and len(docked) == 1
    assert not notes["error"]


# --------------------------------------------------------------------------------------------------
# the process handling, with a small stand-in for the training program (starts in milliseconds)
# --------------------------------------------------------------------------------------------------
FAKE_TRAINING = r"""
import json, signal, sys, time
mode, checkpoint = sys.argv[1], sys.argv[2]

def stop(*_):
    print(json.dumps({"event": "stopped", "epoch": 0, "step": 1, "checkpoint": checkpoint}), flush=True)
    sys.exit(3)

signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "ignore" else stop)
if mode == "done":
    for event in ({"event": "start", "train_exams": 4, "val_exams": 2, "steps_per_epoch": 2, "epochs": 1},
                  {"event": "step", "epoch": 0, "step": 1, "loss": 1.5, "total_steps": 2},
                  {"event": "step", "epoch": 0, "step": 2, "loss": 1.1, "total_steps": 2},
                  {"event": "epoch", "epoch": 0, "step": 2, "train_loss": 1.3, "val_loss": 0.9, "recall_at_1": 0.5},
                  {"event": "done", "epoch": 0, "step": 2, "train_loss": 1.3, "model": checkpoint}):
        print(json.dumps(event), flush=True)
    sys.exit(0)
if mode == "nostep":  # a trainer that reports a model after no step at all
    for event in ({"event": "start", "train_exams": 7, "val_exams": 4, "steps_per_epoch": 0, "epochs": 1},
                  {"event": "epoch", "epoch": 0, "step": 0, "train_loss": float("nan")},
                  {"event": "done", "epoch": 0, "step": 0, "model": checkpoint}):
        print(json.dumps(event), flush=True)
    sys.exit(0)
if mode == "warn":
    print("/venv/lib/python3.11/site-packages/torch/nn/modules/loss.py:610: UserWarning: Using a target size "
          "that is different to the input size", file=sys.stderr)
    print("  return F.mse_loss(input, target, reduction=self.reduction)", file=sys.stderr)
    print("Traceback (most recent call last):", file=sys.stderr)
    print("ValueError: the cohort is broken", file=sys.stderr, flush=True)
    sys.exit(1)
if mode == "fail":
    print("Traceback (most recent call last):", file=sys.stderr)
    print("ValueError: the cohort is broken", file=sys.stderr, flush=True)
    sys.exit(1)
print("a line that is not an event", flush=True)
start = json.dumps({"event": "start", "train_exams": 8, "val_exams": 2, "steps_per_epoch": 4, "epochs": 3})
sys.stdout.write(start[:20]); sys.stdout.flush(); time.sleep(0.05)  # an event in two reads
sys.stdout.write(start[20:] + "\n")
print(json.dumps({"event": "step", "epoch": 0, "step": 1, "loss": 1.25, "total_steps": 12}), flush=True)
while True:
    time.sleep(0.02)
"""


def _fake_run(widget, tmp_path, mode, model=None):
    widget._run_out = tmp_path
    widget.progress = TrainingProgress()
    path = model or tmp_path / "last.safetensors"  # the model ("done") or the checkpoint ("stopped")
    widget._launch("train", [sys.executable, "-c", FAKE_TRAINING, mode, str(path)])


def test_dock_closed_while_training_stops_the_process(dialog, qtbot, tmp_path):
    viewer, widget = dialog
    _fake_run(widget, tmp_path, "stop")
    qtbot.waitUntil(lambda: widget.progress.step == 1, timeout=20_000)
    pid = widget.child.process.processId()
    assert "a line that is not an event" in widget.log_view.toPlainText()
    assert widget.progress.train_exams == 8  # the event split across two reads arrived whole
    viewer.window.remove_dock_widget(widget)  # what the dock's close button does
    assert widget.exit_code == 3 and not widget.is_running() and not _pid_alive(pid)
    assert widget.status_label.text().startswith("stopped; checkpoint saved at")


def test_a_process_that_ignores_the_stop_is_killed(dialog, notes, qtbot, tmp_path):
    _, widget = dialog
    widget.kill_timeout_s = 0.5
    _fake_run(widget, tmp_path, "ignore")
    qtbot.waitUntil(lambda: widget.progress.step == 1, timeout=20_000)
    with qtbot.waitSignal(widget.run_finished, timeout=20_000):
        widget.cancel()
        assert widget.status_label.text() == "stopping, saving checkpoint..."
    assert widget.exit_code == -1
    assert "killed after not stopping within 0.5 s" in widget.status_label.text()
    assert "killed" in notes["warning"][-1] and not notes["error"]


FAKE_EVALUATION = r"""
import pathlib, sys
out = pathlib.Path(sys.argv[sys.argv.index("--out") + 1])
out.mkdir(parents=True, exist_ok=True)
(out / "evaluation.csv").write_text(
    "feature_set,horizon,n_patients,n_positive,auc,auc_low,auc_high,f1,status,message\n"
    "MEDIMP,2y,10,4,0.75,0.65,0.85,0.6,ok,\n")
print("| feature_set | horizon |")
"""


def test_finished_training_is_evaluated_and_its_table_shown(dialog, notes, qtbot, monkeypatch, tmp_path):
    from napari_medimp._widgets import run_options

    _, widget = dialog
    commands = []

    def evaluation_command(model, cohort, out, splits, repeats, **options):
        commands.append((model, cohort, out, splits, repeats, options["device"]))
        return [sys.executable, "-c", FAKE_EVALUATION, "--out", str(out)]

    monkeypatch.setattr(run_options, "evaluation_command", evaluation_command)
    _fake_run_folder(tmp_path, evaluation=False)  # a stopped run, resumed below
    widget.set_form(splits=4, repeats=3, out=tmp_path, resume=True)
    assert widget.resume_check.isChecked()
    widget._run_cohort = tmp_path / "cohort"
    phases = []
    widget.run_finished.connect(lambda phase, code: phases.append((phase, code)))
    model = tmp_path / "best.safetensors"
    _fake_run(widget, tmp_path, "done", model)
    qtbot.waitUntil(lambda: len(phases) == 2, timeout=30_000)
    assert phases == [("train", 0), ("evaluate", 0)]
    assert commands == [(model, tmp_path / "cohort", tmp_path / "evaluation", 4, 3, "auto")]
    assert widget.progress_bar.value() == widget.progress_bar.maximum() == 2
    assert widget.table.item(0, 0).text() == "Graft dysfunction at 2 years\n10 patients, 4 with graft dysfunction"
    assert [widget.table.item(1, c).text() for c in range(4)] == ["MEDIMP", "0.75 (0.65–0.85)", "0.60",
                                                                  "too few patients"]
    assert widget.evaluation_note.isVisible() and "only 10 patients" in widget.evaluation_note.text()
    assert widget.use_button.isEnabled() and widget.model_path == model
    assert widget.status_label.text().startswith("done: model") and not notes["error"]
    assert not widget.resume_check.isChecked()  # Resume was for that run
    assert len(widget.loss_plot.train_line.get_xdata()) == 2 and len(widget.loss_plot.val_line.get_xdata()) == 1


def test_a_failed_training_shows_its_last_error_lines(dialog, notes, qtbot, tmp_path):
    _, widget = dialog
    _fake_run_folder(tmp_path, evaluation=False)
    widget.set_form(out=tmp_path, resume=True)
    assert widget.resume_check.isChecked()
    with qtbot.waitSignal(widget.run_finished, timeout=20_000) as finished:
        _fake_run(widget, tmp_path, "fail")
    assert finished.args == ["train", 1]
    assert "exit code 1" in notes["error"][-1] and "ValueError: the cohort is broken" in notes["error"][-1]
    assert widget.status_label.text() == "training failed (exit code 1): ValueError: the cohort is broken"
    assert widget.start_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert widget.resume_check.isEnabled() and not widget.resume_check.isChecked()  # offered, not chosen


def test_exams_that_make_no_batch_are_refused_before_start(dialog, notes, qtbot, cohort, tiny_config, tmp_path):
    _, widget = dialog
    run = tmp_path / "run"
    widget.set_form(cohort=cohort, out=run, config=tiny_config, epochs=1, batch_size=16)
    assert widget.options().problems() == {}  # every field is fine on its own
    _click(qtbot, widget.start_button)
    # 4 patients, 1 of them (4 exams) validates: 12 training exams make no batch of 16
    message = ("12 training exams (3 of 4 patients; 4 exams of 1 patient kept for validation) make no batch of "
               "16; use batch 8 or more patients")
    assert widget.child.process is None and widget.phase == "idle"
    assert widget.status_label.text() == f"Training not started: {message}"
    assert message in notes["error"][-1]
    assert widget._errors["batch_size"].isVisible() and widget._errors["batch_size"].text() == message
    assert not widget.use_button.isEnabled() and widget.model_path is None
    assert "finished" not in widget.status_label.text() and not run.exists()
    # a batch the exams fill passes the check
    widget.set_form(batch_size=8)
    assert widget.options().batch_problem() is None


def test_a_model_reported_after_no_step_is_not_offered(dialog, notes, qtbot, tmp_path):
    _, widget = dialog
    with qtbot.waitSignal(widget.run_finished, timeout=20_000):
        _fake_run(widget, tmp_path, "nostep", tmp_path / "best.safetensors")
    assert widget.model_path is None and not widget.use_button.isEnabled()
    assert widget.status_label.text() == ("training took no step (7 training exams, 0 steps per epoch): no model "
                                          "to use")
    assert "finished" not in widget.status_label.text() and "no step" in notes["error"][-1]


# --------------------------------------------------------------------------------------------------
# an earlier run's folder, written as the trainer and the evaluation write it (no training needed)
# --------------------------------------------------------------------------------------------------
FEATURE_SETS = ("MEDIMP", "MEDIMP + clinical", "untrained encoder", "clinical values only", "oracle image reader",
                "oracle + clinical")
#: loss of each of the 12 steps of a run stopped after 3 of its 30 epochs of 4 steps
LOSSES = [2.1, 2.0, 2.05, 1.9, 1.85, 1.9, 1.7, 1.75, 1.6, 1.62, 1.55, 1.5]


def _fake_run_folder(run: Path, evaluation: bool = True, patients: int = 6, positive: int = 4) -> Path:
    """A run folder as the trainer leaves it after 3 epochs (checkpoint with its state, log, best model) and,
    with ``evaluation``, as the evaluation leaves it (a table on ``patients`` patients, MEDIMP's AUC 0.25)."""
    import numpy as np
    from safetensors.numpy import save_file

    from napari_medimp.core.training_run import STATE_KEY

    run.mkdir(parents=True, exist_ok=True)
    config = {"epochs": 30, "batch_size": 2, "attributes": ["gfr", "exam"], "amp": "off", "device": "auto"}
    state = {"next_epoch": 3, "next_batch": 0, "step": 12, "best_val_loss": 1.6, "loss_history": LOSSES,
             "epoch_losses": [], "config": config}
    save_file({"model.w": np.zeros(2, np.float32)}, str(run / "last.safetensors"),
              metadata={STATE_KEY: json.dumps(state)})
    (run / "last.json").write_text(json.dumps(state))
    (run / "train_config.json").write_text(json.dumps(config))
    (run / "log.csv").write_text("epoch,step,train_loss,lr,val_loss,recall_at_1,recall_at_5,mean_rank\n"
                                 "0,4,2.01,0.0003,1.9,0.2,1.0,2.5\n1,8,1.8,0.0003,1.7,0.2,1.0,2.4\n"
                                 "2,12,1.59,0.0003,1.6,0.3,1.0,2.2\n")
    (run / "best.safetensors").write_bytes(b"")
    if evaluation:
        rows = ["feature_set,horizon,n_patients,n_positive,auc,auc_low,auc_high,f1,f1_low,f1_high,brier,brier_low,"
                "brier_high,status,message"]
        for horizon in ("2y", "3y", "4y"):
            for name in FEATURE_SETS:
                auc = 0.25 if name == "MEDIMP" else 0.72
                rows.append(f"{name},{horizon},{patients},{positive},{auc},0.0,1.0,0.57,0.0,1.0,0.3,0.1,0.5,ok,")
        (run / "evaluation").mkdir(exist_ok=True)
        (run / "evaluation" / "evaluation.csv").write_text("\n".join(rows) + "\n")
        (run / "evaluation" / "evaluation.md").write_text("# Prognosis evaluation\n")
    return run


def _line_widths(metrics, text: str) -> int:
    return max(metrics.horizontalAdvance(line) for line in text.split("\n"))


def test_an_earlier_run_folder_shows_its_curve_table_and_model(dialog, notes, qtbot, tmp_path):
    _, widget = dialog
    run = _fake_run_folder(tmp_path / "run")
    widget.out_edit.setText(str(run))  # as typed: the dialog looks at the folder when the typing pauses
    qtbot.waitUntil(lambda: widget.table.rowCount() > 0, timeout=10_000)
    assert widget.status_label.text() == ("earlier run in run: 3 epochs; model best.safetensors; "
                                          "its evaluation below")
    assert widget.table.rowCount() == 3 * (1 + len(FEATURE_SETS))
    assert widget.table.item(1, 0).text() == "MEDIMP" and widget.table.item(1, 1).text() == "0.25 (0.00–1.00)"
    assert widget.use_button.isEnabled() and widget.model_path == run / "best.safetensors"
    # the whole loss curve, on axes that span the run's 30 epochs
    plot = widget.loss_plot
    assert list(plot.train_line.get_xdata()) == list(range(1, 13))
    assert list(plot.train_line.get_ydata()) == pytest.approx(LOSSES)
    assert list(plot.val_line.get_xdata()) == [4, 8, 12]
    assert plot.axes.get_xlim() == (0, 120)
    assert widget.progress_bar.value() == 12 and widget.progress_bar.maximum() == 120
    assert widget.resume_check.isEnabled() and "3/30 epochs done" in widget.resume_check.text()
    # an empty folder shows nothing of it
    widget.set_form(out=tmp_path / "new")
    assert widget.table.rowCount() == 0 and not widget.evaluation_note.isVisible()
    assert len(plot.train_line.get_xdata()) == 0 and not widget.use_button.isEnabled()
    assert not notes["error"] and not notes["warning"]


def test_the_evaluation_table_is_readable_at_napari_s_default_size(dialog, qtbot, tmp_path):
    """At napari's default window size the table fits its dock: every header and every cell whole, no
    horizontal scrolling; a table on 6 patients with an AUC of 0.25 says both in words."""
    from qtpy.QtGui import QFontMetrics

    viewer, widget = dialog
    viewer.window.resize(1089, 630)
    qtbot.waitUntil(lambda: viewer.window.geometry()[2:] == (1089, 630), timeout=5_000)
    widget.set_form(out=_fake_run_folder(tmp_path / "run"))
    table = widget.table
    qtbot.waitUntil(lambda: table.rowCount() > 0 and table.viewport().width() > 0, timeout=10_000)
    qtbot.wait(50)
    header = table.horizontalHeader()
    widths = [header.sectionSize(c) for c in range(table.columnCount())]
    header_metrics = header.fontMetrics()
    for c in range(table.columnCount()):
        title = table.horizontalHeaderItem(c).text()
        assert widths[c] >= header_metrics.horizontalAdvance(title), title
        assert table.horizontalHeaderItem(c).toolTip()  # the column's full meaning
    for r in range(table.rowCount()):
        for c in range(table.columnCount()):
            item = table.item(r, c)
            if item is None:
                continue  # under a heading's span
            metrics = QFontMetrics(item.font())
            room = sum(widths[c:c + table.columnSpan(r, c)])
            assert _line_widths(metrics, item.text()) <= room, (r, c, item.text())
            assert table.rowHeight(r) >= metrics.lineSpacing() * item.text().count("\n") + metrics.height()
            assert item.toolTip()
    assert sum(widths) <= table.viewport().width() and table.horizontalScrollBar().maximum() == 0
    # in words, for every row and below the table
    medimp = [table.item(r, 3).text() for r in range(table.rowCount()) if table.item(r, 0).text() == "MEDIMP"]
    assert medimp == ["too few patients\nweak"] * 3
    assert widget.evaluation_note.isVisible()
    note = widget.evaluation_note.text()
    assert "Graft dysfunction at 2, 3 and 4 years: only 6 patients (4 with graft dysfunction" in note
    assert "AUC below 0.6" in note and "MEDIMP at 2 years: 0.25" in note
    # the picture: the dialog drawn in its dock, each column's header text drawn inside the table
    import numpy as np
    from PIL import Image

    shot = tmp_path / "dialog.png"
    widget.content.grab().save(str(shot))
    _assert_not_blank(shot)
    assert table.geometry().right() <= widget.content.width()
    table.grab().save(str(tmp_path / "table.png"))
    pixels = np.asarray(Image.open(tmp_path / "table.png").convert("L"), dtype=float)
    top = header.geometry().top()
    for c in range(table.columnCount()):
        x = table.viewport().geometry().left() + header.sectionViewportPosition(c)
        cell = pixels[top + 2:top + header.height() - 2, x + 2:x + widths[c] - 2]
        assert cell.std() > 10, f"no header text drawn in column {c}"


def test_device_and_precision_reach_the_training_process(dialog, qtbot, monkeypatch, cohort, tmp_path):
    from napari_medimp._widgets.training_process import ChildProcess
    from napari_medimp.core.inference import available_devices

    _, widget = dialog
    devices = available_devices()
    assert [widget.device_combo.itemData(i) for i in range(widget.device_combo.count())] == [
        "auto", *(d for d in ("cuda", "mps") if d in devices), "cpu"]
    assert [widget.precision_combo.itemData(i) for i in range(widget.precision_combo.count())] == [
        "auto", "bf16", "fp16", "off"]
    started = []
    monkeypatch.setattr(ChildProcess, "start", lambda self, phase, program, args, **kw: started.append(args))
    run = tmp_path / "run"
    widget.set_form(cohort=cohort, out=run, epochs=2, batch_size=4, device="cpu", amp="fp16")  # 12 exams train
    _click(qtbot, widget.start_button)
    assert not started and "fp16 needs a CUDA GPU" in widget._errors["amp"].text()
    widget.set_form(amp="bf16")
    assert not widget._errors["amp"].isVisible()
    _click(qtbot, widget.start_button)
    args = started[-1]
    assert args[args.index("--device") + 1] == "cpu" and args[args.index("--amp") + 1] == "bf16"
    # resumed, the run keeps its own precision (shown, not editable); the device may change
    widget._set_running(False)
    _fake_run_folder(run, evaluation=False)
    widget.set_form(out=run, resume=True, device="auto")
    assert widget.precision_combo.currentData() == "off" and not widget.precision_combo.isEnabled()
    _click(qtbot, widget.start_button)
    args = started[-1]
    assert "--resume" in args and "--amp" not in args and args[args.index("--device") + 1] == "auto"


def test_napari_task_list_hooks_exist():
    """The training dialog lists its runs through napari's private task-list hooks (no public API in
    napari 0.9): this fails when napari moves them, so that napari_medimp/_widgets/_tasks.py is updated."""
    from napari._qt.qt_main_window import Window
    from napari.utils.task_status import Status

    assert callable(getattr(Window, "_register_task_status", None))
    assert callable(getattr(Window, "_update_task_status", None))
    assert {"BUSY", "COMPLETED", "CANCELLED", "FAILED"} <= set(Status.__members__)
