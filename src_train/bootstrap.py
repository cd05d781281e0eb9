"""Scores of predicted risks (AUC, F1, Brier) and their patient-level bootstrap: percentile 95 % intervals,
and paired differences of two predictions on the same resamples."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import rankdata


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties counted half; NaN without both classes."""
    y = np.asarray(y, bool)
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return math.nan
    ranks = rankdata(p)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def f1(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> float:
    y = np.asarray(y, bool)
    pred = np.asarray(p) >= threshold
    tp = float((pred & y).sum())
    denom = float(pred.sum() + y.sum())
    return 0.0 if denom == 0 else 2 * tp / denom


def brier(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((np.asarray(p, float) - np.asarray(y, float)) ** 2))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"auc": auc, "f1": f1, "brier": brier}


def resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_intervals(y: np.ndarray, p: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict[str, tuple[float, float, float]]:
    """(estimate, low, high) per metric (auc, f1, brier) with a percentile bootstrap over patients
    (one row per patient). Resamples lacking a class are skipped for the AUC."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    idx = resamples(len(y), n_boot, seed)
    out = {}
    for name, fn in METRICS.items():
        values = np.array([fn(y[i], p[i]) for i in idx])
        values = values[np.isfinite(values)]
        lo, hi = (np.quantile(values, [(1 - level) / 2, (1 + level) / 2]) if values.size else (math.nan,) * 2)
        out[name] = (fn(y, p), float(lo), float(hi))
    return out


def paired_differences(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95) -> dict[str, float]:
    """AUC(a) - AUC(b) on the same patients, with its percentile interval over the same bootstrap
    resamples for both, and the share of resamples where a is not better (a one-sided bootstrap p)."""
    y, p_a, p_b = (np.asarray(v, float) for v in (y, p_a, p_b))
    idx = resamples(len(y), n_boot, seed)
    diffs = np.array([auc(y[i], p_a[i]) - auc(y[i], p_b[i]) for i in idx])
    diffs = diffs[np.isfinite(diffs)]
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2]) if diffs.size else (math.nan, math.nan)
    return {"difference": auc(y, p_a) - auc(y, p_b), "low": float(lo), "high": float(hi),
            "p_not_better": float(np.mean(diffs <= 0)) if diffs.size else math.nan}


def bootstrap_by_patient(patients: Sequence[str], stat: Callable[[np.ndarray], float], *, n_boot: int = 1000,
                         seed: int = 0) -> list[float]:
    """Patient-level bootstrap 95 % interval ``[low, high]`` of ``stat(item indices)`` over items owned by
    ``patients`` (one entry per item): patients are resampled with replacement, each bringing all its
    items."""
    owners = np.asarray(list(patients))
    unique = np.unique(owners)
    members = [np.flatnonzero(owners == p) for p in unique]
    values = [stat(np.concatenate([members[i] for i in chosen]))
              for chosen in resamples(len(unique), n_boot, seed)]
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return [float(low), float(high)]
