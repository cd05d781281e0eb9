"""The README's "Layout of the code" names every module of the product with its one job, and no module that
is gone; no module of the product is over 800 lines."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("napari_medimp", "src_train")
MAX_LINES = 800


def _modules() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "__pycache__" in path.parts or path.name in ("__init__.py", "__main__.py"):
                continue
            found.append(path.relative_to(ROOT).as_posix())
    return found


def _layout_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Layout of the code\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert match, "README.md has no '## Layout of the code' section"
    return match.group(1)


def test_every_module_is_named_with_its_job():
    section = _layout_section()
    named = set(re.findall(r"`((?:napari_medimp|src_train)/[\w/]+\.py)`", section))
    missing = [m for m in _modules() if m not in named]
    assert not missing, f"modules not in README's 'Layout of the code': {missing}"
    gone = sorted(named - set(_modules()))
    assert not gone, f"README's 'Layout of the code' names modules that do not exist: {gone}"
    for line in section.splitlines():
        if re.search(r"`(?:napari_medimp|src_train)/[\w/]+\.py`", line):
            job = re.sub(r"`[^`]*`", "", line).strip(" |-")
            assert len(job) > 10, f"no job given for: {line}"


def test_no_module_is_over_800_lines():
    long = {m: n for m in _modules() if (n := len((ROOT / m).read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
