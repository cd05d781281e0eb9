"""The MEDIMP dock widget in a real, shown napari viewer: form, prompt, analysis, saliency overlay,
results bound to their layer, export, and an event loop that stays responsive."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import kidney_volume
from qtpy.QtCore import QPoint, Qt, QTimer

from napari_medimp._layers import box_rectangle, roi_from_vertices, volume_from_layer_data, volume_layer_data
from napari_medimp._widgets._panel_util import _grid, _key
from napari_medimp.core.checks import failed_messages
from napari_medimp.core.preprocess import RoiBox

pytestmark = pytest.mark.gui




@pytest.fixture
def viewer_widget(make_napari_viewer, tiny_model):
    from napari_medimp._widgets.medimp import MedimpWidget

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1400, 900)
    data, kwargs, _ = volume_layer_data(kidney_volume(), name="graft A")
    layer = viewer.add_image(data, **kwargs)
    widget = MedimpWidget(viewer)
    viewer.window.add_dock_widget(widget, name="MEDIMP", area="right")
    assert widget.set_model_file(tiny_model)
    return viewer, widget, layer


def _wait(qtbot, widget, timeout=180_000):
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def _fill(widget, **values):
    widget.prefill(**{"exam": "D30", "gfr": "48", "donor_age": "58", "creatinine": "130; 142; 155", **values})


# ------------------------------------------------------------------------------------- plain helpers
def test_layer_to_volume_keeps_geometry_and_refuses_3d():
    volume = kidney_volume()
    data, kwargs, _ = volume_layer_data(volume, name="x")
    back = volume_from_layer_data(data, kwargs["scale"], kwargs["translate"], kwargs["metadata"], "x")
    np.testing.assert_allclose(back.affine, volume.affine)
    np.testing.assert_allclose(back.frame_times, volume.frame_times)
    with pytest.raises(ValueError, match="'flat' is 3D; MEDIMP needs a 4D DCE series"):
        volume_from_layer_data(np.zeros((4, 5, 6)), (1, 1, 1), (0, 0, 0), {}, "flat")


def test_drawn_rectangle_becomes_a_box_hand_computed():
    fallback = RoiBox(3, 9, 0, 40, 0, 48)
    # rectangle drawn on slice z=5 from (y, x) = (10.2, 20.6) to (30.4, 35.0)
    vertices = np.array([[5, 10.2, 20.6], [5, 10.2, 35.0], [5, 30.4, 35.0], [5, 30.4, 20.6]])
    assert roi_from_vertices(vertices, (20, 40, 48), fallback).to_list() == [3, 9, 10, 31, 21, 36]
    assert roi_from_vertices(vertices, (20, 40, 48)).to_list() == [0, 20, 10, 31, 21, 36]
    np.testing.assert_allclose(box_rectangle(RoiBox(2, 6, 10, 31, 21, 36))[:, 0], 3.5)
    with pytest.raises(ValueError, match="outside the volume along y"):
        roi_from_vertices(vertices + [0, 100, 0], (20, 40, 48))


# ------------------------------------------------------------------------------------------ the form
def test_prompt_preview_follows_the_form_and_keeps_hand_edits(viewer_widget):
    _, widget, _ = viewer_widget
    _fill(widget)
    text = widget.prompt_edit.toPlainText()
    assert "medium" in text and "first month" in text
    widget.variant_spin.setValue(3)
    assert widget.prompt_edit.toPlainText() not in ("", text)
    widget.prompt_edit.setPlainText("my own prompt")
    assert widget.prompt_state.text() == "edited by hand"
    widget.prefill(gfr="10")
    assert widget.prompt_edit.toPlainText() == "my own prompt"  # a hand edit is never overwritten
    widget.regenerate_button.click()
    assert "extremely low" in widget.prompt_edit.toPlainText()


def test_bad_form_values_show_messages_and_change_nothing(viewer_widget, qtbot):
    viewer, widget, _ = viewer_widget
    _fill(widget, gfr="abc", donor_age="300")
    n_layers = len(viewer.layers)
    widget.analyze()
    assert not widget.busy
    assert widget.errors["gfr"].visible and "not a number" in widget.errors["gfr"].value
    assert widget.errors["donor_age"].visible and widget.errors["donor_age"].value == "donor age 300 years is outside 0-100 years, the values a patient can have"
    assert not widget.errors["creatinine"].visible
    assert len(viewer.layers) == n_layers and widget.current_result() is None
    assert widget.status_label.text().count("clinical values need correcting") == 1  # one message, not a list
    # the preview never shows a sentence built from a value that is now invalid
    assert widget.prompt_edit.toPlainText() == "" and "waiting" in widget.prompt_state.text()
    widget.prefill(gfr="48", donor_age="58")
    assert not widget.errors["gfr"].visible
    assert "medium" in widget.prompt_edit.toPlainText()
    widget.prefill(gfr="4800")
    assert widget.prompt_edit.toPlainText() == ""


# ------------------------------------------------------------------------------------ the full flow
def test_analyze_then_saliency_overlay_on_the_source_geometry(viewer_widget, qtbot, tmp_path):
    viewer, widget, layer = viewer_widget
    _fill(widget)
    widget.analyze()
    assert widget.busy
    _wait(qtbot, widget)
    result = widget.current_result()
    assert result is not None and result.layer_name == "graft A"
    assert set(result.analysis.shown_risks("image")) == {"2y", "3y", "4y"}
    assert abs(sum(result.analysis.shown_gfr_reading.values()) - 1) < 1e-6
    assert "kidney ROI" in result.curves and len(result.curves["kidney ROI"]) == layer.data.shape[0]
    assert "Results for layer 'graft A'" in widget.results_label.text()
    # the three readings, each saying what it used; the typed GFR reaches the ones that use clinical values
    text = widget.results_label.text()
    assert "Images (MEDIMP)" in text and "Images + clinical values" in text and "Clinical values only" in text
    assert "from images of D30" in text and "clinical values: donor age, GFR" in text
    assert set(result.analysis.shown_risks("image+clinical")) == set(result.analysis.shown_risks("clinical")) == \
        {"2y", "3y", "4y"}
    assert "not a finding, not checked on patients the model never saw" in text

    viewer.screenshot(str(tmp_path / "before.png"), canvas_only=True, flash=False)
    widget.target_combo.setCurrentText("3y")
    widget.method_combo.setCurrentText("occlusion")
    widget.saliency()
    _wait(qtbot, widget)
    overlay = viewer.layers[-1]
    assert overlay.name == "saliency occlusion 3y D30 · graft A"  # method, target and exam
    roi = RoiBox.from_sequence(result.analysis.roi.to_list())
    assert overlay.data.shape == roi.shape
    np.testing.assert_allclose(overlay.scale, layer.scale[1:])
    np.testing.assert_allclose(overlay.translate, np.asarray(layer.translate[1:]) + np.asarray(roi.start) * layer.scale[1:])
    assert overlay.colormap.name == "saliency" and overlay.blending == "additive"
    np.testing.assert_allclose(overlay.colormap.map(np.array([0.0, 0.1]))[:, 3], 0.0)  # low values transparent
    # the map explained in words beside the results: its score, its share on the graft, the method's figures
    text = widget.results_label.text()
    assert "Saliency map, occlusion for 3y" in text and "prognosis logit of graft dysfunction at 3y" in text
    assert overlay.metadata["source_layer"] == "graft A"

    # what the user sees: the overlay's warm colours appear over the kidney
    viewer.dims.set_current_step(1, int(np.mean(roi.start[0] + roi.shape[0] // 2)))
    overlay.contrast_limits = (0.0, max(1e-3, float(overlay.data.max())))
    viewer.reset_view()
    qtbot.wait(100)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    from PIL import Image

    Image.fromarray(shot).save(tmp_path / "with_overlay.png")
    overlay.visible = False
    qtbot.wait(50)
    plain = viewer.screenshot(canvas_only=True, flash=False)
    overlay.visible = True

    def warm(img):
        r, g, b = (img[..., i].astype(int) for i in range(3))
        return int(((r - b > 60) & (r > 120)).sum())

    assert warm(shot) > warm(plain) + 200, (warm(shot), warm(plain))

    files = widget.export_report(tmp_path / "export")
    assert {"json", "csv", "pdf", "saliency", "figure", "screenshot"} <= set(files)
    folder = files["json"].parent
    assert folder.parent == tmp_path / "export" and folder.name.startswith("D30-")  # its own folder
    again = widget.export_report(tmp_path / "export")  # a second export never mixes with the first
    assert again["json"].parent != folder and sorted(p.name for p in folder.iterdir()) == sorted(
        p.name for p in again["json"].parent.iterdir())
    report = json.loads(files["json"].read_text())
    assert report["prompt"] == widget.prompt()
    assert report["saliency"]["target"] == "3y"
    import nibabel as nib

    saved = nib.load(files["saliency"])
    assert saved.shape == roi.shape[::-1]
    np.testing.assert_allclose(saved.affine, overlay.metadata["affine"], atol=1e-5)


def test_result_stays_with_the_layer_it_was_computed_for(viewer_widget, qtbot):
    viewer, widget, layer = viewer_widget
    data, kwargs, _ = volume_layer_data(kidney_volume(seed=1), name="graft B")
    viewer.add_image(data, **kwargs)
    widget.layer_combo.setCurrentText("graft A")
    _fill(widget)
    widget.analyze()
    widget.layer_combo.setCurrentText("graft B")  # the user switches mid-run
    _wait(qtbot, widget)
    assert widget.current_result() is None
    assert "No analysis of this layer yet" in widget.results_label.text()
    widget.layer_combo.setCurrentText("graft A")
    assert widget.current_result().layer_name == "graft A"

    widget.layer_combo.setCurrentText("graft B")
    widget.analyze()
    viewer.layers.remove("graft B")  # removed mid-run: the result is discarded, nothing crashes
    _wait(qtbot, widget)
    assert all(r.layer_name != "graft B" for r in widget._results.values())
    assert "removed" in widget.status_label.text()


def test_kidney_box_is_shown_and_a_moved_box_is_used(viewer_widget, qtbot):
    viewer, widget, layer = viewer_widget
    widget.show_kidney_box()
    _wait(qtbot, widget)
    shapes = viewer.layers["kidney box · graft A"]
    np.testing.assert_allclose(shapes.scale, layer.scale[1:])
    np.testing.assert_allclose(shapes.translate, layer.translate[1:])
    auto = RoiBox.from_sequence(shapes.metadata["medimp_roi"])
    assert widget.roi_combo.currentText() == shapes.name
    # the user drags the rectangle's corners in-plane
    rect = np.asarray(shapes.data[0])
    rect[:, 1] = np.where(rect[:, 1] > rect[:, 1].mean(), 30, 8)
    shapes.data = [rect]
    _fill(widget)
    widget.analyze()
    _wait(qtbot, widget)
    roi = widget.current_result().analysis.roi.to_list()
    assert roi[:2] == [auto.z0, auto.z1]  # slices from the automatic box
    assert roi[2:4] == [8, 31]
    assert roi[4:] == [auto.x0, auto.x1]


def test_a_3d_layer_is_not_offered_and_a_bad_model_file_is_refused(viewer_widget, tmp_path):
    viewer, widget, _ = viewer_widget
    viewer.add_image(np.zeros((5, 6, 7), np.float32), name="a 3D image")
    assert widget.layer_combo.findText("a 3D image") == -1
    bad = tmp_path / "other.safetensors"
    bad.write_bytes(b"not a model")
    assert not widget.set_model_file(bad)
    assert not widget.analyze_button.isEnabled()
    assert "card" in widget.card_label.text()


def test_a_one_frame_layer_is_not_offered_and_a_brain_fmri_is_labelled_outside_training(viewer_widget, qtbot):
    from nibabel.testing import data_path

    viewer, widget, _ = viewer_widget
    viewer.add_image(np.zeros((1, 5, 6, 7), np.float32), name="one frame")
    assert widget.layer_combo.findText("one frame") == -1
    viewer.open(str(data_path / "example4d.nii.gz"), plugin="napari-medimp")
    assert widget.layer_combo.currentText() == viewer.layers[-1].name
    widget.prefill(exam="D30")
    widget.analyze()
    _wait(qtbot, widget)
    text = widget.results_label.text()
    # an exam that failed its checks: no risk, no GFR reading, unless the user deliberately asks
    assert "Readings withheld:" in text and "not a dynamic series" in text
    assert "no enhancing kidney found" in text and "Probability of graft dysfunction" not in text
    assert widget.show_anyway_button.isVisibleTo(widget)
    assert widget.current_result().analysis.shown_risks("image") == {}
    widget.show_anyway()
    _wait(qtbot, widget)
    text = widget.results_label.text()
    assert "Outside what this model was trained on:" in text and "Shown anyway, by your choice" in text
    assert "Probability of graft dysfunction by year h" in text
    assert not widget.show_anyway_button.isVisibleTo(widget)
    result = widget.current_result()
    assert result.analysis.shown_by_choice is True and result.report()["results"]["shown_anyway"] is True


def test_at_napari_default_window_size_nothing_is_clipped_or_shifted_and_results_come_into_view(
        viewer_widget, qtbot, tmp_path):
    viewer, widget, _ = viewer_widget
    viewer.window._qt_window.resize(1089, 630)  # napari's default window
    qtbot.waitUntil(lambda: widget._scroll.viewport().width() < 400)
    viewport = widget._scroll.viewport()
    assert widget._content.minimumSizeHint().width() <= viewport.width()
    qtbot.waitUntil(lambda: widget._content.width() <= viewport.width())
    # tabbing to the last field of a row (the scroll area brings a focused field into view) never scrolls
    # the panel sideways
    unit = widget.fields["creatinine_unit"].native
    widget._scroll.ensureWidgetVisible(unit)
    assert widget._content.x() == 0 and widget._scroll.horizontalScrollBar().value() == 0
    right = unit.mapTo(widget._content, unit.rect().topRight()).x()
    assert right <= viewport.width(), (right, viewport.width())
    _fill(widget)
    widget.analyze()
    _wait(qtbot, widget)
    box = widget.results_box
    qtbot.waitUntil(lambda: viewport.rect().contains(box.mapTo(viewport, box.rect().topLeft()) + QPoint(5, 30)))
    viewer.window._qt_window.grab().save(str(tmp_path / "panel.png"))


def test_a_model_with_a_weak_evaluation_carries_a_caution_in_the_panel(viewer_widget, tmp_path):
    from helpers import make_model_file

    _, widget, _ = viewer_widget
    path = make_model_file(tmp_path, name="weak")
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["metrics"] = {"evaluation": [{"feature_set": "MEDIMP", "horizon": "2y", "auc": 0.25, "auc_low": 0.0,
                                       "auc_high": 0.6, "n_patients": 6, "n_positive": 4}]}
    card_path.write_text(json.dumps(card))
    assert widget.set_model_file(path)
    text = widget.card_label.text()
    assert "CAUTION: evaluated on too few patients to rely on (2y: 6 patients" in text
    assert "CAUTION: its AUC is below 0.6 (2y 0.25)" in text and "color:#ffb347" in text


def test_event_loop_keeps_running_while_the_worker_computes(viewer_widget, qtbot):
    """The analysis and the saliency map run off the main thread: a 10 ms timer keeps firing while they
    compute. (The 100 ms bound on the worst gap is measured in benchmarks/bench_widget.py: a wall-clock
    bound would fail on a loaded machine without anything being wrong.)"""
    _, widget, _ = viewer_widget
    qtbot.waitUntil(lambda: widget.warmed_up, timeout=120_000)
    _fill(widget)
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(10)
    widget.analyze()
    assert widget.busy  # the call returned at once: the work is in a worker
    before = len(ticks)
    _wait(qtbot, widget)
    assert len(ticks) > before  # the main thread served the timer while the worker ran
    widget.method_combo.setCurrentText("occlusion")
    widget.saliency()
    assert widget.busy
    before = len(ticks)
    _wait(qtbot, widget)
    timer.stop()
    assert len(ticks) > before and widget.current_result() is not None


def test_hostile_files_and_a_failing_analysis_give_one_message_each_and_leave_the_viewer_intact(
        viewer_widget, qtbot, tmp_path, monkeypatch):
    """Broken files through napari's reader: one message each (napari shows it), no layer, no crash; the
    panel on an image without signal: one error notification, the earlier result and layers kept."""
    from hostile import nifti_cases
    from napari.errors import ReaderPluginError

    from napari_medimp.core.io import DCEReadError

    viewer, widget, layer = viewer_widget
    unreadable = {"truncated .nii.gz", "truncated .nii", "text file named .nii.gz", "5D image",
                  "header claiming 400 G voxels", "qform only, voxel size 0"}
    refused = [c for c in nifti_cases(tmp_path) if c.name in unreadable]  # the others open, and are not analysed
    assert len(refused) == len(unreadable)
    for case in refused:
        before = [ly.name for ly in viewer.layers]
        try:
            viewer.open(str(case.path), plugin="napari-medimp")
        except (ReaderPluginError, DCEReadError) as exc:  # napari shows it as one notification
            message = str(exc.__cause__ if isinstance(exc, ReaderPluginError) else exc)
            assert "\n" not in message and case.path.name in message, (case.name, message)
        else:  # napari's own reader took it: then it opened nothing of ours, and said nothing wrong
            raise AssertionError(f"{case.name}: opened without a message")
        assert [ly.name for ly in viewer.layers] == before, case.name
    # the viewer still opens a good file afterwards
    viewer.open(str(next(c.path for c in nifti_cases(tmp_path / "again") if c.expect == "read")),
                plugin="napari-medimp")
    assert widget.layer_combo.currentText() != "graft A"  # the panel follows the exam just opened
    widget.layer_combo.setCurrentText("graft A")

    _fill(widget)
    widget.analyze()
    _wait(qtbot, widget)
    assert widget.current_result() is not None
    errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    flat = viewer.add_image(np.ones((6, 20, 40, 48), np.float32), name="flat")
    viewer.layers.selection.active = flat
    widget.layer_combo.setCurrentText("flat")
    widget.analyze()
    _wait(qtbot, widget)
    assert len(errors) == 1 and "flat" not in (widget.results_label.text() or "x"), errors
    assert "no enhancing region" in errors[0] or "constant" in errors[0], errors
    widget.layer_combo.setCurrentText("graft A")
    assert widget.current_result() is not None and "graft A" in widget.results_label.text()


def test_the_exam_and_values_come_from_the_opened_exam_never_from_the_previous_patient(
        viewer_widget, qtbot, training_cohort, monkeypatch):
    """Docked first, then a cohort exam opened: the panel reads that exam, with its patient's clinical.csv
    values marked as such; a typed exam that disagrees must be confirmed; another patient's layer never
    keeps the previous values."""
    import csv

    viewer, widget, _ = viewer_widget
    _fill(widget)  # values typed for the first image
    rows = {r["patient_id"]: r for r in csv.DictReader(open(training_cohort / "clinical.csv", newline=""))}

    viewer.open(str(training_cohort / "P0001" / "M3"), plugin="napari-medimp")
    assert widget.layer_combo.currentText() == "P0001 M3"
    assert widget.fields["exam"].value == "M3"
    assert float(widget.fields["gfr"].value) == pytest.approx(float(rows["P0001"]["gfr_M3"]))
    assert float(widget.fields["donor_age"].value) == pytest.approx(float(rows["P0001"]["donor_age"]))
    creatinine = [float(v) for v in widget.fields["creatinine"].value.split(";")]
    assert creatinine == [float(rows["P0001"][f"creatinine_{e}"]) for e in ("D15", "D30", "M3")]  # up to M3
    text = widget.identity_label.text()
    assert "patient P0001, exam M3" in text and "clinical.csv" in text and not widget.exam_confirm.isVisible()
    # the exam's tissue labels are picked, outlined, surrounding tissue left transparent over the image
    assert widget.labels_combo.currentText() == "P0001 M3 labels"
    labels = viewer.layers["P0001 M3 labels"]
    assert labels.contour == 1
    np.testing.assert_allclose(labels.colormap.map(np.array([1]))[0, 3], 0.0)
    assert labels.colormap.map(np.array([2]))[0, 3] > 0

    widget.fields["exam"].value = "M12"  # typed against the image
    assert "The form says exam M12, but layer 'P0001 M3' is exam M3" in widget.identity_label.text()
    assert widget.exam_confirm.isVisibleTo(widget)
    errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    widget.analyze()
    assert not widget.busy and len(errors) == 1 and "is exam M3" in errors[0]
    widget.exam_confirm.setChecked(True)
    widget.analyze()
    assert widget.busy
    _wait(qtbot, widget)
    assert widget.current_result().analysis.exam == "M12"  # as confirmed

    viewer.open(str(training_cohort / "P0003" / "D30"), plugin="napari-medimp")
    assert widget.layer_combo.currentText() == "P0003 D30" and widget.fields["exam"].value == "D30"
    assert float(widget.fields["gfr"].value) == pytest.approx(float(rows["P0003"]["gfr_D30"]))
    assert widget.fields["creatinine"].value.count(";") == 0  # P0003's D30 creatinine is missing: D15 only
    widget.layer_combo.setCurrentText("graft A")  # an image of no stated patient: nothing carried over
    assert all(widget.fields[name].value == "" for name in ("donor_age", "gfr", "creatinine", "creatinine_std"))
    assert not widget.exam_confirm.isVisible()


def test_a_patient_folder_reads_every_visit_from_the_exams_so_far(viewer_widget, qtbot, training_cohort):
    viewer, widget, _ = viewer_widget
    assert not widget.patient_box.isVisibleTo(widget)  # one image of no stated patient
    viewer.open(str(training_cohort / "P0001"), plugin="napari-medimp")
    assert widget.layer_combo.currentText().startswith("P0001")
    patient, exams = widget.patient_layers()
    assert patient == "P0001" and list(exams) == ["D15", "D30", "M3", "M12"]
    assert widget.patient_box.isVisibleTo(widget) and "4 exams open" in widget.patient_label.text()
    widget.patient_button.click()
    _wait(qtbot, widget)
    text = widget.patient_results.text()
    for visit, used in (("D15", "D15"), ("D30", "D15 + D30"), ("M12", "D15 + D30 + M3 + M12")):
        assert f"<b>{visit}</b>" in text and f"reading from {used}" in text
    assert "images + clinical values" in text and "clinical values only" in text
    assert widget.patient_canvas.isVisibleTo(widget) and not widget.patient_canvas.pixmap().isNull()
    assert "date unknown" not in text and "(day 30 after transplantation)" in text  # the sidecar's day
    # the figure is shrunk to the dock; a click opens it at its full size
    viewer.window._qt_window.resize(1089, 630)
    qtbot.waitUntil(lambda: widget._scroll.viewport().width() < 400)
    widget._show_patient()
    widget._scroll.ensureWidgetVisible(widget.patient_canvas)
    qtbot.wait(50)
    viewer.window._qt_window.grab().save("/tmp/gui/patient_view.png")
    shrunk = widget.patient_canvas.pixmap().width()
    qtbot.mouseClick(widget.patient_canvas, Qt.MouseButton.LeftButton)
    window = widget.patient_figure_window
    assert window is not None and window.isVisible()
    full = window.widget().pixmap()
    assert shrunk < 400 <= 1000 < full.width(), (shrunk, full.width())
    window.grab().save("/tmp/gui/patient_figure_full.png")
    window.close()
    widget.side_by_side.setChecked(True)
    assert _grid(viewer).enabled
    widget.side_by_side.setChecked(False)
    assert not _grid(viewer).enabled


def test_closing_right_after_docking_the_panel_exits_cleanly(tmp_path):
    """The panel imports heavy libraries in the background when it opens; a session closed before that
    ends must still exit normally (it aborted with 'WorkerBaseSignals has been deleted')."""
    import os
    import subprocess
    import sys

    script = tmp_path / "quick.py"
    script.write_text("import napari\n"
                      "from napari_medimp._widgets.medimp import MedimpWidget\n"
                      "viewer = napari.Viewer(show=True)\n"
                      "viewer.window.add_dock_widget(MedimpWidget(viewer), name='MEDIMP', area='right')\n"
                      "viewer.close()\n"
                      "print('closed')\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "closed" in done.stdout and "has been deleted" not in done.stderr


def test_an_exam_that_fails_its_image_checks_is_said_so_when_it_opens(viewer_widget, qtbot):
    """A brain fMRI opened in the viewer: before any Analyze, the panel says it is not a dynamic graft exam
    and that its readings will be withheld; a graft exam opened the same way raises nothing."""
    from nibabel.testing import data_path

    viewer, widget, graft = viewer_widget
    viewer.open(str(data_path / "example4d.nii.gz"), plugin="napari-medimp")
    layer = viewer.layers[-1]
    qtbot.waitUntil(lambda: _key(layer) in widget._open_checks, timeout=60_000)
    assert widget.layer_combo.currentText() == layer.name
    text = widget.results_label.text()
    assert "Checked on opening" in text and "not a dynamic series" in text and "will be withheld" in text
    assert "not a dynamic series" in widget.status_label.text()
    data, kwargs, _ = volume_layer_data(kidney_volume(), name="graft B")
    other = viewer.add_image(data, **kwargs)
    qtbot.waitUntil(lambda: _key(other) in widget._open_checks, timeout=60_000)
    assert not failed_messages(widget._open_checks[_key(other)])
    assert "Checked on opening" not in widget.results_label.text()


def test_a_3d_volume_and_a_label_file_opened_while_the_panel_starts_keep_their_notice_and_kind(
        make_napari_viewer, qtbot, training_cohort, tmp_path):
    """The panel imports heavy libraries in a background thread when it opens; a warning the reader raises
    meanwhile can be dropped by that thread's warning filters (simulated here by ignoring warnings while
    the files open). The panel shows the reader's notice once it is ready, once; a segmentation file
    opens as a labels layer with its region names, offered as tissue labels."""
    import warnings

    import nibabel as nib
    from napari.layers import Labels
    from napari.utils.notifications import notification_manager

    from napari_medimp._widgets.medimp import MedimpWidget

    source = nib.load(sorted(training_cohort.glob("P0001/M12/dce/*.nii.gz"))[0])
    one = tmp_path / "one_phase.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(source.dataobj)[..., 0], source.affine), one)
    seg = sorted(training_cohort.glob("P0001/M12/seg/*.nii.gz"))[0]
    viewer = make_napari_viewer(show=True)
    widget = MedimpWidget(viewer)
    viewer.window.add_dock_widget(widget, name="MEDIMP", area="right")
    seen: list[str] = []
    notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what the background import may do to a warning meanwhile
        viewer.open(str(one), plugin="napari-medimp")
        viewer.open(str(seg), plugin="napari-medimp")
    qtbot.waitUntil(lambda: widget.ready, timeout=120_000)
    qtbot.waitUntil(lambda: not widget.pending_notices, timeout=5_000)
    notice = f"{one}: 3D image opened as a single frame"
    assert seen.count(notice) == 1, seen
    labels = viewer.layers[-1]
    assert isinstance(labels, Labels) and labels.data.ndim == 3 and labels.data.dtype.kind in "iu"
    assert labels.metadata["region_names"][2] == "cortex"
    assert widget.labels_combo.findText(labels.name) >= 0
    assert not any(str(seg) in m for m in seen)  # a label map is not "a 3D image opened as a single frame"
    np.testing.assert_allclose(labels.scale, viewer.layers[0].scale[1:])


def test_at_napari_default_window_size_the_drop_downs_show_their_whole_choice(viewer_widget, qtbot):
    """At 1089x630 the kidney-box, saliency-method and target drop-downs read in full ("automatic (from the
    enhancement)", "integrated-gradients", "similarity"), not cut to "automatic (from the enh"."""
    viewer, widget, _ = viewer_widget
    viewer.window._qt_window.resize(1089, 630)
    qtbot.waitUntil(lambda: widget._scroll.viewport().width() < 400)
    widget.method_combo.setCurrentText("integrated-gradients")
    qtbot.wait(50)
    viewer.window._qt_window.grab().save("/tmp/gui/panel_dropdowns.png")
    widget._content.grab().save("/tmp/gui/panel_content.png")
    for combo in (widget.roi_combo, widget.method_combo, widget.target_combo, widget.layer_combo):
        for i in range(combo.count()):
            text = combo.itemText(i)
            needed = combo.fontMetrics().horizontalAdvance(text) + 28  # the frame and the arrow
            assert needed <= combo.width(), (text, needed, combo.width())
    assert widget.roi_combo.currentText().startswith("automatic (from the enhancement)")
    assert widget.target_combo.findText("similarity") >= 0
