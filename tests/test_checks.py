"""Checks that say when an image is outside what the model was trained on (hand-computed numbers)."""

import numpy as np
import pytest

from napari_medimp.core.checks import (
    OUTSIDE_TRAINING,
    Check,
    dynamic_check,
    embedding_check,
    embedding_distance,
    embedding_reference,
    enhancement_check,
    enhancement_ratio,
    failed_messages,
    frame_times_check,
    outside_training,
    voxel_size_check,
)
from napari_medimp.core.preprocess import RoiBox
from napari_medimp.core.volume import DCEVolume


def _series(values, shape=(2, 2, 2)):
    """A series whose frame t is constant values[t], except voxel (0, 0, 0) which reads twice as much."""
    data = np.stack([np.full(shape, v, np.float32) for v in values])
    data[:, 0, 0, 0] *= 2
    return DCEVolume(data, np.eye(4))


def test_enhancement_ratio_is_the_rise_over_the_brightest_baseline():
    # baseline frames 100, 100 (voxel 0: 200); after: 150, 300, 250 -> robust peak = second largest = 250
    volume = _series([100, 100, 150, 300, 250])
    roi = RoiBox.full(volume.shape[1:])
    # rise: 150 everywhere, 300 at voxel 0 -> 99th percentile of 8 values = 150 + 0.93 * 150 = 289.5
    # brightest baseline: 99th percentile of (200, 100 x 7) = 100 + 0.93 * 100 = 193
    assert enhancement_ratio(volume, roi) == pytest.approx(289.5 / 193)
    assert enhancement_check(volume, roi).ok is True


def test_a_series_that_barely_changes_is_not_an_enhancing_kidney():
    volume = _series([100, 100, 101, 103, 102])  # rise 2 (voxel 0: 4): 99th percentile 3.86, over 193
    check = enhancement_check(volume, RoiBox.full(volume.shape[1:]))
    assert check.ok is False
    assert "no enhancing kidney found" in check.message and "2.0 %" in check.message


def test_dynamic_series_needs_three_frames():
    assert dynamic_check(20).ok is True
    check = dynamic_check(2)
    assert check.ok is False and "not a dynamic series: 2 frame(s)" in check.message


def test_frame_times_unknown_sparse_short_or_long_are_flagged():
    assert frame_times_check(np.arange(20) * 15.0).ok is True
    assert frame_times_check(None).ok is False
    assert "too sparse" in frame_times_check([0.0, 2000.0]).message
    assert "should last" in frame_times_check([0.0, 5.0, 10.0]).message
    assert frame_times_check(np.arange(400) * 10.0).ok is False  # 66 min
    assert frame_times_check([0.0, 5.0, 5.0]).ok is False
    assert frame_times_check([0.0]).ok is None


def test_voxel_size_within_a_factor_two_of_the_model():
    assert voxel_size_check((4, 2.5, 2.5), (4, 2.5, 2.5)).ok is True
    assert voxel_size_check((2.2, 2, 2), (4, 2.5, 2.5)).ok is True  # 0.55 x along z
    check = voxel_size_check((10, 2.5, 2.5), (4, 2.5, 2.5))
    assert check.ok is False and "10 x 2.5 x 2.5 mm" in check.message


def test_embedding_distance_is_mahalanobis_along_the_reference_axes_hand_computed():
    reference = {"center": [1.0, 0.0, 0.0], "axes": [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], "variances": [0.01, 0.04],
                 "threshold": 1.5, "margin": 1.25, "n_exams": 3}
    # (1, 0.1, 0.2) has norm sqrt(1.05): along the axes 0.1 / sqrt(1.05) and 0.2 / sqrt(1.05)
    # distance = sqrt(0.01 / 1.05 / 0.01 + 0.04 / 1.05 / 0.04) = sqrt(2 / 1.05)
    assert embedding_distance([2.0, 0.2, 0.4], reference) == pytest.approx(np.sqrt(2 / 1.05))
    assert embedding_check([1.0, 0.1, 0.2], reference).ok is True  # 1.38 <= 1.5
    far = embedding_check([1.0, 0.0, 0.5], reference)  # 0.447 / 0.2 = 2.24
    assert far.ok is False and "unlike the exams the model was trained on" in far.message
    assert embedding_check([1.0, 0.0, 0.0], None).ok is None
    with pytest.raises(ValueError, match="size 2"):
        embedding_distance([1.0, 0.0], reference)


def test_embedding_reference_holds_out_patients_and_places_a_far_exam_outside():
    rng = np.random.default_rng(0)
    vectors = np.array([1.0, 0.0, 0.0, 0.0]) + rng.normal(0, 0.05, (60, 4))
    patients = np.repeat(np.arange(20), 3)
    reference = embedding_reference(vectors, groups=patients, cohort="c")
    assert reference["n_exams"] == 60 and reference["cohort"] == "c"
    assert reference["threshold"] == pytest.approx(1.25 * reference["held_out"]["max"])
    assert reference["held_out"]["median"] < reference["held_out"]["max"] < reference["threshold"]
    assert embedding_check(vectors[0], reference).ok is True
    assert embedding_check([0.0, 1.0, 0.0, 0.0], reference).ok is False


@pytest.mark.parametrize("vectors", [np.ones((5, 3)), np.full((12, 3), np.nan)])
def test_embedding_reference_refuses_too_few_or_invalid(vectors):
    with pytest.raises(ValueError):
        embedding_reference(vectors)


def test_outside_training_when_any_check_failed_not_when_one_was_not_made():
    made = [Check("dynamic", True, "a"), Check("embedding", None, "not checked")]
    assert not outside_training(made)
    failed = [*made, Check("voxel_size", False, "far")]
    assert outside_training(failed) and outside_training([c.to_dict() for c in failed])
    assert failed_messages(failed) == ["far"]
    assert OUTSIDE_TRAINING == "outside what this model was trained on"


# --------------------------------------------------------------------------------------------------
# through an analysis: the report and the summary carry the checks
# --------------------------------------------------------------------------------------------------
def _analyze(image, model, out, capsys, *extra):
    import json

    from napari_medimp.cli import main

    assert main(["analyze", str(image), "--model", str(model), "--exam", "D30", "--saliency", "none",
                 "--out", str(out), *extra]) == 0
    return json.loads((out / "medimp_report.json").read_text()), capsys.readouterr().out


def test_a_brain_fmri_is_read_but_labelled_outside_what_the_model_was_trained_on(tiny_model, tmp_path, capsys):
    from nibabel.testing import data_path

    report, printed = _analyze(data_path / "example4d.nii.gz", tiny_model, tmp_path / "fmri", capsys)
    checks = {c["id"]: c for c in report["checks"]}
    assert list(checks) == ["dynamic", "enhancement", "frame_times", "voxel_size", "embedding"]
    assert [checks[i]["ok"] for i in checks] == [False, False, False, True, None]  # the tiny card has no reference
    assert "not a dynamic series: 2 frame(s)" in checks["dynamic"]["message"]
    assert "no enhancing kidney found" in checks["enhancement"]["message"]
    assert report["results"]["outside_training"] is True
    assert "OUTSIDE WHAT THIS MODEL WAS TRAINED ON: not a dynamic series" in printed
    # no risk and no GFR reading for an exam that failed its checks, unless asked for, and then recorded
    results = report["results"]
    assert results["readings_withheld"] and "not a dynamic series" in results["readings_withheld"]
    assert results["prognosis_dysfunction_probability"] == {} and results["zero_shot_gfr"] == {}
    assert results["prognosis_clinical_only"] == {} and results["similarity"] is None
    assert "readings withheld" in printed and "--show-anyway" in printed and "probability" not in printed
    anyway, printed = _analyze(data_path / "example4d.nii.gz", tiny_model, tmp_path / "anyway", capsys,
                               "--show-anyway")
    assert anyway["results"]["shown_anyway"] is True and anyway["results"]["readings_withheld"] is None
    assert set(anyway["results"]["prognosis_dysfunction_probability"]) == {"2y", "3y", "4y"}
    assert "readings shown anyway, by choice" in printed


def test_a_graft_exam_passes_the_image_checks(tiny_model, tmp_path, capsys):
    from helpers import kidney_volume

    from napari_medimp.core.io import save_nifti

    volume = kidney_volume()
    image = save_nifti(tmp_path / "graft.nii.gz", volume.data, volume.affine, frame_times=volume.frame_times)
    report, printed = _analyze(image, tiny_model, tmp_path / "graft", capsys)
    assert [c["ok"] for c in report["checks"]] == [True, True, True, True, None]
    assert report["results"]["outside_training"] is False and "OUTSIDE" not in printed
    assert report["results"]["readings_withheld"] is None and report["results"]["shown_anyway"] is False
    assert set(report["results"]["prognosis_dysfunction_probability"]) == {"2y", "3y", "4y"}


def test_the_demo_model_card_places_unseen_graft_exams_inside_and_the_fmri_outside(sample_exam):
    """The graft is inside the demo model's embedding reference; the fMRI is placed outside by the image
    checks. (The demo model's embedding alone no longer separates it: its embedding is nearly
    two-dimensional, a GFR-like axis, and the fMRI lands at distance 4.5 against a limit of 21.9.)"""
    from nibabel.testing import data_path

    from napari_medimp.core.inference import Predictor
    from napari_medimp.core.io import load_dce

    predictor = Predictor.from_file("sample_data/medimp-demo.safetensors", device="cpu")
    reference = predictor.embedding_reference
    assert reference is not None and reference["n_exams"] >= 100 and len(reference["center"]) == 64
    assert np.shape(reference["axes"]) == (64, 64)
    volume, _ = sample_exam
    graft = predictor.embed_image(volume)
    assert embedding_check(graft.vector, reference).ok is True  # a patient neither cohort holds
    fmri = load_dce(data_path / "example4d.nii.gz")
    from napari_medimp.core.checks import image_checks, outside_training
    from napari_medimp.core.preprocess import find_kidney_roi

    checks = image_checks(fmri, find_kidney_roi(fmri), predictor.preprocess_config.target_spacing)
    assert outside_training(checks)
