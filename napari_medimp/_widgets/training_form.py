"""The training dialog without Qt: form values -> command line, progress events, evaluation table.

The napari training dialog runs ``python -m src_train train ... --json-progress`` in a child process and
reads one JSON object per line from its stdout. This module holds everything about that exchange that
does not need a GUI, so it can be tested (and reused by other front ends) on a headless machine:

* :class:`TrainingOptions` -- the form, validated field by field (:meth:`TrainingOptions.problems`),
  turned into an argument list (:meth:`TrainingOptions.command`);
* :func:`resolve_cohort`, :func:`read_config`, :func:`inspect_run_folder` -- the checks behind the form;
* :class:`LineSplitter` and :func:`parse_event` -- bytes from the child -> complete lines -> validated
  progress events (anything else is a log line);
* :class:`TrainingProgress` -- the events folded into what the dialog shows (progress, status line,
  loss curves);
* :func:`evaluation_command`, :func:`read_evaluation_table`, :func:`evaluation_display_rows` -- the
  evaluation that follows a finished training, and its table;
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
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.prompts import ATTRIBUTES
from ..core.training_run import (
    CHECKPOINT_FILE,
    EVENT_FIELDS,
    EXIT_STOPPED,
    LOG_FILE,
    PRESETS,
    RUN_FILES,
    TrainConfig,
    config_fields,
    is_finite,
    is_int,
    is_number,
    parse_event,
    preset_summary,
    read_checkpoint_state,
)

__all__ = [
    "ATTRIBUTE_LABELS",
    "CHECKPOINT_FILE",
    "DISPLAY_COLUMNS",
    "EVENT_FIELDS",
    "EXIT_STOPPED",
    "PRESET_LABELS",
    "RUN_FILES",
    "LineSplitter",
    "OptionsError",
    "RunFolder",
    "TrainingOptions",
    "TrainingProgress",
    "child_environment",
    "describe_exit",
    "effective_defaults",
    "evaluation_command",
    "evaluation_display_rows",
    "inspect_run_folder",
    "nice_ceiling",
    "parse_event",
    "plot_limits",
    "preset_defaults",
    "preset_warning",
    "read_config",
    "read_evaluation_table",
    "read_training_log",
    "resolve_cohort",
    "source_root",
]

PRESET_LABELS = {"cpu-small": "CPU small (tiny 3D ResNet)", "paper": "GPU paper (3D CLIP ResNet-50)"}
ATTRIBUTE_LABELS = {"gfr": "GFR", "exam": "exam date", "creatinine": "creatinine stability",
                    "donor_age": "donor age"}
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
def preset_defaults(preset: str) -> dict[str, int]:
    """Epochs and batch size of a training preset (``core.training_run.PRESETS``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
    values = PRESETS[preset]
    base = TrainConfig.__dataclass_fields__
    return {key: int(values.get(key, base[key].default)) for key in ("epochs", "batch_size")}


def effective_defaults(preset: str, config: str | os.PathLike | None = None) -> dict[str, int]:
    """Epochs and batch size the training would use: the preset's, overridden by a config file's.

    An unreadable config is ignored here (:func:`read_config` reports it)."""
    values = preset_defaults(preset)
    if config:
        try:
            data = read_config(config)
        except ValueError:
            return values
        for key in ("epochs", "batch_size"):
            if isinstance(data.get(key), int) and not isinstance(data.get(key), bool):
                values[key] = data[key]
    return values


def preset_warning(preset: str, devices: Sequence[str]) -> str | None:
    """Why a preset is a poor choice on this machine (``devices`` as from ``available_devices()``)."""
    if preset == "paper" and "cuda" not in devices:
        return (f"the paper preset ({preset_summary('paper')}) needs a CUDA GPU; none is available here: "
                "use CPU small")
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
        if self.epochs is not None:
            args += ["--epochs", str(self.epochs)]
        if self.resume:
            args.append("--resume")
        args.append("--json-progress")
        return args

    def command(self, python: str = sys.executable) -> list[str]:
        """The full command line (validated first; :class:`OptionsError` when a field is invalid)."""
        self.validate()
        return [python, *self.arguments()]


def evaluation_command(model: str | os.PathLike, cohort: str | os.PathLike, out: str | os.PathLike,
                       splits: int = 3, repeats: int = 2, python: str = sys.executable,
                       allow_overlap: bool = False) -> list[str]:
    """``python -m src_train evaluate ... --write-heads`` (prognosis heads go into the model file);
    ``allow_overlap`` for an in-sample evaluation on the training patients (its table says so)."""
    if int(splits) < 2:
        raise ValueError("cross-validation needs at least 2 splits")
    if int(repeats) < 1:
        raise ValueError("at least 1 repeat")
    return [python, "-m", "src_train", "evaluate", "--model", str(model), "--cohort", str(cohort),
            "--out", str(out), "--splits", str(int(splits)), "--repeats", str(int(repeats)), "--write-heads",
            *(["--allow-overlap"] if allow_overlap else [])]


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
            parts.append(f"val loss {last['val_loss']:.3f}")
        if is_finite(last.get("recall_at_1")):
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


#: headers of the table the dialog shows (see :func:`evaluation_display_rows`)
DISPLAY_COLUMNS = ("feature set", "horizon", "AUC [95 % CI]", "F1", "patients", "status")


def _estimate(row: Mapping[str, Any], name: str) -> str:
    """"0.82 [0.74-0.89]" from an evaluation table row (estimate and bootstrap interval); tables of the
    first release (fold mean and std) read "0.82 ± 0.05"."""
    value = row.get(name)
    if is_finite(value):
        low, high = row.get(f"{name}_low"), row.get(f"{name}_high")
        return f"{value:.2f} [{low:.2f}-{high:.2f}]" if is_finite(low) and is_finite(high) else f"{value:.2f}"
    mean, std = row.get(f"{name}_mean"), row.get(f"{name}_std")
    if not is_finite(mean):
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if is_finite(std) else f"{mean:.2f}"


def evaluation_display_rows(rows: Sequence[Mapping[str, Any]]) -> list[tuple[list[str], str]]:
    """(cells under :data:`DISPLAY_COLUMNS`, tooltip) per table row."""
    out = []
    for row in rows:
        n, pos = row.get("n_patients"), row.get("n_positive")
        patients = f"{n} ({pos} pos.)" if is_int(n) and is_int(pos) else ("" if n is None else str(n))
        f1 = row.get("f1") if is_finite(row.get("f1")) else row.get("f1_mean")
        cells = [str(row.get("feature_set") or ""), str(row.get("horizon") or ""), _estimate(row, "auc"),
                 f"{f1:.2f}" if is_finite(f1) else "–", patients, str(row.get("status") or "")]
        out.append((cells, str(row.get("message") or "")))
    return out
