"""Result plots, ROI/region curves and the analysis report."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from napari_medimp.core.curves import ROI_CURVE, roi_and_region_curves, roi_curve
from napari_medimp.core.plots import (
    DARK,
    LIGHT,
    plot_curves,
    plot_prognosis,
    plot_zero_shot,
    results_figure,
)
from napari_medimp.core.preprocess import RoiBox
from napari_medimp.core.report import (
    DISCLAIMER,
    SYNTHETIC_DISCLAIMER,
    build_report,
    clinical_inputs,
    describe_inputs,
    flatten,
    report_summary,
    roi_in_mm,
    write_report,
)
from napari_medimp.core.volume import DCEVolume

READING = {"extremely low": 0.05, "very low": 0.1, "low": 0.15, "medium": 0.5, "high": 0.2}
PROGNOSIS = {"2y": 0.2, "3y": 0.55, "4y": 0.95}


def _axes():
    return Figure().add_subplot()


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


# --------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dark", [False, True])
def test_zero_shot_bars_heights_order_and_highlight(dark):
    ax = _axes()
    plot_zero_shot(ax, READING, expected="low", dark=dark)
    bars = ax.patches
    assert len(bars) == 5
    assert [b.get_height() for b in bars] == pytest.approx(list(READING.values()))
    assert [b.get_x() for b in bars] == sorted(b.get_x() for b in bars)  # bins in the order given
    assert [t.get_text() for t in ax.get_xticklabels()] == ["extremely\nlow", "very low", "low", "medium", "high"]
    colors = DARK if dark else LIGHT
    faces = [to_hex(b.get_facecolor()) for b in bars]
    assert faces[2] == colors["highlight"]
    assert all(f == colors["bar"] for i, f in enumerate(faces) if i != 2)
    assert bars[2].get_linewidth() > bars[0].get_linewidth()
    assert ax.get_ylim() == (0.0, 1.0)
    assert {"5.0 %", "10 %", "15 %", "50 %", "20 %"} <= set(_texts(ax))
    assert "probability" in ax.get_ylabel()


def test_zero_shot_without_expected_and_unknown_expected():
    ax = _axes()
    plot_zero_shot(ax, READING)
    assert len({to_hex(b.get_facecolor()) for b in ax.patches}) == 1
    with pytest.raises(ValueError, match="not one of the bins"):
        plot_zero_shot(_axes(), READING, expected="enormous")


def test_prognosis_bars_and_reference_line():
    ax = _axes()
    plot_prognosis(ax, PROGNOSIS)
    assert [b.get_height() for b in ax.patches] == pytest.approx([0.2, 0.55, 0.95])
    assert ax.get_ylim() == (0.0, 1.0)
    assert any(np.allclose(line.get_ydata(), 0.5) for line in ax.lines)
    assert {"20 %", "55 %", "95 %"} <= set(_texts(ax))  # the same percent as the text beside the plot
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2 years", "3 years", "4 years"]


def test_prognosis_bars_with_clinical_values_and_the_reference():
    ax = _axes()
    plot_prognosis(ax, PROGNOSIS, with_clinical={"2y": 0.3, "3y": 0.6, "4y": 0.9},
                   clinical_only={"2y": 0.4, "3y": 0.5, "4y": 0.7})
    assert len(ax.patches) == 9
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["images (MEDIMP)", "images + clinical",
                                                                  "clinical only"]
    heights = sorted(round(b.get_height(), 2) for b in ax.patches)
    assert heights == sorted([0.2, 0.55, 0.95, 0.3, 0.6, 0.9, 0.4, 0.5, 0.7])


def test_prognosis_empty_says_so():
    ax = _axes()
    plot_prognosis(ax, {})
    assert not ax.patches
    assert any("no prognosis heads in this model" in t for t in _texts(ax))


def test_curves_relative_raw_and_frames():
    curves = {"cortex": np.array([100.0, 100.0, 300.0, 200.0]), "medulla": np.array([50.0, 50.0, 75.0, 100.0])}
    ax = _axes()
    plot_curves(ax, curves, np.array([0.0, 10.0, 20.0, 30.0]))
    assert len(ax.lines) == 2
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.0, 0.0, 2.0, 1.0])
    np.testing.assert_allclose(ax.lines[1].get_xdata(), [0.0, 10.0, 20.0, 30.0])
    assert "relative enhancement" in ax.get_ylabel() and ax.get_xlabel() == "time (s)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cortex", "medulla"]

    ax = _axes()
    plot_curves(ax, curves, None, relative=False)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), curves["cortex"])
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [0, 1, 2, 3])
    assert "mean signal" in ax.get_ylabel() and ax.get_xlabel() == "frame"

    ax = _axes()  # a zero baseline cannot be relative: raw signal, and the label says so
    plot_curves(ax, {"air": np.array([0.0, 0.0, 1.0, 1.0])}, None)
    assert "mean signal" in ax.get_ylabel()
    with pytest.raises(ValueError, match="frame times"):
        plot_curves(_axes(), curves, np.arange(3.0))


def test_results_figure_has_three_panels_and_saves_png(tmp_path):
    analysis = {"exam": "D30", "prompt": "The estimated glomerular filtration rate is medium.",
                "similarity": 0.21, "zero_shot_gfr": READING, "prognosis_dysfunction_probability": PROGNOSIS}
    figure = results_figure(analysis, {"kidney ROI": np.array([1.0, 1.0, 2.0])}, np.array([0.0, 5.0, 10.0]),
                            expected_bin="medium")
    assert isinstance(figure, Figure) and len(figure.axes) == 3
    assert len(figure.axes[0].patches) == 5 and len(figure.axes[1].patches) == 3
    assert len(figure.axes[2].lines) == 1
    assert "0.210" in figure._suptitle.get_text() and "not for clinical use" in figure._suptitle.get_text()
    assert figure._suptitle.get_text().startswith("patient not stated in the image - exam D30")
    named = results_figure(analysis, None, None, patient="P0001")
    assert named._suptitle.get_text().startswith("patient P0001 - exam D30")  # a filed figure says whose it is
    figure.savefig(tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    dark = results_figure({"zero_shot_gfr": {}, "prognosis_dysfunction_probability": {}}, None, None, dark=True)
    assert to_hex(dark.get_facecolor()) == DARK["background"]


# --------------------------------------------------------------------------------------------------
# curves
# --------------------------------------------------------------------------------------------------
def _small_volume(lazy=False):
    data = np.arange(3 * 4 * 5 * 6, dtype=np.float32).reshape(3, 4, 5, 6)
    if lazy:
        import dask.array as da

        data = da.from_array(data, chunks=(1, 4, 5, 6))
    return DCEVolume(data, np.diag([2.0, 1.5, 3.0, 1.0]), np.array([0.0, 4.0, 8.0]))


@pytest.mark.parametrize("lazy", [False, True])
def test_roi_curve_is_the_mean_inside_the_box(lazy):
    volume = _small_volume(lazy)
    data = np.arange(3 * 4 * 5 * 6, dtype=np.float64).reshape(3, 4, 5, 6)
    expected = [data[t, 1:3, 0:2, 2:5].mean() for t in range(3)]
    np.testing.assert_allclose(roi_curve(volume, RoiBox(1, 3, 0, 2, 2, 5)), expected)
    np.testing.assert_allclose(roi_curve(volume, [1, 3, 0, 2, 2, 5]), expected)
    # by hand for frame 0: rows z in {1,2}, y in {0,1}, x in {2,3,4}; value = 30 z + 6 y + x
    assert roi_curve(volume, RoiBox(1, 3, 0, 2, 2, 5))[0] == pytest.approx(30 * 1.5 + 6 * 0.5 + 3)
    with pytest.raises(ValueError, match="outside the volume"):
        roi_curve(volume, [0, 9, 0, 2, 0, 2])


def test_roi_and_region_curves():
    volume = _small_volume()
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[0, 0, 0] = 2
    labels[3, 4, 5] = 3
    labels[1, 1, 1] = 7
    curves = roi_and_region_curves(volume, [0, 4, 0, 5, 0, 6], labels)
    # no names given: every value is a region named by its number, none is taken for a kidney tissue
    assert list(curves) == [ROI_CURVE, "label 2", "label 3", "label 7"]
    np.testing.assert_allclose(curves["label 2"], volume.data[:, 0, 0, 0])
    np.testing.assert_allclose(curves["label 3"], volume.data[:, 3, 4, 5])
    np.testing.assert_allclose(curves["label 7"], volume.data[:, 1, 1, 1])
    np.testing.assert_allclose(curves[ROI_CURVE], volume.data.reshape(3, -1).mean(axis=1))
    named = roi_and_region_curves(volume, labels=labels, names={7: "graft", 9: "absent"})
    assert list(named) == ["graft"]
    np.testing.assert_allclose(named["graft"], volume.data[:, 1, 1, 1])
    only_other = np.zeros_like(labels)
    only_other[2, 2, 2] = 1
    assert list(roi_and_region_curves(volume, labels=only_other)) == ["label 1"]
    assert roi_and_region_curves(volume) == {}


def test_label_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError) as info:
        roi_and_region_curves(_small_volume(), [0, 4, 0, 5, 0, 6], np.zeros((4, 5, 7), np.uint8))
    assert "(4, 5, 7)" in str(info.value) and "(4, 5, 6)" in str(info.value)


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------
def _reading(visit: str, image_risks: dict):
    from napari_medimp.core.inference import PrognosisReading

    return PrognosisReading(visit=visit, exams_used=[visit], risks={"image": dict(image_risks)}, clinical_given=[],
                            clinical_missing=[], notes=[])


def _analysis(exam="D30", roi=None, prompt=None, similarity=None, gfr_reading=None, reading=None, model=None):
    """A typed analysis of one exam, as :func:`~napari_medimp.core.inference.analyze` gives it."""
    from napari_medimp.core.inference import Analysis

    return Analysis(exam=exam, roi=roi or RoiBox(0, 1, 0, 1, 0, 1), prompt=prompt, similarity=similarity,
                    gfr_reading=dict(gfr_reading or {}), reading=reading, embedding=np.zeros(4, np.float32),
                    model=dict(model or {}))


def _report(training_data="synthetic cohort generated by napari-medimp", saliency=True):
    from napari_medimp.core.clinical import ClinicalRecord

    volume = _small_volume()
    record = ClinicalRecord.from_values(exam="M3", gfr="48", donor_age="70", creatinine="1.2;1.5",
                                        creatinine_unit="mg/dL")
    clinical = clinical_inputs(gfr="48", donor_age="70", creatinine="1.2;1.5", creatinine_unit="mg/dL",
                               record=record)
    roi = RoiBox(1, 3, 0, 2, 2, 5)
    inputs = describe_inputs(volume, exam="M3", roi=roi, roi_source="given", clinical=clinical,
                             layer_name="graft DCE", source="/data/p1_m3.nii.gz")
    analysis = _analysis(exam="M3", roi=roi, prompt="a prompt", similarity=np.float32(0.25), gfr_reading=READING,
                         reading=_reading("M3", PROGNOSIS), model={"x": 1})
    model = {"name": "demo", "architecture": "clip_resnet_tiny", "training_data": training_data,
             "metrics": {"auc": 0.8}, "licence": "BSD-3-Clause", "weights_sha256": "ab" * 32, "device": "cpu"}
    sal = {"method": "gradcam", "target": "similarity", "score": 0.25, "roi_zyx": roi.to_list(),
           "file": "out/saliency.nii.gz"} if saliency else None
    curves = roi_and_region_curves(volume, roi)
    curves["flat"] = np.zeros(3)  # relative enhancement undefined: NaN must not reach the JSON
    return build_report(analysis=analysis, inputs=inputs, prompt="a prompt", model=model, saliency=sal,
                        curves=curves, times=volume.frame_times, software={"napari_medimp": "0.1.0",
                                                                            "torch": "2", "monai": "1"})


def test_report_contents():
    report = _report()
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    inputs = report["inputs"]
    assert inputs["source_file"] == "/data/p1_m3.nii.gz" and inputs["layer_name"] == "graft DCE"
    assert inputs["exam"] == "M3"
    # each value says where it came from
    assert inputs["clinical"]["entered"]["creatinine"] == {"value": "1.2;1.5", "unit": "mg/dL", "source": "typed"}
    assert inputs["clinical"]["entered"]["gfr"] == {"value": "48", "unit": "mL/min/1.73 m2", "source": "typed"}
    assert inputs["clinical"]["used"]["creatinine_umol_l"] == pytest.approx([106.08, 132.6], abs=0.1)
    roi = inputs["roi"]
    assert roi["voxels_zyx"] == [1, 3, 0, 2, 2, 5] and roi["source"] == "given"
    # affine diag(2, 1.5, 3): voxel (z, y, x) = (1, 0, 2) -> (x * 2, y * 1.5, z * 3)
    assert roi["first_voxel_centre_ras_mm"] == [4.0, 0.0, 3.0]
    assert roi["last_voxel_centre_ras_mm"] == [8.0, 1.5, 6.0]
    assert roi["size_zyx_mm"] == [6.0, 3.0, 6.0]
    assert report["prompt"] == "a prompt"
    assert report["model"]["weights_sha256"] == "ab" * 32
    assert report["model"]["training_data"].startswith("synthetic")
    results = report["results"]
    assert results["similarity"] == pytest.approx(0.25)
    assert results["zero_shot_gfr"] == READING and results["zero_shot_gfr_most_likely"] == "medium"
    assert results["entered_gfr_bin"] == "medium" and results["zero_shot_bin_distance"] == 0
    assert results["prognosis_dysfunction_probability"] == PROGNOSIS
    assert report["saliency"]["method"] == "gradcam" and report["saliency"]["file"] == "out/saliency.nii.gz"
    curves = report["curves"]
    assert curves["time_unit"] == "s" and curves["times"] == [0.0, 4.0, 8.0]
    roi_summary = curves["regions"][ROI_CURVE]
    assert set(roi_summary) >= {"baseline", "peak_enhancement", "time_to_peak_s", "time_to_half_peak_s"}
    assert roi_summary["time_to_peak_s"] == 8.0
    assert curves["regions"]["flat"]["relative_peak_enhancement"] is None
    assert report["software"] == {"napari_medimp": "0.1.0", "torch": "2", "monai": "1"}
    assert report["created_utc"].endswith("+00:00")
    assert report["disclaimer"].startswith(DISCLAIMER) and SYNTHETIC_DISCLAIMER in report["disclaimer"]
    assert report["model"]["trained_on_synthetic_data"] is True
    assert "research software, not for clinical use" in report["disclaimer"].lower()


def test_report_for_real_data_keeps_the_fixed_disclaimer_only():
    report = _report(training_data="hospital cohort 2016-2020", saliency=False)
    assert report["disclaimer"] == DISCLAIMER and report["saliency"] is None
    assert report["model"]["trained_on_synthetic_data"] is False


def test_curve_summaries_without_times_are_in_frames():
    volume = _small_volume()
    report = build_report(analysis=_analysis(gfr_reading=READING), inputs={}, prompt=None, model={},
                          curves={"c": roi_curve(volume, [0, 4, 0, 5, 0, 6])}, times=None)
    assert report["curves"]["time_unit"] == "frame"
    assert report["curves"]["regions"]["c"]["time_to_peak_frame"] == 2.0
    assert report["results"]["entered_gfr_bin"] is None
    assert set(report["software"]) == {"napari_medimp", "torch", "monai"} and report["software"]["torch"]


def test_write_report_round_trip(tmp_path):
    report = _report()
    paths = write_report(report, tmp_path / "new" / "folder")
    assert set(paths) == {"json", "csv"}
    assert paths["json"].name == "medimp_report.json" and paths["csv"].name == "medimp_report.csv"
    assert json.loads(paths["json"].read_text()) == report
    with open(paths["csv"], newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["key", "value"]
    table = dict(rows[1:])
    assert len(table) == len(rows) - 1  # keys are unique
    assert table["inputs.exam"] == "M3"
    assert table["inputs.roi.voxels_zyx"] == "1;3;0;2;2;5"
    assert table["inputs.clinical.entered.gfr.value"] == "48"
    assert float(table["results.prognosis_dysfunction_probability.4y"]) == 0.95
    assert float(table["results.zero_shot_gfr.medium"]) == 0.5
    assert table["model.weights_sha256"] == "ab" * 32
    assert table["curves.regions.flat.relative_peak_enhancement"] == ""
    assert table["disclaimer"] == report["disclaimer"]
    assert not list(paths["json"].parent.glob(".*part"))  # no temporary left behind
    again = write_report(report, tmp_path / "new" / "folder", stem="second")
    assert again["json"].name == "second.json"


def test_write_report_refuses_a_file_as_folder(tmp_path):
    target = tmp_path / "taken"
    target.write_text("x")
    with pytest.raises(ValueError, match="taken"):
        write_report(_report(), target)
    with pytest.raises(ValueError, match="plain file name"):
        write_report(_report(), tmp_path, stem="../up")


def test_flatten_and_summary():
    rows = dict(flatten({"a": {"b": [1, 2.5], "c": None, "d": True}, "e": [{"f": 1}], "g": {}}))
    assert rows == {"a.b": "1;2.5", "a.c": "", "a.d": "true", "e.0.f": "1", "g": ""}
    text = report_summary(_report(), {"json": "out/medimp_report.json"})
    assert "a prompt" in text and "0.250" in text and "medium (50 %)" in text
    assert "given GFR (48) is medium" in text
    assert "4y 95 %" in text and "out/medimp_report.json" in text and "not for clinical use" in text


def test_roi_in_mm_of_an_oblique_affine():
    affine = np.array([[0.0, 0.0, 3.0, 10.0], [2.0, 0.0, 0.0, 20.0], [0.0, 1.0, 0.0, 30.0], [0, 0, 0, 1]])
    mm = roi_in_mm([0, 2, 0, 3, 0, 4], affine)
    assert mm["first_voxel_centre_ras_mm"] == [10.0, 20.0, 30.0]
    assert mm["last_voxel_centre_ras_mm"] == [13.0, 26.0, 32.0]  # (x, y, z) = (3, 2, 1)
    assert mm["size_zyx_mm"] == [6.0, 3.0, 8.0]


def test_a_label_map_with_too_many_values_is_refused():
    volume = _small_volume()
    labels = np.arange(4 * 5 * 6, dtype=np.int32).reshape(4, 5, 6)  # 119 non-zero values: an image, not labels
    with pytest.raises(ValueError, match="holds 119 different values; at most 64 regions"):
        roi_and_region_curves(volume, labels=labels)


def test_each_export_gets_a_new_folder_never_an_earlier_one(tmp_path):
    from napari_medimp.core.outputs import new_export_folder

    first = new_export_folder(tmp_path, "P1-D30-20261201-0730")
    (first / "medimp_report.json").write_text("{}")
    second = new_export_folder(tmp_path, "P1-D30-20261201-0730")
    assert first.name == "P1-D30-20261201-0730" and second.name == "P1-D30-20261201-0730-2"
    assert list(second.iterdir()) == [] and (first / "medimp_report.json").read_text() == "{}"
    assert new_export_folder(tmp_path, "a/b: c").name == "a_b__c"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        new_export_folder(tmp_path / "file", "x")


def test_the_similarity_is_read_against_its_range_on_exams_with_their_own_prompts():
    from napari_medimp.core.report import similarity_text

    reference = {"n_exams": 437, "low": 0.5, "median": 0.75, "high": 0.85}
    assert similarity_text({"similarity": 0.8, "similarity_reference": reference}) == (
        "0.800 (cosine; on 437 exams with their own prompts it ranged 0.50 to 0.85, median 0.75)")
    assert similarity_text({"similarity": -0.7, "similarity_reference": reference}).endswith(
        "below that range: the image and the prompt's values disagree)")
    assert similarity_text({"similarity": 0.3}) == "0.300 (cosine)"


def test_a_tiny_risk_is_never_printed_as_zero():
    from napari_medimp.core.report import percent

    assert percent(0.0004) == "< 0.1 %" and percent(1e-9) == "< 0.1 %"
    assert percent(0.0) == "0.0 %" and percent(0.0006) == "0.1 %" and percent(0.002) == "0.2 %"
    assert percent(0.45) == "45 %" and percent(0.9996) == "> 99 %" and percent(1.0) == "100 %"


def test_prognosis_bar_labels_never_overlap_in_the_panel_figure():
    """The panel draws the three readings side by side in a 4-inch figure: close risks (3.2 % beside
    3.1 %) must each stay readable, their labels never running into each other."""
    from napari_medimp.core.plots import panel_images  # noqa: F401  (the panel's figure size below)

    figure = Figure(figsize=(4.0, 2.2), dpi=90)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    close = {"2y": 0.032, "3y": 0.0004, "4y": 0.95}
    plot_prognosis(ax, close, with_clinical={"2y": 0.031, "3y": 0.0006, "4y": 0.94},
                   clinical_only={"2y": 0.033, "3y": 0.001, "4y": 0.96})
    figure.tight_layout()
    renderer = figure.canvas.get_renderer()
    labels = [t for t in ax.texts if t.get_text().endswith("%")]
    assert {"3.2 %", "3.1 %", "< 0.1 %", "95 %"} <= {t.get_text() for t in labels}
    boxes = [t.get_window_extent(renderer) for t in labels]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
    axes_box = ax.get_window_extent(renderer)
    assert all(axes_box.y0 - 1 <= b.y0 and b.y1 <= axes_box.y1 + 1 for b in boxes)  # inside the plot


def test_a_typed_analysis_draws_and_reports_only_what_is_shown():
    from napari_medimp.core.checks import Check

    analysis = _analysis(exam="M3", prompt="a prompt", similarity=0.4, gfr_reading=READING,
                         reading=_reading("M3", PROGNOSIS))
    figure = results_figure(analysis, None, None)
    assert len(figure.axes[0].patches) == 5 and len(figure.axes[1].patches) == 3
    assert "exam M3" in figure._suptitle.get_text() and "0.400" in figure._suptitle.get_text()
    analysis.checks.append(Check("dynamic", False, "not a dynamic series"))
    assert analysis.readings_withheld == "not a dynamic series" and analysis.shown_risks("image") == {}
    withheld = results_figure(analysis, None, None)
    assert not withheld.axes[0].patches and not withheld.axes[1].patches
    assert "similarity" not in withheld._suptitle.get_text()
    results = build_report(analysis=analysis, inputs={}, prompt=None, model={})["results"]
    assert results["readings_withheld"] == "not a dynamic series" and results["similarity"] is None
    assert results["prognosis_dysfunction_probability"] == {} and results["zero_shot_gfr"] == {}
    analysis.shown_anyway = True
    assert analysis.readings_withheld is None and analysis.shown_by_choice
    results = build_report(analysis=analysis, inputs={}, prompt=None, model={})["results"]
    assert results["shown_anyway"] is True and results["prognosis_dysfunction_probability"] == PROGNOSIS
