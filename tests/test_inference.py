"""Predictor: devices, caching, zero-shot reading, prognosis and saliency in the source geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import EMBED, kidney_volume, make_heads, make_model_file

from napari_medimp.core.clinical import ClinicalRecord
from napari_medimp.core.inference import EmbeddingCache, Predictor, available_devices, pick_device
from napari_medimp.core.preprocess import RoiBox
from napari_medimp.core.prognosis import HORIZONS, ClinicalValues, image_features
from napari_medimp.core.prompts import GFR_BINS
from napari_medimp.core.saliency import compute_saliency
from napari_medimp.core.terms import EXAMS
from napari_medimp.core.volume import DCEVolume


@pytest.fixture(scope="module")
def model_file(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def predictor(model_file):
    return Predictor.from_file(model_file, device="cpu")


def test_device_choice():
    assert available_devices()[-1] == "cpu"
    assert pick_device("auto").type == available_devices()[0]
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda' is not available"):
            pick_device("cuda")


def test_image_embedding_is_unit_norm_and_cached(predictor):
    volume = kidney_volume()
    first = predictor.embed_image(volume)
    assert first.vector.shape == (EMBED,) and not first.cached
    assert np.linalg.norm(first.vector) == pytest.approx(1.0, abs=1e-5)
    # the automatic ROI contains the kidney centre
    assert first.roi.contains((10, 18, 26))
    again = predictor.embed_image(volume)
    assert again.cached
    np.testing.assert_array_equal(again.vector, first.vector)
    # another ROI is another key; the same content under another name is a hit
    other = predictor.embed_image(volume, roi=RoiBox(2, 18, 4, 34, 6, 46))
    assert not other.cached
    copy = DCEVolume(volume.data.copy(), volume.affine, volume.frame_times, source="renamed")
    assert predictor.embed_image(copy).cached


def test_batched_embeddings_equal_single_ones(predictor):
    volumes = [kidney_volume(seed) for seed in (1, 2, 3)]
    predictor.cache.clear()
    batched = [e.vector for e in predictor.embed_images(volumes)]
    predictor.cache.clear()
    single = [predictor.embed_image(v).vector for v in volumes]
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_disk_cache_survives_a_new_predictor(model_file, tmp_path):
    volume = kidney_volume()
    first = Predictor.from_file(model_file, cache=EmbeddingCache(folder=tmp_path))
    vector = first.embed_image(volume).vector
    second = Predictor.from_file(model_file, cache=EmbeddingCache(folder=tmp_path))
    hit = second.embed_image(volume)
    assert hit.cached
    np.testing.assert_array_equal(hit.vector, vector)


def test_text_similarity_and_zero_shot(predictor):
    image = predictor.embed_image(kidney_volume()).vector
    prompts = ["The estimated glomerular filtration rate is high.", "The donor age is low."]
    sims = predictor.similarity(image, prompts)
    text = predictor.embed_texts(prompts)
    np.testing.assert_allclose(sims, text @ image, rtol=1e-6)
    assert np.all(np.abs(sims) <= 1.0 + 1e-6)
    reading = predictor.zero_shot(image, "gfr")
    assert list(reading) == list(GFR_BINS)
    assert sum(reading.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="non-empty"):
        predictor.embed_texts([" "])


def test_prognosis_applies_the_stored_heads_of_the_reading_visit(predictor):
    image = predictor.embed_image(kidney_volume()).vector
    out = predictor.prognosis({"D30": image})
    assert out.visit == "D30" and out.exams_used == ["D30"]
    assert set(out.risks) == {"image", "image+clinical", "clinical"}
    assert list(out.risks["image"]) == list(HORIZONS)
    head = predictor.loaded.prognosis["image/D30/2y"]
    unit = image / np.linalg.norm(image)
    expected = 1 / (1 + np.exp(-(unit @ head.coef + head.intercept)))  # mean 0, scale 1
    assert out.risks["image"]["2y"] == pytest.approx(expected)
    # an M3 reading uses the M3 heads, not D30's
    at_m3 = predictor.prognosis({"D30": image, "M3": image})
    m3 = predictor.loaded.prognosis["image/M3/2y"]
    assert at_m3.visit == "M3" and at_m3.risks["image"]["2y"] == pytest.approx(1 / (1 + np.exp(-(unit @ m3.coef))))
    with pytest.raises(ValueError, match="unknown exam"):
        predictor.prognosis({"M6": image})


def test_a_missing_exam_changes_the_reading_only_through_the_images(predictor):
    """No availability mask: with identical embeddings, having D15 or not gives the same reading."""
    image = predictor.embed_image(kidney_volume()).vector
    both = predictor.prognosis({"D15": image, "M12": image})
    alone = predictor.prognosis({"M12": image})
    assert both.exams_used == ["D15", "M12"] and alone.exams_used == ["M12"]
    assert both.risks == alone.risks
    other = predictor.embed_image(kidney_volume(seed=5, n_frames=6)).vector
    mixed = predictor.prognosis({"D15": other, "M12": image})
    expected = image_features({"D15": other, "M12": image}, "M12")
    # the embeddings are float32: compare with a float32 tolerance (the reading normalises in float64)
    np.testing.assert_allclose(expected, (other / np.linalg.norm(other) + image / np.linalg.norm(image)) / 2,
                               rtol=1e-5, atol=1e-7)
    assert mixed.risks["image"] != alone.risks["image"]


def test_typed_clinical_values_move_the_risk_as_a_clinician_expects(predictor):
    image = predictor.embed_image(kidney_volume()).vector

    def risk(**values):
        record = ClinicalRecord.from_values(exam="D30", **values)
        return predictor.prognosis({"D30": image}, record)

    low, high = risk(gfr=10, donor_age=55), risk(gfr=95, donor_age=55)
    for h in HORIZONS:
        assert low.risks["image"][h] == high.risks["image"][h]  # images only: the values are not its input
        assert low.risks["image+clinical"][h] > high.risks["image+clinical"][h]
        assert low.risks["clinical"][h] > high.risks["clinical"][h]
    older = risk(gfr=50, donor_age=75).risks["clinical"]["2y"]
    younger = risk(gfr=50, donor_age=30).risks["clinical"]["2y"]
    assert older > younger
    rising = risk(gfr=50, creatinine="100; 250").risks["clinical"]["2y"]
    falling = risk(gfr=50, creatinine="250; 100").risks["clinical"]["2y"]
    assert rising > falling  # same spread: the latest creatinine decides
    assert risk(gfr=50, creatinine="100; 250").clinical_given == ["gfr", "creatinine_latest", "creatinine_std"]


def test_missing_clinical_values_are_said_and_replaced_by_the_training_mean(predictor):
    image = predictor.embed_image(kidney_volume()).vector
    reading = predictor.prognosis({"D30": image}, ClinicalValues(gfr=60.0))
    assert reading.clinical_missing == ["donor_age", "creatinine_latest", "creatinine_std"]
    text = reading.inputs()["image+clinical"]
    assert "images of D30" in text and "GFR" in text and "missing, replaced by the training cohort's mean" in text
    # GFR at the heads' mean (60) and every other value missing: the clinical part contributes 0
    head = predictor.loaded.prognosis["clinical/D30/2y"]
    assert reading.risks["clinical"]["2y"] == pytest.approx(1 / (1 + np.exp(-head.intercept)))


def test_model_without_some_heads_says_so(tmp_path):
    heads = make_heads(kinds=("image",), visits=("D15", "D30"))
    predictor = Predictor.from_file(make_model_file(tmp_path, heads=heads), device="cpu")
    image = predictor.embed_image(kidney_volume()).vector
    reading = predictor.prognosis({"D30": image}, ClinicalValues(gfr=30.0))
    assert set(reading.risks) == {"image"}
    assert any("no images + clinical values heads" in n for n in reading.notes)
    with pytest.raises(ValueError, match="no images \\(MEDIMP\\) prognosis head for a reading at M12 .*D15, D30"):
        predictor.prognosis({"M12": image})


def test_heads_of_the_first_release_are_refused_with_the_fix(tmp_path):
    from napari_medimp.core.checkpoint import PrognosisHead

    old = {"2y": PrognosisHead("2y", mean=np.zeros(EMBED + 4), scale=np.ones(EMBED + 4), coef=np.ones(EMBED + 4),
                               intercept=0.0, features="mean-exam-embedding+exam-mask/v1")}
    predictor = Predictor.from_file(make_model_file(tmp_path, heads=old), device="cpu")
    with pytest.raises(ValueError, match="another feature layout.*medimp evaluate --write-heads"):
        predictor.prognosis({"D30": predictor.embed_image(kidney_volume()).vector})


@pytest.mark.parametrize("target", ["similarity", "3y"])
def test_saliency_lands_in_the_roi_geometry(predictor, target):
    volume = kidney_volume()
    roi = RoiBox(3, 18, 6, 32, 10, 44)
    result = compute_saliency(predictor, volume, roi, method="gradcam", target=target,
                              prompt="The estimated glomerular filtration rate is low.")
    assert result.data.shape == roi.shape
    assert 0.0 <= result.data.min() and result.data.max() <= 1.0
    geometry = result.layer_geometry(volume)
    np.testing.assert_allclose(geometry["scale"], volume.spacing)
    # the overlay's first voxel sits on source voxel roi.start
    np.testing.assert_allclose(geometry["translate"],
                               np.asarray(volume.origin) + np.asarray(roi.start) * np.asarray(volume.spacing))
    np.testing.assert_allclose(result.roi_affine[:3, 3], (volume.affine @ [10, 6, 3, 1])[:3])


def test_saliency_rejects_unknown_targets(predictor):
    with pytest.raises(ValueError, match="similarity, 2y, 3y, 4y"):
        compute_saliency(predictor, kidney_volume(), target="10y")


def test_shipped_demo_model_loads_with_prognosis_heads():
    from napari_medimp.core.sample import default_model_path

    predictor = Predictor.from_file(default_model_path(), device="cpu")
    assert predictor.prognosis_horizons == list(HORIZONS)
    assert "evaluation" in predictor.card["metrics"]
    assert predictor.zero_shot_calibration() is not None
    # the demo model reads five phases up to 120 s and the last frame: a 300 s synthetic exam
    from napari_medimp.core.sample import sample_exam

    image = predictor.embed_image(sample_exam()[0]).vector
    reading = predictor.prognosis({"D30": image})
    with pytest.raises(ValueError, match="beyond the series"):  # a 70 s series is not one it can read
        predictor.embed_image(kidney_volume())
    assert set(reading.risks) == {"image", "image+clinical", "clinical"}
    assert all(set(r) == set(HORIZONS) for r in reading.risks.values())


def test_the_demo_models_risks_follow_clinical_sense_and_horizons_agree():
    """Over a grid of every clinical value, at every visit, on random image embeddings: a lower GFR, a higher
    creatinine, more creatinine variability or an older donor never lowers a risk, and 2y <= 3y <= 4y."""
    predictor = Predictor.from_file("sample_data/medimp-demo.safetensors", device="cpu")
    rng = np.random.default_rng(0)
    grid = {"donor_age": np.linspace(18, 85, 6), "gfr": np.linspace(87.4, 5, 6),  # GFR falling
            "creatinine_latest": np.linspace(50, 800, 6), "creatinine_std": np.linspace(0, 150, 6)}
    for visit in EXAMS:
        for _ in range(5):
            vector = rng.normal(size=predictor.embed_dim)
            base = {name: float(rng.choice(values)) for name, values in grid.items()}
            for name, values in grid.items():
                readings = [predictor.prognosis({visit: vector}, ClinicalValues(**{**base, name: float(v)}))
                            for v in values]
                for kind in ("image+clinical", "clinical"):
                    for h in ("2y", "3y", "4y"):
                        risks = np.array([r.risks[kind][h] for r in readings])
                        assert np.all(np.diff(risks) >= -1e-12), (visit, kind, h, name, risks)
                for r in readings:
                    for kind, by_h in r.risks.items():
                        assert by_h["2y"] <= by_h["3y"] <= by_h["4y"], (visit, kind, by_h)


def test_values_outside_what_the_heads_were_fitted_on_are_named_by_value():
    predictor = Predictor.from_file("sample_data/medimp-demo.safetensors", device="cpu")
    vector = np.random.default_rng(1).normal(size=predictor.embed_dim)
    usual = predictor.prognosis({"D30": vector}, ClinicalValues(donor_age=55, gfr=45, creatinine_latest=150,
                                                                creatinine_std=20))
    assert usual.outside_range == []
    # a GFR of 10 with a creatinine of 70 umol/L: each value occurs, the pair does not
    odd = predictor.prognosis({"D30": vector}, ClinicalValues(gfr=10, creatinine_latest=70))
    text = " ".join(odd.outside_range)
    assert "the combination GFR 10 mL/min/1.73 m2, creatinine 70 umol/L is unlike the readings" in text
    assert "at D30" in text
    assert odd.to_dict()["outside_range"] == odd.outside_range


def test_heads_fitted_without_the_clinical_constraints_are_not_shown(tmp_path):
    from helpers import make_heads

    old = make_heads()
    for head in old.values():
        head.extra.pop("model")
    predictor = Predictor.from_file(make_model_file(tmp_path, heads=old), device="cpu")
    reading = predictor.prognosis({"D30": predictor.embed_image(kidney_volume()).vector}, ClinicalValues(gfr=30.0))
    assert reading.risks == {}
    assert set(reading.not_shown) == {"image", "image+clinical", "clinical"}
    assert "medimp evaluate --write-heads" in reading.not_shown["clinical"]
    crossing = make_heads()
    crossing["image/D30/3y"].intercept = -5.0  # 3-year risk below the 2-year risk
    predictor = Predictor.from_file(make_model_file(tmp_path, heads=crossing, name="crossing"), device="cpu")
    reading = predictor.prognosis({"D30": predictor.embed_image(kidney_volume()).vector})
    assert "image" not in reading.risks and "3y risk would be lower than the 2y risk" in reading.not_shown["image"]
    assert set(reading.risks) == {"image+clinical", "clinical"}
