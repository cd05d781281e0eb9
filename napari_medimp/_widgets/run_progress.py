"""What the training child reports and what a run folder recorded of it, without Qt.

The training dialog runs ``python -m src_train train ... --json-progress`` and reads one JSON object per line
from its stdout:

* :class:`LineSplitter` and :func:`parse_event` -- bytes from the child -> complete lines -> validated
  progress events (anything else is a log line); :class:`WarningLines` -- a library's Python warning in
  the log as one plain line;
* :class:`TrainingProgress` -- the events folded into what the dialog shows (progress, status line,
  loss curves), with the earlier parts of a resumed run read back from its folder
  (:meth:`TrainingProgress.add_run_history`, :func:`read_loss_history`, :func:`read_training_log`);
  :func:`plot_limits` -- the loss plot's axes, changed as rarely as possible;
* :func:`read_run_results` -- what an earlier run left in its folder (model, loss curve, evaluation);
* :func:`describe_exit` -- a child's exit code in words.

The events themselves, the run's files and its exit codes are :mod:`napari_medimp.core.training_run`'s.
"""

from __future__ import annotations

import codecs
import csv
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.evaluation_table import cell_value, read_evaluation_table
from ..core.training_run import (
    BEST_MODEL,
    CHECKPOINT_FILE,
    EXIT_STOPPED,
    LAST_MODEL,
    LOG_FILE,
    is_finite,
    is_int,
    is_number,
    parse_event,
    read_checkpoint_state,
)

__all__ = [
    "LineSplitter",
    "RunResults",
    "TrainingProgress",
    "WarningLines",
    "describe_exit",
    "nice_ceiling",
    "parse_event",
    "plot_limits",
    "read_loss_history",
    "read_run_results",
    "read_training_log",
]


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
            rows.append({k: cell_value(v) for k, v in row.items()})
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
# an earlier run
# --------------------------------------------------------------------------------------------------
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
