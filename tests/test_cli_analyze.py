"""``medimp analyze``: one exam in, report + figure + saliency map out; bad inputs refused clearly."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from helpers import kidney_volume

from napari_medimp.cli import main
from napari_medimp.core.io import load_dce, save_nifti
from napari_medimp.core.pipeline import saliency_file_name
from napari_medimp.core.terms import SALIENCY_METHODS

ROI = ["2", "18", "6", "32", "10", "42"]
#: the map of the analysis below: integrated gradients of the prompt similarity at M3
MAP = saliency_file_name("integrated-gradients", "similarity", "M3")
OUTPUTS = ("medimp_report.json", "medimp_report.csv", "results.png", MAP)




@pytest.fixture(scope="module")
def exam(tmp_path_factory):
    """A small 4D NIfTI (8 frames, 20 x 40 x 48 voxels) and a cortex/medulla label map on its grid."""
    folder = tmp_path_factory.mktemp("exam")
    volume = kidney_volume()
    image = save_nifti(folder / "graft.nii.gz", volume.data, volume.affine, frame_times=volume.frame_times)
    z, y, x = np.mgrid[:20, :40, :48]
    r = ((z - 10) / 6) ** 2 + ((y - 18) / 10) ** 2 + ((x - 26) / 12) ** 2
    labels = np.where(r <= 0.4, 3, np.where(r <= 1, 2, 0)).astype(np.uint8)
    seg = save_nifti(folder / "seg.nii.gz", labels, volume.affine, dtype=np.uint8)
    (folder / "seg.json").write_text(json.dumps({"Labels": {"0": "background", "2": "cortex", "3": "medulla"}}))
    return image, seg, labels


@pytest.fixture(scope="module")
def analyzed(exam, tiny_model, tmp_path_factory):
    image, seg, _ = exam
    out = tmp_path_factory.mktemp("analysis")
    argv = ["analyze", str(image), "--model", str(tiny_model), "--exam", "M3", "--gfr", "42",
            "--donor-age", "70", "--creatinine", "1.2;1.4;1.9", "--creatinine-unit", "mg/dL",
            "--roi", *ROI, "--labels", str(seg), "--saliency", "integrated-gradients", "--out", str(out)]
    return main(argv), out


def test_analyze_writes_the_four_files(analyzed, capsys):
    code, out = analyzed
    assert code == 0
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob(".*"))  # no temporary files left


def test_analyze_report_contents(analyzed, exam, tiny_model):
    _, out = analyzed
    image, _, labels = exam
    report = json.loads((out / "medimp_report.json").read_text())
    inputs = report["inputs"]
    assert inputs["source_file"] == str(image) and inputs["exam"] == "M3"
    assert inputs["roi"]["voxels_zyx"] == [int(v) for v in ROI] and inputs["roi"]["source"] == "given"
    assert inputs["reading_notes"] == []  # a clean file: nothing assumed
    assert inputs["clinical"]["entered"]["creatinine"] == {"value": "1.2;1.4;1.9", "unit": "mg/dL",
                                                           "source": "typed"}
    assert inputs["exam_source"] == "typed (--exam)"
    assert inputs["labels"]["file"] == str(exam[1])  # given with --labels: its exam is not known
    assert inputs["clinical"]["used"]["gfr_ml_min_1_73m2"] == 42.0
    prompt = report["prompt"]
    assert "glomerular filtration rate is low" in prompt and "third month" in prompt
    results = report["results"]
    assert -1 <= results["similarity"] <= 1
    assert sum(results["zero_shot_gfr"].values()) == pytest.approx(1.0, abs=1e-4)
    assert results["entered_gfr_bin"] == "low"
    assert set(results["prognosis_dysfunction_probability"]) == {"2y", "3y", "4y"}
    card = json.loads(tiny_model.with_suffix(".json").read_text())
    assert report["model"]["weights_sha256"] == card["weights"]["sha256"]
    assert report["model"]["training_data"] == "random weights (test)"
    assert "not for clinical use" in report["disclaimer"].lower()
    saliency = report["saliency"]
    assert saliency["method"] == "integrated-gradients" and saliency["target"] == "similarity"
    assert saliency["file"] == str(out / MAP) and saliency["exam"] == "M3"
    assert report["saliency_maps"] == [saliency]
    # the label file names cortex and medulla: the map's shares per region, each kind summing to 1
    assert list(saliency["regions"]) == ["cortex", "medulla", "outside"]
    for kind in ("box", "energy", "top"):
        assert sum(r[kind] for r in saliency["regions"].values()) == pytest.approx(1.0)
    inside = (labels[2:18, 6:32, 10:42] > 0).mean()  # the box's voxels the labels call kidney
    assert saliency["regions"]["cortex"]["box"] + saliency["regions"]["medulla"]["box"] == pytest.approx(inside)
    assert saliency["groups"] == {}  # no collecting system or artery named: no graft total
    assert "cosine similarity" in saliency["score_meaning"] and "top 10 %" in saliency["explanation"]
    regions = report["curves"]["regions"]
    assert list(regions) == ["kidney ROI", "cortex", "medulla"]
    volume = load_dce(image)
    expected = volume.data[:, labels == 2].mean(axis=1)
    np.testing.assert_allclose(regions["cortex"]["mean_signal"], expected, rtol=1e-5)
    assert report["curves"]["times"] == [float(t) for t in volume.frame_times]
    assert set(report["software"]) == {"napari_medimp", "torch", "monai"}
    with open(out / "medimp_report.csv", newline="") as fh:
        table = dict(list(csv.reader(fh))[1:])
    assert table["inputs.exam"] == "M3" and table["results.entered_gfr_bin"] == "low"


def test_analyze_saliency_has_the_roi_affine(analyzed, exam):
    _, out = analyzed
    image, _, _ = exam
    saved = nib.load(str(out / MAP))
    source = load_dce(image)
    z0, z1, y0, y1, x0, x1 = (int(v) for v in ROI)
    assert saved.shape == (x1 - x0, y1 - y0, z1 - z0)
    expected = source.affine.copy()
    expected[:3, 3] = (source.affine @ [x0, y0, z0, 1])[:3]
    np.testing.assert_allclose(saved.affine, expected, atol=1e-4)
    values = np.asarray(saved.dataobj)
    assert values.min() >= 0 and values.max() <= 1
    sidecar = json.loads((out / MAP.replace(".nii.gz", ".json")).read_text())
    assert sidecar["target"] == "similarity" and sidecar["exam"] == "M3" and "cortex" in sidecar["regions"]


def test_analyze_prints_a_summary(exam, tiny_model, tmp_path, capsys):
    image, _, _ = exam
    out = tmp_path / "noprompt"
    assert main(["analyze", str(image), "--model", str(tiny_model), "--roi", *ROI, "--saliency", "none",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    # the tiny model's card has no evaluation on unseen patients: its readings are no finding, said why
    assert "no clinical values" in text and "2y" in text
    assert "zero-shot GFR reading: not a finding (not checked on patients the model never saw)" in text
    assert "images (MEDIMP): not a finding (not evaluated on patients the model never saw; it reads 2y" in text
    assert str(out / "medimp_report.json") in text and "results.png" in text
    assert not list(out.glob("saliency*"))
    report = json.loads((out / "medimp_report.json").read_text())
    assert report["prompt"] is None and report["saliency"] is None and report["saliency_maps"] == []
    assert report["inputs"]["roi"]["source"] == "given"


def test_analyze_without_prompt_explains_the_first_horizon(exam, tiny_model, tmp_path):
    image, _, _ = exam
    out = tmp_path / "horizon"
    assert main(["analyze", str(image), "--model", str(tiny_model), "--out", str(out)]) == 0
    report = json.loads((out / "medimp_report.json").read_text())
    assert report["saliency"]["target"] == "2y" and report["saliency"]["method"] == SALIENCY_METHODS[0]
    assert report["saliency"]["regions"] is None and report["saliency"]["regions_note"].startswith("no tissue labels")
    assert report["inputs"]["roi"]["source"].startswith("automatic")
    assert list(report["curves"]["regions"]) == ["kidney ROI"]


def test_analyze_the_bundled_sample(tiny_model, tmp_path, capsys):
    out = tmp_path / "sample"
    assert main(["analyze", "sample", "--gfr", "48", "--model", str(tiny_model), "--saliency", "none",
                 "--out", str(out)]) == 0
    report = json.loads((out / "medimp_report.json").read_text())
    assert "sample" in report["inputs"]["source_file"] and report["results"]["entered_gfr_bin"] == "medium"
    assert {"kidney ROI", "cortex", "medulla"} <= set(report["curves"]["regions"])
    cortex = report["curves"]["regions"]["cortex"]
    assert cortex["peak_enhancement"] > 0
    assert "medium" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# bad inputs: exit code 1 (unusable input) or 2 (invalid option), a message naming the problem
# --------------------------------------------------------------------------------------------------
def _fails(capsys, argv, code, *words):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for word in words:
        assert word.lower() in err.lower(), (word, err)
    return err


def test_analyze_refuses_a_3d_file(tmp_path, tiny_model, capsys):
    image = save_nifti(tmp_path / "t1.nii.gz", kidney_volume().data[0], np.eye(4))
    _fails(capsys, ["analyze", str(image), "--model", str(tiny_model), "--out", str(tmp_path / "o")], 1,
           "t1.nii.gz", "3D", "frames")
    assert not (tmp_path / "o").exists()


def test_analyze_refuses_an_all_nan_image(tmp_path, tiny_model, capsys):
    image = save_nifti(tmp_path / "nan.nii.gz", np.full((4, 6, 8, 8), np.nan, np.float32), np.eye(4))
    _fails(capsys, ["analyze", str(image), "--model", str(tiny_model), "--out", str(tmp_path / "o")], 1,
           "nan.nii.gz", "NaN")


def test_analyze_refuses_absurd_and_non_numeric_clinical_values(exam, tiny_model, tmp_path, capsys):
    image = str(exam[0])
    base = ["analyze", image, "--model", str(tiny_model), "--out", str(tmp_path / "o")]
    _fails(capsys, [*base, "--gfr", "900"], 1, "gfr", "900")
    _fails(capsys, [*base, "--donor-age", "140"], 1, "donor age", "140")
    _fails(capsys, [*base, "--gfr", "nan"], 1, "gfr", "not a number")
    _fails(capsys, [*base, "--gfr", "forty"], 1, "gfr", "forty")
    _fails(capsys, [*base, "--creatinine", "1.2;1.4", "--creatinine-unit", "g/L"], 1, "g/L")
    _fails(capsys, [*base, "--exam", "Y5"], 1, "exam", "Y5")


def test_analyze_refuses_unreadable_files_and_models(exam, tiny_model, tmp_path, capsys):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not an image at all")
    _fails(capsys, ["analyze", str(bad), "--model", str(tiny_model), "--out", str(tmp_path / "o")], 1,
           "broken.nii.gz")
    _fails(capsys, ["analyze", str(tmp_path / "missing.nii.gz"), "--model", str(tiny_model),
                    "--out", str(tmp_path / "o")], 1, "missing.nii.gz", "no such file")
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"\x80\x04K\x01.")
    (tmp_path / "model.json").write_text(json.dumps({"format": "napari-medimp-model", "architecture": {},
                                                     "preprocessing": {}, "weights": {}}))
    _fails(capsys, ["analyze", str(exam[0]), "--model", str(fake), "--out", str(tmp_path / "o")], 1, "pickle")


def test_analyze_refuses_invalid_options(exam, tiny_model, tmp_path, capsys):
    image, _, _ = exam
    base = ["analyze", str(image), "--model", str(tiny_model)]
    wrong_grid = save_nifti(tmp_path / "seg_small.nii.gz", np.zeros((10, 40, 48), np.uint8), np.eye(4),
                            dtype=np.uint8)
    _fails(capsys, [*base, "--labels", str(wrong_grid), "--out", str(tmp_path / "o")], 2,
           "(10, 40, 48)", "(20, 40, 48)")
    _fails(capsys, [*base, "--roi", "0", "30", "0", "10", "0", "10", "--out", str(tmp_path / "o")], 2,
           "ROI", "outside")
    _fails(capsys, [*base, "--roi", *ROI, "--target", "5y", "--out", str(tmp_path / "o")], 2, "5y", "2y")
    _fails(capsys, [*base, "--roi", *ROI, "--target", "similarity", "--out", str(tmp_path / "o")], 2,
           "prompt")
    taken = tmp_path / "taken"
    taken.write_text("x")
    _fails(capsys, [*base, "--out", str(taken)], 2, "taken", "is a file")


def test_analyze_help_mentions_the_sample(capsys):
    with pytest.raises(SystemExit) as info:
        main(["analyze", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "sample" in text and "--saliency" in text and "--labels" in text


def test_a_bad_saliency_target_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import napari_medimp.cli as cli

    def no_model(args):
        raise AssertionError("the model must not load for an invalid option")

    monkeypatch.setattr(cli, "_predictor", no_model)
    assert cli.main(["analyze", "sample", "--target", "9y", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "unknown saliency target '9y'; choose one of similarity, 2y, 3y, 4y" in err
    assert not (tmp_path / "out").exists()


def test_pipeline_request_checks_its_options():
    import numpy as np
    from helpers import kidney_volume

    from napari_medimp.core.pipeline import AnalysisRequest

    volume = kidney_volume()
    with pytest.raises(ValueError, match="unknown saliency method 'lime'"):
        AnalysisRequest(volume, "D30", saliency_method="lime").check()
    with pytest.raises(ValueError, match="similarity target needs a prompt"):
        AnalysisRequest(volume, "D30", saliency_method="gradcam", saliency_target="similarity").check()
    with pytest.raises(ValueError, match="labels"):
        AnalysisRequest(volume, "D30", labels=np.zeros((3, 3, 3), np.uint8)).check()
    AnalysisRequest(volume, "D30", prompt="a prompt", saliency_method="occlusion").check()


def test_labels_without_names_are_numbered_never_taken_for_kidney_tissues(exam, tiny_model, tmp_path):
    """A label file of someone else's convention (values 2 and 7, no sidecar): curves per value, by number."""
    image, _, labels = exam
    other = np.where(labels == 2, 7, labels).astype(np.uint8)
    volume = load_dce(image)
    seg = save_nifti(tmp_path / "theirs.nii.gz", other, volume.affine, dtype=np.uint8)
    out = tmp_path / "numbered"
    assert main(["analyze", str(image), "--model", str(tiny_model), "--roi", *ROI, "--labels", str(seg),
                 "--saliency", "none", "--out", str(out)]) == 0
    regions = json.loads((out / "medimp_report.json").read_text())["curves"]["regions"]
    assert list(regions) == ["kidney ROI", "label 3", "label 7"]
    np.testing.assert_allclose(regions["label 7"]["mean_signal"], volume.data[:, labels == 2].mean(axis=1), rtol=1e-5)


def test_geometry_assumed_by_the_reader_is_stated_in_the_report(exam, tiny_model, tmp_path, capsys):
    """A header without qform and sform: the notice reaches the terminal and the report."""
    import struct

    image, _, _ = exam
    raw = bytearray(nib.load(str(image)).to_bytes())
    struct.pack_into("<hh", raw, 252, 0, 0)  # qform_code, sform_code
    bare = tmp_path / "bare.nii"
    bare.write_bytes(bytes(raw))
    out = tmp_path / "bare_report"
    assert main(["analyze", str(bare), "--model", str(tiny_model), "--roi", *ROI, "--saliency", "none",
                 "--out", str(out)]) == 0
    assert "no position or orientation" in capsys.readouterr().err
    notes = json.loads((out / "medimp_report.json").read_text())["inputs"]["reading_notes"]
    assert len(notes) == 1 and "qform and sform codes are 0" in notes[0]


def test_overwrite_on_a_full_disk_keeps_the_earlier_analysis_whole(exam, tiny_model, tmp_path, monkeypatch, capsys):
    """--overwrite replaces an earlier analysis only once the new one is written: when the disk fills up
    while writing the PDF, the folder holds the earlier analysis, byte for byte, and nothing of the new."""
    import errno

    from napari_medimp.core import pdf as pdf_report

    image, _, _ = exam
    out = tmp_path / "report"
    args = ["analyze", str(image), "--model", str(tiny_model), "--roi", *ROI, "--saliency", "none", "--out", str(out)]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"medimp_report.json", "medimp_report.pdf", "results.png"} <= set(before)

    def full_disk(*_, **__):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pdf_report, "write_pdf", full_disk)
    assert main([*args, "--overwrite", "--gfr", "30"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.undo()
    assert main([*args, "--overwrite", "--gfr", "30"]) == 0
    after = json.loads((out / "medimp_report.json").read_text())
    assert after["inputs"]["clinical"]["used"]["gfr_ml_min_1_73m2"] == 30
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
