"""What a training run is, for the trainer (``src_train``) and its front ends (the napari dialog).

Everything both sides must agree on lives here once, without torch: the options (:class:`TrainConfig`,
the presets), the files of a run folder, where the training state sits inside the checkpoint, the exit
code of a stopped run and the progress events printed with ``--json-progress``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import safetensors_file
from .clinical import ClinicalRecord, ClinicalValueError
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
# the cohort's exams, the validation split and the batches they make
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExamItem:
    """One exam of a cohort that can train: its patient, exam name, image folder and clinical record."""

    patient: str
    exam: str
    image: Path
    record: ClinicalRecord


def cohort_items(root, table=None) -> tuple[list[ExamItem], list[str]]:
    """Every exam with an image and a clinical row, and a list of what was skipped and why (the table and
    the folders are read; no image is opened)."""
    from .io.cohort import cohort_exams, match_clinical_table, read_clinical_table

    root = Path(root)
    table = Path(table) if table else root / "clinical.csv"
    if not table.exists():
        raise ValueError(f"{root}: no clinical table (expected {table.name} in the cohort folder)")
    rows = read_clinical_table(table)
    exams = cohort_exams(root)
    match_clinical_table(table, rows, [patient for patient, _exam, _folder in exams])
    items, skipped = [], []
    for patient, exam, folder in exams:
        if patient not in rows:
            skipped.append(f"{patient}/{exam}: patient not in {table.name}")
            continue
        try:
            record = ClinicalRecord.from_csv_row(rows[patient], exam)
        except (ClinicalValueError, ValueError) as exc:
            skipped.append(f"{patient}/{exam}: {exc}")
            continue
        items.append(ExamItem(patient, exam.upper(), folder, record))
    return items, skipped


def split_by_patient(items: Sequence[ExamItem], val_fraction: float = 0.2, seed: int = 0):
    """(train, validation) items with every patient on one side only."""
    patients = sorted({item.patient for item in items})
    rng = np.random.default_rng(seed)
    rng.shuffle(patients)
    n_val = int(round(val_fraction * len(patients)))
    if len(patients) > 1:
        n_val = min(max(n_val, 1 if val_fraction > 0 else 0), len(patients) - 1)
    val = set(patients[:n_val])
    return [i for i in items if i.patient not in val], [i for i in items if i.patient in val]


def steps_per_epoch(n_train: int, batch_size: int, world_size: int = 1) -> int:
    """Optimiser steps in one epoch: whole batches of ``batch_size`` training exams only. The exams left
    over after the last whole batch wait for a later epoch (the order is shuffled every epoch): a partial
    batch would have fewer negatives and, under several processes, unequal shares. ``world_size``
    processes split every batch (``batch_size`` must be a multiple of it), so the count does not change
    with them."""
    if batch_size < 2:
        raise ValueError("batch_size must be >= 2 (a contrastive batch needs negatives)")
    if world_size < 1 or batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the number of processes ({world_size})")
    return max(0, int(n_train)) // batch_size


def suggested_batch(n_train: int, world_size: int = 1) -> int | None:
    """A batch size that makes at least one step of ``n_train`` exams: the largest power of two (else the
    largest size) of at least 2 and at most ``n_train`` that ``world_size`` processes can share; None
    when there is none."""
    sizes = [b for b in range(2, int(n_train) + 1) if b % world_size == 0]
    powers = [b for b in sizes if b & (b - 1) == 0]
    return max(powers or sizes) if sizes else None


@dataclass(frozen=True)
class BatchPlan:
    """How a cohort's exams make batches: the training and validation exams (and their patients) after
    the split by patient, and the steps per epoch they give."""

    train_exams: int
    train_patients: int
    val_exams: int
    val_patients: int
    batch_size: int
    world_size: int = 1

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.train_exams, self.batch_size, self.world_size)

    def _split(self) -> str:
        patients = self.train_patients + self.val_patients
        if not self.val_patients:
            return f"{_count(patients, 'patient')}, none kept for validation"
        return (f"{self.train_patients} of {_count(patients, 'patient')}; {_count(self.val_exams, 'exam')} of "
                f"{_count(self.val_patients, 'patient')} kept for validation")

    def problem(self) -> str | None:
        """Why these exams train nothing (no step per epoch), in numbers with a way out; None when they
        make at least one step."""
        if self.steps_per_epoch > 0:
            return None
        n, batch = self.train_exams, self.batch_size
        processes = f" ({self.world_size} processes of {batch // self.world_size})" if self.world_size > 1 else ""
        if n < 2:
            head = (f"{_count(n, 'training exam')} ({self._split()}) cannot make a contrastive batch (it needs "
                    "at least 2 exams)")
            return f"{head}; use more patients" + (" or a smaller validation share (val_fraction)"
                                                   if self.val_patients else "")
        suggestion = suggested_batch(n, self.world_size)
        head = f"{n} training exams ({self._split()}) make no batch of {batch}{processes}"
        if suggestion is None:
            return f"{head}; use fewer processes or more patients"
        return f"{head}; use batch {suggestion} or more patients"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def batch_plan(config: TrainConfig, world_size: int = 1) -> BatchPlan:
    """The :class:`BatchPlan` of ``config``'s cohort, split as the trainer splits it (``val_fraction``,
    ``seed``). Reads the clinical table and the folders, not the images: an exam whose image turns out to
    be unreadable is dropped later, so the trainer checks again once its exams are read."""
    items, _ = cohort_items(config.cohort)
    train, val = split_by_patient(items, config.val_fraction, config.seed)
    return BatchPlan(train_exams=len(train), train_patients=len({i.patient for i in train}),
                     val_exams=len(val), val_patients=len({i.patient for i in val}),
                     batch_size=config.batch_size, world_size=world_size)


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
