"""The PDF of one analysis: identity as the image states it, acquisition, inputs as typed, checks with the
outside-training banner, results with how well each reading did on unseen patients, model facts, the
disclaimer; key slices with outlines, map, scale bar and orientation letters; the curves."""

from __future__ import annotations

import re
import zlib
from dataclasses import replace

import numpy as np
import pytest
from helpers import kidney_volume

from napari_medimp.core.checks import OUTSIDE_TRAINING
from napari_medimp.core.clinical import ClinicalRecord
from napari_medimp.core.curves import roi_and_region_curves
from napari_medimp.core.pdf import (
    PDF_FILE,
    exam_identity,
    key_slices,
    orientation_letters,
    pdf_text,
    report_pages,
    write_pdf,
)
from napari_medimp.core.pipeline import AnalysisRequest, AnalysisResult, run_analysis
from napari_medimp.core.preprocess import RoiBox
from napari_medimp.core.prompts import build_prompt
from napari_medimp.core.report import DISCLAIMER, clinical_inputs, describe_inputs
from napari_medimp.core.saliency import SaliencyMap
from napari_medimp.core.terms import ARTERY, CORTEX, KIDNEY_REGION_NAMES, MEDULLA


# --------------------------------------------------------------------------------------------------
# reading the PDF back: pages and the text of its content streams (TrueType text is UTF-16 there)
# --------------------------------------------------------------------------------------------------
def page_count(data: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page\b", data))


def _unescape(literal: bytes) -> bytes:
    return re.sub(rb"\\([()\\])", rb"\1", literal)


def pdf_strings(data: bytes) -> str:
    """Every text shown in the PDF's content streams, one line per text object."""
    lines = []
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", data, re.S):
        try:
            stream = zlib.decompress(match.group(1))
        except zlib.error:
            continue
        for block in re.findall(rb"BT(.*?)ET", stream, re.S):
            pieces = re.findall(rb"\(((?:\\.|[^\\)])*)\)", block, re.S)
            text = b"".join(_unescape(p) for p in pieces)
            lines.append(text.decode("utf-16-be", errors="replace"))
    return "\n".join(lines)


def _flat(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------------------------------
# analyses
# --------------------------------------------------------------------------------------------------
def kidney_labels(shape=(20, 40, 48)) -> np.ndarray:
    z, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]]
    r = ((z - 10) / 6) ** 2 + ((y - 18) / 10) ** 2 + ((x - 26) / 12) ** 2
    labels = np.zeros(shape, np.uint8)
    labels[r <= 1] = CORTEX
    labels[r <= 0.4] = MEDULLA
    labels[8:12, 16:20, 4:14] = ARTERY
    return labels


@pytest.fixture(scope="module")
def predictor(tiny_model):
    from napari_medimp.core.inference import Predictor

    return Predictor.from_file(tiny_model)


@pytest.fixture(scope="module")
def labelled(predictor):
    """Patient P7's D30 exam as a DICOM reader states it, with typed values, tissue labels and a Grad-CAM map."""
    volume = kidney_volume()
    volume.metadata.update(patient_id="P7", study_date="20240312", study_uid="1.2.826.0.1.7")
    record = ClinicalRecord.from_values(exam="D30", gfr="48", donor_age="70")
    request = AnalysisRequest(volume=volume, exam="D30", record=record, prompt=build_prompt(record),
                              labels=kidney_labels(), region_names=KIDNEY_REGION_NAMES,
                              clinical=clinical_inputs(gfr="48", donor_age="70", record=record, source="typed"),
                              source="P7/D30/dce", saliency_method="gradcam")
    return run_analysis(predictor, request)


def unlabelled(result: AnalysisResult) -> AnalysisResult:
    """The same reading of an image that states no patient, exam or date, without labels, values or map."""
    volume = kidney_volume()
    request = AnalysisRequest(volume=volume, exam="D30")
    return AnalysisResult(request=request, analysis=result.analysis, roi=result.roi,
                          curves=roi_and_region_curves(volume, result.roi),
                          inputs=describe_inputs(volume, exam="D30", roi=result.roi), model=result.model)


def hand_map(roi: RoiBox) -> SaliencyMap:
    z, y, x = np.mgrid[:roi.shape[0], :roi.shape[1], :roi.shape[2]]
    data = np.exp(-(((z - roi.shape[0] / 2) / 4) ** 2 + ((y - roi.shape[1] / 2) / 5) ** 2
                    + ((x - roi.shape[2] / 3) / 6) ** 2)).astype(np.float32)
    return SaliencyMap(data, roi, "occlusion", "2y", 0.4, np.eye(4), np.zeros((2, 2, 2)), exam="D30")


# --------------------------------------------------------------------------------------------------
# the file
# --------------------------------------------------------------------------------------------------
def test_pdf_of_a_labelled_analysis(labelled, tmp_path):
    path = write_pdf(labelled, tmp_path / PDF_FILE)
    data = path.read_bytes()
    assert data.startswith(b"%PDF") and data.rstrip().endswith(b"%%EOF")
    assert page_count(data) == 3  # summary, key slices (image + the Grad-CAM row), curves
    assert not list(tmp_path.glob(".*.part"))  # written atomically
    text = _flat(pdf_strings(data))
    assert "patient P7 (read from the image metadata 'patient_id')" in text
    assert "exam D30" in text and "exam date 2024-03-12" in text
    assert "1.2.826.0.1.7" in text  # the exam's id in the image
    assert "GFR 48 mL/min/1.73 m2 (typed)" in text and "donor age 70 years (typed)" in text
    assert DISCLAIMER in text
    assert "page 1 of 3" in text and "page 3 of 3" in text
    assert "Grad-CAM map of the prompt similarity" in text
    assert "passed: dynamic series of 8 frames" in text
    assert OUTSIDE_TRAINING.upper() not in text
    # every text the pages keep is in the PDF, searchable
    pages = report_pages(labelled)
    kept = [t for t in pdf_text(pages).splitlines() if not re.match(r"\d{4}-\d\d-\d\d \d\d:", t)]  # report time
    assert all(_flat(t) in text for t in kept)
    assert "field of view" in text and labelled.model["weights_sha256"][:12] in text  # no ligatures
    with pytest.raises(ValueError, match="folder"):
        write_pdf(labelled, tmp_path)


def test_summary_page_reads_like_a_report(labelled):
    pages = report_pages(labelled)
    first = _flat(" ".join(pages[0].texts))
    for words in ("Acquisition", "48 x 40 x 20 voxels (x, y, z)", "2 x 2 x 3 mm",
                  "8 frames from 0 s to 70 s", "Inputs", "Checks of the input", "Results (exam D30)",
                  "image-prompt similarity", "zero-shot GFR reading", "not a finding: not checked on patients the model",
                  "Probability of graft dysfunction by year h, reading at D30", "images (MEDIMP)",
                  "images + clinical values", "clinical values only", "2 years", "4 years",
                  "Model", "weights sha256", labelled.model["weights_sha256"][:12], "random weights (test)",
                  "tissue labels given: cortex, medulla, artery"):
        assert words in first, words
    assert labelled.model["weights_sha256"][:13] not in first  # the short hash only
    # no evaluation in this card: said once, no interval is invented
    assert "records no evaluation on unseen patients" in first and "95 %" not in first
    assert "donor_age" not in first and "gfr_ml" not in first  # clinical words, not code names


def test_card_evaluation_gives_each_reading_its_interval(labelled):
    evaluation = [{"feature_set": name, "horizon": h, "auc": 0.7 + 0.01 * i, "auc_low": 0.6, "auc_high": 0.8}
                  for i, name in enumerate(("MEDIMP", "MEDIMP + clinical", "clinical values only"))
                  for h in ("2y", "3y", "4y")]
    model = {**labelled.model, "metrics": {"evaluation": evaluation}}
    result = replace(labelled, model=model, written_report=None)
    first = _flat(" ".join(report_pages(result)[0].texts))
    assert first.count("AUC 0.70 (95 % CI 0.60-0.80)") == 3
    assert first.count("AUC 0.72 (95 % CI 0.60-0.80)") == 3
    assert "how well that reading did on unseen patients" in first


def test_image_without_identity_says_so_and_never_invents_one(labelled, tmp_path):
    result = unlabelled(labelled)
    pages = report_pages(result)
    assert len(pages) == 3  # summary, key slices (image only), curves
    text = _flat(pdf_text(pages))
    assert "patient not stated in the image" in text
    assert "exam not stated in the image" in text and "date not stated in the image" in text
    assert "clinical values none given" in text and "no tissue labels given" in text
    assert "P7" not in text
    data = write_pdf(result, tmp_path / "plain.pdf").read_bytes()
    assert page_count(data) == 3 and "patient not stated in the image" in pdf_strings(data)


def test_curves_without_frame_times_say_frame_numbers(labelled):
    result = unlabelled(labelled)
    result.request.volume.frame_times = None
    pages = report_pages(result)
    curves = _flat(" ".join(pages[2].texts))
    assert "frame numbers (from 0), because the image states no frame times" in curves
    assert "frame" in pages[2].texts  # the axes' label
    assert "frame times not stated in the image (curves in frame numbers)" in _flat(" ".join(pages[0].texts))
    assert "time not stated in the image" in _flat(" ".join(pages[1].texts))


def test_saliency_rows_and_pages(labelled):
    result = unlabelled(labelled)
    maps = [hand_map(result.roi)]
    pages = report_pages(result, saliency_maps=maps)
    assert len(pages) == 3
    slices = pages[1]
    # three image axes per row, one colour bar for the map
    assert len(slices.figure.axes) == 3 + 3 + 1
    assert "occlusion map of the image-only prognosis at 2 years (score 0.400)" in slices.texts
    five = report_pages(result, saliency_maps=maps * 5)  # image + 5 maps: 3 rows a page
    assert len(five) == 4 and "Key slices (continued)" in five[2].texts
    assert len(report_pages(labelled, saliency_maps=())[1].figure.axes) == 3  # no map asked: the image row only


def test_outside_training_banner(predictor, tmp_path):
    from nibabel.testing import data_path

    from napari_medimp.core.io import load_dce

    volume = load_dce(f"{data_path}/example4d.nii.gz")
    result = run_analysis(predictor, AnalysisRequest(volume=volume, exam="D30"))
    data = write_pdf(result, tmp_path / PDF_FILE).read_bytes()
    text = _flat(pdf_strings(data))
    assert OUTSIDE_TRAINING.upper() in text
    assert f"they are {OUTSIDE_TRAINING}" in text
    assert "FAILED: not a dynamic series" in text
    assert "patient not stated in the image" in text
    assert page_count(data) == 3
    assert "Readings withheld: the exam is outside what the model was trained on" in text
    assert "Probability of graft dysfunction" not in text and "zero-shot GFR reading" not in text
    result.show_anyway()
    text = _flat(pdf_strings(write_pdf(result, tmp_path / "anyway.pdf").read_bytes()))
    assert "shown because the user chose to see them anyway" in text
    assert "Probability of graft dysfunction by year h" in text and "Outcome: graft dysfunction by year h" in text


def test_render_summary_page_to_png(labelled, tmp_path):
    page = report_pages(labelled)[0]
    page.figure.savefig(tmp_path / "page1.png", dpi=60)
    assert (tmp_path / "page1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert tuple(page.figure.get_size_inches()) == pytest.approx((8.27, 11.69))


# --------------------------------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------------------------------
def test_identity_from_what_the_image_states():
    volume = kidney_volume()
    assert {k: v for k, v in exam_identity(volume).items() if v} == {}
    volume.metadata.update(patient="P002", exam="M3")  # a cohort's folder names
    who = exam_identity(volume)
    assert (who["patient"], who["exam"], who["date"]) == ("P002", "M3", None)
    assert who["patient_from"] == who["exam_from"] == "folder name"
    volume.metadata = {"sidecar": {"PatientID": "X1", "AcquisitionDateTime": "2023-05-02T10:11:12"}}
    who = exam_identity(volume)
    assert (who["patient"], who["exam"], who["date"]) == ("X1", None, "2023-05-02")
    assert who["patient_from"] == "sidecar 'PatientID'"
    volume.metadata = {"patient_id": "P7", "patient": "folder", "study_date": "20240312", "study_uid": "1.2.3"}
    who = exam_identity(volume)
    assert (who["patient"], who["exam"], who["date"]) == ("P7", "1.2.3", "2024-03-12")  # the tag, not the folder


def test_identity_names_the_patient_as_the_patient_view_does(tmp_path):
    """An exam stored one phase per folder keeps its first phase's sidecar: the report and the patient view
    read the patient from it alike."""
    import json

    from napari_medimp.core.longitudinal import patient_recorded

    phase = tmp_path / "1_phase.nii.gz"
    phase.write_bytes(b"")
    phase.with_name("1_phase.json").write_text(json.dumps({"PatientID": "K-204"}))
    volume = kidney_volume()
    volume.metadata = {"phase_files": [str(phase)], "patient": "folder"}
    who = exam_identity(volume)
    assert (who["patient"], who["patient_from"]) == ("K-204", "sidecar 'PatientID'") == patient_recorded(volume)


def test_orientation_letters_follow_the_affine():
    ras = orientation_letters(np.diag([2.0, 2.0, 3.0, 1.0]))
    assert (ras["left"], ras["right"], ras["top"], ras["bottom"]) == ("R", "L", "A", "P")
    assert ras["flip_columns"] and ras["flip_rows"]
    las = orientation_letters(np.diag([-2.0, -2.0, 3.0, 1.0]))  # x towards the left, y towards posterior
    assert (las["left"], las["right"], las["top"], las["bottom"]) == ("R", "L", "A", "P")
    assert not las["flip_columns"] and not las["flip_rows"]


def test_key_slices_at_peak_enhancement():
    volume = kidney_volume()
    chosen = key_slices(volume, RoiBox.from_sequence([2, 19, 6, 31, 12, 41]))
    assert chosen["frame"] == volume.n_frames - 1  # the kidney keeps enhancing
    assert chosen["peak_slice"] in (9, 10, 11)  # the ellipse's centre slice
    assert len(chosen["slices"]) == 3 and chosen["slices"] == sorted(chosen["slices"])
    assert chosen["peak_slice"] in chosen["slices"]
    assert all(2 <= z < 19 for z in chosen["slices"])
    thin = key_slices(volume, RoiBox.from_sequence([10, 11, 6, 31, 12, 41]))
    assert thin["slices"] == [10]


def test_the_frame_shown_is_named_by_number_and_time_and_enhancement_has_one_definition(labelled):
    """The key slices show the frame where the box's mean signal is highest: the page names it by number
    and time, never as 'peak enhancement'; the check's figure for the box's mean signal is the kidney-ROI
    curve's relative peak, under one stated definition."""
    from napari_medimp.core.curves import ENHANCEMENT_DEFINITION, ROI_CURVE
    from napari_medimp.core.report import percent

    pages = report_pages(labelled)
    every = _flat(" ".join(t for page in pages for t in page.texts))
    assert "peak enhancement" not in every.lower()
    slices = _flat(" ".join(pages[1].texts))
    frame = key_slices(labelled.request.volume, labelled.roi, labelled.curves.get(ROI_CURVE))["frame"]
    times = labelled.request.volume.frame_times
    assert f"Frame shown: frame {frame + 1} of {len(times)}, {times[frame] - times[0]:.0f} s after the first frame" \
        in slices
    assert _flat(ENHANCEMENT_DEFINITION[1:]) in _flat(" ".join(pages[2].texts))
    roi_rise = labelled.report()["curves"]["regions"][ROI_CURVE]["relative_peak_enhancement"]
    check = next(c for c in labelled.analysis.checks if c.id == "enhancement")
    assert f"its mean signal (the kidney-ROI curve) by {percent(roi_rise)}" in check.message
