"""The training dialog's child process on its own: output lines, exit code, cancel, kill, failed start, quit.

Run under a display: ``xvfb-run -a -s "-screen 0 1600x1000x24" python -m pytest tests/test_training_process.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gui

#: generous: the tests wait on signals, this only ends a test that would otherwise hang
TIMEOUT_MS = 60_000

CHILD = r"""
import os, signal, sys, time
mode = sys.argv[1]

def stop(*_):
    print("stopping", flush=True)
    sys.exit(3)

signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "ignore" else stop)
if mode == "exit":
    print("one")
    print(os.environ["CHILD_VALUE"], os.getcwd(), flush=True)
    print("a warning", file=sys.stderr, flush=True)
    sys.stdout.write("last, without newline")
    sys.stdout.flush()
    sys.exit(5)
print("ready", flush=True)
while True:
    time.sleep(0.02)
"""


@pytest.fixture
def child(qtbot):
    from napari_medimp._widgets.training_process import ChildProcess

    child = ChildProcess()
    events = []
    child.stdout_line.connect(lambda line: events.append(("out", line)))
    child.stderr_line.connect(lambda line: events.append(("err", line)))
    child.note.connect(lambda line: events.append(("note", line)))
    child.ended.connect(lambda *args: events.append(("end", list(args))))
    child.events = events
    yield child
    child.shutdown(timeout_s=10)


def _start_waiting(qtbot, child, mode: str, phase: str = "train") -> None:
    """Start the child in ``mode`` and wait until it is ready for a stop."""
    with qtbot.waitSignal(child.stdout_line, timeout=TIMEOUT_MS, check_params_cb=lambda line: line == "ready"):
        child.start(phase, sys.executable, ["-c", CHILD, mode])
    assert child.is_running() and child.phase == phase and not child.stopping


def test_output_comes_as_lines_and_the_end_once(child, qtbot, tmp_path):
    env = dict(os.environ, CHILD_VALUE="42")
    with qtbot.waitSignal(child.ended, timeout=TIMEOUT_MS) as ended:
        child.start("evaluate", sys.executable, ["-c", CHILD, "exit"], env=env, working_dir=tmp_path)
    assert ended.args == ["evaluate", 5, False, False, False, ""]
    out = [line for kind, line in child.events if kind == "out"]
    value, cwd = out[1].split(" ", 1)
    assert out[0] == "one" and value == "42" and Path(cwd).resolve() == tmp_path.resolve()
    assert out[2:] == ["last, without newline"]  # the partial last line, when the process ended
    assert ("err", "a warning") in child.events
    assert child.events[-2] == ("out", "last, without newline") and [k for k, _ in child.events].count("end") == 1
    assert child.process is None and child.phase == "idle" and not child.is_running()


def test_cancel_stops_and_a_second_cancel_kills(child, qtbot):
    _start_waiting(qtbot, child, "stop")
    with pytest.raises(RuntimeError, match="still running"):
        child.start("train", sys.executable, ["-c", CHILD, "stop"])
    with qtbot.waitSignal(child.ended, timeout=TIMEOUT_MS) as ended:
        assert child.cancel() and child.stopping
    assert ended.args == ["train", 3, False, True, False, ""]  # stopped on its own: code 3
    assert ("out", "stopping") in child.events and not child.cancel()

    child.events.clear()
    _start_waiting(qtbot, child, "ignore", phase="evaluate")  # ignores SIGTERM
    with qtbot.waitSignal(child.ended, timeout=TIMEOUT_MS) as ended:
        assert child.cancel()
        assert not child.cancel(force_reason="on Force stop")
    phase, _, crashed, cancelled, killed, message = ended.args
    assert (phase, crashed, cancelled, killed, message) == ("evaluate", True, True, True, "on Force stop")
    assert ("note", "killing the evaluate process (on Force stop)") in child.events


def test_a_process_that_ignores_the_stop_is_killed_by_the_timer(child, qtbot):
    _start_waiting(qtbot, child, "ignore")
    with qtbot.waitSignal(child.ended, timeout=TIMEOUT_MS) as ended:
        assert child.cancel(kill_after_s=0.2)
    assert ended.args[2:] == [True, True, True, "after not stopping within 0.2 s"]


def test_a_program_that_cannot_start_is_reported_as_an_end(child, qtbot, tmp_path):
    missing = str(tmp_path / "no-such-program")
    with qtbot.waitSignal(child.ended, timeout=TIMEOUT_MS) as ended:
        child.start("train", missing)
    phase, code, crashed, cancelled, killed, message = ended.args
    assert (phase, code, crashed, cancelled, killed) == ("train", -1, True, False, False)
    assert message.startswith(f"could not start {missing}: ")
    assert not child.is_running() and child.process is None


def test_quitting_the_application_shuts_every_running_child_down(child, qtbot):
    from napari_medimp._widgets import training_process

    _start_waiting(qtbot, child, "stop")
    assert child in training_process._RUNNING and training_process._QUIT_HOOKED
    training_process._shutdown_all()  # what aboutToQuit runs; it waits for the process
    assert child.events[-1] == ("end", ["train", 3, False, True, False, ""])
    assert not child.is_running() and child not in training_process._RUNNING
    assert child.shutdown()  # nothing left to stop
