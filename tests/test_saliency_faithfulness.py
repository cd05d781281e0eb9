"""Faithfulness measures of saliency maps, on hand-made maps with known shares and curves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_medimp.core.faithfulness import (
    REGIONS,
    deletion_insertion,
    kidney_regions,
    randomisation_check,
    rank_correlation,
    region_shares,
    top_weights,
)
from napari_medimp.core.saliency import model_grid_map, randomised_copy
from napari_medimp.core.terms import (
    ARTERY,
    BACKGROUND,
    COLLECTING_SYSTEM,
    CORTEX,
    MEDULLA,
    SURROUNDING_TISSUE,
)

# ten voxels: two of cortex, one of medulla, one of collecting system, one of artery, five outside
LABELS = np.array([CORTEX, CORTEX, MEDULLA, COLLECTING_SYSTEM, ARTERY, BACKGROUND] + [SURROUNDING_TISSUE] * 4)
MAP = np.array([1.0, 1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 6.0])  # sums to 10


def test_region_shares_of_a_hand_made_map():
    shares = region_shares(MAP.reshape(2, 5), LABELS.reshape(2, 5))
    assert list(shares["regions"]) == list(REGIONS)
    box = {name: r["box"] for name, r in shares["regions"].items()}
    energy = {name: r["energy"] for name, r in shares["regions"].items()}
    top = {name: r["top"] for name, r in shares["regions"].items()}
    assert box == pytest.approx({"cortex": 0.2, "medulla": 0.1, "collecting system": 0.1, "artery": 0.1,
                                 "outside": 0.5})
    assert energy == pytest.approx({"cortex": 0.2, "medulla": 0.0, "collecting system": 0.0, "artery": 0.2,
                                    "outside": 0.6})
    # the top 10 % of ten voxels is the one voxel of value 6, outside
    assert top == pytest.approx({"cortex": 0.0, "medulla": 0.0, "collecting system": 0.0, "artery": 0.0,
                                 "outside": 1.0})
    assert shares["groups"]["graft"] == pytest.approx({"box": 0.4, "energy": 0.2, "top": 0.0})
    assert shares["groups"]["graft and artery"] == pytest.approx({"box": 0.5, "energy": 0.4, "top": 0.0})


def test_top_share_splits_ties_at_the_cut():
    # top 30 % = 3 voxels: 6 and 2 are above the cut, the two cortex voxels tie at 1 for the last place
    weights = top_weights(MAP, 0.3)
    np.testing.assert_allclose(weights, [0.5, 0.5, 0, 0, 1, 0, 0, 0, 0, 1])
    shares = region_shares(MAP, LABELS, fraction=0.3)
    assert shares["regions"]["cortex"]["top"] == pytest.approx(1 / 3)
    assert shares["regions"]["artery"]["top"] == pytest.approx(1 / 3)
    assert shares["groups"]["graft and artery"]["top"] == pytest.approx(2 / 3)
    # a constant map is chance: each region gets its share of the box
    flat = region_shares(np.ones(10), LABELS)
    for region in flat["regions"].values():
        assert region["top"] == pytest.approx(region["box"]) and region["energy"] == pytest.approx(region["box"])


@pytest.mark.parametrize(("saliency", "labels", "message"), [
    (np.ones((2, 5)), np.zeros((5, 2), int), "shape"),
    (np.zeros(10), LABELS, "zero everywhere"),
    (np.r_[-1.0, np.ones(9)], LABELS, "negative"),
    (np.r_[np.nan, np.ones(9)], LABELS, "NaN"),
    (np.ones(0), np.ones(0, int), "empty"),
])
def test_region_shares_refuse_bad_maps(saliency, labels, message):
    with pytest.raises(ValueError, match=message):
        region_shares(saliency, labels)


WEIGHTS = np.array([4.0, 3.0, 2.0, 1.0])


def linear_score(images):
    """The model of these tests: a weighted sum of four voxels (10 for the full image of ones)."""
    return np.asarray(images).reshape(len(images), -1, 4).sum(axis=1) @ WEIGHTS


def test_deletion_and_insertion_of_a_perfect_and_a_reversed_map():
    image = np.ones(4)
    best = deletion_insertion(linear_score, image, WEIGHTS, steps=4, n_random=0)
    # removing the voxels in the order 4, 3, 2, 1 leaves 10, 6, 3, 1, 0 of 10
    np.testing.assert_allclose(best["deletion"], [1.0, 0.6, 0.3, 0.1, 0.0])
    np.testing.assert_allclose(best["insertion"], [0.0, 0.4, 0.7, 0.9, 1.0])
    assert best["deletion_auc"] == pytest.approx(0.25 * (0.8 + 0.45 + 0.2 + 0.05))  # 0.375
    assert best["insertion_auc"] == pytest.approx(0.625)
    worst = deletion_insertion(linear_score, image, WEIGHTS[::-1], steps=4, n_random=0)
    assert worst["deletion_auc"] == pytest.approx(0.625) and worst["insertion_auc"] == pytest.approx(0.375)
    # a random order removes a quarter of the score per step on average: areas 0.5 and 0.5
    chance = deletion_insertion(linear_score, image, WEIGHTS, steps=4, n_random=400, seed=1)
    assert chance["random_deletion_auc"] == pytest.approx(0.5, abs=0.02)
    assert chance["random_insertion_auc"] == pytest.approx(0.5, abs=0.02)
    assert best["deletion_auc"] < chance["random_deletion_auc"] < worst["deletion_auc"]


def test_deletion_removes_a_voxel_in_every_channel_and_uses_the_baseline():
    image = np.stack([np.ones(4), np.ones(4)])  # two channels: full score 20
    curves = deletion_insertion(linear_score, image, WEIGHTS, steps=2, baseline=0.5, n_random=0)
    # baseline image scores 10; removing the two best voxels leaves 2*(0.5*7 + 3) = 13 -> (13-10)/10
    assert curves["score_full"] == 20 and curves["score_empty"] == 10
    np.testing.assert_allclose(curves["deletion"], [1.0, 0.3, 0.0])
    np.testing.assert_allclose(curves["insertion"], [0.0, 0.7, 1.0])


def test_deletion_refuses_a_map_of_another_shape_and_a_flat_score():
    with pytest.raises(ValueError, match="shape"):
        deletion_insertion(linear_score, np.ones(4), np.ones(5))
    with pytest.raises(ValueError, match="same for the image and for the baseline"):
        deletion_insertion(linear_score, np.zeros(4), WEIGHTS)


def test_rank_correlation_and_the_randomisation_verdict():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert rank_correlation(a, 10 * a) == pytest.approx(1.0)
    assert rank_correlation(a, [1.0, 3.0, 2.0, 4.0]) == pytest.approx(1 - 6 * 2 / (4 * 15))  # 0.8
    assert rank_correlation(a, np.ones(4)) == 0.0  # a constant map has no order to share
    assert randomisation_check(a, a[::-1]) == {"rank_correlation": pytest.approx(-1.0), "passed": True}
    assert randomisation_check(a, 2 * a)["passed"] is False
    assert randomisation_check(a, np.zeros(4))["passed"] is True  # randomisation wiped the map out
    assert randomisation_check(np.zeros(4), a)["passed"] is False  # an empty map shows nothing to destroy
    with pytest.raises(ValueError, match="different shapes"):
        rank_correlation(a, np.ones(5))


GRID = (12, 16, 20)
REGION = (slice(2, 6), slice(8, 14), slice(3, 9))


class VoxelReadout(nn.Module):
    """A tiny model that reads each voxel with its own weight: "trained" to read only ``REGION``."""

    def __init__(self):
        super().__init__()
        self.readout = nn.Linear(int(np.prod(GRID)), 1)
        weight = torch.zeros(GRID)
        weight[REGION] = 1.0
        with torch.no_grad():
            self.readout.weight.copy_(weight.reshape(1, -1))
            self.readout.bias.zero_()

    def forward(self, x):
        return self.readout(x.flatten(1))


def test_randomisation_check_passes_for_a_map_of_what_the_model_learned():
    x = torch.from_numpy(np.random.default_rng(0).uniform(0.2, 1.0, GRID).astype(np.float32))[None, None]
    model = VoxelReadout()
    randomised = randomised_copy(model, seed=3)
    assert not torch.equal(randomised.readout.weight, model.readout.weight)
    assert model.readout.weight.sum() == float(np.prod([s.stop - s.start for s in REGION]))  # original kept
    trained_map = model_grid_map(model, x, "integrated-gradients", "")
    random_map = model_grid_map(randomised, x, "integrated-gradients", "")
    check = randomisation_check(trained_map, random_map)
    assert check["passed"] and check["rank_correlation"] < 0.5


def test_randomisation_check_fails_for_a_map_that_shows_the_image():
    # a bright block on an empty image: whatever the weights, input x gradient lights the block only
    x = torch.zeros(1, 1, *GRID)
    x[(0, 0, *REGION)] = 1.0
    model = VoxelReadout()
    with torch.no_grad():
        model.readout.weight.fill_(1.0)
    randomised = randomised_copy(model, seed=3)
    check = randomisation_check(model_grid_map(model, x, "integrated-gradients", ""),
                                model_grid_map(randomised, x, "integrated-gradients", ""))
    assert not check["passed"] and check["rank_correlation"] > 0.9


def test_randomised_copy_redraws_only_the_parts_named(tiny_model):
    from napari_medimp.core.checkpoint import load_model

    model = load_model(tiny_model).model
    copied = randomised_copy(model, parts=("image_encoder",), seed=1)  # seed 0 built it
    before = dict(model.named_parameters())
    for name, param in copied.named_parameters():
        same = torch.equal(param, before[name])
        if name.startswith("image_encoder.") and param.ndim > 1:  # convolutions, linear layers, embeddings
            assert not same, f"{name} was not redrawn"
        elif not name.startswith("image_encoder."):
            assert same, f"{name} changed outside the parts named"


def test_deletion_by_blocks_orders_blocks_by_their_mean():
    # blocks of two voxels: weights (4, 3) with mean map 1.5, weights (2, 1) with mean map 3.5: the second block
    # goes first, leaving 7 of 10
    curves = deletion_insertion(linear_score, np.ones(4), np.array([1.0, 2.0, 3.0, 4.0]), steps=2, block=(2,),
                                n_random=0)
    np.testing.assert_allclose(curves["deletion"], [1.0, 0.7, 0.0])
    np.testing.assert_allclose(curves["insertion"], [0.0, 0.3, 1.0])
    with pytest.raises(ValueError, match="block"):
        deletion_insertion(linear_score, np.ones(4), WEIGHTS, block=(2, 2))


def test_regions_come_from_the_label_names_never_from_the_numbers():
    # a label file numbering its regions otherwise: 7 cortex, 8 medulla, 9 artery, 1 liver
    labels = np.array([7, 7, 8, 1, 9, 0, 0, 0, 0, 0])
    names = {7: "Cortex", 8: "medulla", 9: "artery", 1: "liver"}
    shares = region_shares(MAP, labels, names=names)
    assert list(shares["regions"]) == ["cortex", "medulla", "artery", "outside"]
    assert shares["regions"]["cortex"]["energy"] == pytest.approx(0.2)
    assert shares["regions"]["outside"]["box"] == pytest.approx(0.6)  # liver and unnamed voxels
    assert shares["groups"] == {}  # no collecting system named: no graft total
    assert kidney_regions(None) == {} and kidney_regions({3: "label 3"}) == {}
