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

from napari_medimp._widgets.training_form import TrainingProgress

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
    synth.generate_cohort(out, n_patients=4, seed=4, grid=(16, 40, 48), spacing=(6.0, 4.0, 4.0), n_jobs=2)
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
def dialog(make_napari_viewer):
    from napari_medimp._widgets.training import TrainingWidget, open_training_dialog

    viewer = make_napari_viewer(show=True)
    widget = open_training_dialog(viewer)
    assert isinstance(widget, TrainingWidget)
    yield viewer, widget
    widget.shutdown(timeout_s=30)


@pytest.fixture
def notes(monkeypatch):
    """Notifications the dialog shows, by level."""
    from napari_medimp._widgets import training

    shown: dict[str, list[str]] = {"error": [], "warning": [], "info": []}
    for level in shown:
        real = getattr(training, f"show_{level}")

        def record(message, level=level, real=real):
            shown[level].append(str(message))
            real(message)

        monkeypatch.setattr(training, f"show_{level}", record)
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
    assert widget.epochs_spin.value() == 30 and widget.batch_spin.value() == 8  # the cpu-small preset


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
    from napari_medimp._widgets.training_form import inspect_run_folder

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

    # Start again: Resume is ticked, the run's own settings apply, training goes on from the checkpoint
    assert widget.resume_check.isEnabled() and widget.resume_check.isChecked()
    assert not widget.preset_combo.isEnabled() and widget.epochs_spin.isEnabled()
    results = []
    widget.run_finished.connect(lambda phase, code: results.append((phase, code)))
    _click(qtbot, widget.start_button)
    assert "--resume" in widget.log_view.toPlainText()
    qtbot.waitUntil(lambda: widget.progress.step > stopped_at, timeout=120_000)
    assert widget.progress.first_step == stopped_at  # the "resumed" event
    pid = widget.child.process.processId()

    # closing the viewer stops the run the same way (napari lists it among the window's busy tasks)
    assert any("napari-medimp" in task for task in viewer.window._task_status_manager.get_status())
    viewer.close()
    assert results == [("train", 3)] and not _pid_alive(pid)
    assert inspect_run_folder(run).step > stopped_at
    assert probe.ticks > 10  # the main thread kept running while the child process trained


@pytest.mark.slow  # a 2-epoch training and its evaluation: about 40 s on 2 idle cores
def test_full_run_evaluation_and_hand_over(dialog, notes, qtbot, cohort, tiny_config, tmp_path):
    from napari_medimp._widgets import _registry

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
    assert widget.table.rowCount() == len(widget.evaluation_rows) > 0
    assert widget.table.item(0, 0).text() == "MEDIMP"
    assert re.fullmatch(r"\d\.\d\d \[\d\.\d\d-\d\.\d\d\]", widget.table.item(0, 2).text())  # AUC [95 % interval]
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

    def add_plugin_dock_widget(plugin, name):
        docked.append((plugin, name))
        return object(), FakeAnalysis()

    monkeypatch.setattr(viewer.window, "add_plugin_dock_widget", add_plugin_dock_widget)
    assert not widget.use_button.isEnabled()
    widget.use_in_analysis()  # no model yet: a warning, nothing docked
    assert docked == [] and "No trained model" in notes["warning"][-1]
    widget.model_path = tmp_path / "model.safetensors"
    # no analysis widget in this viewer: it is docked, then given the model
    widget.use_in_analysis()
    assert docked == [("napari-medimp", "MEDIMP graft analysis")] and received == [widget.model_path]
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
    from napari_medimp._widgets import training

    _, widget = dialog
    commands = []

    def evaluation_command(model, cohort, out, splits, repeats, **options):
        commands.append((model, cohort, out, splits, repeats))
        return [sys.executable, "-c", FAKE_EVALUATION, "--out", str(out)]

    monkeypatch.setattr(training.tj, "evaluation_command", evaluation_command)
    widget.set_form(splits=4, repeats=3)
    widget._run_cohort = tmp_path / "cohort"
    phases = []
    widget.run_finished.connect(lambda phase, code: phases.append((phase, code)))
    model = tmp_path / "best.safetensors"
    _fake_run(widget, tmp_path, "done", model)
    qtbot.waitUntil(lambda: len(phases) == 2, timeout=30_000)
    assert phases == [("train", 0), ("evaluate", 0)]
    assert commands == [(model, tmp_path / "cohort", tmp_path / "evaluation", 4, 3)]
    assert widget.progress_bar.value() == widget.progress_bar.maximum() == 2
    assert [widget.table.item(0, c).text() for c in range(3)] == ["MEDIMP", "2y", "0.75 [0.65-0.85]"]
    assert widget.use_button.isEnabled() and widget.model_path == model
    assert widget.status_label.text().startswith("done: model") and not notes["error"]
    assert len(widget.loss_plot.train_line.get_xdata()) == 2 and len(widget.loss_plot.val_line.get_xdata()) == 1


def test_a_failed_training_shows_its_last_error_lines(dialog, notes, qtbot, tmp_path):
    _, widget = dialog
    with qtbot.waitSignal(widget.run_finished, timeout=20_000) as finished:
        _fake_run(widget, tmp_path, "fail")
    assert finished.args == ["train", 1]
    assert "exit code 1" in notes["error"][-1] and "ValueError: the cohort is broken" in notes["error"][-1]
    assert widget.status_label.text() == "training failed (exit code 1): ValueError: the cohort is broken"
    assert widget.start_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_napari_task_list_hooks_exist():
    """The training dialog lists its runs through napari's private task-list hooks (no public API in
    napari 0.9): this fails when napari moves them, so that napari_medimp/_widgets/_tasks.py is updated."""
    from napari._qt.qt_main_window import Window
    from napari.utils.task_status import Status

    assert callable(getattr(Window, "_register_task_status", None))
    assert callable(getattr(Window, "_update_task_status", None))
    assert {"BUSY", "COMPLETED", "CANCELLED", "FAILED"} <= set(Status.__members__)
