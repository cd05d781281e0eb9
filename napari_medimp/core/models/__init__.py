"""MEDIMP models: 3D image encoders, the text encoder wrapper and the CLIP model that joins them.

No napari or Qt here. Main entry points: :class:`ModelConfig` + :func:`build_model`,
:func:`build_image_encoder`, :class:`TextEncoder`.
"""

from __future__ import annotations

from .clip import LOGIT_SCALE_INIT, LOGIT_SCALE_MAX, MedimpCLIP, ModelConfig, ProjectionHead, build_model
from .image import (
    PAPER_EMBED_DIM,
    PAPER_INPUT_SIZE,
    PAPER_STEM_STRIDE,
    AntiAliasPool3d,
    AttentionPool3d,
    Bottleneck3D,
    ClipResNet3D,
    MonaiResNetEncoder,
    available_image_encoders,
    build_image_encoder,
    clip_resnet50_3d,
    count_flops,
    feature_grid,
)
from .text import (
    DEFAULT_TEXT_MODEL,
    TextEncoder,
    find_transformer_layers,
    freeze_all_but_last,
    pool_hidden_states,
    read_revision,
    resolve_text_model_path,
)

__all__ = [
    "DEFAULT_TEXT_MODEL",
    "LOGIT_SCALE_INIT",
    "LOGIT_SCALE_MAX",
    "PAPER_EMBED_DIM",
    "PAPER_INPUT_SIZE",
    "PAPER_STEM_STRIDE",
    "AntiAliasPool3d",
    "AttentionPool3d",
    "Bottleneck3D",
    "ClipResNet3D",
    "MedimpCLIP",
    "ModelConfig",
    "MonaiResNetEncoder",
    "ProjectionHead",
    "TextEncoder",
    "available_image_encoders",
    "build_image_encoder",
    "build_model",
    "clip_resnet50_3d",
    "count_flops",
    "feature_grid",
    "find_transformer_layers",
    "freeze_all_but_last",
    "pool_hidden_states",
    "read_revision",
    "resolve_text_model_path",
]
