"""How the command lines report a failure: one line naming the file or option and the problem, and an exit
code (1: the data or the files, 2: the command line); ``--debug`` shows the traceback instead."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings

#: exit codes: a problem with the data or the files (1), with the command line (2)
EXIT_DATA, EXIT_USAGE = 1, 2


#: the project's own errors about the data, files, model files and archives: (module, class)
_INPUT_ERRORS = (("napari_medimp.core.volume", "DCEReadError"), ("napari_medimp.core.checkpoint", "ModelFileError"),
                 ("napari_medimp.core.clinical", "ClinicalValueError"), ("napari_medimp.core.pacs", "PacsError"),
                 ("napari_medimp.core.memory", "MemoryBudgetError"))


def _is_input_error(exc: BaseException) -> bool:
    # only modules already imported can have raised it: nothing heavy (torch) is imported to tell
    for module, name in _INPUT_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(exc, cls):
            return True
    return False


def one_line(text: str) -> str:
    """``text`` safe for one line of a terminal: control characters (newlines, escape sequences from a
    file name or a PACS answer) written as escapes (``\\n``, ``\\x1b``), never sent to the terminal."""
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)


def failure_message(exc: BaseException, value_error: int = EXIT_USAGE) -> tuple[int, str]:
    """(exit code, one line) for a failure: 1 for the data and files, 2 for the command line.

    ``value_error``: the code of a plain ValueError: option values for the viewer's commands (an ROI
    outside the volume, an unknown target), the cohort's contents for training and evaluation."""
    code, message = _failure_message(exc, value_error)
    return code, one_line(message)


def _where(filename) -> str:
    """The file an OSError names; for the temporary ``.NAME.XXXX.part`` an output is written to first, the
    folder it is written in (the user named the folder, never the temporary file)."""
    import os

    name = os.path.basename(str(filename))
    if name.startswith(".") and name.endswith(".part"):
        return f"{os.path.dirname(str(filename)) or '.'}: cannot write in this folder: "
    return f"{filename}: "


def _failure_message(exc: BaseException, value_error: int) -> tuple[int, str]:
    if _is_input_error(exc):
        return EXIT_DATA, str(exc)
    if isinstance(exc, ValueError):
        return value_error, str(exc)
    if isinstance(exc, OSError):
        where = _where(exc.filename) if exc.filename else ""
        return EXIT_DATA, f"{where}{exc.strerror or exc}"
    if isinstance(exc, MemoryError):
        return EXIT_DATA, "not enough memory for this input (the image or a size it declares is too large)"
    if isinstance(exc, RecursionError):
        return EXIT_DATA, "an input file is nested too deeply to be read"
    return EXIT_DATA, (f"unexpected {type(exc).__name__}: {exc} (run again with --debug for the details, "
                       "and report it)")


def run_reporting_failures(function, args, prog: str, debug: bool, value_error: int = EXIT_USAGE) -> int:
    """Run a command; a failure becomes one line on stderr and an exit code (a traceback with --debug), and
    a warning one plain line (``prog: warning: message``, without Python's file and line)."""
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = lambda message, category, *_, **__: print(
                f"{prog}: warning: {one_line(' '.join(str(message).split()))}", file=sys.stderr)
        return _run(function, args, prog, debug, value_error)


def _run(function, args, prog: str, debug: bool, value_error: int) -> int:
    try:
        return function(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        code, message = failure_message(exc, value_error)
        print(f"{prog}: {message}", file=sys.stderr)
        return code


@contextlib.contextmanager
def quiet_logger(name: str, level: int = logging.ERROR):
    """Raise a library's logger to ``level`` for a while: what it would log is checked and said by the
    caller in the product's words (or must stay out of the user's logs, such as network addresses)."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)
