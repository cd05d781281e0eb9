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
    auc = {row["horizon"]: row["auc_mean"] for row in card["metrics"]["evaluation"] if row["feature_set"] == "MEDIMP"}
    assert list(facts["cv_auc"]) == ["2y", "3y", "4y", "mean"]
    assert facts["cv_auc"]["2y"][0] == auc["2y"] and facts["cv_auc"]["mean"][1] is None
    assert facts["sha256"] == card["weights"]["sha256"][:12]
    text = facts_text(facts)
    assert "2y 0.88 ± 0.07" in text and text.endswith("say nothing about a real patient.")


def test_a_card_without_synthetic_data_or_metrics(tmp_path):
    card = json.loads(make_model_file(tmp_path).with_suffix(".json").read_text())
    facts = card_facts(card)
    assert not facts["synthetic"] and facts["cv_auc"] == {}
    assert "No cross-validated AUC recorded" in facts_text(facts)
    assert "SYNTHETIC" not in facts_text(facts)
    # loaded-model facts and cards are read the same way
    assert is_synthetic({"training_data": "Synthetic cohort"})
    assert is_synthetic({"training": {"synthetic": True, "data": "cohort"}})
    assert not is_synthetic({"training": {"data": "local cohort"}, "name": "m"})
    # a model trained by `medimp train` on a generated cohort records the generator
    assert is_synthetic({"training": {"data": "cohort c", "data_generator": "napari_medimp.core.synth 1.0.0"}})
    assert is_synthetic({"training_data": "cohort c", "synthetic": True})
