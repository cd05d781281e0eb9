"""What a training run is, for the trainer (``src_train``) and its front ends (the napari dialog).

Everything both sides must agree on lives here once, without torch: the options (:class:`TrainConfig`,
the presets), the files of a run folder, where the training state sits inside the checkpoint, the exit
code of a stopped run and the progress events printed with ``--json-progress``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import safetensors_file
from .configs import strict_from_dict
from .paper import PAPER_EMBED_DIM, PAPER_INPUT_SIZE
from .preprocess import PreprocessConfig
from .prompts import ATTRIBUTES

#: exit code of ``python -m src_train train`` after a requested stop (checkpoint saved)
EXIT_STOPPED = 3

#: files of a run folder
CHECKPOINT_FILE = "last.safetensors"  # weights, optimiser state and the training state (metadata)
STATE_FILE = "last.json"  # a readable copy of the training state
LOG_FILE = "log.csv"
CONFIG_FILE = "train_config.json"
BEST_MODEL = "best"  # best.safetensors + best.json: the model of the best validation loss
LAST_MODEL = "last_model"  # the model of the last epoch
LOSS_CURVE_FILE = "loss_curve.png"
#: files a run writes besides the checkpoint
RUN_FILES = (STATE_FILE, LOG_FILE, CONFIG_FILE, f"{BEST_MODEL}.safetensors", f"{BEST_MODEL}.json",
             f"{LAST_MODEL}.safetensors", f"{LAST_MODEL}.json", LOSS_CURVE_FILE)
#: safetensors metadata key of the training state inside the checkpoint
STATE_KEY = "medimp_training_state"

#: mixed-precision choices of ``--amp``
AMP_MODES = ("auto", "bf16", "fp16", "off")


#: the training augmentation (the paper's set: flip, affine, blur, noise, gamma), each with its probability
#: and range: rotation in radians, scale as a relative change per axis, translation in voxels (z, y, x),
#: blur sigma in voxels, noise std as a fraction of the normalised intensity, gamma. A graft's physical
#: size is a clinical signal (it reads GFR), so the default never rescales it (``scale`` 0; the paper's
#: 0.1 is a setting). Recorded in the model card with the other training options.
AUGMENTATION_DEFAULTS: dict[str, Any] = {
    "flip": 0.5, "affine": 0.5, "rotate": 0.1, "scale": 0.0, "translate": [2.0, 4.0, 4.0],
    "blur": 0.2, "sigma": [0.25, 1.0], "noise": 0.2, "noise_std": 0.05, "gamma": 0.3, "gamma_range": [0.8, 1.25],
}
_PROBABILITIES = ("flip", "affine", "blur", "noise", "gamma")


def augmentation_settings(changes: dict | None = None) -> dict[str, Any]:
    """:data:`AUGMENTATION_DEFAULTS` with ``changes`` applied, checked (unknown names and impossible values
    are refused, naming them)."""
    changes = dict(changes or {})
    unknown = sorted(set(changes) - set(AUGMENTATION_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown augmentation setting(s) {', '.join(unknown)}; "
                         f"known: {', '.join(AUGMENTATION_DEFAULTS)}")
    out = {**AUGMENTATION_DEFAULTS, **changes}
    for name in _PROBABILITIES:
        if not 0.0 <= float(out[name]) <= 1.0:
            raise ValueError(f"augmentation {name} is a probability in [0, 1], got {out[name]}")
    if not 0.0 <= float(out["scale"]) < 1.0 or not 0.0 <= float(out["rotate"]) <= math.pi:
        raise ValueError("augmentation scale must be in [0, 1) (a relative change) and rotate in [0, pi] radians")
    if len(out["translate"]) != 3 or min(out["translate"]) < 0:
        raise ValueError("augmentation translate must be 3 non-negative shifts in voxels (z, y, x)")
    for name in ("sigma", "gamma_range"):
        low, high = (float(v) for v in out[name])
        if not 0.0 < low <= high:
            raise ValueError(f"augmentation {name} must be a range (low, high) with 0 < low <= high")
    if float(out["noise_std"]) < 0:
        raise ValueError("augmentation noise_std must be >= 0")
    return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in out.items()}


@dataclass
class TrainConfig:
    cohort: str = ""
    out: str = "medimp-run"
    image_encoder: str = "clip_resnet_tiny"
    image_encoder_kwargs: dict = field(default_factory=dict)
    embed_dim: int = 64
    text_model: str | None = None
    text_trainable_layers: int = 1
    preprocessing: dict = field(default_factory=lambda: PreprocessConfig().to_dict())
    attributes: tuple[str, ...] = ATTRIBUTES
    epochs: int = 10
    batch_size: int = 8
    micro_batch: int | None = None
    lr: float = 1e-4
    weight_decay: float = 0.1
    warmup_steps: int = 10
    grad_clip: float = 1.0
    val_fraction: float = 0.2
    seed: int = 0
    augment: bool = True
    #: changes to :data:`AUGMENTATION_DEFAULTS` (probabilities and ranges); stored complete
    augmentation: dict = field(default_factory=dict)
    #: stop after this many epochs without a better validation mean rank (0: never stop early)
    patience: int = 0
    #: at every epoch end (before validating and saving), recompute the batch-norm statistics exactly from
    #: this many training images (unaugmented; 0: keep the running averages of the last steps, which
    #: swing from epoch to epoch)
    precise_bn: int = 64
    device: str = "auto"
    amp: str = "auto"
    text_dropout: float | None = None
    #: frozen text layers are a fixed feature extractor (no dropout), computed once per distinct prompt
    cache_frozen_text: bool = True
    sync_batchnorm: bool = True

    def __post_init__(self):
        self.attributes = tuple(self.attributes)
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be >= 1 and batch_size >= 2 (a contrastive batch needs negatives)")
        if self.micro_batch is not None and not 1 <= self.micro_batch <= self.batch_size:
            raise ValueError(f"micro_batch must be between 1 and batch_size ({self.batch_size})")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.text_dropout is not None and not 0.0 <= self.text_dropout < 1.0:
            raise ValueError(f"text_dropout must be in [0, 1), got {self.text_dropout}")
        self.augmentation = augmentation_settings(self.augmentation)
        if int(self.precise_bn) < 0:
            raise ValueError(f"precise_bn must be >= 0 images, got {self.precise_bn}")
        if int(self.patience) < 0:
            raise ValueError(f"patience must be >= 0 epochs (0: no early stopping), got {self.patience}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["attributes"] = list(self.attributes)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        return strict_from_dict(cls, data, "training options")


PRESETS = {
    # measured on the calibrated synthetic world (README, "Demo model"): five phases as channels (the
    # phase study's best linear GFR reader), batch 16, lr 1e-3 with 30 warm-up steps, early stopping on
    # the validation mean rank after 10 epochs without progress; about 20 s per epoch on 2 CPU cores for
    # 286 training exams
    "cpu-small": {"image_encoder": "clip_resnet_tiny", "image_encoder_kwargs": {"width": 16}, "embed_dim": 64,
                  "batch_size": 16, "epochs": 40, "lr": 1e-3, "warmup_steps": 30, "patience": 10,
                  "preprocessing": PreprocessConfig(phases=("baseline", "28s", "52s", "120s", "late")).to_dict()},
    "paper": {"image_encoder": "clip_resnet50_3d", "embed_dim": PAPER_EMBED_DIM, "batch_size": 22, "epochs": 200,
              "lr": 1e-4, "warmup_steps": 500,
              "preprocessing": PreprocessConfig(target_spacing=(1.0, 1.0, 1.0),
                                                input_size=PAPER_INPUT_SIZE).to_dict()},
}


def config_fields() -> set[str]:
    return set(TrainConfig.__dataclass_fields__)


def preset_summary(preset: str) -> str:
    """'3D CLIP ResNet-50, 96x144x192 input, batch 22, 200 epochs' for a preset."""
    values = {**TrainConfig().to_dict(), **PRESETS[preset]}
    size = "x".join(str(n) for n in reversed(values["preprocessing"]["input_size"]))
    return f"{values['image_encoder']}, {size} input, batch {values['batch_size']}, {values['epochs']} epochs"


# --------------------------------------------------------------------------------------------------
# the checkpoint's training state
# --------------------------------------------------------------------------------------------------
def checkpoint_state(payload: bytes, state_json: str | None = None) -> dict:
    """The training state of a checkpoint held in memory: from its own metadata (always consistent with
    its tensors), else from the ``last.json`` copy (checkpoints written before the state moved into the
    file)."""
    return _state(safetensors_file.metadata(safetensors_file.parse_header(payload)), state_json)


def read_checkpoint_state(folder) -> dict:
    """The training state of a run folder's checkpoint, reading only the checkpoint's header."""
    folder = Path(folder)
    state_file = folder / STATE_FILE
    header = safetensors_file.read_header(folder / CHECKPOINT_FILE)
    return _state(safetensors_file.metadata(header), state_file.read_text() if state_file.is_file() else None)


def _state(metadata: dict, state_json: str | None) -> dict:
    if STATE_KEY in metadata:
        return json.loads(metadata[STATE_KEY])
    if state_json is None:
        raise ValueError(f"the training checkpoint has no state ({STATE_FILE} is missing)")
    return json.loads(state_json)


# --------------------------------------------------------------------------------------------------
# progress events (one JSON object per stdout line with --json-progress)
# --------------------------------------------------------------------------------------------------
#: required fields of each progress event and their kinds
EVENT_FIELDS: dict[str, dict[str, str]] = {
    "start": {"train_exams": "int", "val_exams": "int", "steps_per_epoch": "int", "epochs": "int"},
    "resumed": {"epoch": "int", "step": "int"},
    "step": {"epoch": "int", "step": "int", "total_steps": "int", "loss": "number"},
    "epoch": {"epoch": "int", "step": "int", "train_loss": "number"},
    "stopped": {"epoch": "int", "step": "int", "checkpoint": "str"},
    "early_stop": {"epoch": "int", "patience": "int"},
    "done": {"model": "str"},
}
#: metrics an event may carry (numbers or null)
OPTIONAL_NUMBERS = ("val_loss", "recall_at_1", "recall_at_5", "mean_rank", "lr", "seconds", "best_val_loss",
                    "val_chance_loss", "val_floor_loss", "chance_mean_rank", "content_top1", "content_baseline",
                    "content_mean_rank", "best_mean_rank")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


_CHECKS = {"int": is_int, "number": is_number, "str": lambda v: isinstance(v, str) and bool(v)}


def event(kind: str, **fields: Any) -> dict:
    """A progress event, checked against :data:`EVENT_FIELDS` (the trainer emits only these)."""
    required = EVENT_FIELDS[kind]
    missing = [name for name in required if name not in fields]
    if missing:
        raise ValueError(f"progress event {kind!r} lacks {', '.join(missing)}")
    return {"event": kind, **fields}


def parse_event(line: str | bytes) -> dict | None:
    """A progress event from one stdout line, or ``None`` when the line is not a valid event (log it).

    Valid: a JSON object whose ``event`` is one of :data:`EVENT_FIELDS` with every required field of the
    right kind, and metrics (``val_loss``, ``recall_at_1``, ...) numbers when present. NaN losses are
    kept (a diverging run is worth showing)."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        parsed = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(parsed, dict):
        return None
    required = EVENT_FIELDS.get(parsed.get("event"))  # type: ignore[arg-type]
    if required is None:
        return None
    if not all(name in parsed and _CHECKS[kind](parsed[name]) for name, kind in required.items()):
        return None
    if any(name in parsed and parsed[name] is not None and not is_number(parsed[name])
           for name in OPTIONAL_NUMBERS):
        return None
    return parsed
