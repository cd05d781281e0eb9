"""The training dialog's options without Qt: the form, its checks, and the child's command lines.

The napari training dialog runs ``python -m src_train train ... --json-progress`` in a child process. This
module holds what goes into that command, so it can be tested (and reused by other front ends) on a
headless machine:

* :class:`TrainingOptions` -- the form, validated field by field (:meth:`TrainingOptions.problems`),
  turned into an argument list (:meth:`TrainingOptions.command`);
* :func:`resolve_cohort`, :func:`read_config`, :func:`inspect_run_folder`, :func:`precision_problem` --
  the checks behind the form; :func:`preset_defaults`, :func:`effective_defaults`, :func:`device_choices`
  -- what it offers;
* :func:`evaluation_command`, :func:`evaluation_cohort` -- the evaluation that follows a finished training;
* :func:`child_environment`, :func:`source_root` -- where and how a child runs.

What the dialog and the trainer must agree on (options, presets, run files, exit codes, progress
events) is :mod:`napari_medimp.core.training_run`; this module never imports ``src_train``.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.prompts import ATTRIBUTES
from ..core.training_run import (
    AMP_MODES,
    CHECKPOINT_FILE,
    PRESETS,
    RUN_FILES,
    TrainConfig,
    batch_plan,
    config_fields,
    is_int,
    preset_summary,
    read_checkpoint_state,
)

__all__ = [
    "ATTRIBUTE_LABELS",
    "COHORT_HINT",
    "DEVICE_LABELS",
    "PRECISION_HINT",
    "PRECISION_LABELS",
    "PRESET_LABELS",
    "OptionsError",
    "RunFolder",
    "TrainingOptions",
    "child_environment",
    "device_choices",
    "effective_defaults",
    "evaluation_cohort",
    "evaluation_command",
    "inspect_run_folder",
    "precision_problem",
    "preset_defaults",
    "preset_warning",
    "read_config",
    "resolve_cohort",
    "source_root",
]


PRESET_LABELS = {"cpu-small": "CPU small (tiny 3D ResNet)", "paper": "GPU paper (3D CLIP ResNet-50)"}
ATTRIBUTE_LABELS = {"gfr": "GFR", "exam": "exam date", "creatinine": "creatinine stability",
                    "donor_age": "donor age"}
#: the training device: "auto" is the trainer's choice (cuda, then mps, then cpu)
DEVICE_LABELS = {"auto": "auto (GPU when present)", "cuda": "CUDA GPU", "mps": "Apple GPU (MPS)", "cpu": "CPU"}
#: the trainer's ``--amp`` choices (``core.training_run.AMP_MODES``), in words
PRECISION_LABELS = {"auto": "auto", "bf16": "bf16 (mixed)", "fp16": "fp16 (mixed, CUDA)", "off": "off (float32)"}
PRECISION_HINT = ("mixed precision of the training (the trainer's --amp): auto is bf16 on a GPU that supports it, "
                  "else fp16 with loss scaling, and float32 on the CPU or an Apple GPU; bf16 runs on a CUDA GPU or "
                  "the CPU; fp16 needs a CUDA GPU; off is float32 everywhere. The loss is always computed in float32")
COHORT_HINT = ("a cohort folder holds clinical.csv (one row per patient, column patient_id) and the images "
               "as patient/exam/sequence/*.nii.gz")


class OptionsError(ValueError):
    """Invalid training options; ``problems`` maps each form field to its message."""

    def __init__(self, problems: Mapping[str, str]):
        self.problems = dict(problems)
        super().__init__("; ".join(f"{k}: {v}" for k, v in self.problems.items()))


# --------------------------------------------------------------------------------------------------
# presets and configs
# --------------------------------------------------------------------------------------------------
def preset_defaults(preset: str) -> dict[str, Any]:
    """Epochs, batch size, device and precision (``amp``) of a training preset (``core.training_run.PRESETS``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
    values = PRESETS[preset]
    base = TrainConfig.__dataclass_fields__
    out: dict[str, Any] = {key: int(values.get(key, base[key].default)) for key in ("epochs", "batch_size")}
    out.update({key: str(values.get(key, base[key].default)) for key in ("device", "amp")})
    return out


def effective_defaults(preset: str, config: str | os.PathLike | None = None) -> dict[str, Any]:
    """Epochs, batch size, device and precision the training would use: the preset's, overridden by a
    config file's.

    An unreadable config is ignored here (:func:`read_config` reports it)."""
    values = preset_defaults(preset)
    if config:
        try:
            data = read_config(config)
        except ValueError:
            return values
        for key in ("epochs", "batch_size"):
            if is_int(data.get(key)):
                values[key] = data[key]
        if data.get("amp") in AMP_MODES:
            values["amp"] = data["amp"]
        if isinstance(data.get("device"), str) and data["device"]:
            values["device"] = data["device"]
    return values


def preset_warning(preset: str, devices: Sequence[str]) -> str | None:
    """Why a preset is a poor choice on this machine (``devices`` as from ``available_devices()``)."""
    if preset == "paper" and "cuda" not in devices:
        return (f"the paper preset ({preset_summary('paper')}) needs a CUDA GPU; none is available here: "
                "use CPU small")
    return None


def device_choices(devices: Sequence[str]) -> list[str]:
    """Devices the form offers: "auto" first, then those available here (``available_devices()``)."""
    return ["auto", *(d for d in ("cuda", "mps") if d in devices), "cpu"]


def precision_problem(amp: str, device: str, devices: Sequence[str]) -> str | None:
    """Why a precision cannot run on a device (as the trainer would refuse it), or None.

    ``device`` "auto" is the first of ``devices`` (cuda, then mps, then cpu). Whether a CUDA GPU has bf16
    is known only to the trainer, which says so when it starts."""
    if amp not in AMP_MODES:
        return f"unknown precision {amp!r}; known: {', '.join(AMP_MODES)}"
    kind = (devices[0] if devices else "cpu") if device == "auto" else device.split(":")[0]
    where = {"cpu": "the CPU", "mps": "an Apple GPU", "cuda": "a CUDA GPU"}.get(kind, kind)
    if amp == "fp16" and kind != "cuda":
        return f"fp16 needs a CUDA GPU; the training would run on {where}: choose bf16, off or auto"
    if amp == "bf16" and kind not in ("cuda", "cpu"):
        return f"bf16 runs on a CUDA GPU or the CPU, not on {where}: choose off or auto"
    return None


def read_config(path: str | os.PathLike) -> dict:
    """A training config JSON file: an object whose keys are training options. ValueError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path.name}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path.name} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} must hold a JSON object of training options")
    unknown = sorted(set(data) - config_fields())
    if unknown:
        raise ValueError(f"unknown training option(s) {', '.join(unknown)} in {path.name}")
    return data


# --------------------------------------------------------------------------------------------------
# cohort and run folder
# --------------------------------------------------------------------------------------------------
def resolve_cohort(path: str | os.PathLike) -> Path:
    """The cohort folder of a folder or of its ``clinical.csv``; ValueError that says what is expected."""
    if not str(path).strip():
        raise ValueError(f"choose a cohort folder or its clinical.csv ({COHORT_HINT})")
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise ValueError(f"{path.name} is neither a cohort folder nor its clinical.csv ({COHORT_HINT})")
        if path.name != "clinical.csv":
            raise ValueError(f"{path.name}: a CSV must be the cohort's clinical.csv, next to the patient "
                             f"folders ({COHORT_HINT})")
        path = path.parent
    table = path / "clinical.csv"
    if not table.is_file():
        raise ValueError(f"no clinical.csv in {path.name}: {COHORT_HINT}")
    try:
        with open(table, newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "patient_id" not in reader.fieldnames:
                raise ValueError(f"{table} has no patient_id column ({COHORT_HINT})")
            patients = [row["patient_id"] for row in reader if row.get("patient_id")]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"cannot read {table}: {exc}") from None
    if not patients:
        raise ValueError(f"{table} lists no patient")
    if not any((path / p).is_dir() for p in patients):
        raise ValueError(f"none of the {len(patients)} patients of clinical.csv has a folder in {path} "
                         f"({COHORT_HINT})")
    return path


@dataclass
class RunFolder:
    """What an output folder already holds."""

    path: Path
    exists: bool = False
    checkpoint: bool = False
    previous_files: list[str] = field(default_factory=list)
    next_epoch: int | None = None
    next_batch: int | None = None
    step: int | None = None
    epochs: int | None = None
    config: dict | None = None

    @property
    def finished(self) -> bool:
        return self.next_epoch is not None and self.epochs is not None and self.next_epoch >= self.epochs

    def describe(self) -> str:
        """Short words for the Resume box, e.g. ``step 3, in epoch 1/30`` or ``step 8, 2/30 epochs done``."""
        if not self.checkpoint:
            return "previous run files" if self.previous_files else "empty"
        of = f"/{self.epochs}" if self.epochs else ""
        if self.next_batch:
            return f"step {self.step}, in epoch {(self.next_epoch or 0) + 1}{of}"
        return f"step {self.step}, {self.next_epoch}{of} epochs done"


def inspect_run_folder(path: str | os.PathLike) -> RunFolder:
    """What ``path`` holds: a resumable checkpoint (with its position), files of a run, or nothing."""
    path = Path(path).expanduser()
    run = RunFolder(path=path, exists=path.exists())
    if not path.is_dir():
        return run
    run.previous_files = [name for name in (CHECKPOINT_FILE, *RUN_FILES) if (path / name).exists()]
    if (path / CHECKPOINT_FILE).is_file():
        try:
            state = read_checkpoint_state(path)
            run.next_epoch, run.step = int(state["next_epoch"]), int(state["step"])
            run.next_batch = int(state.get("next_batch") or 0)
            run.config = state.get("config") if isinstance(state.get("config"), dict) else None
            run.epochs = int(run.config["epochs"]) if run.config else None
            run.checkpoint = True
        except (OSError, ValueError, KeyError, TypeError):
            run.checkpoint = False  # no readable state: cannot be resumed
    return run


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------------
# the form
# --------------------------------------------------------------------------------------------------
@dataclass
class TrainingOptions:
    """The training form. ``epochs``/``batch_size`` ``None``: the preset's (or the config file's).

    With ``resume`` the run folder's own ``train_config.json`` is the config (a checkpoint only loads
    into the model it was saved from); only ``epochs`` can change then.
    """

    cohort: str = ""
    out: str = ""
    preset: str = "cpu-small"
    epochs: int | None = None
    batch_size: int | None = None
    attributes: tuple[str, ...] = ATTRIBUTES
    config: str | None = None
    resume: bool = False
    #: training device (``--device``): "auto", "cpu", "cuda", "mps"
    device: str = "auto"
    #: mixed precision (``--amp``); with ``resume`` the run's own
    amp: str = "auto"
    #: devices available here, best first (``available_devices()``): to check ``device`` and ``amp``
    devices: tuple[str, ...] = ("cpu",)

    def problems(self) -> dict[str, str]:
        """Field name -> message for every invalid field (empty: the options are valid)."""
        problems: dict[str, str] = {}
        cohort = None
        try:
            cohort = resolve_cohort(self.cohort)
        except ValueError as exc:
            problems["cohort"] = str(exc)
        if self.preset not in PRESETS:
            problems["preset"] = f"unknown preset {self.preset!r}; known: {', '.join(sorted(PRESETS))}"
        if self.epochs is not None and (not isinstance(self.epochs, int) or self.epochs < 1):
            problems["epochs"] = "train for at least 1 epoch"
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 2):
            problems["batch_size"] = "a contrastive batch needs at least 2 exams (its negatives)"
        unknown = [a for a in self.attributes if a not in ATTRIBUTES]
        if unknown:
            problems["attributes"] = f"unknown prompt attribute(s) {', '.join(unknown)}"
        elif not self.attributes:
            problems["attributes"] = "select at least one prompt attribute"
        if self.config and not self.resume:
            try:
                read_config(self.config)
            except ValueError as exc:
                problems["config"] = str(exc)
        if self.device != "auto" and self.device.split(":")[0] not in self.devices:
            problems["device"] = (f"no {DEVICE_LABELS.get(self.device, self.device)} on this machine; available: "
                                  f"{', '.join(DEVICE_LABELS.get(d, d) for d in self.devices)}")
        elif not self.resume and precision_problem(self.amp, self.device, self.devices):
            problems["amp"] = precision_problem(self.amp, self.device, self.devices)
        problems.update(self._out_problems(cohort))
        return problems

    def _out_problems(self, cohort: Path | None) -> dict[str, str]:
        if not str(self.out).strip():
            return {"out": "choose an output folder for the run (checkpoints, model files, evaluation)"}
        run = inspect_run_folder(self.out)
        if run.exists and not run.path.is_dir():
            return {"out": f"{run.path.name} is a file, not a folder"}
        if cohort is not None and _inside(run.path, cohort):
            return {"out": "put the run folder outside the cohort folder"}
        if self.resume:
            if not run.checkpoint:
                return {"out": f"nothing to resume: no readable {CHECKPOINT_FILE} in {run.path.name}"}
            return {}
        if run.checkpoint:
            return {"out": f"{run.path.name} holds a previous run ({run.describe()}): tick Resume to continue "
                           "it, or choose another folder"}
        if run.previous_files:
            return {"out": f"{run.path.name} holds files of a previous run ({', '.join(run.previous_files)}): "
                           "choose another folder"}
        return {}

    def validate(self) -> TrainingOptions:
        problems = self.problems()
        if problems:
            raise OptionsError(problems)
        return self

    def arguments(self) -> list[str]:
        """Arguments after the Python executable (the options must be valid)."""
        cohort = resolve_cohort(self.cohort).absolute()
        out = Path(self.out).expanduser().absolute()
        args = ["-m", "src_train", "train", "--cohort", str(cohort), "--out", str(out),
                "--preset", self.preset]
        run_config = out / "train_config.json"
        if self.resume and run_config.is_file():
            args += ["--config", str(run_config)]
        else:
            if self.config:
                args += ["--config", str(Path(self.config).expanduser().absolute())]
            if self.batch_size is not None:
                args += ["--batch-size", str(self.batch_size)]
            args += ["--attributes", ",".join(a for a in ATTRIBUTES if a in self.attributes)]
            args += ["--amp", self.amp]  # a resumed run keeps its own (in its train_config.json)
        if self.epochs is not None:
            args += ["--epochs", str(self.epochs)]
        args += ["--device", self.device]  # a resumed run may move to another device
        if self.resume:
            args.append("--resume")
        args.append("--json-progress")
        return args

    def train_config(self) -> TrainConfig:
        """The options the trainer will run with, as it builds them from :meth:`arguments`: the preset, then
        the config file (with ``resume`` the run's own ``train_config.json``), then the form's values."""
        values = dict(PRESETS[self.preset])
        out = Path(self.out).expanduser()
        run_config = out / "train_config.json"
        if self.resume and run_config.is_file():
            values.update(read_config(run_config))
        else:
            if self.config:
                values.update(read_config(Path(self.config).expanduser()))
            if self.batch_size is not None:
                values["batch_size"] = self.batch_size
            values["attributes"] = [a for a in ATTRIBUTES if a in self.attributes]
            values["amp"] = self.amp
        if self.epochs is not None:
            values["epochs"] = self.epochs
        values.update(cohort=str(resolve_cohort(self.cohort)), out=str(out), device=self.device)
        return TrainConfig.from_dict(values)

    def batch_problem(self) -> str | None:
        """Why the cohort's training exams would make no batch (no step: nothing trained), with the numbers
        and a way out (:meth:`~napari_medimp.core.training_run.BatchPlan.problem`); None when they make at
        least one. Reads the cohort's table and folders (not the images): a check for Start, not for every
        key stroke. Options that the trainer refuses for another reason are its to report (None here)."""
        try:
            return batch_plan(self.train_config()).problem()
        except (ValueError, TypeError, OSError):
            return None

    def command(self, python: str = sys.executable) -> list[str]:
        """The full command line (validated first; :class:`OptionsError` when a field is invalid)."""
        self.validate()
        return [python, *self.arguments()]


def evaluation_command(model: str | os.PathLike, cohort: str | os.PathLike, out: str | os.PathLike,
                       splits: int = 3, repeats: int = 2, python: str = sys.executable,
                       allow_overlap: bool = False, device: str = "auto") -> list[str]:
    """``python -m src_train evaluate ... --write-heads`` (prognosis heads go into the model file);
    ``allow_overlap`` for an in-sample evaluation on the training patients (its table says so);
    ``device`` embeds the exams there (the training's choice)."""
    if int(splits) < 2:
        raise ValueError("cross-validation needs at least 2 splits")
    if int(repeats) < 1:
        raise ValueError("at least 1 repeat")
    return [python, "-m", "src_train", "evaluate", "--model", str(model), "--cohort", str(cohort),
            "--out", str(out), "--splits", str(int(splits)), "--repeats", str(int(repeats)), "--device", device,
            "--overwrite", "--write-heads", *(["--allow-overlap"] if allow_overlap else [])]


def evaluation_cohort(chosen: str | os.PathLike | None, training_cohort: str | os.PathLike) -> tuple[Path, bool]:
    """(cohort folder to evaluate on, whether that is in-sample): the chosen cohort of other patients, or
    the training cohort (in-sample) when none is chosen or it is the training cohort itself. A chosen
    ``clinical.csv`` stands for its folder."""
    train = Path(training_cohort)
    train = train.parent if train.suffix.lower() == ".csv" else train
    text = str(chosen or "").strip()
    if not text:
        return train, True
    path = Path(text).expanduser()
    path = path.parent if path.suffix.lower() == ".csv" else path
    same = path.resolve() == train.resolve()
    return path, same


def source_root() -> Path | None:
    """The folder holding the ``src_train`` package this process imports (None when absent)."""
    spec = importlib.util.find_spec("src_train")
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).resolve().parent.parent


def child_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of the child: unbuffered UTF-8 output, no GUI backend, no progress bars, and
    ``src_train`` importable (its folder first on ``PYTHONPATH``)."""
    env = dict(os.environ if base is None else base)
    env.update(PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", MPLBACKEND="Agg", TQDM_DISABLE="1")
    root = source_root()
    if root is not None:
        parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if str(root) not in parts:
            env["PYTHONPATH"] = os.pathsep.join([str(root), *parts])
    return env
