"""Model files: safetensors weights beside a JSON card. Nothing here ever unpickles.

A model file is a pair ``NAME.safetensors`` + ``NAME.json``. The card records the architecture (enough to
rebuild the module), the preprocessing config, the text model and its revision, the prompt template
version, a training summary, metrics, the licence and the sha256 of the weights file. Frozen layers of the
text encoder are not stored: they come from the recorded base text model, whose own weights hash is
checked at load time.

Prognosis heads (one per horizon) are standardised logistic regressions stored as plain tensors, so
they load without scikit-learn's pickles.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_write
from .safetensors_file import NotSafetensors, read_header

CARD_FORMAT = "napari-medimp-model"
CARD_VERSION = 1
# the licence says nothing about the training data: that is the card's "training" entry
DEFAULT_LICENCE = "BSD-3-Clause (research use, not a medical device)"
_PROGNOSIS_PREFIX = "prognosis."


class ModelFileError(ValueError):
    """A model file could not be used; the message names the file and the reason in one sentence."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


# --------------------------------------------------------------------------------------------------
# prognosis heads
# --------------------------------------------------------------------------------------------------
@dataclass
class PrognosisHead:
    """``p = sigmoid(((x - mean) / scale) . coef + intercept)`` for one horizon (e.g. "2y") of a reading
    at one visit, from one kind of features (``image``, ``image+clinical``, ``clinical``; see
    :mod:`napari_medimp.core.prognosis`). A missing feature value is replaced by ``mean`` (the imputation
    the head was fitted with)."""

    horizon: str
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    features: str = "patient embedding"
    threshold: float = 0.5
    extra: dict = field(default_factory=dict)
    kind: str = "image"
    visit: str | None = None

    @property
    def key(self) -> str:
        """Name in the model file: ``kind/visit/horizon`` (or the horizon alone for a visit-less head)."""
        return f"{self.kind}/{self.visit}/{self.horizon}" if self.visit else self.horizon

    def __post_init__(self):
        self.mean = np.asarray(self.mean, np.float64).ravel()
        self.scale = np.asarray(self.scale, np.float64).ravel()
        self.coef = np.asarray(self.coef, np.float64).ravel()
        if not (self.mean.shape == self.scale.shape == self.coef.shape):
            raise ValueError(
                f"prognosis head {self.horizon}: mean/scale/coef sizes differ "
                f"({self.mean.size}, {self.scale.size}, {self.coef.size})"
            )
        if np.any(self.scale <= 0):
            raise ValueError(f"prognosis head {self.horizon}: scale must be positive")

    @property
    def n_features(self) -> int:
        return int(self.coef.size)

    def decision(self, x) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if x.shape[-1] != self.n_features:
            raise ValueError(
                f"prognosis head {self.key} expects {self.n_features} features, got {x.shape[-1]}"
            )
        x = np.where(np.isnan(x), self.mean, x)  # missing -> the training mean (standardised 0)
        return ((x - self.mean) / self.scale) @ self.coef + self.intercept

    def predict_proba(self, x) -> np.ndarray:
        """Probability of graft dysfunction at this horizon."""
        return 1.0 / (1.0 + np.exp(-self.decision(x)))

    def tensors(self) -> dict[str, torch.Tensor]:
        p = f"{_PROGNOSIS_PREFIX}{self.key}."
        return {
            p + "mean": torch.from_numpy(self.mean.copy()),
            p + "scale": torch.from_numpy(self.scale.copy()),
            p + "coef": torch.from_numpy(self.coef.copy()),
            p + "intercept": torch.tensor([float(self.intercept)], dtype=torch.float64),
        }

    def describe(self) -> dict:
        return {"features": self.features, "threshold": self.threshold, "n_features": self.n_features,
                "kind": self.kind, "visit": self.visit, "horizon": self.horizon, **self.extra}

    @classmethod
    def from_tensors(cls, key: str, tensors: dict[str, torch.Tensor], description: dict) -> PrognosisHead:
        p = f"{_PROGNOSIS_PREFIX}{key}."
        own = ("features", "threshold", "n_features", "kind", "visit", "horizon")
        extra = {k: v for k, v in description.items() if k not in own}
        return cls(
            horizon=str(description.get("horizon") or key.rsplit("/", 1)[-1]),
            kind=str(description.get("kind") or "image"),
            visit=description.get("visit"),
            mean=tensors[p + "mean"].numpy(),
            scale=tensors[p + "scale"].numpy(),
            coef=tensors[p + "coef"].numpy(),
            intercept=float(tensors[p + "intercept"][0]),
            features=description.get("features", "patient embedding"),
            threshold=float(description.get("threshold", 0.5)),
            extra=extra,
        )


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def sha256_file(path, chunk: int = 2**20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def model_paths(path) -> tuple[Path, Path]:
    """(weights, card) paths for ``NAME``, ``NAME.safetensors`` or ``NAME.json``."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def check_safetensors(path) -> dict:
    """Validate that ``path`` is a safetensors file without executing anything; return its header."""
    path = Path(path)
    try:
        return read_header(path)
    except FileNotFoundError:
        raise ModelFileError(path, "weights file not found") from None
    except NotSafetensors as exc:
        raise ModelFileError(path, str(exc)) from None


def _text_base_weights(text_name_or_path) -> Path | None:
    """The weights file of the text model a model file builds on (the shipped default included)."""
    from .models.text import resolve_text_model_path

    try:
        folder = resolve_text_model_path(text_name_or_path)
    except (FileNotFoundError, ImportError):
        return None
    weights = folder / "model.safetensors"  # text weights are read from safetensors only
    return weights if weights.exists() else None


#: the files of a text-model folder that decide what the text encoder computes (besides its weights)
TEXT_MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                    "1_Pooling/config.json", "modules.json", "sentence_bert_config.json")


def text_folder_hashes(text_name_or_path) -> dict[str, str]:
    """sha256 of each of :data:`TEXT_MODEL_FILES` the text model's folder holds (empty if not found)."""
    from .models.text import resolve_text_model_path

    try:
        folder = resolve_text_model_path(text_name_or_path)
    except (FileNotFoundError, ImportError):
        return {}
    return {name: sha256_file(folder / name) for name in TEXT_MODEL_FILES if (folder / name).is_file()}


def _stored_keys(model: torch.nn.Module, include_frozen_text: bool) -> list[str]:
    """State-dict keys to store: everything but the frozen part of the text encoder."""
    state = model.state_dict()
    if include_frozen_text:
        return list(state)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return [k for k in state if not k.startswith("text_encoder.") or k in trainable]


# --------------------------------------------------------------------------------------------------
# save
# --------------------------------------------------------------------------------------------------
def save_model(
    path,
    model,
    *,
    preprocessing: dict,
    prompt_template_version: str,
    training: dict | None = None,
    metrics: dict | None = None,
    prognosis: dict[str, PrognosisHead] | None = None,
    licence: str = DEFAULT_LICENCE,
    include_frozen_text: bool = False,
    name: str | None = None,
) -> Path:
    """Write ``NAME.safetensors`` and ``NAME.json`` atomically; returns the weights path."""
    from safetensors.torch import save_file

    from .. import __version__

    weights_path, card_path = model_paths(path)
    config = model.config
    if config is None:
        raise ValueError("model has no ModelConfig; build it with build_model(config)")
    state = model.state_dict()
    keys = _stored_keys(model, include_frozen_text)
    tensors = {k: state[k].detach().to("cpu").contiguous() for k in keys}
    for key, head in (prognosis or {}).items():
        if key != head.key:
            raise ValueError(f"prognosis head stored as {key!r} but named {head.key!r}")
        tensors.update(head.tensors())
    atomic_write(weights_path, lambda tmp: save_file(tensors, tmp, metadata={"format": CARD_FORMAT}))

    text = model.text_encoder
    base = _text_base_weights(text.name_or_path) if not include_frozen_text else None
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "format_version": CARD_VERSION,
        "name": name or weights_path.stem,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "software": {"napari_medimp": __version__, "torch": torch.__version__},
        "architecture": config.to_dict(),
        "preprocessing": preprocessing,
        "text_model": {
            "name_or_path": str(text.name_or_path),
            "revision": text.revision,
            "pooling": config.text_pooling,
            "trainable_layers": config.text_trainable_layers,
            "frozen_weights_stored": include_frozen_text,
            "base_weights_sha256": sha256_file(base) if base is not None else None,
            "files_sha256": text_folder_hashes(text.name_or_path),
        },
        "prompt_template_version": prompt_template_version,
        "training": training or {},
        "metrics": metrics or {},
        "prognosis": {h: head.describe() for h, head in (prognosis or {}).items()},
        "licence": licence,
        "weights": {
            "file": weights_path.name,
            "sha256": sha256_file(weights_path),
            "n_tensors": len(tensors),
            "bytes": weights_path.stat().st_size,
        },
    }
    atomic_write(card_path, lambda tmp: Path(tmp).write_text(json.dumps(card, indent=1) + "\n"))
    return weights_path


# --------------------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------------------
def read_card(path) -> dict:
    """The JSON card of a model file, checked for format and version."""
    given = Path(path)
    if given.is_file() and given.suffix not in (".safetensors", ".json"):
        check_safetensors(given)  # a pickle or another format is named as such, never loaded
        raise ModelFileError(given, "a model file is NAME.safetensors with its card NAME.json beside it")
    _, card_path = model_paths(path)
    if Path(card_path).exists() and not Path(card_path).is_file():
        raise ModelFileError(card_path, "is not a regular file (a pipe or a device); not read")
    if Path(card_path).is_file() and Path(card_path).stat().st_size > 64 * 2**20:
        raise ModelFileError(card_path, "model card larger than 64 MB; not read")
    try:
        card = json.loads(Path(card_path).read_text())
    except FileNotFoundError:
        raise ModelFileError(card_path, "model card (JSON) not found next to the weights") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(card_path, f"model card is not valid JSON ({exc})") from None
    except RecursionError:
        raise ModelFileError(card_path, "model card is nested too deeply to be a card") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ModelFileError(card_path, f"is not a {CARD_FORMAT} card")
    if int(card.get("format_version", 0)) > CARD_VERSION:
        raise ModelFileError(card_path, f"card format {card['format_version']} is newer than this "
                                        f"napari-medimp understands ({CARD_VERSION}); update napari-medimp")
    for key in ("architecture", "preprocessing", "weights"):
        if key not in card:
            raise ModelFileError(card_path, f"model card lacks its '{key}' section")
    for key in ("architecture", "preprocessing", "weights", "text_model", "prognosis", "training"):
        if card.get(key) is not None and not isinstance(card[key], dict):
            raise ModelFileError(card_path, f"model card's '{key}' section is a {type(card[key]).__name__}, "
                                            "not a mapping")
    if _depth(card) > _MAX_CARD_DEPTH:
        raise ModelFileError(card_path, f"model card is nested more than {_MAX_CARD_DEPTH} levels deep")
    return card


#: a card is a few levels deep (sections, heads, their descriptions)
_MAX_CARD_DEPTH = 12


def _depth(value, level: int = 0) -> int:
    if level > _MAX_CARD_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def verify_weights(path, card: dict) -> Path:
    """Check the weights file is safetensors and matches the card's sha256."""
    weights_path, card_path = model_paths(path)
    check_safetensors(weights_path)
    expected = card["weights"].get("sha256")
    if not isinstance(expected, str):
        raise ModelFileError(card_path, "model card's weights section has no sha256 text")
    actual = sha256_file(weights_path)
    if expected != actual:
        raise ModelFileError(weights_path, f"weights were modified after the card was written "
                                           f"(sha256 {actual[:12]}... but the card says {str(expected)[:12]}...)")
    return weights_path


def describe_mismatch(expected: dict[str, tuple], found: dict[str, tuple], allowed_missing=()) -> str | None:
    """One sentence on how ``found`` (name -> shape) differs from ``expected``; None if compatible."""
    missing = [k for k in expected if k not in found and k not in allowed_missing]
    unexpected = [k for k in found if k not in expected]
    reshaped = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    if not (missing or unexpected or reshaped):
        return None
    parts = []
    if reshaped:
        k = reshaped[0]
        parts.append(f"{len(reshaped)} tensors have other shapes (e.g. {k}: file {tuple(found[k])}, "
                     f"model {tuple(expected[k])})")
    if missing:
        parts.append(f"{len(missing)} are missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} are not part of this model (e.g. {unexpected[0]})")
    return "weights come from a different architecture: " + ", ".join(parts)


@dataclass
class LoadedModel:
    model: Any
    card: dict
    prognosis: dict[str, PrognosisHead]
    weights_path: Path
    weights_sha256: str


def load_model(path, device: str | torch.device = "cpu", text_model_path=None) -> LoadedModel:
    """Load a model file: card checks, sha256, architecture rebuild, strict key/shape comparison."""
    from safetensors.torch import load_file

    from .models import ModelConfig, build_model

    card = read_card(path)
    weights_path = verify_weights(path, card)
    try:
        config = ModelConfig.from_dict(card["architecture"])
    except (TypeError, ValueError) as exc:
        raise ModelFileError(model_paths(path)[1], f"architecture cannot be rebuilt ({exc})") from None
    text_info = card.get("text_model", {})
    frozen_stored = bool(text_info.get("frozen_weights_stored", False))
    model = build_model(config, text_model_path=text_model_path, load_text_weights=not frozen_stored)
    if not frozen_stored:
        base = _text_base_weights(model.text_encoder.name_or_path)
        expected_base = text_info.get("base_weights_sha256")
        if not expected_base:
            import warnings

            warnings.warn(f"{model_paths(path)[1]}: the card does not record which text-model weights the model "
                          "was trained on; they cannot be checked", stacklevel=2)
        elif base is None:
            raise ModelFileError(weights_path, f"needs the text model {model.text_encoder.name_or_path}, whose "
                                               "weights file was not found")
        elif sha256_file(base) != expected_base:
            raise ModelFileError(weights_path, f"was trained on top of other text-model weights than those in "
                                               f"{model.text_encoder.name_or_path} (sha256 differs)")
    recorded = text_info.get("files_sha256") or {}
    if recorded:
        found = text_folder_hashes(model.text_encoder.name_or_path)
        changed = sorted(name for name, digest in recorded.items() if found.get(name) != digest)
        if changed:
            raise ModelFileError(weights_path, f"the text model {model.text_encoder.name_or_path} differs from the "
                                               f"one the model was trained with ({', '.join(changed)} changed or "
                                               "missing): its prompts would be read differently")
    tensors = load_file(str(weights_path))
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ModelFileError(weights_path, f"tensor {name!r} holds {bad} non-finite value(s) (NaN or infinity): "
                                               "the model would give NaN results; it cannot be used")
    try:
        heads = {
            h: PrognosisHead.from_tensors(h, tensors, desc) for h, desc in (card.get("prognosis") or {}).items()
        }
    except (TypeError, KeyError, AttributeError, ValueError) as exc:
        raise ModelFileError(model_paths(path)[1], f"prognosis heads cannot be read ({type(exc).__name__}: "
                                                   f"{str(exc)[:200]})") from None
    weights = {k: v for k, v in tensors.items() if not k.startswith(_PROGNOSIS_PREFIX)}
    state = model.state_dict()
    frozen_text = set() if frozen_stored else set(state) - set(_stored_keys(model, include_frozen_text=False))
    problem = describe_mismatch({k: tuple(v.shape) for k, v in state.items()},
                                {k: tuple(v.shape) for k, v in weights.items()}, allowed_missing=frozen_text)
    if problem:
        raise ModelFileError(weights_path, problem)
    model.load_state_dict(weights, strict=False)
    model.to(device).eval()
    return LoadedModel(model, card, heads, weights_path, card["weights"]["sha256"])
