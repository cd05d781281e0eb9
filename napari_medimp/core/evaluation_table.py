"""The evaluation table of a trained model (``evaluation.csv`` of ``src_train evaluate``): its rows read back,
laid out for a narrow dock, and what makes it too weak to rely on.

* :func:`read_evaluation_table` -- the CSV's rows, counts as int, metrics as float, blanks None
  (:func:`cell_value` reads one cell);
* :func:`evaluation_lines` -- the table as the training dialog shows it (:class:`TableLine`, under
  :data:`DISPLAY_COLUMNS` with their meaning in :data:`COLUMN_HINTS`);
* :func:`reliability`, :func:`evaluation_warnings` -- too few patients (:data:`MIN_PATIENTS`,
  :data:`MIN_PER_OUTCOME`), a weak AUC (:data:`MIN_AUC`), in a cell and in sentences.

No Qt here: front ends put these lines and sentences into their own widgets.
"""

from __future__ import annotations

import csv
import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .card import MIN_AUC, MIN_PATIENTS, MIN_PER_OUTCOME
from .terms import horizon_words, horizons_words
from .training_run import is_finite, is_int

__all__ = [
    "COLUMN_HINTS",
    "DISPLAY_COLUMNS",
    "MIN_AUC",
    "MIN_PATIENTS",
    "MIN_PER_OUTCOME",
    "TableLine",
    "cell_value",
    "evaluation_lines",
    "evaluation_warnings",
    "read_evaluation_table",
    "reliability",
]


def cell_value(text: str | None) -> Any:
    """A CSV cell as a value: int, else float, else the text; a blank cell is None."""
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
        return [{k: (v if k in _TEXT_COLUMNS else cell_value(v)) for k, v in row.items()} for row in reader]


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


def _horizon(horizon: Any) -> str:
    """"2 years" for "2y" ("?" for a blank horizon)."""
    return horizon_words(horizon or None)


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
        heading = f"Graft dysfunction at {_horizon(key)}" + (f"\n{patients}" if patients else "")
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
            tip = f"{name}, graft dysfunction at {_horizon(key)}: AUC {cells[1]}" + (
                f" on {patients}" if patients else "")
            if row.get("message"):
                tip += f"\n{row['message']}"
            lines.append(TableLine(cells, tip, flagged=bool(flags)))
    return lines


def evaluation_warnings(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """What makes the table weak, in sentences: horizons with too few patients (below
    :data:`MIN_PATIENTS`, or below :data:`MIN_PER_OUTCOME` of either outcome) and the trained model's AUCs
    below :data:`MIN_AUC` (the table's cells also flag the baselines)."""
    few: dict[tuple[int, int], list[str]] = {}
    for row in rows:
        n, pos = row.get("n_patients"), row.get("n_positive")
        words = _horizon(row.get("horizon"))
        if _too_few(n, pos) and words not in few.setdefault((n, pos), []):
            few[(n, pos)].append(words)
    warnings = [f"Graft dysfunction at {horizons_words(at)}: only {n} patients ({pos} with graft dysfunction, "
                f"{n - pos} without), too few to rely on these numbers; at least {MIN_PATIENTS} patients, "
                f"{MIN_PER_OUTCOME} with and {MIN_PER_OUTCOME} without dysfunction, are needed."
                for (n, pos), at in few.items() if at]
    # horizons the evaluation could not score at all (one outcome only, too few patients): their cells are
    # dashes, and the reason is said once per reason
    unscored: dict[str, list[str]] = {}
    for row in rows:
        if row.get("status") not in (None, "", "ok") and row.get("message"):
            words = _horizon(row.get("horizon"))
            if words not in unscored.setdefault(str(row["message"]), []):
                unscored[str(row["message"])].append(words)
    warnings += [f"Graft dysfunction at {horizons_words(at)}: no AUC, {message}." for message, at in unscored.items()]
    weak = [row for row in rows if str(row.get("feature_set") or "").startswith("MEDIMP")
            and "weak" in reliability(row)]
    if weak:
        listed = "; ".join(f"{r.get('feature_set')} at {_horizon(r.get('horizon'))}: {_auc(r):.2f}" for r in weak)
        warnings.append(f"AUC below {MIN_AUC} ({listed}): the model barely tells the patients who will have graft "
                        "dysfunction from those who will not (0.5 is chance).")
    return warnings
