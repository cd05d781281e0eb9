"""The panel analyses what it says: tissue labels follow their exam, a NIfTI opened alone reads its
sidecar, every value says where it came from, and a value typed against clinical.csv is flagged. In a real,
shown napari viewer at its default window size."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from helpers import nifti_alone
from qtpy.QtCore import QPoint

from napari_medimp.core.pdf import pdf_text, report_pages

pytestmark = pytest.mark.gui

#: napari's default window size
WINDOW = (1089, 630)
#: the panel's colour for a warning (#ffb347)
WARNING_RGB = (0xFF, 0xB3, 0x47)


@pytest.fixture
def panel(make_napari_viewer, tiny_model):
    from napari_medimp._widgets.medimp import MedimpWidget

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(*WINDOW)
    widget = MedimpWidget(viewer)
    viewer.window.add_dock_widget(widget, name="MEDIMP", area="right")
    assert widget.set_model_file(tiny_model)
    return viewer, widget


def _wait(qtbot, widget, timeout=180_000):
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def _rows(cohort) -> dict[str, tuple[int, dict]]:
    with open(cohort / "clinical.csv", newline="") as handle:
        return {row["patient_id"]: (line, row) for line, row in enumerate(csv.DictReader(handle), start=2)}


def _exams(cohort, patient) -> list[str]:
    return [e for e in ("D15", "D30", "M3", "M12") if (cohort / patient / e).is_dir()]


def _errors(monkeypatch) -> list[str]:
    errors: list[str] = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    return errors


def _warning_pixels(widget) -> int:
    """Pixels of the panel (as on screen) in the warning colour."""
    image = widget.grab().toImage()
    from qtpy.QtGui import QImage

    image = image.convertToFormat(QImage.Format.Format_RGB888)
    width, height = image.width(), image.height()
    data = np.frombuffer(image.constBits().asstring(image.bytesPerLine() * height), np.uint8)
    rgb = data.reshape(height, image.bytesPerLine())[:, : width * 3].reshape(height, width, 3).astype(int)
    return int((np.abs(rgb - WARNING_RGB).sum(axis=2) < 40).sum())


# ------------------------------------------------------------------------------------- labels
def test_tissue_labels_follow_their_exam_and_another_exams_are_refused(panel, qtbot, training_cohort, tmp_path,
                                                                       monkeypatch):
    viewer, widget = panel
    first = _exams(training_cohort, "P0003")[0]
    second = next(e for e in _exams(training_cohort, "P0002") if e != first)
    viewer.open(str(training_cohort / "P0003" / first), plugin="napari-medimp")
    assert widget.labels_combo.currentText() == f"P0003 {first} labels"

    viewer.open(str(training_cohort / "P0002" / second), plugin="napari-medimp")
    assert widget.layer_combo.currentText() == f"P0002 {second}"
    assert widget.labels_combo.currentText() == f"P0002 {second} labels"  # not P0003's, of the same grid
    viewer.layers.remove(f"P0002 {second} labels")
    assert widget.labels_combo.currentText() == "none"  # P0003's labels are not offered for P0002

    widget.labels_combo.setCurrentText(f"P0003 {first} labels")  # chosen by hand: refused, both exams named
    widget.exam_confirm.setChecked(True)
    errors = _errors(monkeypatch)
    widget.analyze()
    assert not widget.busy and len(errors) == 1, errors
    assert f"patient P0003, exam {first}" in errors[0] and f"patient P0002, exam {second}" in errors[0]

    errors.clear()
    widget.layer_combo.setCurrentText(f"P0003 {first}")
    assert widget.labels_combo.currentText() == f"P0003 {first} labels"
    widget.analyze()
    _wait(qtbot, widget)
    assert not errors, errors
    files = widget.export_report(tmp_path / "export")
    report = json.loads(files["json"].read_text())
    labels = report["inputs"]["labels"]
    assert labels["file"].endswith(f"P0003_{first}_seg.nii.gz") and labels["layer"] == f"P0003 {first} labels"
    assert (labels["identity"]["patient"], labels["identity"]["exam"]) == ("P0003", first)
    text = pdf_text(report_pages(widget.current_result())).replace("\n", " ")
    assert f"P0003_{first}_seg.nii.gz (patient P0003, exam {first})" in text


def test_a_patient_folder_pairs_each_exam_with_its_own_labels(panel, training_cohort):
    viewer, widget = panel
    viewer.open(str(training_cohort / "P0001"), plugin="napari-medimp")
    exams = _exams(training_cohort, "P0001")
    assert len(exams) >= 2
    assert widget.labels_combo.currentText() == f"P0001 {exams[-1]} labels"  # the last exam opened is shown
    for exam in exams:
        widget.layer_combo.setCurrentText(f"P0001 {exam}")
        assert widget.labels_combo.currentText() == f"P0001 {exam} labels"
        assert widget.labels_mismatch() is None


# ---------------------------------------------------------------------------------- a NIfTI alone
def test_a_nifti_opened_alone_reads_its_sidecar_and_the_cohort_table(panel, qtbot, training_cohort, tmp_path):
    viewer, widget = panel
    exam = next(e for e in _exams(training_cohort, "P0001") if e != "D30")  # the form's default is D30
    cohort, nifti = nifti_alone(training_cohort, tmp_path, exam)
    line, row = _rows(training_cohort)["P0001"]

    viewer.open(str(nifti), plugin="napari-medimp")
    assert widget.layer_combo.currentText() == "dce"
    assert widget.fields["exam"].value == exam
    assert float(widget.fields["gfr"].value) == pytest.approx(float(row[f"gfr_{exam}"]))
    text = widget.identity_label.text()
    assert f"patient P0001, exam {exam}" in text and "sidecar" in text and f"clinical.csv line {line}" in text
    assert widget.exam_mismatch() is None

    widget.analyze()
    _wait(qtbot, widget)
    result = widget.current_result()
    assert result.analysis.exam == exam
    files = widget.export_report(tmp_path / "export")
    assert files["json"].parent.name.startswith(f"P0001-{exam}-")
    report = json.loads(files["json"].read_text())
    assert report["inputs"]["exam_source"] == "sidecar 'Exam'"
    pdf = pdf_text(report_pages(result))
    assert "exam not stated" not in pdf and f"{exam}  (read from the sidecar 'Exam')" in pdf


# ------------------------------------------------------------------ value sources, typed against the table
def test_values_say_where_they_came_from_and_a_gfr_typed_against_the_table_is_flagged(
        panel, qtbot, training_cohort, tmp_path, monkeypatch):
    viewer, widget = panel
    exam = _exams(training_cohort, "P0001")[0]
    line, row = _rows(training_cohort)["P0001"]
    viewer.open(str(training_cohort / "P0001" / exam), plugin="napari-medimp")
    table = f"clinical.csv line {line}"
    assert f"Values filled in from {table}" in widget.identity_label.text()
    assert not widget.exam_confirm.isVisible()

    widget.analyze()  # as filled in: every value from the table's line
    _wait(qtbot, widget)
    report = json.loads(widget.export_report(tmp_path / "filled")["json"].read_text())
    entered = report["inputs"]["clinical"]["entered"]
    assert entered and {item["source"] for item in entered.values()} == {table}
    assert "typed" not in json.dumps(report["inputs"]["clinical"])
    assert f"({table})" in pdf_text(report_pages(widget.current_result()))

    typed = float(row[f"gfr_{exam}"]) + 37
    widget.fields["gfr"].value = f"{typed:g}"  # a GFR typed against the table
    text = widget.identity_label.text()
    assert "Values filled in" not in text  # the note goes once a value is edited
    assert f"GFR {typed:g} typed here, {table} says {float(row[f'gfr_{exam}']):g} at {exam}" in text
    assert widget.exam_confirm.isVisibleTo(widget) and "values typed above" in widget.exam_confirm.text()
    assert widget.value_sources()["gfr"] == "typed in the MEDIMP widget"
    assert widget.value_sources()["donor_age"] == table

    # the panel as it stands at napari's default window size, scrolled to the flag
    qtbot.wait(50)  # the scroll to the results of the analysis above happens first
    top = widget.identity_label.mapTo(widget._content, QPoint(0, 0)).y()
    widget._scroll.verticalScrollBar().setValue(max(0, top - 200))
    qtbot.wait(50)
    window = viewer.window._qt_window
    assert (window.width(), window.height()) == WINDOW
    assert widget.identity_label.visibleRegion().boundingRect().height() > 0  # the flag is on screen
    assert _warning_pixels(widget) > 50  # written in the warning colour
    path = tmp_path / "identity_panel.png"
    assert window.grab().save(str(path))
    shutil.copy(path, "/tmp/identity_panel.png")

    errors = _errors(monkeypatch)
    widget.analyze()  # refused until confirmed, as an exam typed against the image is
    assert not widget.busy and len(errors) == 1 and "GFR" in errors[0] and table in errors[0]
    widget.exam_confirm.setChecked(True)
    widget.analyze()
    _wait(qtbot, widget)
    report = json.loads(widget.export_report(tmp_path / "typed")["json"].read_text())
    gfr = report["inputs"]["clinical"]["entered"]["gfr"]
    assert gfr["source"] == "typed in the MEDIMP widget" and gfr["differs_from"]["source"] == table
    assert report["inputs"]["clinical"]["entered"]["donor_age"]["source"] == table
    pdf = pdf_text(report_pages(widget.current_result()))
    assert "typed in the MEDIMP widget" in pdf and f"differs from {table}" in pdf

    widget.fields["gfr"].value = row[f"gfr_{exam}"]  # the table's value again: nothing to flag
    assert not widget.exam_confirm.isVisible() and f"Values filled in from {table}" in widget.identity_label.text()
