"""Small data and models shared by the tests."""

from __future__ import annotations

import numpy as np
import torch

from napari_medimp.core.checkpoint import PrognosisHead, save_model
from napari_medimp.core.models import ModelConfig, build_model
from napari_medimp.core.preprocess import PreprocessConfig
from napari_medimp.core.prognosis import FEATURES_ID, HORIZONS
from napari_medimp.core.prompts import TEMPLATE_VERSION
from napari_medimp.core.volume import DCEVolume

INPUT = (16, 24, 24)
EMBED = 32


def kidney_volume(seed=0, n_frames=8):
    """An ellipsoid that enhances after frame 2 inside a faintly enhancing background, 3 mm x 2 mm voxels."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:20, :40, :48]
    kidney = ((z - 10) / 6) ** 2 + ((y - 18) / 10) ** 2 + ((x - 26) / 12) ** 2 <= 1
    frames = []
    for t in range(n_frames):
        uptake = 0.0 if t < 2 else 1.0 - np.exp(-(t - 1) / 2)
        frame = 100 + 5 * t + 300 * uptake * kidney + rng.normal(0, 5, kidney.shape)
        frames.append(frame)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = (-48.0, -40.0, -30.0)
    return DCEVolume(np.stack(frames).astype(np.float32), affine, np.arange(n_frames) * 10.0, source="kidney")


def make_model_file(folder):
    """A tiny MEDIMP model file (random weights) with prognosis heads for 2, 3 and 4 years."""
    torch.manual_seed(0)
    config = ModelConfig(image_encoder="clip_resnet_tiny", input_size=INPUT, embed_dim=EMBED,
                         text_trainable_layers=0)
    model = build_model(config).eval()
    rng = np.random.default_rng(0)
    heads = {h: PrognosisHead(h, mean=np.zeros(EMBED + 4), scale=np.ones(EMBED + 4),
                              coef=rng.normal(size=EMBED + 4), intercept=0.1 * i, features=FEATURES_ID)
             for i, h in enumerate(HORIZONS)}
    preprocessing = PreprocessConfig(target_spacing=(3.0, 2.0, 2.0), input_size=INPUT).to_dict()
    return save_model(folder / "tiny", model, preprocessing=preprocessing,
                      prompt_template_version=TEMPLATE_VERSION, prognosis=heads,
                      training={"data": "random weights (test)"})


