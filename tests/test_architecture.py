"""The dependency rules of the code base, checked on the source."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import napari_medimp

CORE = Path(napari_medimp.__file__).parent / "core"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_imports_neither_the_trainer_nor_qt_nor_napari():
    offenders = {}
    for path in sorted(CORE.rglob("*.py")):
        bad = {n for n in _imports(path) if n.split(".")[0] in ("src_train", "napari", "qtpy", "PyQt6", "PyQt5")}
        if bad:
            offenders[str(path.relative_to(CORE))] = sorted(bad)
    assert offenders == {}


def test_the_training_protocol_needs_no_torch():
    code = ("import sys; import napari_medimp.core.training_run; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_trainer_and_dialog_use_one_protocol():
    import src_train.cli
    import src_train.train as train
    from napari_medimp._widgets import training_form
    from napari_medimp.core import training_run

    assert train.TrainConfig is training_run.TrainConfig and train.PRESETS is training_run.PRESETS
    assert training_form.parse_event is training_run.parse_event
    assert training_form.EXIT_STOPPED == training_run.EXIT_STOPPED
    assert "return 3" not in Path(src_train.cli.__file__).read_text()
