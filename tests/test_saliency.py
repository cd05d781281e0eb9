"""Saliency maps peak where the model looks, with high = important, on the model grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_medimp.core.saliency import METHODS, model_grid_map, normalize01

GRID = (12, 16, 20)
REGION = (slice(2, 6), slice(8, 14), slice(3, 9))  # the only part of the image the model reads


class RegionModel(nn.Module):
    """Output depends on one region only: the input is masked before any feature is computed."""

    def __init__(self):
        super().__init__()
        mask = torch.zeros(1, 1, *GRID)
        mask[(0, 0, *REGION)] = 1.0
        self.register_buffer("mask", mask)
        torch.manual_seed(0)
        self.layer = nn.Sequential(nn.Conv3d(1, 6, 3, padding=1, bias=False), nn.ReLU())
        self.head = nn.Linear(6, 1)
        with torch.no_grad():
            self.layer[0].weight.abs_()
            self.head.weight.fill_(1.0)

    def forward(self, x):
        return self.head(self.layer(x * self.mask).mean(dim=(2, 3, 4)))


def _input():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 1.0, GRID).astype(np.float32)  # structure everywhere, not only in the region
    return torch.from_numpy(x)[None, None]


@pytest.mark.parametrize("method", METHODS)
def test_map_peaks_in_the_region_the_output_depends_on(method):
    saliency = model_grid_map(RegionModel(), _input(), method, "layer", mask_size=4, n_batch=16)
    assert saliency.shape == GRID
    assert saliency.min() >= 0.0 and saliency.max() == pytest.approx(1.0)
    inside = np.zeros(GRID, bool)
    inside[REGION] = True
    if method == "occlusion":  # an occluding patch reaches half its size beyond its centre
        from scipy import ndimage

        inside = ndimage.binary_dilation(inside, iterations=2)
    peak = np.unravel_index(np.argmax(saliency), GRID)
    assert inside[peak], f"{method} peaks outside the region at {peak}"
    assert saliency[inside].mean() > 3 * saliency[~inside].mean()


def test_normaliser_keeps_high_as_important():
    values = np.array([0.0, 2.0, 4.0])
    np.testing.assert_allclose(normalize01(values), [0.0, 0.5, 1.0])
    assert not normalize01(np.ones(3)).any()


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="gradcam"):
        model_grid_map(RegionModel(), _input(), "lime", "layer")
