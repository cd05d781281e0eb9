"""The MEDIMP CLIP model: 3D image encoder + text encoder + projections + learnable temperature."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import strict_from_dict
from ..memory import check_memory
from .image import PAPER_INPUT_SIZE, build_image_encoder
from .text import DEFAULT_TEXT_MODEL, TextEncoder

__all__ = [
    "LOGIT_SCALE_INIT",
    "LOGIT_SCALE_MAX",
    "MedimpCLIP",
    "ModelConfig",
    "ProjectionHead",
    "build_model",
]

#: ln(1/0.07): CLIP's initial temperature.
LOGIT_SCALE_INIT = math.log(1 / 0.07)
#: ln(100): the logit scale is clamped to [0, ln 100].
LOGIT_SCALE_MAX = math.log(100.0)
PROJECTIONS = ("linear", "mlp", "none")


class ProjectionHead(nn.Module):
    """``linear``: one Linear; ``mlp``: Linear-GELU-Linear; ``none``: identity (needs equal dims)."""

    def __init__(self, in_dim: int, out_dim: int, kind: str = "linear", hidden_dim: int | None = None):
        super().__init__()
        self.kind = kind
        if kind == "linear":
            self.net: nn.Module = nn.Linear(in_dim, out_dim)
        elif kind == "mlp":
            hidden = hidden_dim or (in_dim + out_dim) // 2
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        elif kind == "none":
            if in_dim != out_dim:
                raise ValueError(f"projection 'none' needs equal dims, got {in_dim} -> {out_dim}")
            self.net = nn.Identity()
        else:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {kind!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a :class:`MedimpCLIP` with the same state_dict keys and shapes.

    ``image_encoder`` is a :func:`~napari_medimp.core.models.build_image_encoder` name and
    ``image_encoder_kwargs`` its extra arguments (``width``, ``layers``, ...). The encoder's own output
    size is ``image_features_dim`` (default ``embed_dim``). ``text_model`` is a local folder or
    :data:`DEFAULT_TEXT_MODEL`; ``text_revision`` records the weights' revision when known.
    """

    image_encoder: str = "clip_resnet50_3d"
    image_encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    in_channels: int = 1
    input_size: tuple[int, int, int] = PAPER_INPUT_SIZE
    embed_dim: int = 512
    image_features_dim: int | None = None
    image_projection: str = "linear"
    text_projection: str = "linear"
    projection_hidden_dim: int | None = None
    text_model: str = DEFAULT_TEXT_MODEL
    text_revision: str | None = None
    text_pooling: str = "mean"
    text_max_length: int = 128
    text_trainable_layers: int | None = 2
    logit_scale_init: float = LOGIT_SCALE_INIT

    def __post_init__(self) -> None:
        # types and ranges first: a card or a training config is input, and every size here is allocated
        if not isinstance(self.input_size, (list, tuple)) or len(self.input_size) != 3:
            raise ValueError(f"input_size must be (z, y, x), got {self.input_size!r}")
        self.input_size = tuple(_whole(f"input_size[{i}]", s, 4, 1024)  # type: ignore[assignment]
                                for i, s in enumerate(self.input_size))
        _text("image_encoder", self.image_encoder)
        if not isinstance(self.image_encoder_kwargs, Mapping):
            raise ValueError(f"image_encoder_kwargs must be a mapping, got {type(self.image_encoder_kwargs).__name__}")
        self.image_encoder_kwargs = {
            _text("image_encoder_kwargs key", k): _encoder_argument(k, v) for k, v in self.image_encoder_kwargs.items()
        }
        _whole("in_channels", self.in_channels, 1, 64)
        _whole("embed_dim", self.embed_dim, 1, MAX_WIDTH)
        _whole("image_features_dim", self.image_features_dim, 1, MAX_WIDTH, optional=True)
        _whole("projection_hidden_dim", self.projection_hidden_dim, 1, MAX_WIDTH, optional=True)
        _text("text_model", self.text_model)
        if self.text_revision is not None:
            _text("text_revision", self.text_revision)
        _text("text_pooling", self.text_pooling)
        _whole("text_max_length", self.text_max_length, 1, 4096)
        _whole("text_trainable_layers", self.text_trainable_layers, 0, 1000, optional=True)
        if (isinstance(self.logit_scale_init, bool) or not isinstance(self.logit_scale_init, (int, float))
                or not math.isfinite(self.logit_scale_init)):
            raise ValueError(f"logit_scale_init must be a finite number, got {self.logit_scale_init!r}")
        for kind in (self.image_projection, self.text_projection):
            if kind not in PROJECTIONS:
                raise ValueError(f"projection must be one of {PROJECTIONS}, got {kind!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (tuples become lists)."""
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a newer file format)."""
        return strict_from_dict(cls, d, "model config keys", hint=" (written by a newer napari-medimp?)")


#: widest feature or embedding size a model may declare
MAX_WIDTH = 16384


def _whole(name: str, value, low: int, high: int, optional: bool = False):
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return value


def _text(name: str, value) -> str:
    if not isinstance(value, str) or len(value) > 4096:
        raise ValueError(f"{name} must be a text (at most 4096 characters), got {type(value).__name__}")
    return value


def _encoder_argument(key: str, value):
    """An image encoder's option: a number (whole numbers at most 4096), a text, a flag or a short list of
    whole numbers (e.g. blocks per stage)."""
    if isinstance(value, (list, tuple)):
        if len(value) > 16:
            raise ValueError(f"image_encoder_kwargs[{key!r}] lists {len(value)} values; at most 16")
        return [_whole(f"image_encoder_kwargs[{key!r}]", v, 0, 4096) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return _whole(f"image_encoder_kwargs[{key!r}]", value, 0, 4096)
    if isinstance(value, float) and math.isfinite(value) and abs(value) <= 4096:
        return value
    if isinstance(value, str):
        return _text(f"image_encoder_kwargs[{key!r}]", value)
    raise ValueError(f"image_encoder_kwargs[{key!r}] must be a number, a text, a flag or a list of whole numbers, "
                     f"got {value!r}"[:300])


def _image_encoder(config: ModelConfig) -> nn.Module:
    return build_image_encoder(config.image_encoder, in_channels=config.in_channels,
                               output_dim=config.image_features_dim or config.embed_dim,
                               input_size=config.input_size, **config.image_encoder_kwargs)


def image_encoder_bytes(config: ModelConfig) -> int:
    """Bytes of the image encoder's float32 weights, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        encoder = _image_encoder(config)
    return 4 * sum(p.numel() for p in encoder.parameters())


class MedimpCLIP(nn.Module):
    """Image and text towers projected to a shared, L2-normalised embedding space.

    ``logit_scale`` is the log inverse temperature; every use clamps it to ``[0, ln 100]``
    (:meth:`clamped_logit_scale`), and :meth:`clamp_logit_scale_` clamps the parameter in place
    (call it after optimiser steps, as open_clip does).
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: TextEncoder,
        embed_dim: int = 512,
        image_projection: str = "linear",
        text_projection: str = "linear",
        projection_hidden_dim: int | None = None,
        logit_scale_init: float = LOGIT_SCALE_INIT,
        config: ModelConfig | None = None,
    ):
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.embed_dim = embed_dim
        self.image_projection = ProjectionHead(
            int(image_encoder.output_dim), embed_dim, image_projection, projection_hidden_dim
        )
        self.text_projection = ProjectionHead(
            text_encoder.hidden_size, embed_dim, text_projection, projection_hidden_dim
        )
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))
        self.config = config

    @property
    def gradcam_layer(self) -> str:
        """Dotted name of the image encoder's last convolutional stage within this model."""
        return f"image_encoder.{self.image_encoder.gradcam_layer}"

    def clamped_logit_scale(self) -> torch.Tensor:
        """``logit_scale`` clamped to ``[0, ln 100]`` (differentiable inside the range)."""
        return self.logit_scale.clamp(0.0, LOGIT_SCALE_MAX)

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Clamp the parameter itself to ``[0, ln 100]``."""
        self.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``(B, C, z, y, x)`` -> ``(B, embed_dim)``, unit-norm unless ``normalize=False``."""
        feats = self.image_projection(self.image_encoder(images))
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(
        self, texts: Sequence[str] | Mapping[str, torch.Tensor], normalize: bool = True
    ) -> torch.Tensor:
        """Texts or a token batch -> ``(B, embed_dim)``, unit-norm unless ``normalize=False``."""
        feats = self.text_projection(self.text_encoder.encode(texts))
        return F.normalize(feats, dim=-1) if normalize else feats

    def forward(
        self, images: torch.Tensor, texts: Sequence[str] | Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(image_features, text_features, exp(clamped logit_scale))``."""
        return self.encode_image(images), self.encode_text(texts), self.clamped_logit_scale().exp()

    @staticmethod
    def similarity(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Cosine similarity matrix ``(N_images, N_texts)`` in [-1, 1]."""
        return F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Scaled similarity ``exp(clamped logit_scale) * cos`` (image-to-text logits)."""
        return self.clamped_logit_scale().exp() * self.similarity(image_features, text_features)


def build_model(
    config: ModelConfig,
    text_model_path: str | Path | None = None,
    load_text_weights: bool = True,
) -> MedimpCLIP:
    """Build a :class:`MedimpCLIP` from its config.

    ``text_model_path`` overrides ``config.text_model`` (the recorded name may be another machine's
    folder). ``load_text_weights=False`` builds the text architecture from its config only, for
    checkpoints that carry all weights. A revision differing from ``config.text_revision`` warns;
    when that field is ``None`` the model's ``config`` (a copy) records the loaded revision.
    """
    check_memory(4 * image_encoder_bytes(config),  # training holds weights, gradients and two moments
                 f"image encoder {config.image_encoder} {config.image_encoder_kwargs or ''}".strip())
    image_encoder = _image_encoder(config)
    text_encoder = TextEncoder.from_pretrained(
        text_model_path if text_model_path is not None else config.text_model,
        pooling=config.text_pooling,
        max_length=config.text_max_length,
        trainable_layers=config.text_trainable_layers,
        load_weights=load_text_weights,
    )
    expected = config.text_revision
    if expected not in (None, "local") and text_encoder.revision not in (expected, "local"):
        warnings.warn(
            f"text model revision {text_encoder.revision} differs from the recorded {expected}",
            UserWarning,
            stacklevel=2,
        )
    if expected is None:  # record what was actually loaded
        config = replace(config, text_revision=text_encoder.revision)
    return MedimpCLIP(
        image_encoder,
        text_encoder,
        embed_dim=config.embed_dim,
        image_projection=config.image_projection,
        text_projection=config.text_projection,
        projection_hidden_dim=config.projection_hidden_dim,
        logit_scale_init=config.logit_scale_init,
        config=config,
    )
