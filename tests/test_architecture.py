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
    from napari_medimp._widgets import run_progress
    from napari_medimp.core import training_run

    assert train.TrainConfig is training_run.TrainConfig and train.PRESETS is training_run.PRESETS
    assert run_progress.parse_event is training_run.parse_event
    assert run_progress.EXIT_STOPPED == training_run.EXIT_STOPPED
    assert "return 3" not in Path(src_train.cli.__file__).read_text()


# --------------------------------------------------------------------------------------------------
# import graph of the package's own modules (module-level and deferred imports alike)
# --------------------------------------------------------------------------------------------------
REPO = CORE.parents[1]
PACKAGES = ("napari_medimp", "src_train")


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package) of every module of the two packages."""
    out = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (relative imports resolved; ``from a import b`` counts
    ``a.b`` when that is a module). A module's own parent packages are left out."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(name, is_package, node)
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (strongly connected
    components of more than one module), by an iterative depth-first search."""
    order, low, on_stack, stack, found = {}, {}, set(), [], []
    for root in graph:
        if root in order:
            continue
        work = [(root, iter(sorted(graph[root])))]
        order[root] = low[root] = len(order)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            step = next(edges, None)
            if step is not None:
                if step not in order:
                    order[step] = low[step] = len(order)
                    stack.append(step)
                    on_stack.add(step)
                    work.append((step, iter(sorted(graph[step]))))
                elif step in on_stack:
                    low[node] = min(low[node], order[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == order[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return found


def test_the_cycle_finder_finds_a_loop_through_three_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_the_package_imports_itself_through_others():
    assert cycles(import_graph()) == []


def test_the_trainer_never_imports_the_widgets():
    graph = import_graph()
    offenders = {name: sorted(t for t in targets if t.startswith("napari_medimp._widgets"))
                 for name, targets in graph.items() if name.startswith("src_train")}
    assert {k: v for k, v in offenders.items() if v} == {}
