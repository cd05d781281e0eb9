"""The command line on the hostile corpus (``tests/hostile.py``): no traceback, the expected outcome, one line
per refusal, nothing written by a refused command, every file written by an accepted one.

Run with ``-s`` to see the table of counts per family.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hostile import clinical_cases, image_cases, model_cases

from napari_medimp.cli import main
from napari_medimp.core.memory import BUDGET_ENV

ANALYSIS_FILES = ("medimp_report.json", "medimp_report.csv", "results.png")


def _run(argv, capsys) -> tuple[int | str, str]:
    capsys.readouterr()  # only what the command prints (building the corpus may warn)
    try:
        code = main([str(a) for a in argv])
    except BaseException as exc:  # noqa: BLE001 - an escaped exception is what is counted here
        return f"escaped {type(exc).__name__}", capsys.readouterr().err
    return code, capsys.readouterr().err


def _judge(case, code, err, written: list[str], complete: bool, notes: str = "") -> list[str]:
    """What went wrong with one case (empty: as expected)."""
    import re

    problems = []
    if not isinstance(code, int) or "Traceback" in err:
        return [f"traceback ({code})"]
    if "unexpected" in err or "report it" in err:  # an input problem is never called a bug
        return [f"an input problem reported as unexpected: {err.strip()[:200]}"]
    if re.search(r"\.py:\d+: \w*Warning", err):  # warnings are one plain line, not Python's
        problems.append(f"a raw Python warning: {err.strip()[:200]}")
    if case.expect == "refuse":
        if code not in (1, 2):
            problems.append(f"silent: exit {code} where a refusal was expected")
        elif err.count("\n") != 1:
            problems.append(f"{err.count(chr(10))} lines of message")
        elif case.words and not re.search(case.words, err):
            problems.append(f"message does not say /{case.words}/: {err.strip()}")
        if written:
            problems.append(f"refused but wrote {written}")
    else:
        if code != 0:
            problems.append(f"exit {code}: {err.strip()[:200]}")
        elif not complete:
            problems.append(f"outputs incomplete: {written}")
        elif case.expect == "note" and not re.search(case.words, notes + err):
            problems.append(f"no notice saying /{case.words}/")
    return problems


def _table(family_rows: dict[str, Counter]) -> str:
    lines = [f"{'family':10} {'cases':>5} {'refused':>7} {'noted':>5} {'read':>4} {'tracebacks':>10} {'wrong':>5}"]
    for family, c in family_rows.items():
        lines.append(f"{family:10} {c['cases']:5d} {c['refuse']:7d} {c['note']:5d} {c['read']:4d} "
                     f"{c['traceback']:10d} {c['wrong']:5d}")
    return "\n".join(lines)


def _tally(counts, case, problems) -> None:
    row = counts.setdefault(case.family, Counter())
    row["cases"] += 1
    row[case.expect] += 1
    if problems:
        row["traceback" if problems[0].startswith("traceback") else "wrong"] += 1


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile")


def test_analyze_on_every_hostile_image(corpus, tiny_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "2G")  # the same refusals on any machine
    failures, counts = [], {}
    for i, case in enumerate(image_cases(corpus)):
        out = tmp_path / f"out{i}"
        code, err = _run(["analyze", case.path, "--model", tiny_model, "--saliency", "none", "--out", out,
                          *case.args], capsys)
        written = sorted(p.name for p in out.iterdir()) if out.exists() else []
        complete = all((out / name).is_file() and (out / name).stat().st_size > 0 for name in ANALYSIS_FILES)
        notes = ""
        if complete:
            notes = " ".join(json.loads((out / "medimp_report.json").read_text())["inputs"]["reading_notes"])
        problems = _judge(case, code, err, written, complete, notes)
        _tally(counts, case, problems)
        failures += [f"{case.family} / {case.name}: {p}" for p in problems]
    print("\n" + _table(counts))
    assert not failures, "\n".join(failures)


def test_every_damaged_model_file_is_refused_in_one_line(corpus, tiny_model, tmp_path, capsys):
    failures, counts = [], {}
    for i, case in enumerate(model_cases(corpus, tiny_model)):
        out = tmp_path / f"emb{i}.npz"
        code, err = _run(["embed", "sample", "--model", case.path, "--out", out], capsys)
        problems = _judge(case, code, err, [out.name] if out.exists() else [], out.exists())
        _tally(counts, case, problems)
        failures += [f"{case.family} / {case.name}: {p}" for p in problems]
    print("\n" + _table(counts))
    assert not failures, "\n".join(failures)


def test_predict_on_every_damaged_clinical_table(corpus, tiny_model, tmp_path, capsys):
    failures, counts = [], {}
    for i, case in enumerate(clinical_cases(corpus)):
        out = tmp_path / f"pred{i}.csv"
        code, err = _run(["predict", case.path, "--model", tiny_model, "--out", out], capsys)
        written = [p.name for p in tmp_path.glob(f"pred{i}*")]
        problems = _judge(case, code, err, written, out.exists())
        _tally(counts, case, problems)
        failures += [f"{case.family} / {case.name}: {p}" for p in problems]
    print("\n" + _table(counts))
    assert not failures, "\n".join(failures)
