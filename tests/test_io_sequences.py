"""MEDIMP's exam layout: one 3D volume per phase in ``<n>_WATER_AX_LAVA-Flex_<phase>/`` sequence folders."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from helpers import kidney_volume

from napari_medimp.core.io import DCEReadError, DCEReadWarning, load_dce, save_nifti
from napari_medimp.core.io.cohort import cohort_exams, load_exam, patient_exams
from napari_medimp.core.io.sequences import PhaseLayout, layout_for

#: the reference code's folder names (number, sequence keywords, phase) and file name
REFERENCE = ["3_WATER_AX_LAVA-Flex_ss_IV", "4_WATER_AX_LAVA-Flex_ART", "5_WATER_AX_LAVA-Flex_tub"]
FILE = "dummy_mri.nii.gz"


def write_medimp_exam(exam, names=REFERENCE, times=None, frames=(0, 3, 7), extra=("2_T2_AX_FSE",), affines=None):
    """An exam folder of the reference layout; phase i holds frame ``frames[i]`` of the kidney phantom."""
    vol = kidney_volume(n_frames=8)
    for i, name in enumerate(names):
        sidecar = None if times is None else {"AcquisitionTime": times[i]}
        affine = vol.affine if affines is None else affines[i]
        save_nifti(exam / name / FILE, vol.data[frames[i]], affine, sidecar=sidecar)
    for name in extra:  # another sequence of the exam, not part of the dynamic series
        save_nifti(exam / name / FILE, vol.data[0] * 0 + 7, vol.affine)
    return vol


def test_reference_layout_opens_as_one_dynamic_series_in_phase_order(tmp_path):
    exam = tmp_path / "001-0001" / "D15"
    # written in shuffled order: the folder names decide (pre-contrast, arterial, tubular)
    vol = write_medimp_exam(exam, names=[REFERENCE[2], REFERENCE[0], REFERENCE[1]], frames=(7, 0, 3))
    with pytest.warns(DCEReadWarning, match="no acquisition time"):
        out = load_dce(exam)
    assert out.shape == (3, 20, 40, 48)
    np.testing.assert_allclose(out.data[0], vol.data[0], atol=1e-4)  # ss_IV
    np.testing.assert_allclose(out.data[1], vol.data[3], atol=1e-4)  # ART
    np.testing.assert_allclose(out.data[2], vol.data[7], atol=1e-4)  # tub
    np.testing.assert_allclose(out.affine, vol.affine)
    assert out.frame_times is None
    assert out.metadata["phase_names"] == ["pre-contrast", "arterial", "tubular or late"]
    assert out.metadata["phase_sequences"] == REFERENCE
    assert out.metadata["ordered_by"] == "phase keywords"
    assert (out.metadata["exam"], out.metadata["patient"]) == ("D15", "001-0001")


def test_acquisition_times_order_the_phases_and_give_frame_times(tmp_path):
    exam = tmp_path / "P1" / "M3"
    write_medimp_exam(exam, times=["10:00:00", "10:00:31.5", "10:04:00"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DCEReadWarning)
        out = load_dce(exam)
    np.testing.assert_allclose(out.frame_times, [0.0, 31.5, 240.0])
    assert out.metadata["ordered_by"] == "acquisition time"


def test_times_that_contradict_the_names_win_with_a_warning(tmp_path):
    exam = tmp_path / "P1" / "M3"
    write_medimp_exam(exam, times=["10:05:00", "10:00:31", "10:04:00"])
    with pytest.warns(DCEReadWarning, match="unlike their names"):
        out = load_dce(exam)
    assert out.metadata["phase_sequences"] == [REFERENCE[1], REFERENCE[2], REFERENCE[0]]


def test_patient_folder_lists_its_medimp_exams_and_cohort_commands_see_them(tmp_path):
    for exam in ("M12", "D15", "D30"):
        write_medimp_exam(tmp_path / "cohort" / "001-0002" / exam, times=["10:00:00", "10:00:30", "10:03:00"])
    assert list(patient_exams(tmp_path / "cohort" / "001-0002")) == ["D15", "D30", "M12"]
    exams = cohort_exams(tmp_path / "cohort")
    assert [(p, e) for p, e, _ in exams] == [("001-0002", "D15"), ("001-0002", "D30"), ("001-0002", "M12")]
    volume, seg = load_exam(exams[0][2])
    assert volume.n_frames == 3 and seg is None


def test_unknown_phase_names_are_listed(tmp_path):
    exam = tmp_path / "P1" / "D30"
    write_medimp_exam(exam, names=["3_WATER_AX_LAVA-Flex_ss_IV", "4_WATER_AX_LAVA-Flex_phaseB",
                                   "5_WATER_AX_LAVA-Flex_zz"])
    with pytest.raises(DCEReadError, match=r"unknown phase name\(s\) 4_WATER_AX_LAVA-Flex_phaseB, "
                                           r"5_WATER_AX_LAVA-Flex_zz.*medimp_layout.json"):
        load_dce(exam)


def test_phases_with_different_geometry_are_refused(tmp_path):
    exam = tmp_path / "P1" / "D30"
    vol = kidney_volume()
    moved = vol.affine.copy()
    moved[:3, 3] += (0.0, 0.0, 12.0)
    write_medimp_exam(exam, affines=[vol.affine, moved, vol.affine])
    with pytest.raises(DCEReadError, match="phase series with different geometry: 3_WATER_AX_LAVA-Flex_ss_IV .* "
                                           "4_WATER_AX_LAVA-Flex_ART is 48x40x20 voxels"):
        load_dce(exam)


def test_a_phase_folder_with_a_4d_file_is_refused(tmp_path):
    exam = tmp_path / "P1" / "D30"
    write_medimp_exam(exam)
    save_nifti(exam / REFERENCE[1] / FILE, kidney_volume(n_frames=2).data, kidney_volume().affine)
    with pytest.raises(DCEReadError, match="holds 2 frames"):
        load_dce(exam)


def test_layout_settings_file_replaces_the_keywords(tmp_path):
    cohort = tmp_path / "cohort"
    exam = cohort / "P1" / "D15"
    names = ["7_VIBE_COR_pre", "8_VIBE_COR_fase2", "9_VIBE_COR_fase3"]
    write_medimp_exam(exam, names=names)
    (cohort / "medimp_layout.json").write_text(json.dumps({
        "sequence_keywords": ["VIBE", "COR"], "min_sequence_keywords": 2,
        "phase_keywords": {"pre-contrast": ["pre"], "arterial": ["fase2"], "late": ["fase3"]},
    }))
    assert layout_for(exam).source.endswith("medimp_layout.json")
    with pytest.warns(DCEReadWarning):
        out = load_dce(exam)
    assert out.metadata["phase_names"] == ["pre-contrast", "arterial", "late"]


@pytest.mark.parametrize("content, problem", [
    ("{", "not valid JSON"),
    ('{"phase_keywords": {"arterial": []}}', "non-empty list"),
    ('{"min_sequence_keywords": 9}', "from 1 to 3"),
    ('{"colour": 1}', "unknown layout setting"),
])
def test_bad_layout_settings_are_named(tmp_path, content, problem):
    (tmp_path / "medimp_layout.json").write_text(content)
    with pytest.raises(DCEReadError, match=problem):
        layout_for(tmp_path)


def test_water_is_not_read_as_a_phase_and_ambiguous_names_are_refused():
    layout = PhaseLayout()
    assert layout.phase_of("5_WATER_AX_LAVA-Flex") is None
    assert layout.phase_of("6_WATER_AX_LAVA-Flex_ART")[1] == "arterial"
    with pytest.raises(DCEReadError, match="several phases"):
        layout.phase_of("6_WATER_AX_LAVA-Flex_ART_tub")


def test_reference_layout_with_dicom_phases_uses_their_acquisition_times(tmp_path):
    from napari_medimp.core.io.dicom_write import save_dicom_series
    from napari_medimp.core.volume import DCEVolume

    vol = kidney_volume(n_frames=8)
    exam = tmp_path / "001-0003" / "M12"
    for name, frame, clock in zip(REFERENCE, (0, 3, 7), (36000.0, 36042.0, 36300.0), strict=True):
        phase = DCEVolume(vol.data[frame:frame + 1], vol.affine, [0.0])
        save_dicom_series(phase, exam / name, patient_id="001-0003", study_time=clock, seed=name)
    out = load_dce(exam)
    np.testing.assert_allclose(out.frame_times, [0.0, 42.0, 300.0])
    np.testing.assert_allclose(out.data[1], vol.data[3], atol=0.02)
    assert out.metadata["phase_names"] == ["pre-contrast", "arterial", "tubular or late"]


def test_a_medimp_layout_cohort_reaches_training_prediction_and_the_reader(tmp_path):
    """The reference tree (patients '001-xxxx', phase sub-folders) through every consumer of cohorts."""
    import csv

    from helpers import make_model_file

    from napari_medimp._reader import read_dce
    from napari_medimp.cli import main
    from src_train.data import cohort_items

    cohort = tmp_path / "cohort"
    for patient in ("001-0001", "001-0002"):
        for exam in ("D15", "M12"):
            write_medimp_exam(cohort / patient / exam, times=["10:00:00", "10:00:30", "10:03:00"])
    with open(cohort / "clinical.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patient_id", "donor_age", "gfr_D15", "gfr_M12"])
        writer.writerows([["001-0001", 52, 48, 55], ["001-0002", 70, 31, 25]])

    items, skipped = cohort_items(cohort)
    assert [(i.patient, i.exam) for i in items] == [("001-0001", "D15"), ("001-0001", "M12"),
                                                   ("001-0002", "D15"), ("001-0002", "M12")]
    assert skipped == []

    model = make_model_file(tmp_path / "model")
    out = tmp_path / "pred.csv"
    assert main(["predict", str(cohort), "--model", str(model), "--out", str(out)]) == 0
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["id"], r["exam"]) for r in rows] == [("001-0001/D15", "D15"), ("001-0001/M12", "M12"),
                                                   ("001-0002/D15", "D15"), ("001-0002/M12", "M12")]

    layers = read_dce(cohort / "001-0002")
    assert [kwargs["name"] for _, kwargs, _ in layers] == ["001-0002 D15", "001-0002 M12"]
    assert all(data.shape == (3, 20, 40, 48) for data, _, _ in layers)


# --------------------------------------------------------------------------------------------------
# the clinical table as spreadsheets export it
# --------------------------------------------------------------------------------------------------
def test_clinical_table_with_bom_and_semicolons_is_read(tmp_path):
    from napari_medimp.core.io.cohort import read_clinical_table

    table = tmp_path / "clinical.csv"
    table.write_bytes("\ufeffpatient_id;donor_age;gfr_D30\r\nP1;52;48\r\nP2;70;\r\n".encode())
    rows = read_clinical_table(table)
    assert list(rows) == ["P1", "P2"] and rows["P1"]["gfr_D30"] == "48" and rows["P2"]["donor_age"] == "70"


def test_a_patient_listed_twice_is_refused_naming_both_rows(tmp_path):
    from napari_medimp.core.io.cohort import read_clinical_table

    table = tmp_path / "clinical.csv"
    table.write_text("patient_id,gfr_D30\nP1,74\nP2,50\nP1,12\n")
    with pytest.raises(ValueError, match=r"patient P1 is listed twice \(lines 2 and 4\)"):
        read_clinical_table(table)


def test_stacking_phase_series_beyond_the_memory_budget_is_refused_before_reading(tmp_path, monkeypatch):
    from napari_medimp.core.memory import BUDGET_ENV, MemoryBudgetError

    exam = tmp_path / "001-0001" / "D15"
    vol = write_medimp_exam(exam, times=["10:00:00", "10:00:30", "10:01:00"])
    # 3 phases of 20 x 40 x 48 float32 = 450 KiB: read eagerly, the phases and their stack take 900 KiB
    monkeypatch.setenv(BUDGET_ENV, "0.7M")
    with pytest.raises(MemoryBudgetError, match=r"D15: stacking 3 phase series of 20 x 40 x 48 voxels would need "
                                                r"900\.0 KiB"):
        load_dce(exam, lazy=False)
    lazy = load_dce(exam, lazy=True)  # one phase at a time beside the stack fits (600 KiB)
    np.testing.assert_allclose(np.asarray(lazy.data[1]), vol.data[3], atol=1e-4)
