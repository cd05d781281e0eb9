"""Small data and models shared by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from napari_medimp.core.checkpoint import PrognosisHead, save_model
from napari_medimp.core.models import ModelConfig, build_model
from napari_medimp.core.preprocess import PreprocessConfig
from napari_medimp.core.prognosis import FEATURES_ID, HEAD_MODEL, HORIZONS, KINDS, head_key
from napari_medimp.core.prompts import EXAMS, TEMPLATE_VERSION
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


#: clinical part of the test heads: means, scales and the signs a clinician expects (older donor, lower
#: GFR, higher creatinine, more variable creatinine -> more risk)
CLINICAL_MEAN = np.array([55.0, 60.0, 120.0, 20.0])
CLINICAL_SCALE = np.array([15.0, 20.0, 50.0, 20.0])
CLINICAL_COEF = np.array([0.4, -1.2, 0.9, 0.3])


def make_heads(embed: int = EMBED, kinds=KINDS, visits=EXAMS, seed: int = 0) -> dict[str, PrognosisHead]:
    """Prognosis heads of every kind, visit and horizon with known parameters: one model per kind and
    visit (shared coefficients, intercepts rising with the horizon), as ``medimp evaluate`` fits them."""
    rng = np.random.default_rng(seed)
    heads = {}
    for kind in kinds:
        for visit in visits:
            image_part = kind in ("image", "image+clinical")
            clinical_part = kind in ("image+clinical", "clinical")
            n_img = embed if image_part else 0
            mean = np.concatenate([np.zeros(n_img), CLINICAL_MEAN if clinical_part else []])
            scale = np.concatenate([np.ones(n_img), CLINICAL_SCALE if clinical_part else []])
            coef = np.concatenate([rng.normal(size=n_img), CLINICAL_COEF if clinical_part else []])
            for i, h in enumerate(HORIZONS):
                heads[head_key(kind, visit, h)] = PrognosisHead(h, mean=mean, scale=scale, coef=coef,
                                                                intercept=0.1 * i, features=FEATURES_ID,
                                                                kind=kind, visit=visit,
                                                                extra={"model": HEAD_MODEL})
    return heads


def make_model_file(folder, heads: dict | None = None, name: str = "tiny"):
    """A tiny MEDIMP model file (random weights) with prognosis heads of every kind, visit and horizon."""
    torch.manual_seed(0)
    config = ModelConfig(image_encoder="clip_resnet_tiny", input_size=INPUT, embed_dim=EMBED,
                         text_trainable_layers=0)
    model = build_model(config).eval()
    preprocessing = PreprocessConfig(target_spacing=(3.0, 2.0, 2.0), input_size=INPUT).to_dict()
    return save_model(folder / name, model, preprocessing=preprocessing,
                      prompt_template_version=TEMPLATE_VERSION, prognosis=make_heads() if heads is None else heads,
                      training={"data": "random weights (test)"})


def nifti_alone(training_cohort, tmp_path, exam: str):
    """A copy of P0001's ``exam`` image as ``cohort/P0001/<exam>/dce.nii.gz`` with its JSON sidecar and the
    cohort's clinical.csv: a NIfTI file opened on its own (not through its exam folder)."""
    import shutil

    cohort = tmp_path / "cohort"
    (cohort / "P0001" / exam).mkdir(parents=True)
    shutil.copy(training_cohort / "clinical.csv", cohort / "clinical.csv")
    source = next((training_cohort / "P0001" / exam / "dce").glob("*.nii.gz"))
    nifti = shutil.copy(source, cohort / "P0001" / exam / "dce.nii.gz")
    shutil.copy(source.with_name(source.name.replace(".nii.gz", ".json")), cohort / "P0001" / exam / "dce.json")
    return cohort, Path(nifti)
