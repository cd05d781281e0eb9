"""The training dialog without Qt: form values -> command line, progress events, evaluation table.

The napari training dialog runs ``python -m src_train train ... --json-progress`` in a child process and
reads one JSON object per line from its stdout. This module holds everything about that exchange that
does not need a GUI, so it can be tested (and reused by other front ends) on a headless machine:

* :class:`TrainingOptions` -- the form, validated field by field (:meth:`TrainingOptions.problems`),
  turned into an argument list (:meth:`TrainingOptions.command`);
* :func:`resolve_cohort`, :func:`read_config`, :func:`inspect_run_folder`, :func:`precision_problem` --
  the checks behind the form;
* :class:`LineSplitter` and :func:`parse_event` -- bytes from the child -> complete lines -> validated
  progress events (anything else is a log line); :class:`WarningLines` -- a library's Python warning in
  the log as one plain line;
* :class:`TrainingProgress` -- the events folded into what the dialog shows (progress, status line,
  loss curves), with the earlier parts of a resumed run read back from its folder
  (:meth:`TrainingProgress.add_run_history`, :func:`read_loss_history`);
* :func:`evaluation_command`, :func:`read_evaluation_table`, :func:`evaluation_lines`,
  :func:`evaluation_warnings` -- the evaluation that follows a finished training, its table and what
  makes it too weak to rely on (:data:`MIN_PATIENTS`, :data:`MIN_PER_OUTCOME`, :data:`MIN_AUC`);
* :func:`read_run_results` -- what an earlier run left in its folder (model, loss curve, evaluation);
* :func:`describe_exit` -- a child's exit code in words.

What the dialog and the trainer must agree on (options, presets, run files, exit codes, progress
events) is :mod:`napari_medimp.core.training_run`; this module never imports ``src_train``.
"""

from __future__ import annotations

import codecs
import csv
import importlib.util
import json
import math
import os
import re
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.card import MIN_AUC, MIN_PATIENTS, MIN_PER_OUTCOME
from ..core.prompts import ATTRIBUTES
from ..core.training_run import (
    AMP_MODES,
    BEST_MODEL,
    CHECKPOINT_FILE,
    EVENT_FIELDS,
    EXIT_STOPPED,
    LAST_MODEL,
    LOG_FILE,
    PRESETS,
    RUN_FILES,
    TrainConfig,
    batch_plan,
    config_fields,
    is_finite,
    is_int,
    is_number,
    parse_event,
    preset_summary,
    read_checkpoint_state,
)

__all__ = [
    "AMP_MODES",
    "ATTRIBUTE_LABELS",
    "CHECKPOINT_FILE",
    "COLUMN_HINTS",
    "DEVICE_LABELS",
    "DISPLAY_COLUMNS",
    "EVENT_FIELDS",
    "EXIT_STOPPED",
    "MIN_AUC",
    "MIN_PATIENTS",
    "MIN_PER_OUTCOME",
    "PRECISION_LABELS",
    "PRESET_LABELS",
    "RUN_FILES",
    "LineSplitter",
    "OptionsError",
    "RunFolder",
    "RunResults",
    "TableLine",
    "TrainingOptions",
    "TrainingProgress",
    "WarningLines",
    "child_environment",
    "describe_exit",
    "device_choices",
    "effective_defaults",
    "evaluation_command",
    "evaluation_lines",
    "evaluation_warnings",
    "horizon_words",
    "inspect_run_folder",
    "nice_ceiling",
    "parse_event",
    "plot_limits",
    "precision_problem",
    "preset_defaults",
    "preset_warning",
    "read_config",
    "read_evaluation_table",
    "read_loss_history",
    "read_run_results",
    "read_training_log",
    "reliability",
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


@dataclass
class RunResults:
    """What an earlier run left in its folder, for the dialog to show again."""

    path: Path
    #: its loss curve (None: no loss recorded)
    progress: TrainingProgress | None = None
    #: its model file (best validation loss, else the last epoch's)
    model: Path | None = None
    #: rows of its evaluation table (``evaluation/evaluation.csv``)
    evaluation: list[dict] = field(default_factory=list)
    #: why its evaluation table cannot be read
    evaluation_problem: str | None = None
    #: its evaluation is marked in-sample (on the training patients)
    in_sample: bool = False

    @property
    def empty(self) -> bool:
        return self.progress is None and self.model is None and not self.evaluation and not self.evaluation_problem

    def describe(self) -> str:
        """Words for the status line, e.g. ``earlier run: 12 epochs; model best.safetensors; evaluation below``."""
        parts = []
        if self.progress is not None and self.progress.epoch_metrics:
            parts.append(f"{len(self.progress.epoch_metrics)} epochs")
        elif self.progress is not None:
            parts.append(f"{self.progress.step} steps")
        parts.append(f"model {self.model.name}" if self.model else "no model file yet")
        if self.evaluation:
            parts.append("its evaluation below" + (" (IN-SAMPLE: not a result)" if self.in_sample else ""))
        elif self.evaluation_problem:
            parts.append(f"its evaluation cannot be read: {self.evaluation_problem}")
        return f"earlier run in {self.path.name}: " + "; ".join(parts)


def read_run_results(path: str | os.PathLike) -> RunResults:
    """The loss curve, model file and evaluation table an earlier run left in ``path`` (each when present)."""
    path = Path(path).expanduser()
    results = RunResults(path=path)
    if not path.is_dir():
        return results
    progress = TrainingProgress()
    progress.add_run_history(path)
    if progress.step_losses or progress.epoch_metrics:
        steps = [s for s, _ in progress.step_losses] + [m["step"] for m in progress.epoch_metrics]
        progress.step = max(steps)
        state = _checkpoint_state(path)
        config = state.get("config") if isinstance(state.get("config"), dict) else {}
        if is_int(config.get("epochs")) and is_int(state.get("next_epoch")) and state["next_epoch"] > 0 \
                and not state.get("next_batch") and is_int(state.get("step")):
            progress.epochs = config["epochs"]
            progress.steps_per_epoch = state["step"] // state["next_epoch"]
            progress.total_steps = progress.epochs * progress.steps_per_epoch
        results.progress = progress
    for name in (BEST_MODEL, LAST_MODEL):
        if (path / f"{name}.safetensors").is_file():
            results.model = path / f"{name}.safetensors"
            break
    evaluation = path / "evaluation"
    if (evaluation / "evaluation.csv").exists():
        try:
            results.evaluation = read_evaluation_table(evaluation)
        except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
            results.evaluation_problem = str(exc)
        try:
            results.in_sample = "in-sample table" in (evaluation / "evaluation.md").read_text(errors="replace")
        except OSError:
            pass
    return results


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


# --------------------------------------------------------------------------------------------------
# the child's output
# --------------------------------------------------------------------------------------------------
class LineSplitter:
    """Bytes as they arrive -> complete text lines (a partial line waits for the rest).

    UTF-8 is decoded incrementally (a character split across reads is kept whole; invalid bytes become
    U+FFFD). Carriage-return progress bars keep their last state: ``"a\\rb\\n"`` -> ``"b"``.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    @staticmethod
    def _clean(line: str) -> str:
        parts = [p for p in line.rstrip("\r").split("\r") if p.strip()]
        return parts[-1] if parts else ""

    def feed(self, data: bytes | str) -> list[str]:
        text = data if isinstance(data, str) else self._decoder.decode(bytes(data))
        *lines, self._pending = (self._pending + text).split("\n")
        return [self._clean(line) for line in lines]

    def finish(self) -> list[str]:
        """The last line when the stream ends without a newline."""
        rest = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return [self._clean(rest)] if rest.strip() else []


#: a Python warning as ``warnings`` prints it: ``path/to/file.py:123: UserWarning: message``
_WARNING_LINE = re.compile(r"^(?P<where>\S.*?):(?P<line>\d+): (?P<category>[A-Za-z_][\w.]*Warning): (?P<message>.*)$")


class WarningLines:
    """A child's stderr lines as the log shows them: a Python warning (``path/to/file.py:123: UserWarning:
    message``, and the source line Python prints indented under it) becomes one plain line
    ``warning: message``; every other line (errors and tracebacks included) passes unchanged.

    One instance per stream, fed its lines in order: the source line is recognised as the indented line
    right after a warning."""

    def __init__(self) -> None:
        self._after_warning = False

    def feed(self, line: str) -> list[str]:
        """The lines to show for one line of the stream (none for a warning's source line)."""
        after, self._after_warning = self._after_warning, False
        if after and line.startswith("  ") and line.strip():
            return []
        match = _WARNING_LINE.match(line)
        if match is None:
            return [line]
        self._after_warning = True
        return [f"warning: {match['message'].strip()}"]


def read_training_log(run: str | os.PathLike) -> list[dict]:
    """Per-epoch rows of a run's ``log.csv`` (numbers as floats, missing values as None)."""
    path = Path(run) / LOG_FILE
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            rows.append({k: _to_number(v) for k, v in row.items()})
    return rows


def _checkpoint_state(run: Path) -> dict:
    if not (run / CHECKPOINT_FILE).is_file():
        return {}
    try:
        state = read_checkpoint_state(run)
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return state if isinstance(state, dict) else {}


def read_loss_history(run: str | os.PathLike) -> list[tuple[int, float]]:
    """(step, training loss) of what a run folder recorded, in step order.

    The trainer keeps the loss of every step so far in its checkpoint (``loss_history``: the last steps up
    to the checkpoint's ``step``, across resumes). Steps before it (a run of an earlier version) are read at
    the resolution the folder has: each epoch's mean loss from ``log.csv`` at the epoch's last step, and the
    losses of a stopped epoch (``epoch_losses``). Nothing when the folder holds no run."""
    run = Path(run)
    state = _checkpoint_state(run)
    last = state.get("step") if is_int(state.get("step")) else None
    history = state.get("loss_history")
    history = history if isinstance(history, list) and all(is_number(v) for v in history) else []
    pairs: list[tuple[int, float]] = []
    if last is not None:
        history = history[-last:] if last else []
        pairs = [(last - len(history) + 1 + i, float(v)) for i, v in enumerate(history)]
    first = pairs[0][0] if pairs else (last + 1 if last is not None else math.inf)
    earlier: dict[int, float] = {}
    for row in read_training_log(run):
        step, loss = row.get("step"), row.get("train_loss")
        if is_int(step) and is_finite(loss) and step < first and (last is None or step <= last):
            earlier[step] = float(loss)
    partial = state.get("epoch_losses") if state.get("next_batch") else None
    if last is not None and isinstance(partial, list) and all(is_number(v) for v in partial):
        for i, loss in enumerate(partial[-last:] if last else []):
            step = last - len(partial[-last:]) + 1 + i
            if step < first:
                earlier[step] = float(loss)
    return sorted(earlier.items()) + pairs


@dataclass
class TrainingProgress:
    """Progress events folded into what the dialog shows."""

    epochs: int = 0
    steps_per_epoch: int = 0
    total_steps: int = 0
    step: int = 0
    first_step: int = 0
    epoch: int | None = None
    train_exams: int | None = None
    val_exams: int | None = None
    loss: float | None = None
    #: (step, loss) of every training step seen
    step_losses: list[tuple[int, float]] = field(default_factory=list)
    #: per finished epoch: the "epoch" event (step, train_loss, val_loss, recall_at_1, ...)
    epoch_metrics: list[dict] = field(default_factory=list)
    checkpoint: str | None = None
    model: str | None = None
    stopped: bool = False
    done: bool = False

    def apply(self, event: Mapping[str, Any]) -> None:
        kind = event["event"]
        if kind == "start":
            self.epochs, self.steps_per_epoch = event["epochs"], event["steps_per_epoch"]
            self.total_steps = max(self.total_steps, self.epochs * self.steps_per_epoch)
            self.train_exams, self.val_exams = event["train_exams"], event["val_exams"]
        elif kind == "resumed":
            self.step = self.first_step = event["step"]
            self.epoch = event["epoch"]
            # what an interrupted attempt recorded after the checkpoint is done again from here
            self.step_losses = [(s, v) for s, v in self.step_losses if s <= self.step]
            self.epoch_metrics = [m for m in self.epoch_metrics if m["step"] <= self.step]
        elif kind == "step":
            self.step, self.epoch, self.total_steps = event["step"], event["epoch"], event["total_steps"]
            self.loss = float(event["loss"])
            self.step_losses.append((self.step, self.loss))
        elif kind == "epoch":
            self.step, self.epoch = event["step"], event["epoch"]
            self.epoch_metrics.append(dict(event))
        elif kind == "stopped":
            self.stopped, self.checkpoint = True, event["checkpoint"]
        elif kind == "done":
            self.done, self.model = True, event["model"]

    def add_run_history(self, run: str | os.PathLike) -> None:
        """What the run folder recorded before this process started: the loss of its steps
        (:func:`read_loss_history`) and its epochs (:func:`read_training_log`), so that a resumed run shows
        its whole curve."""
        known = {s for s, _ in self.step_losses}
        old = [(s, v) for s, v in read_loss_history(run) if s not in known]
        self.step_losses = sorted(old + self.step_losses)
        self.add_history(read_training_log(run))

    def add_history(self, log_rows: Sequence[Mapping[str, Any]]) -> None:
        """Epochs of an earlier part of a resumed run (from :func:`read_training_log`)."""
        known = {m["epoch"] for m in self.epoch_metrics}
        old = [dict(r, event="epoch") for r in log_rows
               if is_number(r.get("epoch")) and r["epoch"] not in known and is_number(r.get("step"))]
        for row in old:
            row["epoch"], row["step"] = int(row["epoch"]), int(row["step"])
        self.epoch_metrics = sorted(old + self.epoch_metrics, key=lambda m: m["step"])

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    def status_text(self) -> str:
        parts = []
        if self.epoch is not None and self.epochs:
            parts.append(f"epoch {min(self.epoch + 1, self.epochs)}/{self.epochs}")
        if self.total_steps:
            parts.append(f"step {self.step}/{self.total_steps}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.3f}")
        last = self.epoch_metrics[-1] if self.epoch_metrics else {}
        if is_finite(last.get("val_loss")):
            chance = (f" (chance {last['val_chance_loss']:.2f})" if is_finite(last.get("val_chance_loss"))
                      else "")
            parts.append(f"val loss {last['val_loss']:.3f}{chance}")
        if is_finite(last.get("mean_rank")) and is_finite(last.get("chance_mean_rank")):
            parts.append(f"mean rank {last['mean_rank']:.1f} (chance {last['chance_mean_rank']:.1f})")
        elif is_finite(last.get("recall_at_1")):
            parts.append(f"recall@1 {last['recall_at_1']:.2f}")
        if not parts and self.train_exams is not None:
            parts.append(f"{self.train_exams} training exams, {self.val_exams} validation exams")
        return " · ".join(parts) if parts else "preparing the data..."

    def curves(self, max_points: int = 1500) -> tuple[list[float], list[float], list[int], list[float]]:
        """(steps, train losses, epoch-end steps, validation losses), finite values only; the train
        curve is averaged over bins of consecutive steps when it has more than ``max_points`` points."""
        pairs = [(s, v) for s, v in self.step_losses if math.isfinite(v)]
        if len(pairs) > max_points > 0:
            size = math.ceil(len(pairs) / max_points)
            chunks = [pairs[i:i + size] for i in range(0, len(pairs), size)]
            pairs = [(sum(s for s, _ in c) / len(c), sum(v for _, v in c) / len(c)) for c in chunks]
        val = [(m["step"], m["val_loss"]) for m in self.epoch_metrics if is_finite(m.get("val_loss"))]
        return [s for s, _ in pairs], [v for _, v in pairs], [s for s, _ in val], [v for _, v in val]


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= ``value`` (> 0)."""
    if not value > 0 or not math.isfinite(value):
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for factor in (1.0, 2.0, 2.5, 5.0, 10.0):
        if factor * power >= value * (1 - 1e-12):
            return factor * power
    return 10.0 * power


def plot_limits(progress: TrainingProgress, current: tuple[float, float] | None = None,
                headroom: float = 1.25) -> tuple[float, float]:
    """(last step, top loss) for the loss plot's axes, changed as rarely as possible.

    The x axis spans the whole run (``total_steps``), the y axis starts at 0 (the contrastive loss is
    never negative) and only grows, to a round number ``headroom`` above the largest loss, when a loss
    goes over it; so the axes (the expensive part of a redraw) are redrawn a few times per run. Before
    the first loss the axes stay as they are."""
    _, losses, _, val_losses = progress.curves()
    if not losses and not val_losses:
        return current or (1.0, 1.0)  # nothing to show yet: keep the axes (the first data sets x and y)
    highest = max([*losses, *val_losses], default=0.0)
    last_step = max([progress.total_steps, progress.step, *(s for s, _ in progress.step_losses[-1:])],
                    default=0)
    x_top = float(max(last_step, 1))
    y_top = current[1] if current else 0.0
    if highest > y_top or not y_top:
        y_top = nice_ceiling(highest * headroom) if highest > 0 else 1.0
    if current and x_top < current[0]:
        x_top = current[0]
    return x_top, y_top


def describe_exit(phase: str, code: int, crashed: bool, stderr_tail: Sequence[str] = (),
                  checkpoint: str | None = None) -> tuple[str, str]:
    """(level, message) for a finished child: level is "info", "warning" or "error"."""
    tail = "\n".join(line for line in stderr_tail if line.strip())
    if phase == "train" and not crashed and code == EXIT_STOPPED:
        where = checkpoint or CHECKPOINT_FILE
        return "info", f"stopped; checkpoint saved at {where}; Start with resume to continue"
    if crashed:
        return "error", (f"{phase} process was killed before it finished"
                         + (f"\n{tail}" if tail else ""))
    if code == 0:
        return "info", f"{phase} finished"
    return "error", f"{phase} failed (exit code {code})" + (f":\n{tail}" if tail else "")


# --------------------------------------------------------------------------------------------------
# evaluation table
# --------------------------------------------------------------------------------------------------
def _to_number(text: str | None) -> Any:
    if text is None:
        return None
    text = text.strip()
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


_TEXT_COLUMNS = {"feature_set", "horizon", "status", "message"}


def read_evaluation_table(path: str | os.PathLike) -> list[dict]:
    """Rows of ``evaluation.csv`` (``src_train evaluate``): counts as int, metrics as float, blanks None.

    ``path`` may be the CSV or the folder holding it. ValueError when it is missing or not that table."""
    path = Path(path)
    if path.is_dir():
        path = path / "evaluation.csv"
    if not path.is_file():
        raise ValueError(f"no evaluation table at {path}")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        if not {"feature_set", "horizon"} <= set(columns):
            raise ValueError(f"{path.name} is not an evaluation table (columns {', '.join(columns)})")
        return [{k: (v if k in _TEXT_COLUMNS else _to_number(v)) for k, v in row.items()} for row in reader]



#: headers of the table the dialog shows (see :func:`evaluation_lines`) and their full meaning (tooltips)
DISPLAY_COLUMNS = ("Prediction from", "AUC (95 % CI)", "F1", "Reliability")
COLUMN_HINTS = (
    "what the prognosis reads: MEDIMP's image embeddings, the same with the clinical values, the untrained "
    "image encoder (a baseline), the clinical values alone (the reference), and on synthetic cohorts an oracle "
    "image reader (the ceiling)",
    "area under the ROC curve of graft dysfunction at this horizon, from each patient's latest visit, with "
    "its 95 % confidence interval over patients (bootstrap): 0.5 is chance, 1 a perfect separation",
    "F1 score of the prediction at a 50 % risk threshold (0 to 1)",
    f"whether the row can be relied on: 'too few patients' below {MIN_PATIENTS} patients or below "
    f"{MIN_PER_OUTCOME} of either outcome; 'weak' when the AUC is below {MIN_AUC}",
)
HORIZON_WORDS = {"2y": "2 years", "3y": "3 years", "4y": "4 years"}


@dataclass
class TableLine:
    """One line of the evaluation table: a horizon's heading (one cell over every column) or a row."""

    cells: list[str]
    tooltip: str = ""
    heading: bool = False
    #: the row (or the horizon) is not to be relied on (see :func:`reliability`)
    flagged: bool = False


def _estimate(row: Mapping[str, Any], name: str) -> str:
    """"0.82 (0.74–0.89)" from an evaluation table row (estimate and bootstrap interval); tables of the
    first release (fold mean and std) read "0.82 ± 0.05"."""
    value = row.get(name)
    if is_finite(value):
        low, high = row.get(f"{name}_low"), row.get(f"{name}_high")
        return f"{value:.2f} ({low:.2f}–{high:.2f})" if is_finite(low) and is_finite(high) else f"{value:.2f}"
    mean, std = row.get(f"{name}_mean"), row.get(f"{name}_std")
    if not is_finite(mean):
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if is_finite(std) else f"{mean:.2f}"


def _auc(row: Mapping[str, Any]) -> float | None:
    value = row.get("auc") if is_finite(row.get("auc")) else row.get("auc_mean")
    return float(value) if is_finite(value) else None


def horizon_words(horizon: Any) -> str:
    """"2 years" for "2y"."""
    return HORIZON_WORDS.get(str(horizon), str(horizon or "?"))


def _too_few(n: Any, pos: Any) -> bool:
    if not (is_int(n) and is_int(pos)):
        return False
    return n < MIN_PATIENTS or min(pos, n - pos) < MIN_PER_OUTCOME


def reliability(row: Mapping[str, Any]) -> list[str]:
    """Why a row of the evaluation table is not to be relied on (empty: nothing found): the evaluation's
    own status when it could not score the row, "too few patients" (below :data:`MIN_PATIENTS`, or below
    :data:`MIN_PER_OUTCOME` of either outcome), "weak" (AUC below :data:`MIN_AUC`)."""
    status = str(row.get("status") or "ok")
    if status != "ok":
        return [status]
    flags = []
    if _too_few(row.get("n_patients"), row.get("n_positive")):
        flags.append("too few patients")
    auc = _auc(row)
    if auc is not None and auc < MIN_AUC:
        flags.append("weak")
    return flags


def _patients_words(n: Any, pos: Any) -> str:
    if not (is_int(n) and is_int(pos)):
        return "" if n is None else f"{n} patients"
    return f"{n} patients, {pos} with graft dysfunction"


def evaluation_lines(rows: Sequence[Mapping[str, Any]], width: int = 14) -> list[TableLine]:
    """The evaluation table as the dialog shows it: per horizon a heading ("Graft dysfunction at 2 years ·
    40 patients, 12 with graft dysfunction"), then a row per feature set under :data:`DISPLAY_COLUMNS`.
    Long names are broken into lines of about ``width`` characters, so that the table fits a narrow dock;
    each line's tooltip holds the full text."""
    lines: list[TableLine] = []
    order: list[str] = []
    by_horizon: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        key = str(row.get("horizon") or "")
        if key not in by_horizon:
            order.append(key)
            by_horizon[key] = []
        by_horizon[key].append(row)
    for key in order:
        group = by_horizon[key]
        first = next((r for r in group if is_int(r.get("n_patients"))), group[0])
        n, pos = first.get("n_patients"), first.get("n_positive")
        patients = _patients_words(n, pos)
        heading = f"Graft dysfunction at {horizon_words(key)}" + (f"\n{patients}" if patients else "")
        few = _too_few(n, pos)
        tip = heading.replace("\n", ": ")
        if few:
            tip += (f". Too few patients to rely on these numbers: at least {MIN_PATIENTS}, with "
                    f"{MIN_PER_OUTCOME} of each outcome, are needed")
        lines.append(TableLine([heading], tip, heading=True, flagged=few))
        for row in group:
            name = str(row.get("feature_set") or "")
            flags = reliability(row)
            f1 = row.get("f1") if is_finite(row.get("f1")) else row.get("f1_mean")
            cells = ["\n".join(textwrap.wrap(name, width)) or name, _estimate(row, "auc"),
                     f"{f1:.2f}" if is_finite(f1) else "–",
                     "\n".join(part for flag in flags for part in textwrap.wrap(flag, 16)) or "ok"]
            tip = f"{name}, graft dysfunction at {horizon_words(key)}: AUC {cells[1]}" + (
                f" on {patients}" if patients else "")
            if row.get("message"):
                tip += f"\n{row['message']}"
            lines.append(TableLine(cells, tip, flagged=bool(flags)))
    return lines


def _join_horizons(words: Sequence[str]) -> str:
    """"2, 3 and 4 years" for ["2 years", "3 years", "4 years"]."""
    if len(words) > 1 and all(w.endswith(" years") for w in words):
        numbers = [w[:-len(" years")] for w in words]
        return f"{', '.join(numbers[:-1])} and {numbers[-1]} years"
    return " and ".join(words)


def evaluation_warnings(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """What makes the table weak, in sentences: horizons with too few patients (below
    :data:`MIN_PATIENTS`, or below :data:`MIN_PER_OUTCOME` of either outcome) and the trained model's AUCs
    below :data:`MIN_AUC` (the table's cells also flag the baselines)."""
    few: dict[tuple[int, int], list[str]] = {}
    for row in rows:
        n, pos = row.get("n_patients"), row.get("n_positive")
        words = horizon_words(row.get("horizon"))
        if _too_few(n, pos) and words not in few.setdefault((n, pos), []):
            few[(n, pos)].append(words)
    warnings = [f"Graft dysfunction at {_join_horizons(at)}: only {n} patients ({pos} with graft dysfunction, "
                f"{n - pos} without), too few to rely on these numbers; at least {MIN_PATIENTS} patients, "
                f"{MIN_PER_OUTCOME} with and {MIN_PER_OUTCOME} without dysfunction, are needed."
                for (n, pos), at in few.items() if at]
    weak = [row for row in rows if str(row.get("feature_set") or "").startswith("MEDIMP")
            and "weak" in reliability(row)]
    if weak:
        listed = "; ".join(f"{r.get('feature_set')} at {horizon_words(r.get('horizon'))}: {_auc(r):.2f}" for r in weak)
        warnings.append(f"AUC below {MIN_AUC} ({listed}): the model barely tells the patients who will have graft "
                        "dysfunction from those who will not (0.5 is chance).")
    return warnings
