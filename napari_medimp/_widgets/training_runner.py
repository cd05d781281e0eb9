"""The run of the training dialog: a training (then its evaluation) in a child process, followed live.

:class:`TrainingRunner` is the part of :class:`~napari_medimp._widgets.training.TrainingWidget` that starts
``python -m src_train train ... --json-progress`` with
:class:`~napari_medimp._widgets.training_process.ChildProcess`, folds its JSON progress events into a
:class:`~napari_medimp._widgets.run_progress.TrainingProgress` (anything else, and stderr, goes to the log),
cancels it (SIGTERM: the training finishes its step, saves its checkpoint and exits with code 3; a second
Cancel, or ``kill_timeout_s``, kills it), stops it when the window closes, and says how each process ended.
A finished training is evaluated in a second process (``python -m src_train evaluate --write-heads``).

The dialog provides the form (``options()``, ``resume_check``, the evaluation settings), the views (status
line, log, progress bar, loss plot, evaluation table) and ``run_finished``; this class owns the process, the
progress and napari's task entry.
"""

import functools
import traceback
import weakref
from collections import deque
from pathlib import Path

from napari.utils.notifications import show_error, show_info, show_warning

from ..core.evaluation_table import read_evaluation_table
from ..core.training_run import CHECKPOINT_FILE, EXIT_STOPPED
from . import _tasks, run_options
from .run_progress import TrainingProgress, WarningLines, describe_exit, parse_event
from .training_process import ChildProcess


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


class TrainingRunner:
    """The training and evaluation processes of the training dialog (a mixin of its widget).

    The widget calls :meth:`_init_run` before it builds its views, and provides: ``viewer``,
    ``run_finished``; the form (``options()``, ``_refresh_errors()``, ``_refresh_run_folder()``,
    ``_reset_resume()``, ``resume_check``, ``eval_cohort_edit``, ``splits_spin``, ``repeats_spin``, the
    devices: ``_devices``, ``_apply_devices()``, ``_available_devices()``); the views (``_set_running()``,
    ``_set_status()``, ``_log()``, ``log_view``, ``progress_bar``, ``loss_plot``, ``_update_plot()``,
    ``_fill_table()``, ``cancel_button``, ``use_button``) and the run it shows (``model_path``,
    ``_shown_run``)."""

    def _init_run(self) -> None:
        """The run's state: no process yet, an empty progress."""
        #: the training or evaluation process (one at a time)
        self.child = ChildProcess(self)
        self.child.stdout_line.connect(self._on_stdout_line)
        self.child.stderr_line.connect(self._on_stderr_line)
        self.child.note.connect(self._log)
        self.child.ended.connect(self._on_child_ended)
        #: seconds a cancelled training may take to save its checkpoint before it is killed
        self.kill_timeout_s = 300.0
        self.close_timeout_s = 60.0  # closing waits this long for a running training's checkpoint
        #: the child runs at this lower CPU priority (Unix), so the viewer stays responsive on a busy CPU
        self.child_niceness = 10
        self.phase = "idle"  # idle, train, evaluate
        self.exit_code: int | None = None
        self.progress = TrainingProgress()
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._stderr_lines = WarningLines()  # a library warning: one plain line in the log
        self._run_cohort: Path | None = None
        self._run_out: Path | None = None
        self._run_device = "auto"
        self._task_id = None
        self._task_epoch: int | None = None
        self._progress_dirty = False

    # ------------------------------------------------------------------------------------------------
    # starting and stopping
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
        warning = run_options.preset_warning(options.preset, self._devices)
        if warning and not options.resume:
            show_warning(f"MEDIMP training: {warning}")
        command = options.command()
        self.progress = TrainingProgress()
        if options.resume:  # the whole curve: what the earlier parts of the run recorded, then this part
            self.progress.add_run_history(Path(options.out).expanduser())
        self.model_path = None
        self.exit_code = None
        self._fill_table([])
        self._run_cohort = run_options.resolve_cohort(options.cohort).absolute()
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
        env = run_options.child_environment()
        root = run_options.source_root()  # the working folder: `-m src_train` finds this package, not a same-named one
        self.phase = phase
        self._stderr_tail.clear()
        self._stderr_lines = WarningLines()
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
        event = parse_event(line)
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
        if not crashed and code == EXIT_STOPPED:
            checkpoint = p.checkpoint or str(self._run_out / CHECKPOINT_FILE)
            level, text = describe_exit("train", code, crashed, checkpoint=checkpoint)
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
            checkpoint = self._run_out / CHECKPOINT_FILE
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
            _, text = describe_exit("training", code, crashed, list(self._stderr_tail)[-8:])
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
        cohort, in_sample = run_options.evaluation_cohort(self.eval_cohort_edit.text(), self._run_cohort)
        self._evaluation_in_sample = in_sample
        command = run_options.evaluation_command(self.model_path, cohort, out, self.splits_spin.value(),
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
                rows = read_evaluation_table(self._run_out / "evaluation")
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
        _, text = describe_exit("evaluation", code, crashed, list(self._stderr_tail)[-8:])
        if message:
            text = f"evaluation: {message}"
        self._set_status(_short(text) + f"; the model {self.model_path} is usable", error=True)
        show_error(f"MEDIMP {text}")

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
