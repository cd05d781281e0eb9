"""The command line's failures: one line, exit 1 (data, files) or 2 (command line), nothing overwritten."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from napari_medimp.cli import main
from napari_medimp.core.outputs import check_output_folder, spreadsheet_safe


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_outputs_are_never_overwritten_without_being_asked(tmp_path, tiny_model, capsys):
    kept = tmp_path / "emb.npz"
    kept.write_bytes(b"the user's file")
    assert main(["embed", "sample", "--model", str(tiny_model), "--out", str(kept)]) == 2
    assert "exists; choose another name or pass --overwrite" in _one_line(capsys.readouterr().err)
    assert kept.read_bytes() == b"the user's file"
    pred = tmp_path / "pred.csv"
    pred.write_text("mine")
    assert main(["predict", "sample", "--model", str(tiny_model), "--out", str(pred)]) == 2
    assert "pred.csv exists" in _one_line(capsys.readouterr().err)
    assert pred.read_text() == "mine"
    assert main(["embed", "sample", "--model", str(tiny_model), "--out", str(tmp_path / "emb.txt")]) == 2
    assert "must end with .npz or .csv" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "emb.txt.npz").exists() and not (tmp_path / "emb.txt").exists()


def test_analysis_folder_holds_one_analysis(tmp_path, tiny_model, capsys):
    out = tmp_path / "report"
    assert main(["analyze", "sample", "--model", str(tiny_model), "--gfr", "48", "--saliency", "gradcam",
                 "--out", str(out)]) == 0
    assert (out / "saliency-gradcam-similarity-D30.nii.gz").exists()
    first = (out / "medimp_report.json").read_text()
    capsys.readouterr()
    assert main(["analyze", "sample", "--model", str(tiny_model), "--saliency", "none", "--out", str(out)]) == 2
    assert "already holds an earlier result" in _one_line(capsys.readouterr().err)
    assert (out / "medimp_report.json").read_text() == first
    assert main(["analyze", "sample", "--model", str(tiny_model), "--saliency", "none", "--out", str(out),
                 "--overwrite"]) == 0
    assert not list(out.glob("saliency*")), "the earlier analysis's map is not left beside the new report"
    assert json.loads((out / "medimp_report.json").read_text())["saliency"] is None


def test_other_files_of_a_folder_are_left_alone(tmp_path):
    (tmp_path / "notes.txt").write_text("keep")
    (tmp_path / "results.png").write_bytes(b"old")
    check_output_folder(tmp_path, ("results.png",), overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "keep" and not (tmp_path / "results.png").exists()


def test_formula_cells_are_escaped_in_csv_outputs(tmp_path):
    from napari_medimp.core.outputs import write_csv

    assert spreadsheet_safe("=HYPERLINK(\"x\")") == "'=HYPERLINK(\"x\")"
    assert spreadsheet_safe("-0.5") == "-0.5" and spreadsheet_safe(-0.5) == -0.5 and spreadsheet_safe("P001") == "P001"
    path = write_csv(tmp_path / "t.csv", [{"id": "@SUM(A1)", "p": 0.25}, {"id": "+cmd", "p": -1}])
    rows = list(csv.DictReader(open(path, newline="")))
    assert [r["id"] for r in rows] == ["'@SUM(A1)", "'+cmd"] and rows[1]["p"] == "-1"


@pytest.mark.parametrize("argv, code, words", [
    (["info", "/nonexistent/file.nii.gz"], 1, "no such file or folder"),
    (["analyze", "sample", "--device", "gpu0", "--out", "{tmp}/o"], 2, "--device 'gpu0': choose auto"),
    (["analyze", "sample", "--target", "5y", "--out", "{tmp}/o"], 2, "unknown saliency target '5y'"),
])
def test_failures_are_one_line_with_their_exit_code(tmp_path, capsys, argv, code, words):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == code
    assert words in _one_line(capsys.readouterr().err)


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    import napari_medimp.cli as cli

    def broken(args):
        raise KeyError("architecture")

    monkeypatch.setattr(cli, "_cmd_info", broken)
    parser_default = cli.build_parser

    def parser():
        p = parser_default()
        p._subparsers._group_actions[0].choices["info"].set_defaults(func=broken)
        return p

    monkeypatch.setattr(cli, "build_parser", parser)
    assert main(["info", str(tmp_path)]) == 1
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("medimp: unexpected KeyError: 'architecture' (run again with --debug")
    with pytest.raises(KeyError):
        main(["info", str(tmp_path), "--debug"])


def test_an_output_under_a_file_is_refused_before_any_work(tmp_path, tiny_model, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    assert main(["embed", "sample", "--model", str(tiny_model), "--out", str(tmp_path / "a_file" / "e.npz")]) == 2
    assert "a_file is a file, not a folder" in _one_line(capsys.readouterr().err)


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, tiny_model, capsys, monkeypatch):
    from helpers import kidney_volume

    import napari_medimp.core.atomic as atomic
    from napari_medimp.core.io import save_dce

    exam = save_dce(kidney_volume(), tmp_path / "inputs" / "exam.nii.gz")
    out = tmp_path / "outputs"
    out.mkdir()

    real = atomic.os.replace

    def full(src, dst):
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(atomic.os, "replace", full)
    try:
        assert main(["embed", str(exam), "--model", str(tiny_model), "--out", str(out / "e.npz")]) == 1
    finally:
        monkeypatch.setattr(atomic.os, "replace", real)
    err = capsys.readouterr().err
    assert err.endswith("e.npz: No space left on device\n") and "Traceback" not in err
    assert list(out.iterdir()) == [], "no partial or temporary file is left"


def test_one_unreadable_exam_of_a_cohort_is_skipped_and_listed(tmp_path, tiny_model, capsys):
    import shutil

    from helpers import kidney_volume

    from napari_medimp.core.io import save_dce

    cohort = tmp_path / "cohort"
    for patient in ("P1", "P2"):
        save_dce(kidney_volume(), cohort / patient / "D30" / "dce" / "dce.nii.gz")
    broken = cohort / "P2" / "D30" / "dce" / "dce.nii.gz"
    broken.write_bytes(broken.read_bytes()[:400])  # truncated
    out = tmp_path / "pred.csv"
    assert main(["predict", str(cohort), "--model", str(tiny_model), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "skipped P2/D30:" in err and "1 of 2 exams skipped" in err and "Traceback" not in err
    assert [row["id"] for row in csv.DictReader(open(out, newline=""))] == ["P1/D30"]
    maps = tmp_path / "maps"
    assert main(["saliency", str(cohort), "--model", str(tiny_model), "--method", "gradcam", "--target", "2y",
                 "--out", str(maps)]) == 0
    err = capsys.readouterr().err
    assert "skipped P2/D30:" in err and "1 of 2 exams skipped" in err and "Traceback" not in err
    assert sorted(p.name for p in maps.iterdir()) == ["P1-saliency-gradcam-2y-D30.json",
                                                      "P1-saliency-gradcam-2y-D30.nii.gz"]
    shutil.rmtree(cohort / "P1")  # a single exam left: its failure is the command's, exit 1, nothing written
    assert main(["predict", str(cohort), "--model", str(tiny_model), "--out", str(tmp_path / "none.csv")]) == 1
    assert "dce.nii.gz: gzip stream is corrupt or truncated" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "none.csv").exists()


def test_abbreviated_options_are_refused(capsys):
    """--gf 40 must not be taken for --gfr 40 (nor for any other option it could begin)."""
    from napari_medimp.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["analyze", "sample", "--gf", "40", "--out", "x"])
    assert stop.value.code == 2
    assert "unrecognized arguments: --gf" in capsys.readouterr().err



def test_a_warning_is_one_plain_line_without_pythons_file_and_line(tmp_path, capsys):
    from napari_medimp.cli import main
    from napari_medimp.core.io import save_nifti

    path = save_nifti(tmp_path / "dce.nii.gz", np.ones((3, 4, 5, 6), np.float32), np.eye(4),
                      frame_times=[0.0, 10.0, 20.0])
    (tmp_path / "dce.json").write_text("[" * 100_000 + "]" * 100_000)
    assert main(["info", str(path)]) == 0
    err = capsys.readouterr().err
    assert "medimp: warning: " in err and "dce.json: sidecar ignored, nested too deeply" in err
    assert ".py:" not in err and "DCEReadWarning" not in err
