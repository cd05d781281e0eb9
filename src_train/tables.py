"""The evaluation's tables and figure from out-of-fold readings (summary with intervals, paired
comparisons, calibration by visit, reliability plot), and how they are written (CSV, markdown)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from napari_medimp.core.terms import EXAMS

from .bootstrap import auc, bootstrap_intervals, brier, paired_differences
from .cross_validation import HorizonResult, common_readings

#: the comparisons every table reports (first minus second), when both feature sets are present
PAIRS = (("MEDIMP", "untrained encoder"), ("MEDIMP", "clinical values only"),
         ("MEDIMP + clinical", "clinical values only"), ("oracle image reader", "MEDIMP"),
         ("oracle + clinical", "clinical values only"))

COLUMNS = ("feature_set", "horizon", "n_patients", "n_positive", "auc", "auc_low", "auc_high", "f1", "f1_low",
           "f1_high", "brier", "brier_low", "brier_high", "status", "message")


def summary_table(results: Sequence[HorizonResult], names: Sequence[str], *, n_boot: int = 1000,
                  seed: int = 0) -> pd.DataFrame:
    """One row per (feature set, horizon): latest-reading AUC, F1 (threshold 0.5) and Brier score with
    95 % bootstrap intervals, all feature sets scored on the same patients."""
    rows = []
    for res in results:
        if res.status != "ok":
            for n in names:
                rows.append({"feature_set": n, "horizon": res.horizon, "status": res.status, "message": res.message})
            continue
        pats, y, probs = common_readings(res, names)
        for n in names:
            ci = bootstrap_intervals(y, probs[n], n_boot=n_boot, seed=seed)
            row = {"feature_set": n, "horizon": res.horizon, "n_patients": len(pats), "n_positive": int(y.sum()),
                   "status": "ok", "message": res.message}
            for metric, (est, lo, hi) in ci.items():
                row |= {metric: est, f"{metric}_low": lo, f"{metric}_high": hi}
            rows.append(row)
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for c in ("n_patients", "n_positive"):
        df[c] = df[c].astype("Int64")
    return df


def comparison_table(results: Sequence[HorizonResult], names: Sequence[str], *, n_boot: int = 1000,
                     seed: int = 0, pairs: Sequence[tuple[str, str]] = PAIRS) -> pd.DataFrame:
    """Paired AUC differences (first minus second) with 95 % bootstrap intervals, per horizon."""
    rows = []
    for res in results:
        if res.status != "ok":
            continue
        pats, y, probs = common_readings(res, names)
        for a, b in pairs:
            if a in probs and b in probs:
                d = paired_differences(y, probs[a], probs[b], n_boot=n_boot, seed=seed)
                rows.append({"comparison": f"{a} - {b}", "horizon": res.horizon, "n_patients": len(pats),
                             "auc_difference": d["difference"], "low": d["low"], "high": d["high"],
                             "p_not_better": d["p_not_better"]})
    return pd.DataFrame(rows, columns=["comparison", "horizon", "n_patients", "auc_difference", "low", "high",
                                       "p_not_better"])


def calibration_by_visit(results: Sequence[HorizonResult], names: Sequence[str]) -> pd.DataFrame:
    """Per feature set, horizon and visit: readings, observed prevalence, mean predicted risk, their
    difference, Brier score and AUC of the out-of-fold readings at that visit."""
    rows = []
    for res in results:
        if res.status != "ok":
            continue
        label_of = dict(zip(res.patients, res.labels, strict=True))
        for n in names:
            for visit in EXAMS:
                items = [(label_of[p], prob) for (p, v), prob in res.oof.get(n, {}).items() if v == visit]
                if not items:
                    continue
                y, p = (np.array(v) for v in zip(*items, strict=True))
                rows.append({"feature_set": n, "horizon": res.horizon, "visit": visit, "n_readings": len(y),
                             "prevalence": float(y.mean()), "mean_risk": float(p.mean()),
                             "risk_minus_prevalence": float(p.mean() - y.mean()), "brier": brier(y, p),
                             "auc": auc(y, p)})
    return pd.DataFrame(rows, columns=["feature_set", "horizon", "visit", "n_readings", "prevalence", "mean_risk",
                                       "risk_minus_prevalence", "brier", "auc"])


def reliability_figure(results: Sequence[HorizonResult], names: Sequence[str], n_bins: int = 5):
    """Reliability plot (observed rate against mean predicted risk, equal-count bins) of the latest
    readings, one panel per horizon. Returns a matplotlib Figure (object-oriented API, no pyplot)."""
    from matplotlib.figure import Figure

    ok = [r for r in results if r.status == "ok"]
    fig = Figure(figsize=(3.2 * max(1, len(ok)), 3.3), dpi=110)
    axes = fig.subplots(1, max(1, len(ok)), squeeze=False)[0]
    for ax, res in zip(axes, ok, strict=False):
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
        pats, y, probs = common_readings(res, names)
        for n in names:
            p = probs[n]
            order = np.argsort(p)
            bins = [b for b in np.array_split(order, min(n_bins, len(p))) if b.size]
            ax.plot([p[b].mean() for b in bins], [y[b].mean() for b in bins], marker="o", ms=3, lw=1.2,
                    label=f"{n} (Brier {brier(y, p):.3f})")
        ax.set_title(f"{res.horizon} ({len(pats)} patients)", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("predicted risk", fontsize=8)
        ax.set_ylabel("observed rate", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=5.5, loc="upper left")
    fig.tight_layout()
    return fig


def _cell(value: Any, digits: int) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown_table(df: pd.DataFrame, *, digits: int = 3, columns: Iterable[str] | None = None) -> str:
    """GitHub-flavoured markdown table of ``df`` (no ``tabulate`` needed): floats with ``digits``
    decimals, missing values empty, numeric columns right-aligned, ``|`` escaped. Ends with a newline."""
    cols = list(df.columns if columns is None else columns)
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in cols]
    lines = ["| " + " | ".join(_cell(str(c), digits) for c in cols) + " |",
             "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
    for rec in df[cols].itertuples(index=False, name=None):
        lines.append("| " + " | ".join(_cell(v, digits) for v in rec) + " |")
    return "\n".join(lines) + "\n"


def interval_table(df: pd.DataFrame) -> pd.DataFrame:
    """The summary table with "estimate [low, high]" cells, for reading."""
    def fmt(row, m):
        if pd.isna(row.get(m)):
            return ""
        return f"{row[m]:.3f} [{row[m + '_low']:.3f}, {row[m + '_high']:.3f}]"

    return pd.DataFrame({"feature set": df["feature_set"], "horizon": df["horizon"],
                         "patients (positive)": [f"{n} ({p})" if not pd.isna(n) else ""
                                                 for n, p in zip(df["n_patients"], df["n_positive"], strict=True)],
                         "AUC [95 % CI]": [fmt(r, "auc") for _, r in df.iterrows()],
                         "F1 [95 % CI]": [fmt(r, "f1") for _, r in df.iterrows()],
                         "Brier [95 % CI]": [fmt(r, "brier") for _, r in df.iterrows()]})


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` as CSV (no index), creating parent folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path
