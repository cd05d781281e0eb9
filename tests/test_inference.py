"""Predictor: devices, caching, zero-shot reading, prognosis and saliency in the source geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import EMBED, kidney_volume, make_model_file

from napari_medimp.core.inference import EmbeddingCache, Predictor, available_devices, pick_device
from napari_medimp.core.preprocess import RoiBox
from napari_medimp.core.prognosis import HORIZONS, patient_features
from napari_medimp.core.prompts import GFR_BINS
from napari_medimp.core.saliency import compute_saliency
from napari_medimp.core.volume import DCEVolume


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return make_model_file(tmp_path_factory.mktemp("model"))


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


def test_prognosis_applies_the_stored_heads(predictor):
    image = predictor.embed_image(kidney_volume()).vector
    out = predictor.prognosis({"D30": image})
    assert list(out) == list(HORIZONS)
    head = predictor.loaded.prognosis["2y"]
    features = patient_features({"D30": image}, dim=EMBED)
    assert features[-4:].tolist() == [0.0, 1.0, 0.0, 0.0]
    expected = 1 / (1 + np.exp(-(features @ head.coef + head.intercept)))
    assert out["2y"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="unknown exam"):
        predictor.prognosis({"M6": image})


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
    image = predictor.embed_image(kidney_volume()).vector
    assert set(predictor.prognosis({"D30": image})) == set(HORIZONS)
