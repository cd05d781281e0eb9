"""The ``medimp`` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from nibabel.testing import data_path

from napari_medimp.cli import main
from napari_medimp.core.terms import SALIENCY_METHODS


def test_info_describes_a_file(capsys):
    assert main(["info", os.path.join(data_path, "example4d.nii.gz")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape_tzyx"] == [2, 24, 96, 128]
    assert info["format"] == "nifti"


def test_info_on_a_broken_file_names_it_and_fails(tmp_path, capsys):
    bad = tmp_path / "bad.nii"
    bad.write_text("not an image")
    assert main(["info", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.nii" in err and "Traceback" not in err


def test_info_chooses_a_dicom_series_with_series(tmp_path, capsys):
    from test_io_dicom import write_series

    folder = tmp_path / "two"
    write_series(folder, seed=10, description="dce", SeriesNumber=7)
    uid = write_series(folder, n_phases=1, n_slices=2, phase_tags=lambda t: {}, seed=11, SeriesNumber=3)
    assert main(["info", str(folder)]) == 1
    assert "--series option" in capsys.readouterr().err
    assert main(["info", str(folder), "--series", "7"]) == 0
    assert json.loads(capsys.readouterr().out)["shape_tzyx"] == [3, 5, 4, 6]
    assert main(["info", str(folder), "--series", uid]) == 0
    assert json.loads(capsys.readouterr().out)["shape_tzyx"][:2] == [1, 2]
    for command in ("embed", "predict", "saliency", "analyze"):
        assert "--series" in {a for action in _subparser(command)._actions for a in action.option_strings}


def _subparser(name: str):
    from napari_medimp.cli import build_parser

    parser = build_parser()
    return next(a for a in parser._actions if hasattr(a, "choices") and a.choices and name in a.choices).choices[name]


def test_synth_writes_a_cohort(tmp_path):
    out = tmp_path / "cohort"
    assert main(["synth", "--patients", "2", "--seed", "5", "--out", str(out)]) == 0
    assert (out / "clinical.csv").exists() and (out / "ground_truth.json").exists()
    images = sorted(out.rglob("*_dce.nii.gz"))
    assert images, "no exam images written"
    info_code = main(["info", str(images[0].parent.parent)])
    assert info_code == 0


@pytest.mark.gui
def test_headless_demo_writes_screenshot_and_report(tmp_path):
    env = dict(os.environ)
    result = subprocess.run(
        [sys.executable, "-m", "napari_medimp.cli", "demo", "--headless", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    from PIL import Image

    shot = np.asarray(Image.open(tmp_path / "demo_screenshot.png"))
    assert shot.shape[0] > 300 and shot[..., :3].std() > 10
    report = json.loads((tmp_path / "demo_report.json").read_text())
    assert report["regions"]["cortex"]["time_to_half_peak_s"] < report["regions"]["medulla"]["time_to_half_peak_s"]
    assert "synthetic" in (tmp_path / "demo_report.md").read_text()
    analysis = json.loads((tmp_path / "medimp_report.json").read_text())  # the docked widget's analysis
    assert set(analysis["results"]["prognosis_dysfunction_probability"]) == {"2y", "3y", "4y"}
    method = analysis["saliency"]["method"]
    from napari_medimp.core.card import default_method
    from napari_medimp.core.checkpoint import read_card
    from napari_medimp.core.sample import default_model_path

    # the panel's default method: the one the demo model's card measured most faithful
    assert method == default_method(read_card(default_model_path())) in SALIENCY_METHODS
    assert (tmp_path / f"saliency-{method}-similarity-D30.nii.gz").exists()
    assert analysis["inputs"]["clinical"]["used"]["gfr_ml_min_1_73m2"] is not None


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    from napari_medimp.core import synth

    out = tmp_path_factory.mktemp("cohort")
    synth.generate_cohort(out, n_patients=2, seed=3, grid=(16, 40, 48), spacing=(6.0, 4.0, 4.0))
    return out




def test_embed_a_cohort_to_npz_and_csv(small_cohort, tiny_model, tmp_path):
    out = tmp_path / "emb.npz"
    assert main(["embed", str(small_cohort), "--model", str(tiny_model), "--out", str(out)]) == 0
    saved = np.load(out)
    ids = list(saved["ids"])
    assert len(ids) == len(list(small_cohort.rglob("*_dce.nii.gz")))
    assert all("/" in i for i in ids)
    np.testing.assert_allclose(np.linalg.norm(saved["embeddings"], axis=1), 1.0, atol=1e-5)
    csv_out = tmp_path / "emb.csv"
    assert main(["embed", str(small_cohort / ids[0]), "--model", str(tiny_model), "--out", str(csv_out)]) == 0
    lines = csv_out.read_text().splitlines()
    assert lines[0].startswith("id,e0,") and len(lines) == 2
    np.testing.assert_allclose([float(v) for v in lines[1].split(",")[1:]], saved["embeddings"][0], atol=1e-5)


def test_predict_uses_the_clinical_table(small_cohort, tiny_model, tmp_path):
    out = tmp_path / "pred.json"
    assert main(["predict", str(small_cohort), "--model", str(tiny_model), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["patients"] and all(0 <= p["p_dysfunction_2y"] <= 1 for p in result["patients"])
    with_prompt = [e for e in result["exams"] if e["prompt"]]
    assert with_prompt and all(-1 <= e["similarity"] <= 1 for e in with_prompt)
    for exam in result["exams"]:
        gfr = [v for k, v in exam.items() if k.startswith("gfr_")]
        assert sum(gfr) == pytest.approx(1.0, abs=1e-3)
        assert exam["readings_withheld"] is False and exam["failed_checks"] == ""  # graft exams keep their readings
    # each exam is read from the patient's exams so far; the patient's row is the latest reading
    from napari_medimp.core.prompts import EXAMS

    for exam in result["exams"]:
        used = exam["reading_exams"].split("+")
        assert used[-1] == exam["exam"] == exam["reading_visit"]
        assert used == [e for e in EXAMS if e in used] and all(EXAMS.index(e) <= EXAMS.index(exam["exam"])
                                                             for e in used)
        for h in ("2y", "3y", "4y"):
            for column in ("p_dysfunction_{}", "p_dysfunction_with_clinical_{}", "p_dysfunction_clinical_only_{}"):
                assert 0 <= exam[column.format(h)] <= 1
        assert "gfr" in exam["clinical_values_used"].split("+")  # from clinical.csv
    for patient in result["patients"]:
        last = [e for e in result["exams"] if e["id"].startswith(patient["patient"] + "/")][-1]
        assert patient["reading_visit"] == last["exam"]


def test_predict_single_file_with_typed_values(small_cohort, tiny_model, tmp_path, capsys):
    image = sorted(small_cohort.rglob("*_dce.nii.gz"))[0]
    out = tmp_path / "one.csv"
    code = main(["predict", str(image), "--model", str(tiny_model), "--exam", "M3", "--gfr", "42",
                 "--donor-age", "70", "--out", str(out)])
    assert code == 0
    header, row = out.read_text().splitlines()[:2]
    assert "p_dysfunction_4y" in header and "low" in row and "M3" in row
    assert "p_dysfunction_with_clinical_4y" in header and "p_dysfunction_clinical_only_2y" in header
    values = dict(zip(header.split(","), row.split(","), strict=True))
    assert values["clinical_values_used"] == "donor_age+gfr" and values["reading_exams"] == "M3"
    # a lower typed GFR raises the reading that uses it, not the image-only one
    code = main(["predict", str(image), "--model", str(tiny_model), "--exam", "M3", "--gfr", "12",
                 "--donor-age", "70", "--out", str(tmp_path / "low.csv")])
    header, low_row = (tmp_path / "low.csv").read_text().splitlines()[:2]
    low = dict(zip(header.split(","), low_row.split(","), strict=True))
    assert low["p_dysfunction_4y"] == values["p_dysfunction_4y"]
    assert float(low["p_dysfunction_with_clinical_4y"]) > float(values["p_dysfunction_with_clinical_4y"])
    # absurd clinical values: a clear message, no traceback
    code = main(["predict", str(image), "--model", str(tiny_model), "--gfr", "900", "--out",
                 str(tmp_path / "absurd.csv")])
    assert code == 1
    err = capsys.readouterr().err
    assert "gfr" in err.lower() and "900" in err and "Traceback" not in err


def test_saliency_writes_nifti_in_the_exam_geometry(small_cohort, tiny_model, tmp_path, capsys):
    import nibabel as nib

    from napari_medimp.core.io import load_dce

    image = sorted(small_cohort.rglob("*_dce.nii.gz"))[0]
    out = tmp_path / "map.nii.gz"
    roi = ["2", "14", "5", "35", "6", "42"]
    assert main(["saliency", str(image), "--model", str(tiny_model), "--roi", *roi, "--target", "2y",
                 "--out", str(out)]) == 0
    saved = nib.load(str(out))
    source = load_dce(image)
    assert saved.shape == (36, 30, 12)  # (x, y, z) of the ROI
    expected = source.affine.copy()
    expected[:3, 3] = (source.affine @ [6, 5, 2, 1])[:3]
    np.testing.assert_allclose(saved.affine, expected, atol=1e-4)
    values = np.asarray(saved.dataobj)
    assert values.min() >= 0 and values.max() <= 1
    assert json.loads(out.with_name("map.json").read_text())["target"] == "2y"
    said = capsys.readouterr().out
    assert f"saliency method: {SALIENCY_METHODS[0]} (the default" in said  # which method it used, and why
    assert "card records no faithfulness figures" in said  # the tiny model was never measured


def test_saliency_writes_one_file_per_method_target_and_exam(small_cohort, tiny_model, tmp_path, capsys):
    image = sorted(small_cohort.rglob("*_dce.nii.gz"))[0]
    out = tmp_path / "maps"
    roi = ["2", "14", "5", "35", "6", "42"]
    assert main(["saliency", str(image), "--model", str(tiny_model), "--roi", *roi, "--exam", "M3",
                 "--method", "gradcam", "gradcam++", "--target", "2y", "3y", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.glob("*.nii.gz"))
    assert names == ["saliency-gradcam++-2y-M3.nii.gz", "saliency-gradcam++-3y-M3.nii.gz",
                     "saliency-gradcam-2y-M3.nii.gz", "saliency-gradcam-3y-M3.nii.gz"]
    sidecar = json.loads((out / "saliency-gradcam++-3y-M3.json").read_text())
    assert sidecar["method"] == "gradcam++" and sidecar["target"] == "3y" and sidecar["exam"] == "M3"
    assert "logit" in sidecar["score_meaning"] and sidecar["regions"] is None
    assert "saliency method: gradcam, gradcam++" in capsys.readouterr().out
    assert main(["saliency", str(image), "--model", str(tiny_model), "--method", "gradcam", "gradcam++",
                 "--out", str(tmp_path / "one.nii.gz")]) == 2


def test_model_commands_refuse_a_pickle(small_cohort, tmp_path, capsys):
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"\x80\x04K\x01.")
    (tmp_path / "model.json").write_text(json.dumps({"format": "napari-medimp-model", "architecture": {},
                                                     "preprocessing": {}, "weights": {}}))
    code = main(["embed", str(small_cohort), "--model", str(fake), "--out", str(tmp_path / "e.npz")])
    assert code == 1 and "pickle" in capsys.readouterr().err


def test_predict_withholds_the_readings_of_an_exam_that_failed_its_checks(small_cohort, tiny_model, tmp_path):
    """The panel's rule in the cohort outputs: a brain fMRI gets its checks and no risk, unless asked."""
    from nibabel.testing import data_path

    fmri = tmp_path / "fmri.nii.gz"
    fmri.write_bytes((data_path / "example4d.nii.gz").read_bytes())
    out = tmp_path / "fmri.json"
    assert main(["predict", str(fmri), "--model", str(tiny_model), "--exam", "D30", "--out", str(out)]) == 0
    [exam] = json.loads(out.read_text())["exams"]
    assert exam["outside_training"] is True and exam["readings_withheld"] is True
    assert "not a dynamic series" in exam["failed_checks"]
    assert {c["id"] for c in exam["checks"]} >= {"dynamic", "enhancement"}
    assert not [k for k in exam if k.startswith(("p_dysfunction", "gfr_"))] and exam["similarity"] is None
    [patient] = json.loads(out.read_text())["patients"]
    assert "not a dynamic series" in patient["readings_withheld"] and "p_dysfunction_2y" not in patient
    csv_out = tmp_path / "anyway.csv"
    assert main(["predict", str(fmri), "--model", str(tiny_model), "--exam", "D30", "--show-anyway",
                 "--out", str(csv_out)]) == 0
    import csv

    with open(csv_out, newline="") as fh:
        [values] = list(csv.DictReader(fh))
    assert values["shown_anyway"] == "True" and 0 <= float(values["p_dysfunction_2y"]) <= 1


def test_an_output_never_replaces_an_input_even_with_overwrite(small_cohort, tiny_model, tmp_path, capsys):
    """predict --out COHORT/clinical.csv and saliency --out <its input image> (also through a link) are
    refused, naming the input; both files stay as they were."""
    import re

    table = small_cohort / "clinical.csv"
    before = table.read_bytes()
    assert main(["predict", str(small_cohort), "--model", str(tiny_model), "--out", str(table), "--overwrite"]) == 2
    assert re.search("is one of this command's inputs .*clinical.csv.*even with --overwrite", capsys.readouterr().err)
    assert table.read_bytes() == before
    image = sorted(small_cohort.rglob("*_dce.nii.gz"))[0]
    image_bytes = image.read_bytes()
    link = tmp_path / "link.nii.gz"
    link.symlink_to(image)
    for out in (image, link):
        assert main(["saliency", str(image), "--model", str(tiny_model), "--out", str(out), "--overwrite"]) == 2
        assert "is one of this command's inputs" in capsys.readouterr().err
    assert image.read_bytes() == image_bytes


def test_the_exam_a_file_states_wins_over_the_default_and_one_exam_has_one_folder(small_cohort, tiny_model, tmp_path):
    """predict on a NIfTI alone reads the exam and patient its sidecar states (not D30), with that patient's
    clinical values; a patient folder holding D15 and d15 is refused, a lone d15 folder is the D15 exam."""
    import shutil

    from napari_medimp.core.io.cohort import DCEReadError, cohort_exams

    image = sorted(small_cohort.rglob("*_dce.nii.gz"))[0]
    stated = json.loads(image.with_name(image.name.replace(".nii.gz", ".json")).read_text())
    exam, patient = str(stated["Exam"]).upper(), stated["PatientID"]
    out = tmp_path / "one.json"
    assert main(["predict", str(image), "--model", str(tiny_model), "--out", str(out)]) == 0
    [row] = json.loads(out.read_text())["exams"]
    assert row["exam"] == exam and row["reading_visit"] == exam
    assert "gfr" in row["clinical_values_used"].split("+")  # the patient's row of the cohort's clinical.csv
    [reading] = json.loads(out.read_text())["patients"]
    assert reading["patient"] == patient
    folders = tmp_path / "P9"
    source = image.parents[1]
    shutil.copytree(source, folders / "D15")
    shutil.copytree(source, folders / "d15")
    with pytest.raises(DCEReadError, match="two folders hold the D15 exam"):
        cohort_exams(folders)
    shutil.rmtree(folders / "D15")
    assert [(e, f.name) for _, e, f in cohort_exams(folders)] == [("D15", "d15")]
