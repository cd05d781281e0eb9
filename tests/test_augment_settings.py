"""Augmentation and phase choices are settings: what they default to, what they refuse, where they go."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medimp.core.preprocess import PreprocessConfig, first_pass_index
from napari_medimp.core.training_run import AUGMENTATION_DEFAULTS, TrainConfig, augmentation_settings
from src_train.data import DRAW, draw_augmentation


def test_default_augmentation_never_rescales_the_graft():
    assert AUGMENTATION_DEFAULTS["scale"] == 0.0
    for i in range(50):
        scales = draw_augmentation(0, 1, i)[DRAW["scales"]].numpy()
        assert np.array_equal(scales, np.ones(3))
    paper = {"scale": 0.1}
    drawn = np.stack([draw_augmentation(0, 1, i, augmentation_settings(paper))[DRAW["scales"]].numpy()
                      for i in range(50)])
    assert np.all(np.abs(drawn - 1) <= 0.1) and drawn.std() > 0.03


def test_augmentation_probabilities_are_settings():
    never = augmentation_settings({"flip": 0.0, "affine": 0.0, "blur": 0.0, "noise": 0.0, "gamma": 0.0})
    for i in range(20):
        v = draw_augmentation(2, 0, i, never)
        assert all(v[DRAW[name]] == 0.0 for name in ("flip", "affine", "blur", "noise", "gamma"))
    always = augmentation_settings({"flip": 1.0})
    assert all(draw_augmentation(2, 0, i, always)[DRAW["flip"]] == 1.0 for i in range(20))


@pytest.mark.parametrize("bad, message", [
    ({"zoom": 0.1}, "unknown augmentation setting"),
    ({"flip": 1.5}, "flip is a probability"),
    ({"scale": -0.1}, "scale"),
    ({"translate": [1, 2]}, "translate"),
    ({"sigma": [1.0, 0.5]}, "sigma"),
])
def test_impossible_augmentation_settings_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        augmentation_settings(bad)
    with pytest.raises(ValueError, match=message):
        TrainConfig(augmentation=bad)


def test_training_options_record_the_whole_augmentation():
    config = TrainConfig(augmentation={"gamma": 0.0})
    saved = config.to_dict()["augmentation"]
    assert saved == {**AUGMENTATION_DEFAULTS, "gamma": 0.0}
    assert TrainConfig.from_dict(config.to_dict()).augmentation == saved
    with pytest.raises(ValueError, match="patience"):
        TrainConfig(patience=-1)


def test_first_pass_peak_is_the_early_maximum_not_the_latest():
    # baseline, first pass peaking at index 4, a dip, then the excretory rise to the end
    curve = [1.0, 1.0, 2.0, 3.5, 4.0, 3.2, 3.0, 3.4, 4.5, 5.0]
    assert first_pass_index(curve, 2) == 4
    assert int(np.argmax(curve)) == 9  # what "peak" takes
    # a small early bump below half the largest rise is noise, not the first pass
    assert first_pass_index([1.0, 1.0, 1.3, 1.2, 2.0, 5.0, 4.0, 4.5], 2) == 5
    # a curve that only rises peaks at its end
    assert first_pass_index([1, 1, 2, 3, 4, 5], 2) == 5


def test_first_pass_selector_reads_the_synthetic_first_pass(sample_exam):
    from napari_medimp.core.preprocess import find_kidney_roi, select_frames

    volume, _ = sample_exam
    roi = find_kidney_roi(volume)
    frames = select_frames(volume, PreprocessConfig(phases=("first-pass", "peak")), roi)
    first, peak = frames[0][0], frames[1][0]
    times = volume.frame_times
    assert 20 <= times[first] <= 60 < times[peak]
    assert PreprocessConfig(phases=("First-Pass",)).phases == ("first-pass",)
