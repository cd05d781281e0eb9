"""A saliency map's report section: its share per tissue region, what its score is, the method's figures
from the model card, in words; one file per method, target and exam."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import kidney_volume

from napari_medimp.core.pipeline import (
    ANALYSIS_FILES,
    AnalysisRequest,
    AnalysisResult,
    faithfulness_line,
    saliency_file_name,
    saliency_section,
)
from napari_medimp.core.preprocess import RoiBox
from napari_medimp.core.saliency import SaliencyMap, card_faithfulness
from napari_medimp.core.terms import ARTERY, CORTEX, KIDNEY_REGION_NAMES, MEDULLA

ROI = RoiBox.from_sequence([0, 1, 0, 2, 0, 5])
CARD = {"saliency_faithfulness": {
    "exams": "4 synthetic exams", "best_method": "occlusion", "measured": "2026-12-01",
    "methods": {"occlusion": {"top_graft_artery": 0.3, "box_graft_artery": 0.15, "deletion_auc": 0.2,
                              "random_deletion_auc": 0.4, "insertion_auc": 0.6, "random_insertion_auc": 0.35,
                              "rank_correlation": 0.1, "randomisation_check": True}}}}


def hand_map(method="occlusion", target="2y", data=None):
    # a box of 1 x 2 x 5 voxels; the map is 6 on one cortex voxel, 2 on the artery, 1 on two outside voxels
    data = np.array([[[6.0, 0, 0, 2, 0], [0, 0, 0, 1, 1]]]) if data is None else data
    return SaliencyMap(data, ROI, method, target, 0.25, np.eye(4), np.zeros((2, 2, 2)), exam="D30",
                       method_faithfulness=card_faithfulness(CARD, method))


def labels_for(shape=(3, 4, 6)):
    labels = np.zeros(shape, np.uint8)
    labels[0, 0, :3] = CORTEX, CORTEX, MEDULLA
    labels[0, 0, 3] = ARTERY
    return labels


def test_section_gives_the_share_per_region_and_explains_it():
    section = saliency_section(hand_map(), labels_for(), KIDNEY_REGION_NAMES)
    regions = section["regions"]
    assert list(regions) == ["cortex", "medulla", "collecting system", "artery", "outside"]
    assert regions["collecting system"] == {"box": 0.0, "energy": 0.0, "top": 0.0}  # named, absent from the box
    assert regions["cortex"] == pytest.approx({"box": 0.2, "energy": 0.6, "top": 1.0})  # top 10 %: the 6
    assert regions["artery"] == pytest.approx({"box": 0.1, "energy": 0.2, "top": 0.0})
    assert regions["outside"] == pytest.approx({"box": 0.6, "energy": 0.2, "top": 0.0})
    assert section["exam"] == "D30" and "logit" in section["score_meaning"] and "2y" in section["score_meaning"]
    assert section["method_faithfulness"]["top_graft_artery"] == 0.3
    words = section["explanation"]
    assert section["groups"]["graft and artery"] == pytest.approx({"box": 0.4, "energy": 0.8, "top": 1.0})
    assert "100 % of its top 10 % voxels lie on the graft and its artery, which fill 40 % of the kidney box" in words
    assert "cortex 100 % (box 20 %)" in words and "outside 0.0 % (box 60 %)" in words
    assert "30 % of its top 10 % voxels on the graft and artery (box 15 %)" in words
    assert "sanity check passed" in words


def test_faithfulness_in_one_line():
    line = faithfulness_line("occlusion", card_faithfulness(CARD, "occlusion"))
    assert line == ("occlusion on unseen synthetic exams: 30 % of its top 10 % voxels on the graft and artery (they "
                    "fill 15 % of the box); weight-randomisation sanity check passed (rank correlation +0.10, "
                    "passes below 0.5)")
    assert "records no faithfulness figures" in faithfulness_line("gradcam", None)


def test_section_without_labels_or_without_kidney_names_says_so():
    assert saliency_section(hand_map(), None)["regions_note"].startswith("no tissue labels")
    unnamed = saliency_section(hand_map(), labels_for(), None)  # numbers only: never taken for tissues
    assert unnamed["regions"] is None and "name no kidney region" in unnamed["regions_note"]
    empty = saliency_section(hand_map(data=np.zeros((1, 2, 5))), labels_for(), KIDNEY_REGION_NAMES)
    assert empty["regions"] is None and "zero everywhere" in empty["regions_note"]
    unmeasured = saliency_section(hand_map(method="gradcam"), None)
    assert unmeasured["method_faithfulness"] is None and "records no faithfulness" in unmeasured["explanation"]


def test_maps_of_several_methods_and_targets_live_side_by_side():
    assert saliency_file_name("gradcam++", "similarity", "m3") == "saliency-gradcam++-similarity-M3.nii.gz"
    assert saliency_file_name("occlusion", "2y", "D30", prefix="P1") == "P1-saliency-occlusion-2y-D30.nii.gz"
    assert "saliency-integrated-gradients-4y-M12.nii.gz" in ANALYSIS_FILES and "saliency.nii.gz" in ANALYSIS_FILES
    request = AnalysisRequest(volume=kidney_volume(), exam="D30", labels=labels_for((20, 40, 48)),
                              region_names=KIDNEY_REGION_NAMES)
    result = AnalysisResult(request=request, analysis={}, roi=ROI, curves={}, inputs={}, model={})
    first = result.attach_saliency(hand_map("occlusion", "2y"))
    result.attach_saliency(hand_map("gradcam", "similarity"))
    again = result.attach_saliency(hand_map("occlusion", "2y"))  # the same method and target: replaced
    assert list(result.saliency_maps) == [("occlusion", "2y"), ("gradcam", "similarity")]
    assert result.saliency == again == first and result.saliency_map.method == "occlusion"


def test_the_default_method_is_the_one_the_demo_card_measured_best():
    from napari_medimp.core.card import default_method
    from napari_medimp.core.checkpoint import read_card
    from napari_medimp.core.sample import default_model_path
    from napari_medimp.core.terms import SALIENCY_METHODS

    card = read_card(default_model_path())
    measured = card["saliency_faithfulness"]
    assert default_method(card) == measured["best_method"] in SALIENCY_METHODS
    assert set(measured["methods"]) == set(SALIENCY_METHODS)  # every method measured
    figures = card_faithfulness(card, measured["best_method"])
    assert figures["box_graft_artery"] < figures["top_graft_artery"] and "unseen" in figures["exams"]
    assert card_faithfulness(card, "lime") is None and card_faithfulness({}, "occlusion") is None
