"""Model-card facts shown next to every result."""

from __future__ import annotations

import json

from helpers import make_model_file

from napari_medimp.core.card import card_facts, facts_text, is_synthetic
from napari_medimp.core.checkpoint import read_card
from napari_medimp.core.sample import default_model_path


def test_demo_card_facts_say_synthetic_with_its_cv_auc():
    card = read_card(default_model_path())
    facts = card_facts(card)
    assert facts["synthetic"] and facts["name"] == "medimp-demo"
    assert facts["horizons"] == ["2y", "3y", "4y"]
    rows = {row["horizon"]: row for row in card["metrics"]["evaluation"] if row["feature_set"] == "MEDIMP"}
    assert list(facts["cv_auc"]) == ["2y", "3y", "4y"]
    assert facts["cv_auc"]["2y"] == (rows["2y"]["auc"], rows["2y"]["auc_low"], rows["2y"]["auc_high"])
    assert facts["head_kinds"] == ["clinical", "image", "image+clinical"]
    assert facts["sha256"] == card["weights"]["sha256"][:12]
    text = facts_text(facts)
    r = rows["2y"]
    assert f"2y {r['auc']:.2f} [{r['auc_low']:.2f}-{r['auc_high']:.2f}]" in text
    assert "on unseen patients" in text and text.endswith("say nothing about a real patient.")
    # the card says who trained the model and on whom its heads were fitted: different patients
    seen = card["training"]["patients_seen"]
    assert seen["cohort"] == "synthetic seed 2023" and len(seen["pretraining"]) + len(seen["checkpoint_selection"]) == 100
    assert card["training"]["prognosis_heads_data"]["cohort"] == "synthetic seed 2024"
    assert card["metrics"]["evaluation_protocol"]["in_sample_warning"] is None


def test_a_card_without_synthetic_data_or_metrics(tmp_path):
    card = json.loads(make_model_file(tmp_path).with_suffix(".json").read_text())
    facts = card_facts(card)
    assert not facts["synthetic"] and facts["cv_auc"] == {}
    assert "No AUC on unseen patients recorded" in facts_text(facts)
    assert "SYNTHETIC" not in facts_text(facts)
    # loaded-model facts and cards are read the same way
    assert is_synthetic({"training_data": "Synthetic cohort"})
    assert is_synthetic({"training": {"synthetic": True, "data": "cohort"}})
    assert not is_synthetic({"training": {"data": "local cohort"}, "name": "m"})
    # a model trained by `medimp train` on a generated cohort records the generator
    assert is_synthetic({"training": {"data": "cohort c", "data_generator": "napari_medimp.core.synth 1.0.0"}})
    assert is_synthetic({"training_data": "cohort c", "synthetic": True})


def test_an_in_sample_evaluation_is_never_shown_as_unseen_patients():
    card = {"metrics": {"evaluation": [{"feature_set": "MEDIMP", "horizon": "2y", "auc": 0.9, "auc_low": 0.8,
                                        "auc_high": 0.95}],
                        "evaluation_protocol": {"in_sample_warning": "WARNING: in-sample table: ..."}}}
    text = facts_text(card_facts(card))
    assert "in-sample, not a result" in text and "unseen" not in text


def test_a_weak_or_small_evaluation_is_a_caution_beside_every_reading():
    from napari_medimp.core.card import evaluation_cautions

    rows = [{"feature_set": "MEDIMP", "horizon": "2y", "auc": 0.25, "n_patients": 6, "n_positive": 4},
            {"feature_set": "MEDIMP", "horizon": "3y", "auc": 0.81, "n_patients": 120, "n_positive": 43},
            {"feature_set": "clinical values only", "horizon": "2y", "auc": 0.1, "n_patients": 6, "n_positive": 4}]
    card = {"metrics": {"evaluation": rows}, "weights": {"sha256": "ab"}}
    cautions = evaluation_cautions(card)
    assert len(cautions) == 2
    assert "too few patients" in cautions[0] and "2y: 6 patients, 4 with graft dysfunction" in cautions[0]
    assert "3y" not in cautions[0] and "AUC is below 0.6 (2y 0.25)" in cautions[1]
    assert facts_text(card_facts(card)).count("CAUTION:") == 2
    # the demo model's evaluation (120 patients, 43 with dysfunction, AUC >= 0.71) needs none
    assert card_facts(read_card(default_model_path()))["cautions"] == []


def test_default_saliency_method_is_the_one_the_card_measured_most_faithful():
    from napari_medimp.core.card import default_method
    from napari_medimp.core.terms import SALIENCY_METHODS

    assert default_method({"saliency_faithfulness": {"best_method": "gradcam"}}) == "gradcam"
    assert default_method({}) == default_method(None) == SALIENCY_METHODS[0]
    assert default_method({"saliency_faithfulness": {"best_method": "magic"}}) == SALIENCY_METHODS[0]


def _publish_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "publish_demo_model.py"
    spec = importlib.util.spec_from_file_location("publish_demo_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_publishing_a_model_renames_it_and_never_replaces_its_input(tiny_model, tmp_path):
    import pytest

    from napari_medimp.core.checkpoint import load_model, model_paths

    publish = _publish_script()
    before = [p.read_bytes() for p in model_paths(tiny_model)]
    for same in (tiny_model, model_paths(tiny_model)[1], str(tiny_model).removesuffix(".safetensors")):
        with pytest.raises(SystemExit, match="never replaces its input"):
            publish.main([str(tiny_model), "--out", str(same)])
    assert [p.read_bytes() for p in model_paths(tiny_model)] == before
    assert publish.main([str(tiny_model), "--out", str(tmp_path / "demo")]) == 0
    published = load_model(tmp_path / "demo")
    assert published.card["name"] == "demo" and set(published.prognosis) == set(load_model(tiny_model).prognosis)


def test_a_reading_no_better_than_a_trivial_answer_is_said_so_with_why():
    from napari_medimp.core.card import reading_standing

    def card(zero, rows, in_sample=None):
        return {"metrics": {"zero_shot_gfr": zero, "evaluation": rows,
                            "evaluation_protocol": {"in_sample_warning": in_sample}},
                "prognosis": {"image/D30/2y": {"horizon": "2y"}, "image/D30/3y": {"horizon": "3y"}}}

    rows = [{"feature_set": "MEDIMP", "horizon": "2y", "auc": 0.62, "auc_low": 0.48, "auc_high": 0.75},
            {"feature_set": "MEDIMP", "horizon": "3y", "auc": 0.80, "auc_low": 0.71, "auc_high": 0.88}]
    # right for 16 % of exams while always answering the commonest range is right for 79 %
    weak = reading_standing(card({"accuracy": 0.16, "majority_accuracy": 0.79, "accuracy_ci": [0.1, 0.2]}, rows))
    assert weak["zero_shot_gfr"] == ("no better than a trivial answer: right for 16% [95 % interval 10%-20%] of "
                                     "exams of unseen patients, against 79% for always answering the commonest "
                                     "range")
    assert weak["image/2y"] == "no better than chance on unseen patients: AUC 0.62 [0.48, 0.75] includes 0.5"
    assert weak["image/3y"] is None
    assert weak["clinical/2y"] == "not evaluated on patients the model never saw"
    # the low end of the interval must clear the trivial rate, not only the estimate
    close = reading_standing(card({"accuracy": 0.40, "majority_accuracy": 0.36, "accuracy_ci": [0.33, 0.47]}, rows))
    assert close["zero_shot_gfr"].startswith("no better than a trivial answer")
    strong = reading_standing(card({"accuracy": 0.61, "majority_accuracy": 0.36, "accuracy_ci": [0.55, 0.68]}, rows))
    assert strong["zero_shot_gfr"] is None
    own = reading_standing(card({}, rows, in_sample="evaluated on training patients"))
    assert own["image/3y"] == "evaluated only on the model's own training patients"
    assert own["zero_shot_gfr"] == "not checked on patients the model never saw"
    assert reading_standing(None) == {"zero_shot_gfr": "not checked on patients the model never saw"}
