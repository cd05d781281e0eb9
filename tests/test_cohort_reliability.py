"""A cohort run's reliability: clinical tables matched to the patient folders, bad exams skipped and listed,
options that make empty work refused, one-line messages safe for a terminal."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from helpers import kidney_volume

from napari_medimp.cli import main
from napari_medimp.core.io import save_dce


def _cohort(root, patients=("P0001", "P0002"), table: str | None = None):
    cohort = root / "cohort"
    for i, patient in enumerate(patients):
        save_dce(kidney_volume(seed=i, n_frames=4), cohort / patient / "D30" / "dce" / "dce.nii.gz")
    if table is not None:
        (cohort / "clinical.csv").write_text(table)
    return cohort


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("medimp: ") and "warning" not in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("table, words", [
    ("patient_id,donor_age,gfr_D30\np0001,50,40\np0002,60,55\n", ["none of its patient ids", "p0001", "P0001"]),
    ("patient_id,donor_age,gfr_D30\n1,50,40\n2,60,55\n", ["none of its patient ids", "1, 2", "P0001, P0002"]),
    ("patient_id;donor_age;gfr_D30\nP0001,50,40\nP0002,60,55\n", ["none of its patient ids", "P0001"]),
    ("patient_id,donor_age,gfr_D30\n", ["no patient row"]),
])
def test_a_clinical_table_that_matches_no_patient_is_refused(tmp_path, tiny_model, capsys, table, words):
    from napari_medimp.core.training_run import cohort_items

    cohort = _cohort(tmp_path, table=table)
    out = tmp_path / "pred.csv"
    assert main(["predict", str(cohort), "--model", str(tiny_model), "--out", str(out)]) != 0
    line = _one_line(capsys.readouterr().err)
    assert "clinical.csv" in line and all(w in line for w in words), line
    assert not out.exists()
    with pytest.raises(ValueError, match="clinical.csv"):  # training reads the table the same way
        cohort_items(cohort)


def test_exams_without_a_clinical_row_are_named_in_one_warning(tmp_path, tiny_model, capsys):
    cohort = _cohort(tmp_path, patients=("P0001", "P0002", "P0003"),
                     table="patient_id,donor_age,gfr_D30\nP0001,50,40\n")
    out = tmp_path / "pred.csv"
    assert main(["predict", str(cohort), "--model", str(tiny_model), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "has no row" in line]
    assert len(warning) == 1 and "2 of 3 exams" in warning[0] and "P0002/D30, P0003/D30" in warning[0], err
    rows = {r["id"]: r for r in csv.DictReader(open(out, newline=""))}
    assert rows["P0001/D30"]["prompt"] and not rows["P0002/D30"]["prompt"]


def _spoil(cohort):
    """P0002: an RGB image; P0003: an image in which nothing enhances; P0004: a sidecar nested too deeply."""
    rgb = cohort / "P0002" / "D30" / "dce" / "dce.nii.gz"
    rgb.unlink()
    (rgb.parent / "dce.json").unlink(missing_ok=True)
    kind = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 10, 4), dtype=kind), np.eye(4)), str(rgb))
    flat = cohort / "P0003" / "D30" / "dce" / "dce.nii.gz"
    flat.unlink()
    (flat.parent / "dce.json").unlink(missing_ok=True)
    nib.save(nib.Nifti1Image(np.ones((20, 20, 10, 4), np.float32), np.diag([2.0, 2.0, 3.0, 1.0])), str(flat))
    (cohort / "P0004" / "D30" / "dce" / "dce.json").write_text("[" * 100_000 + "]" * 100_000)


def test_bad_exams_of_a_cohort_are_skipped_and_listed(tmp_path, tiny_model, capsys):
    cohort = _cohort(tmp_path, patients=("P0001", "P0002", "P0003", "P0004"))
    _spoil(cohort)
    for command, out in (("predict", tmp_path / "pred.csv"), ("embed", tmp_path / "emb.csv")):
        assert main([command, str(cohort), "--model", str(tiny_model), "--out", str(out)]) == 0, command
        err = capsys.readouterr().err
        assert "skipped P0002/D30:" in err and "RGB" in err and "skipped P0003/D30:" in err, err
        assert "2 of 4 exams skipped" in err and "Traceback" not in err
        assert [r["id"] for r in csv.DictReader(open(out, newline=""))] == ["P0001/D30", "P0004/D30"]


def test_evaluation_embeddings_skip_bad_exams(tmp_path, tiny_model, capsys):
    from napari_medimp.core.inference import Predictor
    from src_train.cli import exam_embeddings

    cohort = _cohort(tmp_path, patients=("P0001", "P0002", "P0003", "P0004"))
    _spoil(cohort)
    embeddings = exam_embeddings({"MEDIMP": Predictor.from_file(tiny_model, device="cpu")}, cohort,
                                 ["P0001", "P0002", "P0003", "P0004"])
    assert {p: list(e) for p, e in embeddings["MEDIMP"].items()} == {"P0001": ["D30"], "P0002": [], "P0003": [],
                                                                     "P0004": ["D30"]}
    err = capsys.readouterr().err
    assert "skipped P0002/D30" in err and "2 of 4 exams skipped" in err


def test_training_data_skips_an_exam_with_a_deeply_nested_sidecar_or_rgb_image(tmp_path):
    from napari_medimp.core.preprocess import PreprocessConfig
    from napari_medimp.core.training_run import cohort_items
    from src_train.data import ContrastiveDataset

    table = "patient_id,donor_age,gfr_D30\n" + "".join(f"P000{i},50,{40 + i}\n" for i in range(1, 5))
    cohort = _cohort(tmp_path, patients=("P0001", "P0002", "P0003", "P0004"), table=table)
    _spoil(cohort)
    items, skipped = cohort_items(cohort)
    dataset = ContrastiveDataset(items, PreprocessConfig(target_spacing=(6.0, 4.0, 4.0), input_size=(8, 16, 16)))
    assert {i.patient for i in dataset.items} == {"P0001", "P0004"}
    assert any(s.startswith("P0002/D30") for s in dataset.skipped)


def test_saliency_of_a_cohort_uses_each_patients_clinical_values(tmp_path, tiny_model, capsys):
    cohort = _cohort(tmp_path, table="patient_id,donor_age,gfr_D30\nP0001,50,40\nP0002,70,20\n")
    maps = tmp_path / "maps"
    assert main(["saliency", str(cohort), "--model", str(tiny_model), "--method", "gradcam", "--target",
                 "similarity", "--out", str(maps)]) == 0, capsys.readouterr().err
    prompts = {p: json.loads((maps / f"{p}-saliency-gradcam-similarity-D30.json").read_text())["prompt"]
               for p in ("P0001", "P0002")}
    assert all(prompts.values()) and prompts["P0001"] != prompts["P0002"]


def test_an_empty_cohort_is_refused_naming_the_folder(tmp_path, tiny_model, capsys):
    cohort = tmp_path / "cohort"
    (cohort / "P0001" / "D30").mkdir(parents=True)
    (cohort / "clinical.csv").write_text("patient_id,gfr_D30\nP0001,40\n")
    out = tmp_path / "pred.csv"
    assert main(["predict", str(cohort), "--model", str(tiny_model), "--out", str(out)]) != 0
    line = _one_line(capsys.readouterr().err)
    assert str(cohort) in line and "no exam" in line
    assert not out.exists()


def test_resume_without_a_checkpoint_is_refused(tmp_path):
    from napari_medimp.core.training_run import PRESETS
    from src_train.train import TrainConfig, train

    for run in (tmp_path / "missing", tmp_path):
        config = TrainConfig.from_dict({**PRESETS["cpu-small"], "cohort": str(tmp_path / "c"), "out": str(run)})
        with pytest.raises(ValueError, match="nothing to resume") as refused:
            train(config, resume=True)
        assert str(run) in str(refused.value)


def test_messages_escape_terminal_controls_and_name_the_output_folder():
    from napari_medimp.core.failures import failure_message

    code, line = failure_message(ValueError("/data/evil\x1b[2J\nname.nii: not a DCE series"))
    assert "\x1b" not in line and "\n" not in line and "\\x1b[2J\\nname.nii" in line
    code, line = failure_message(PermissionError(13, "Permission denied", "/results/.pred.csv.k3j9.part"))
    assert code == 1 and line.startswith("/results: ") and ".part" not in line


def test_a_bare_star_patient_query_is_refused():
    from napari_medimp.core.pacs import PacsError, _check_query

    for query in ("*", " * ", "**", "*?"):
        with pytest.raises(PacsError, match="every patient"):
            _check_query(query, "", "MR")
    _check_query("P0*", "", "MR")
    _check_query("*", "20240101", "MR")
