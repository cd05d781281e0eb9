"""Who a model saw: cohort identity and the overlap check that guards every evaluation table."""

from __future__ import annotations

import json

from napari_medimp.core.provenance import cohort_identity, overlap_with_seen, patients_seen_entry


def _synthetic(folder, seed):
    folder.mkdir()
    (folder / "ground_truth.json").write_text(json.dumps({"seed": seed, "generator_version": "1.1.0",
                                                          "patients": []}))
    return folder


def test_synthetic_cohorts_are_identified_by_their_seed(tmp_path):
    assert cohort_identity(_synthetic(tmp_path / "a", 2023)) == "synthetic seed 2023"
    assert cohort_identity(tmp_path) is None  # a hospital cohort: patient ids alone
    (tmp_path / "ground_truth.json").write_text("{broken")
    assert cohort_identity(tmp_path) is None


def test_overlap_is_found_by_patient_within_the_same_cohort(tmp_path):
    pre = _synthetic(tmp_path / "pre", 2023)
    card = {"training": {"patients_seen": patients_seen_entry(pre, ["P0001", "P0002"], ["P0003"])}}
    assert overlap_with_seen(card, pre, ["P0003", "P0004"]) == (["P0003"], None)
    # same ids in another synthetic cohort are other people
    other = _synthetic(tmp_path / "eval", 2024)
    assert overlap_with_seen(card, other, ["P0001", "P0003"]) == ([], None)
    # hospital cohorts: ids decide
    hospital = tmp_path / "hospital"
    hospital.mkdir()
    card = {"training": {"patients_seen": patients_seen_entry(hospital, ["A1", "A2"], ["A3"])}}
    other_folder = tmp_path / "hospital-2"
    other_folder.mkdir()
    assert overlap_with_seen(card, other_folder, ["A2", "B7"]) == (["A2"], None)


def test_a_card_without_the_record_says_the_overlap_cannot_be_ruled_out(tmp_path):
    overlap, problem = overlap_with_seen({"training": {}}, tmp_path, ["P1"])
    assert overlap == [] and "cannot be ruled out" in problem
