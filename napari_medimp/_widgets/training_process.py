"""The child process of the training dialog: started for one phase, its output as lines, stopped cleanly.

:class:`ChildProcess` runs one command at a time with ``QProcess`` (the viewer stays responsive, and
everything the child holds is freed when it ends). Its stdout and stderr arrive as complete text lines
(:class:`~napari_medimp._widgets.run_progress.LineSplitter`), each as a signal; the end is reported once,
FailedToStart included. Cancel sends SIGTERM and a second cancel (or a timer) kills; :meth:`shutdown`
stops the process and waits for it, and every running child is shut down when the application quits, so
no process outlives the window. What the output and the exit code mean is the dialog's business.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path

from qtpy.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, Signal
from qtpy.QtWidgets import QApplication

from .run_progress import LineSplitter

#: children whose process is running (stopped cleanly when the application quits)
_RUNNING: weakref.WeakSet[ChildProcess] = weakref.WeakSet()
_QUIT_HOOKED = False


def _shutdown_all() -> None:
    for child in list(_RUNNING):
        child.shutdown()


def _hook_application_quit() -> None:
    global _QUIT_HOOKED
    app = QApplication.instance()
    if app is not None and not _QUIT_HOOKED:
        app.aboutToQuit.connect(_shutdown_all)
        _QUIT_HOOKED = True


class ChildProcess(QObject):
    """One child process at a time, for a named phase: start, output lines, cancel, shutdown, end."""

    #: a complete line of the child's stdout (a last line without newline comes when the process ends)
    stdout_line = Signal(str)
    #: a complete line of the child's stderr
    stderr_line = Signal(str)
    #: a line about the process itself (not its output), for a log
    note = Signal(str)
    #: the process has ended: phase, exit code, crashed (or killed, or never started), cancelled (a stop
    #: was asked), killed, message (why it could not start, or why it was killed; else empty)
    ended = Signal(str, int, bool, bool, bool, str)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        #: seconds :meth:`shutdown` waits when given no timeout (as when the application quits)
        self.shutdown_timeout_s = 60.0
        self.process: QProcess | None = None
        self.phase = "idle"
        self._niceness = 0
        self._stopping = False
        self._killed = False
        self._kill_reason = ""
        self._kill_after_s = 0.0
        self._stdout = LineSplitter()
        self._stderr = LineSplitter()
        self._kill_timer = QTimer(self)
        self._kill_timer.setSingleShot(True)
        self._kill_timer.timeout.connect(self._on_kill_timeout)

    def is_running(self) -> bool:
        return self.process is not None and self.process.state() != QProcess.ProcessState.NotRunning

    @property
    def stopping(self) -> bool:
        """A stop was asked of the running process."""
        return self._stopping

    def start(self, phase: str, program: str, args: Sequence[str] = (), *, env: Mapping[str, str] | None = None,
              working_dir: str | os.PathLike | None = None, niceness: int = 0) -> None:
        """Start ``program args`` for ``phase``; ``env`` replaces the environment (None: inherited).

        ``niceness`` lowers the child's CPU priority (Unix). A failure to start is reported by :attr:`ended`.
        """
        if self.process is not None:
            raise RuntimeError(f"the {self.phase} process is still running")
        process = QProcess(self)
        process.setProgram(program)
        process.setArguments([str(arg) for arg in args])
        if env is not None:
            environment = QProcessEnvironment()
            for key, value in env.items():
                environment.insert(key, value)
            process.setProcessEnvironment(environment)
        if working_dir is not None:
            process.setWorkingDirectory(str(Path(working_dir)))
        process.readyReadStandardOutput.connect(functools.partial(self._on_stdout, process))
        process.readyReadStandardError.connect(functools.partial(self._on_stderr, process))
        process.finished.connect(functools.partial(self._on_finished, process))
        process.errorOccurred.connect(functools.partial(self._on_error, process))
        process.started.connect(functools.partial(self._on_started, process))
        self.process, self.phase, self._niceness = process, phase, niceness
        self._stopping = self._killed = False
        self._kill_reason = ""
        self._stdout, self._stderr = LineSplitter(), LineSplitter()
        _hook_application_quit()
        _RUNNING.add(self)
        process.start()

    def cancel(self, kill_after_s: float | None = None, force_reason: str = "on a second cancel") -> bool:
        """Ask the process to stop (SIGTERM), killing it if it still runs ``kill_after_s`` seconds later.

        A second call kills it at once (``force_reason`` says why). True when this call asked for the
        stop; False when it killed the process or none was running."""
        if not self.is_running():
            return False
        if self._stopping:
            self._kill(force_reason)
            return False
        self._stopping = True
        self.process.terminate()
        if kill_after_s is not None:
            self._kill_after_s = kill_after_s
            self._kill_timer.start(int(kill_after_s * 1000))
        return True

    def _on_kill_timeout(self) -> None:
        self._kill(f"after not stopping within {self._kill_after_s:g} s")

    def _kill(self, reason: str) -> None:
        if self.is_running():
            self._killed = True
            self._kill_reason = reason
            self.note.emit(f"killing the {self.phase} process ({reason})")
            self.process.kill()

    def shutdown(self, timeout_s: float | None = None) -> bool:
        """Stop a running process and wait for it (killed when it does not stop within ``timeout_s``,
        by default :attr:`shutdown_timeout_s`). True when no process runs any more.

        Used when the viewer, the dock or the application closes: no process outlives the window."""
        process = self.process
        if process is None or process.state() == QProcess.ProcessState.NotRunning:
            return True
        timeout_ms = int(1000 * (self.shutdown_timeout_s if timeout_s is None else timeout_s))
        self._stopping = True
        if process.state() == QProcess.ProcessState.Starting:
            process.waitForStarted(5000)
        process.terminate()
        if not process.waitForFinished(timeout_ms):
            self._killed = True
            self._kill_reason = f"as the window closed, after not stopping within {timeout_ms / 1000:g} s"
            process.kill()
            process.waitForFinished(5000)
        return process.state() == QProcess.ProcessState.NotRunning

    # the process's signals ------------------------------------------------------------------------
    def _on_started(self, process: QProcess, *_) -> None:
        # threads the child creates later (torch's pools, the data prefetcher) inherit the priority
        if self._niceness and hasattr(os, "setpriority"):
            try:
                pid = int(process.processId())
                os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, pid) + self._niceness)
            except OSError:
                pass

    def _on_stdout(self, process: QProcess, *_) -> None:
        if process is self.process:
            self._emit(self.stdout_line, self._stdout.feed(bytes(process.readAllStandardOutput())))

    def _on_stderr(self, process: QProcess, *_) -> None:
        if process is self.process:
            self._emit(self.stderr_line, self._stderr.feed(bytes(process.readAllStandardError())))

    @staticmethod
    def _emit(signal, lines: list[str]) -> None:
        for line in lines:
            signal.emit(line)

    def _on_error(self, process: QProcess, error) -> None:
        if process is not self.process or error != QProcess.ProcessError.FailedToStart:
            return  # crashes and kills also end with finished()
        self._finish(process, -1, crashed=True, message=f"could not start {process.program()}: "
                                                        f"{process.errorString()}")

    def _on_finished(self, process: QProcess, code: int, status=None) -> None:
        if process is self.process:
            self._finish(process, code, crashed=status == QProcess.ExitStatus.CrashExit)

    def _finish(self, process: QProcess, code: int, crashed: bool, message: str = "") -> None:
        self._emit(self.stdout_line, self._stdout.feed(bytes(process.readAllStandardOutput())) + self._stdout.finish())
        self._emit(self.stderr_line, self._stderr.feed(bytes(process.readAllStandardError())) + self._stderr.finish())
        self._kill_timer.stop()
        phase, cancelled, killed = self.phase, self._stopping, self._killed
        if killed and not message:
            message = self._kill_reason
        # idle before the end is reported: a slot of ended() may start the next phase
        self.process, self.phase = None, "idle"
        self._stopping = self._killed = False
        _RUNNING.discard(self)
        process.deleteLater()
        self.ended.emit(phase, code, crashed, cancelled, killed, message)


__all__ = ["ChildProcess"]
