"""An exam's identity (patient, exam, date and where each was read), which exam tissue labels belong to, and
where each clinical value came from, through ``medimp analyze`` into JSON, CSV and PDF."""

from __future__ import annotations

import csv
import json

import pytest
from helpers import kidney_volume, nifti_alone

from napari_medimp.cli import main
from napari_medimp.core.identity import ExamIdentity, labels_mismatch, table_source
from napari_medimp.core.io import load_dce
from napari_medimp.core.io.cohort import clinical_table_lines, cohort_clinical_row


def _table_line(cohort, patient: str) -> int:
    with open(cohort / "clinical.csv", newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            if row["patient_id"] == patient:
                return number
    raise AssertionError(patient)


def _exam_other_than_d30(cohort, patient="P0001") -> str:
    return next(e for e in ("D15", "M3", "M12") if (cohort / patient / e).is_dir())


# ------------------------------------------------------------------------------------------ core
def test_a_nifti_opened_directly_states_the_same_identity_as_its_exam_folder(training_cohort):
    exam = _exam_other_than_d30(training_cohort)
    folder = training_cohort / "P0001" / exam
    nifti = next((folder / "dce").glob("*.nii.gz"))
    by_folder = ExamIdentity.from_volume(load_dce(folder))
    by_file = ExamIdentity.from_volume(load_dce(nifti))
    assert (by_file.patient, by_file.exam) == (by_folder.patient, by_folder.exam) == ("P0001", exam)
    assert by_file.patient_from == "sidecar 'PatientID'" and by_file.exam_from == "sidecar 'Exam'"
    assert by_folder.folder == str(folder) and by_file.folder is None
    assert by_file.same_exam(by_folder) is True


def test_same_exam_by_folder_or_by_patient_and_exam():
    a = ExamIdentity(patient="P0003", exam="D15", folder="/c/P0003/D15")
    b = ExamIdentity(patient="P0002", exam="D30", folder="/c/P0002/D30")
    assert a.same_exam(a) is True and a.same_exam(b) is False
    assert a.same_exam(ExamIdentity(patient="P0003", exam="D15")) is True  # a file of the exam, opened alone
    assert a.same_exam(ExamIdentity(patient="P0003", exam="M12")) is False
    assert a.same_exam(ExamIdentity()) is None  # labels drawn by hand state nothing: never refused
    assert ExamIdentity(exam="D15").same_exam(ExamIdentity(exam="D30")) is False
    message = labels_mismatch(b, a, "P0002 D30", "P0003 D15 labels")
    assert "patient P0003, exam D15" in message and "patient P0002, exam D30" in message
    assert labels_mismatch(a, ExamIdentity(), "x", "y") is None


def test_identity_reads_dicom_tags_before_sidecars_and_folders():
    volume = kidney_volume()
    volume.metadata = {"patient_id": "P7", "patient": "folder", "exam": "m3", "study_date": "20240312",
                       "sidecar": {"PatientID": "X", "Exam": "D15"}}
    who = ExamIdentity.from_volume(volume)
    assert (who.patient, who.patient_from) == ("P7", "image metadata 'patient_id'")
    assert (who.exam, who.exam_from) == ("D15", "sidecar 'Exam'")  # the data before the folder name
    assert (who.date, who.date_from) == ("2024-03-12", "image metadata 'study_date'")
    assert ExamIdentity.from_dict(who.to_dict()) == who


def test_clinical_table_lines_are_the_lines_an_editor_shows(tmp_path):
    table = tmp_path / "clinical.csv"
    table.write_text("patient_id;donor_age;gfr_D30\nA;50;40\n\nB;60;45\n", encoding="utf-8-sig")
    assert clinical_table_lines(table) == {"A": 2, "B": 4}
    (tmp_path / "B" / "D30").mkdir(parents=True)
    row, found, line = cohort_clinical_row(tmp_path / "B" / "D30", "B")
    assert row["gfr_D30"] == "45" and found == table and line == 4
    assert table_source(found, line) == "clinical.csv line 4"
    assert cohort_clinical_row(tmp_path / "B", "C") == (None, table, None)


# ---------------------------------------------------------------------------- medimp analyze
@pytest.fixture
def pdf_texts(monkeypatch):
    """The text of every PDF an analysis writes (what a search of the PDF finds)."""
    from napari_medimp.core import pdf as pdf_report

    texts: list[str] = []
    write = pdf_report.write_pdf

    def spy(result, path, saliency_maps=None, report=None):
        texts.append(pdf_report.pdf_text(pdf_report.report_pages(result, saliency_maps, report)))
        return write(result, path, saliency_maps, report)

    monkeypatch.setattr(pdf_report, "write_pdf", spy)
    return texts


def test_analyze_of_a_cohort_exam_says_each_value_came_from_clinical_csv(training_cohort, tiny_model, tmp_path,
                                                                         pdf_texts, capsys):
    exam = _exam_other_than_d30(training_cohort)
    line = _table_line(training_cohort, "P0001")
    out = tmp_path / "out"
    assert main(["analyze", str(training_cohort / "P0001" / exam), "--model", str(tiny_model), "--saliency", "none",
                 "--out", str(out)]) == 0
    report = json.loads((out / "medimp_report.json").read_text())
    clinical = report["inputs"]["clinical"]
    assert set(clinical["entered"]) >= {"gfr", "donor_age"}
    assert {item["source"] for item in clinical["entered"].values()} == {f"clinical.csv line {line}"}
    assert clinical["table"] == str(training_cohort / "clinical.csv")
    assert report["inputs"]["exam_source"] == "sidecar 'Exam'"
    labels = report["inputs"]["labels"]
    assert labels["file"].endswith(f"P0001_{exam}_seg.nii.gz")
    assert (labels["identity"]["patient"], labels["identity"]["exam"]) == ("P0001", exam)
    rows = dict(csv.reader(open(out / "medimp_report.csv", newline="")))
    assert rows["inputs.clinical.entered.gfr.source"] == f"clinical.csv line {line}"
    assert rows["inputs.labels.file"] == labels["file"]
    text = pdf_texts[-1]
    assert "none given" not in text
    assert f"(clinical.csv line {line})" in text
    assert f"P0001_{exam}_seg.nii.gz (patient P0001, exam {exam})" in text.replace("\n", " ")


def test_analyze_of_a_nifti_reads_its_sidecar_and_the_cohort_table(training_cohort, tiny_model, tmp_path,
                                                                   pdf_texts, capsys):
    """The file alone (not its folder): exam and patient from its sidecar, values from the cohort's table."""
    exam = _exam_other_than_d30(training_cohort)
    cohort, nifti = nifti_alone(training_cohort, tmp_path, exam)
    out = tmp_path / "out"
    assert main(["analyze", str(nifti), "--model", str(tiny_model), "--saliency", "none", "--out", str(out)]) == 0
    report = json.loads((out / "medimp_report.json").read_text())
    assert report["results"]["exam"] == exam and report["inputs"]["exam_source"] == "sidecar 'Exam'"
    assert report["inputs"]["identity"]["patient"] == "P0001"
    line = _table_line(training_cohort, "P0001")
    assert report["inputs"]["clinical"]["entered"]["gfr"]["source"] == f"clinical.csv line {line}"
    text = pdf_texts[-1]
    assert "exam not stated" not in text and f"{exam}  (read from the sidecar 'Exam')" in text


def test_a_gfr_typed_against_clinical_csv_is_said_and_recorded(training_cohort, tiny_model, tmp_path, capsys):
    exam = _exam_other_than_d30(training_cohort)
    out = tmp_path / "out"
    assert main(["analyze", str(training_cohort / "P0001" / exam), "--model", str(tiny_model), "--saliency", "none",
                 "--gfr", "8", "--out", str(out)]) == 0
    assert "--gfr 8 typed, clinical.csv line" in capsys.readouterr().err
    gfr = json.loads((out / "medimp_report.json").read_text())["inputs"]["clinical"]["entered"]["gfr"]
    assert gfr["source"] == "typed" and gfr["differs_from"]["source"].startswith("clinical.csv line")
