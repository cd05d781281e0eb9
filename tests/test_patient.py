"""The patient view: one patient's exams read visit by visit, in napari_medimp.core and `medimp analyze`."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
from helpers import CLINICAL_COEF, kidney_volume

from napari_medimp.cli import main
from napari_medimp.core.clinical import ClinicalRecord
from napari_medimp.core.inference import Predictor
from napari_medimp.core.io import save_dce
from napari_medimp.core.io.cohort import load_exam, patient_exams
from napari_medimp.core.longitudinal import (
    DATE_UNKNOWN,
    TREND_FIGURE_FILE,
    analyze_patient,
    analyze_patient_folder,
    exam_date,
)
from napari_medimp.core.terms import EXAMS

PATIENT = "P0003"  # seed 21: four exams, its D30 creatinine missing


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return Predictor.from_file(tiny_model, device="cpu")


@pytest.fixture(scope="module")
def row(training_cohort):
    with open(training_cohort / "clinical.csv", newline="") as fh:
        return next(r for r in csv.DictReader(fh) if r["patient_id"] == PATIENT)


@pytest.fixture(scope="module")
def patient(predictor, training_cohort):
    return analyze_patient_folder(predictor, training_cohort / PATIENT)


@pytest.fixture(scope="module")
def exams(training_cohort):
    return {exam: load_exam(folder)[0] for exam, folder in patient_exams(training_cohort / PATIENT).items()}


def _number(cell: str):
    return None if cell.strip() == "" else float(cell)


def test_visits_in_follow_up_order_each_read_from_the_exams_so_far(patient, training_cohort):
    present = list(patient_exams(training_cohort / PATIENT))
    assert [v.visit for v in patient.visits] == [e for e in EXAMS if e in present] == ["D15", "D30", "M3", "M12"]
    for i, visit in enumerate(patient.visits):
        assert visit.exams_used == [v.visit for v in patient.visits[: i + 1]]
        assert set(visit.checks) == set(visit.exams_used)
    assert patient.visit("D30").exams_used == ["D15", "D30"]
    assert patient.patient == PATIENT


def test_clinical_values_of_each_visit_are_the_table_row(patient, row):
    for visit in patient.visits:
        values = visit.clinical
        assert values["gfr_ml_min_1_73m2"] == _number(row[f"gfr_{visit.visit}"])
        assert values["creatinine_umol_l"] == _number(row[f"creatinine_{visit.visit}"])
        assert values["donor_age_years"] == _number(row["donor_age"])
        upto = EXAMS[: EXAMS.index(visit.visit) + 1]
        series = [_number(row[f"creatinine_{e}"]) for e in upto]
        assert values["creatinine_series_umol_l"] == [c for c in series if c is not None]
    assert patient.visit("D30").clinical["creatinine_umol_l"] is None  # missing in the table, not carried over
    trend = patient.trend()
    assert trend["visits"] == ["D15", "D30", "M3", "M12"]
    assert trend["gfr_ml_min_1_73m2"] == [_number(row[f"gfr_{e}"]) for e in trend["visits"]]
    assert trend["creatinine_umol_l"] == [_number(row[f"creatinine_{e}"]) for e in trend["visits"]]


def test_three_kinds_of_reading_per_horizon_at_every_visit(patient):
    for visit in patient.visits:
        assert set(visit.risks) == {"image", "image+clinical", "clinical"}
        for risks in visit.risks.values():
            assert set(risks) == {"2y", "3y", "4y"} and all(0 <= p <= 1 for p in risks.values())
        assert visit.result.analysis.exam == visit.visit  # the exam's own analysis, for side by side


def test_reading_equals_the_predictor_on_the_exams_so_far(patient, predictor):
    embeddings = {}
    for visit in patient.visits:
        embeddings[visit.visit] = predictor.embed_image(visit.result.request.volume).vector
        later = {e: np.zeros_like(embeddings[visit.visit]) for e in EXAMS[EXAMS.index(visit.visit) + 1:]}
        reading = predictor.prognosis({**embeddings, **later}, visit.record, visit=visit.visit)
        assert reading.exams_used == visit.exams_used
        for kind, risks in reading.risks.items():
            assert visit.risks[kind] == pytest.approx(risks)


def test_lower_gfr_reads_riskier_with_clinical_values(predictor, exams, row):
    assert CLINICAL_COEF[1] < 0  # the test heads' GFR sign: lower GFR, more risk
    worse = dict(row, gfr_M3="20")
    better = dict(row, gfr_M3="95")
    wanted = {e: exams[e] for e in ("D15", "D30", "M3")}
    low = analyze_patient(predictor, wanted, worse).visit("M3")
    high = analyze_patient(predictor, wanted, better).visit("M3")
    assert low.clinical["gfr_ml_min_1_73m2"] == 20 and high.clinical["gfr_ml_min_1_73m2"] == 95
    for horizon in ("2y", "3y", "4y"):
        assert low.risks["image+clinical"][horizon] > high.risks["image+clinical"][horizon]
        assert low.risks["clinical"][horizon] > high.risks["clinical"][horizon]
        assert low.risks["image"][horizon] == pytest.approx(high.risks["image"][horizon])  # images only: unmoved


def test_exams_picked_by_hand_and_records_per_exam(predictor, exams):
    records = {"M12": ClinicalRecord(exam="M12", gfr=40, donor_age=70, creatinine=(150.0, 160.0)),
               "d15": ClinicalRecord(exam="D15", gfr=55)}
    result = analyze_patient(predictor, {"M12": exams["M12"], "d15": exams["D15"]}, records)
    assert [v.visit for v in result.visits] == ["D15", "M12"]
    assert result.visit("M12").exams_used == ["D15", "M12"]
    assert result.visit("M12").clinical["creatinine_umol_l"] == 160.0
    assert result.visit("D15").clinical["gfr_ml_min_1_73m2"] == 55
    with pytest.raises(ValueError, match="not a follow-up visit"):
        analyze_patient(predictor, {"M6": exams["D15"]})
    with pytest.raises(ValueError, match="no exams"):
        analyze_patient(predictor, {})
    with pytest.raises(ValueError, match="recorded as D15"):
        analyze_patient(predictor, {"M3": exams["D15"]})


def test_exams_of_two_patients_are_refused(predictor, training_cohort, exams):
    other = load_exam(patient_exams(training_cohort / "P0001")["D30"])[0]
    with pytest.raises(ValueError, match="different patients: D15 P0003, D30 P0001"):
        analyze_patient(predictor, {"D15": exams["D15"], "D30": other})


def test_dates_come_from_the_data_or_are_unknown(patient):
    volume = kidney_volume(n_frames=4)
    assert exam_date(volume)[:2] == (None, None)
    volume.metadata["study_date"] = "20240312"  # as the DICOM reader records it
    assert exam_date(volume)[:2] == ("2024-03-12", "image metadata 'study_date'")
    volume.metadata = {"sidecar": {"AcquisitionDateTime": "2024-04-01T10:20:00"}}
    assert exam_date(volume)[0] == "2024-04-01"
    volume.metadata = {"sidecar": {"StudyDate": "not a date"}}
    day, where, notes = exam_date(volume)
    assert day is None and where is None and "not a date" in notes[0]
    # the synthetic cohort records days after transplant, not dates: each visit says its day
    assert all(v.date is None for v in patient.visits)
    assert [v.days_after_transplant for v in patient.visits] == [15, 30, 90, 365]
    assert [v.date_text for v in patient.visits] == [f"day {d} after transplantation" for d in (15, 30, 90, 365)]
    volume.metadata = {}
    assert exam_date(volume)[0] is None and DATE_UNKNOWN == "date unknown"


def test_a_visit_whose_image_fails_a_check_is_labelled(predictor, exams):
    still = exams["D30"].load()
    still.data = still.data[:1] + 0.05 * (still.data - still.data[:1])  # a rise of a few %, as in a BOLD series
    result = analyze_patient(predictor, {"D15": exams["D15"], "D30": still, "M3": exams["M3"]})
    assert not result.visit("D15").outside_training
    for name in ("D30", "M3"):  # M3's reading uses the D30 image too
        visit = result.visit(name)
        assert visit.outside_training and visit.label == "outside what this model was trained on"
        assert any(m.startswith("D30: no enhancing kidney found") for m in visit.failed_checks)
        # a reading that used that image is withheld, here as in the panel and medimp analyze
        assert visit.withheld and visit.risks == {}
    assert result.visit("D15").risks and result.visit("D15").withheld is None
    summary = result.summary()
    assert "OUTSIDE WHAT THIS MODEL WAS TRAINED ON" in summary
    assert summary.count("readings withheld: the exam is outside what the model was trained on") == 2
    assert "this model has no prognosis heads" not in summary


def test_trend_figure_draws_every_visit(patient):
    figure = patient.figure()
    trend_axes, *risk_axes = [ax for ax in figure.axes if ax.get_title()]
    assert [t.get_text() for t in trend_axes.get_xticklabels()] == ["D15\nday 15", "D30\nday 30", "M3\nday 90",
                                                                   "M12\nday 365"]
    # visits sit at their day after transplantation (log scale), not evenly spaced
    assert trend_axes.get_xlabel() == "days after transplantation (log scale)"
    np.testing.assert_allclose(trend_axes.get_xticks(), [15, 30, 90, 365])
    np.testing.assert_allclose(trend_axes.get_lines()[0].get_xdata(), [15, 30, 90, 365])
    assert all(list(ax.get_xticks()) == [15, 30, 90, 365] for ax in risk_axes)
    assert [ax.get_title() for ax in risk_axes] == ["dysfunction at 2 years", "dysfunction at 3 years",
                                                    "dysfunction at 4 years"]
    assert all(len(ax.get_lines()) == 4 for ax in risk_axes)  # three readings and the 0.5 line
    assert patient.panel_image()[:4] == b"\x89PNG"


def test_cli_writes_the_patient_report_and_figure(training_cohort, tiny_model, row, tmp_path, capsys):
    out = tmp_path / "patient"
    argv = ["analyze", str(training_cohort / PATIENT), "--model", str(tiny_model), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"patient {PATIENT}: 4 visit(s)" in printed and "D30 (day 30 after transplantation)" in printed
    assert "creatinine: not recorded" in printed and "missing umol/L" not in printed  # P0003's D30
    assert (out / TREND_FIGURE_FILE).read_bytes()[:4] == b"\x89PNG"
    report = json.loads((out / "medimp_report.json").read_text())
    assert report["kind"] == "patient" and report["patient"] == PATIENT
    visits = report["visits"]
    assert [v["visit"] for v in visits] == ["D15", "D30", "M3", "M12"]
    assert visits[1]["exams_used"] == ["D15", "D30"] and visits[1]["date_text"] == "day 30 after transplantation"
    assert visits[2]["clinical"]["gfr_ml_min_1_73m2"] == float(row["gfr_M3"])
    assert set(visits[3]["risks"]) == {"image", "image+clinical", "clinical"}
    assert visits[3]["prognosis_with_clinical"] == visits[3]["risks"]["image+clinical"]
    assert report["trend"]["gfr_ml_min_1_73m2"] == [_number(row[f"gfr_{e}"]) for e in EXAMS]
    assert report["files"]["figure"] == str(out / TREND_FIGURE_FILE)
    cells = dict(csv.reader((out / "medimp_report.csv").read_text().splitlines()))
    assert cells["visits.1.visit"] == "D30" and cells["visits.1.exams_used"] == "D15;D30"
    assert not math.isnan(float(cells["visits.0.risks.image.2y"]))
    # the patient's PDF: every visit, the trend figure and each visit's checks
    from test_pdf_report import _flat, page_count, pdf_strings

    data = (out / "medimp_report.pdf").read_bytes()
    assert data.startswith(b"%PDF") and report["files"]["pdf"] == str(out / "medimp_report.pdf")
    text = _flat(pdf_strings(data))
    for visit, day in (("D15", 15), ("D30", 30), ("M3", 90), ("M12", 365)):
        assert f"{visit}: day {day} after transplantation" in text
    assert "GFR, creatinine and the readings over time" in text and "days after transplantation (log scale)" in text
    assert text.count("checks of the M12 exam") == 1 and text.count("checks of the D15 exam") == 4
    assert "passed: dynamic series of 20 frames" in text and "creatinine not recorded" in text
    assert f"page 1 of {page_count(data)}" in text

    first = (out / "medimp_report.json").read_text()
    assert main(argv) == 2  # one analysis per folder: refused before any work, nothing replaced
    assert "already holds an earlier result" in capsys.readouterr().err
    assert (out / "medimp_report.json").read_text() == first


def test_cli_refuses_a_cohort_and_one_exam_options(training_cohort, tiny_model, tmp_path, capsys):
    code = main(["analyze", str(training_cohort), "--model", str(tiny_model), "--out", str(tmp_path / "c")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "holds 12 exams" in err and "one patient folder" in err and "`medimp predict` for a cohort" in err
    assert not (tmp_path / "c").exists()
    code = main(["analyze", str(training_cohort / PATIENT), "--model", str(tiny_model), "--gfr", "40",
                 "--out", str(tmp_path / "p")])
    assert code == 2 and "--gfr: this option describes one exam" in capsys.readouterr().err


def test_an_unreadable_exam_is_skipped_and_listed(training_cohort, predictor, tmp_path):
    folder = tmp_path / "cohort" / PATIENT
    shutil.copytree(training_cohort / PATIENT, folder)
    shutil.copy(training_cohort / "clinical.csv", folder.parent / "clinical.csv")
    broken = next((folder / "M3" / "dce").glob("*.nii.gz"))
    broken.write_bytes(broken.read_bytes()[:200])
    result = analyze_patient_folder(predictor, folder)
    assert [v.visit for v in result.visits] == ["D15", "D30", "M12"]
    assert result.visit("M12").exams_used == ["D15", "D30", "M12"]
    assert len(result.skipped) == 1 and result.skipped[0].startswith("M3: ")
    assert "skipped M3" in result.summary()


def test_a_patient_folder_without_clinical_table_reads_images_only(predictor, tmp_path):
    folder = tmp_path / "P9"
    for exam in ("D15", "M3"):
        save_dce(kidney_volume(seed=EXAMS.index(exam)), folder / exam / "dce" / "dce.nii.gz")
    result = analyze_patient_folder(predictor, folder)
    assert [v.visit for v in result.visits] == ["D15", "M3"]
    assert result.clinical_source is None and "no clinical.csv" in result.notes[0]
    assert result.visit("M3").clinical["gfr_ml_min_1_73m2"] is None
    assert result.visit("M3").result.analysis.shown_reading.clinical_missing


def test_dates_and_patient_read_from_dicom_tags_and_sidecars(predictor, tmp_path):
    from napari_medimp.core.io.dicom_write import save_dicom_series

    folder = tmp_path / "P7"
    save_dicom_series(kidney_volume(n_frames=6), folder / "D15" / "dce", patient_id="P7", study_date="20240312")
    save_dce(kidney_volume(seed=1, n_frames=6), folder / "D30" / "dce" / "dce.nii.gz",
             sidecar={"PatientID": "P7", "AcquisitionDate": "2024-03-01"})
    result = analyze_patient_folder(predictor, folder)
    d15, d30 = result.visits
    assert (d15.date, d15.date_source) == ("2024-03-12", "image metadata 'study_date'")
    assert (d30.date, d30.date_source) == ("2024-03-01", "sidecar 'AcquisitionDate'")
    assert d15.patient_in_data == d30.patient_in_data == "P7"
    assert any("D30 is dated 2024-03-01, before D15 (2024-03-12)" in note for note in result.notes)
    assert [t.get_text() for t in result.figure().axes[0].get_xticklabels()] == ["D15\n2024-03-12",
                                                                                 "D30\n2024-03-01"]


def test_absurd_table_values_and_wrong_folders_are_refused_by_name(predictor, exams, row, training_cohort):
    from napari_medimp.core.clinical import ClinicalValueError

    with pytest.raises(ClinicalValueError, match=r"^M3 clinical values \(patient P0003\): .*900") as caught:
        analyze_patient(predictor, {"M3": exams["M3"]}, dict(row, gfr_M3="900"), patient=PATIENT)
    assert caught.value.field == "gfr"
    with pytest.raises(ValueError, match=r"is one exam folder\); give a folder whose sub-folders"):
        analyze_patient_folder(predictor, training_cohort / PATIENT / "D15")
    with pytest.raises(ValueError, match="is a cohort folder: the patient view reads one patient"):
        analyze_patient_folder(predictor, training_cohort)


def test_exams_group_by_identity_so_a_nifti_with_a_sidecar_joins_its_patient(training_cohort, tmp_path):
    from napari_medimp.core.identity import ExamIdentity
    from napari_medimp.core.io import load_dce
    from napari_medimp.core.longitudinal import exams_of_patient

    d15, _ = load_exam(patient_exams(training_cohort / PATIENT)["D15"])
    alone = save_dce(kidney_volume(n_frames=6), tmp_path / "elsewhere.nii.gz",
                     sidecar={"PatientID": PATIENT, "Exam": "M3"})
    other = save_dce(kidney_volume(seed=1, n_frames=6), tmp_path / "other.nii.gz",
                     sidecar={"PatientID": "P9999", "Exam": "D30"})
    unnamed = save_dce(kidney_volume(seed=2, n_frames=6), tmp_path / "unnamed.nii.gz")
    candidates = [(ExamIdentity.from_volume(v), name) for v, name in (
        (load_dce(unnamed), "unnamed"), (load_dce(other), "other"), (load_dce(alone), "alone"), (d15, "D15"))]
    patient, exams = exams_of_patient(ExamIdentity.from_volume(d15), candidates)
    assert patient == PATIENT and exams == {"D15": "D15", "M3": "alone"}  # in follow-up order, by identity
    assert list(exams) == ["D15", "M3"]
    assert exams_of_patient(ExamIdentity.from_volume(load_dce(unnamed)), candidates) == (None, {})
