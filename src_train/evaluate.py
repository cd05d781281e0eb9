"""Prognosis evaluation on patients the model never saw, and the final prognosis heads.

No napari, no Qt, no training here: numpy, pandas, scipy and scikit-learn only. ``python -m src_train
evaluate`` builds the inputs (embeddings, clinical values, ground truth) and calls :func:`evaluate`.

Protocol
--------
* The evaluation cohort must not hold a patient that pretraining or checkpoint selection saw: the command
  checks the model card's ``training.patients_seen`` before any model work
  (:mod:`napari_medimp.core.provenance`).
* A **reading** is one patient at one visit whose image exists; it uses the exams so far
  (:mod:`napari_medimp.core.prognosis`). Heads are fitted per visit.
* Repeated stratified K-fold **by patient**: for each horizon the patients with a known outcome are split,
  and every visit's head is fitted on the training patients' readings only (imputation, scaling and the
  classifier form one pipeline fitted inside the fold). Training readings are augmented with every subset
  of the earlier exams (weights summing to 1 per reading), so a head learns readings with exams missing.
* Each reading's out-of-fold probability is averaged over repeats. The table scores each patient's
  latest reading; the calibration table scores every visit.
* 95 % intervals: patient-level bootstrap (percentile); paired differences use the same resamples for
  both feature sets.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import softmax
from scipy.stats import rankdata
from sklearn.model_selection import RepeatedStratifiedKFold

from napari_medimp.core.checkpoint import PrognosisHead
from napari_medimp.core.prognosis import (
    CLINICAL_RISK_SIGNS,
    FEATURES_ID,
    HEAD_MODEL,
    HORIZONS,
    KINDS,
    OUTCOME_DEFINITION,
    ClinicalValues,
    cumulative_labels,
    exams_so_far,
    feature_signs,
    features,
    head_key,
    image_features,
    subsets_with_visit,
)
from napari_medimp.core.prompts import EXAMS

from .monotone import CumulativeLogit, fit_cumulative_logit

__all__ = [
    "HORIZONS",
    "NOT_ENOUGH",
    "EmbeddingSource",
    "FeatureSet",
    "OracleSource",
    "auc",
    "bootstrap_intervals",
    "calibration_by_visit",
    "evaluate",
    "fit_heads",
    "interval_table",
    "labels_from_rows",
    "paired_differences",
    "reliability_figure",
    "to_markdown_table",
    "write_csv",
    "zero_shot_evaluation",
]

MAX_ITER = 5000
#: ``status`` of a horizon whose minority class has fewer than 2 patients
NOT_ENOUGH = "not enough patients"
#: the comparisons every table reports (first minus second), when both feature sets are present
PAIRS = (("MEDIMP", "untrained encoder"), ("MEDIMP", "clinical values only"),
         ("MEDIMP + clinical", "clinical values only"), ("oracle image reader", "MEDIMP"),
         ("oracle + clinical", "clinical values only"))


# --------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------
def _records(rows: Any) -> list[Mapping[str, Any]]:
    if isinstance(rows, pd.DataFrame):
        return rows.to_dict("records")
    return list(rows)


def _float_or_nan(value: Any, name: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, str):
        value = value.strip()
        if value == "" or value.lower() in ("na", "nan", "none", "null"):
            return math.nan
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: cannot read {value!r} as a number") from exc
    return out if math.isfinite(out) else math.nan


def labels_from_rows(rows: Iterable[Mapping[str, Any]] | pd.DataFrame, horizon: str) -> np.ndarray:
    """Outcome at ``horizon`` ("2y" or "outcome_2y") per row, as float 0/1 with NaN when missing."""
    key = horizon if horizon.startswith("outcome_") else f"outcome_{horizon}"
    out = []
    for i, row in enumerate(_records(rows)):
        value = _float_or_nan(row.get(key), f"row {i} {key}")
        if not (math.isnan(value) or value in (0.0, 1.0)):
            raise ValueError(f"row {i} {key}: outcome must be 0, 1 or missing, got {row.get(key)!r}")
        out.append(value)
    return np.asarray(out, np.float64)


class EmbeddingSource:
    """Image features of readings from exam embeddings: ``{patient: {exam: vector}}``."""

    def __init__(self, embeddings: Mapping[str, Mapping[str, np.ndarray]]):
        self.embeddings = {p: {e: np.asarray(v, np.float64) for e, v in ex.items() if v is not None}
                           for p, ex in embeddings.items()}

    def exams(self, patient: str) -> list[str]:
        return [e for e in EXAMS if e in self.embeddings.get(patient, {})]

    def reading(self, patient: str, subset: Sequence[str]) -> np.ndarray:
        ex = self.embeddings[patient]
        return image_features({e: ex[e] for e in subset}, visit=subset[-1])


#: exam parameters a perfect image reader would measure (the synthetic ground truth)
ORACLE_KEYS = ("fibrosis", "Fp", "Eg", "kidney_volume_ml", "cortical_thickness_mm", "heterogeneity", "gfr")


class OracleSource(EmbeddingSource):
    """A perfect image reader on a synthetic cohort: the true parameters of each exam (what the images
    were rendered from: in the null setting another patient's graft), for the latest exam and averaged
    over the exams so far. The ceiling for any image reader; readings exist only where the exam's image
    does (``with_images``)."""

    def __init__(self, truth: Mapping[str, Any], with_images: Mapping[str, Iterable[str]]):
        patients = {p["patient_id"]: p for p in truth["patients"]}
        emb = {}
        for pid, exams in with_images.items():
            if pid not in patients:
                continue
            params = patients[pid]["exams"]
            # in the null setting the images show another graft: the oracle reads that one ("shown")
            emb[pid] = {e: np.array([float(params[e].get("shown", params[e])[k]) for k in ORACLE_KEYS])
                        for e in exams if e in params}
        super().__init__(emb)

    def reading(self, patient: str, subset: Sequence[str]) -> np.ndarray:
        ex = self.embeddings[patient]
        stack = np.stack([ex[e] for e in subset])
        return np.concatenate([stack[-1], stack.mean(axis=0)])


@dataclass
class FeatureSet:
    """One row group of the table: a head kind over an image source (None for clinical values only)."""

    name: str
    kind: str
    source: EmbeddingSource | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown head kind {self.kind!r}")
        if self.kind != "clinical" and self.source is None:
            raise ValueError(f"feature set {self.name!r} ({self.kind}) needs an image source")

    def vector(self, patient: str, subset: Sequence[str], clinical: ClinicalValues) -> np.ndarray:
        image = self.source.reading(patient, subset) if self.source is not None else None
        return features(self.kind, image, clinical)


# --------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------
def image_batches(images: Sequence, batch_size: int = 8) -> list:
    """``images`` (each ``(C, z, y, x)``) stacked into batches of ``batch_size`` (the last may be smaller)."""
    import torch

    return [torch.stack(list(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]


def recalibrate_batchnorm(module, batches: Iterable) -> int:
    """Batch-norm running statistics of ``module`` recomputed from ``batches`` (each ``(B, C, z, y, x)``):
    reset, then an exact average over the batches (momentum None) in training mode; the module is left in
    eval mode and its weights are unchanged. Returns the number of batch-norm layers recalibrated."""
    import torch

    batches = list(batches)
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or not batches:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    device = next(module.parameters()).device
    module.train()
    try:
        with torch.no_grad():
            for batch in batches:
                module(batch.to(device))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        module.eval()
    return len(norms)


def _design(fs: FeatureSet, patients: Iterable[str], visit: str, clinical, augment: bool):
    """(X, weights, reading patients) of the readings at ``visit`` of ``patients`` that have that image."""
    rows, weights, owners = [], [], []
    for p in patients:
        available = fs.source.exams(p) if fs.source is not None else clinical.exams(p)
        if visit not in available:
            continue
        values = clinical.at(p, visit)
        subsets = subsets_with_visit(available, visit) if augment and fs.kind != "clinical" else \
            [tuple(e for e in exams_so_far(visit) if e in available)]
        for subset in subsets:
            rows.append(fs.vector(p, subset, values))
            weights.append(1.0 / len(subsets))
            owners.append(p)
    if not rows:
        return np.zeros((0, 0)), np.zeros(0), []
    return np.stack(rows), np.asarray(weights), owners


class ClinicalTable:
    """Clinical values per patient and visit (from ``clinical.csv`` rows) and which exams have images."""

    def __init__(self, values: Mapping[str, Mapping[str, ClinicalValues]],
                 images: Mapping[str, Iterable[str]]):
        self.values = values
        self.images = {p: [e for e in EXAMS if e in set(ex)] for p, ex in images.items()}

    def at(self, patient: str, visit: str) -> ClinicalValues:
        return self.values.get(patient, {}).get(visit, ClinicalValues())

    def exams(self, patient: str) -> list[str]:
        return self.images.get(patient, [])


def _fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, kind: str, C: float) -> CumulativeLogit:
    """The heads' model (:mod:`src_train.monotone`) on rows ``x`` with outcomes ``y`` (rows, horizons)."""
    return fit_cumulative_logit(x, y, w, feature_signs(kind, x.shape[1]), C=C, max_iter=MAX_ITER)


# --------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------
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


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_intervals(y: np.ndarray, p: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict[str, tuple[float, float, float]]:
    """(estimate, low, high) per metric (auc, f1, brier) with a percentile bootstrap over patients
    (one row per patient). Resamples lacking a class are skipped for the AUC."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    idx = _resamples(len(y), n_boot, seed)
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
    idx = _resamples(len(y), n_boot, seed)
    diffs = np.array([auc(y[i], p_a[i]) - auc(y[i], p_b[i]) for i in idx])
    diffs = diffs[np.isfinite(diffs)]
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2]) if diffs.size else (math.nan, math.nan)
    return {"difference": auc(y, p_a) - auc(y, p_b), "low": float(lo), "high": float(hi),
            "p_not_better": float(np.mean(diffs <= 0)) if diffs.size else math.nan}


# --------------------------------------------------------------------------------------------------
# cross-validation
# --------------------------------------------------------------------------------------------------
@dataclass
class HorizonResult:
    horizon: str
    status: str
    message: str
    patients: list[str] = field(default_factory=list)  # patients with a known label
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: feature set -> {(patient, visit): mean out-of-fold probability}
    oof: dict[str, dict[tuple[str, str], float]] = field(default_factory=dict)
    n_splits: int = 0


def _outcome_matrix(labels_by_horizon: Mapping[str, np.ndarray], n: int) -> tuple[list[str], np.ndarray]:
    """(horizons in order of years, (patients, horizons) outcomes by year h)."""
    for h, labels in labels_by_horizon.items():
        if len(labels) != n:
            raise ValueError(f"{n} patients but {len(labels)} labels for {h}")
    cumulative = cumulative_labels(labels_by_horizon)
    horizons = list(cumulative)
    return horizons, np.column_stack([cumulative[h] for h in horizons]) if horizons else np.zeros((n, 0))


def cross_validate(feature_sets: Sequence[FeatureSet], clinical: ClinicalTable, patients: Sequence[str],
                   labels_by_horizon: Mapping[str, np.ndarray], *, n_splits: int = 5, n_repeats: int = 10,
                   seed: int = 0, C: float = 1.0, progress: Callable[[str], None] | None = None) -> list[HorizonResult]:
    """Out-of-fold probabilities of every reading, for every feature set and horizon, with the same patient
    splits for all: each fold fits one model over every horizon (outcomes by year h, see
    :func:`napari_medimp.core.prognosis.cumulative_labels`). Folds are stratified on the horizon whose
    classes are most balanced; a horizon with fewer than 2 patients of a class is reported, not scored."""
    horizons, outcomes = _outcome_matrix(labels_by_horizon, len(patients))
    results = []
    for j, h in enumerate(horizons):
        known = ~np.isnan(outcomes[:, j])
        pats = [p for p, k in zip(patients, known, strict=True) if k]
        y = outcomes[known, j]
        n_pos = int(y.sum())
        res = HorizonResult(h, "ok", "", pats, y.astype(float))
        if min(n_pos, len(y) - n_pos) < 2:
            res.status = NOT_ENOUGH
            res.message = (f"{NOT_ENOUGH}: {n_pos} positive and {len(y) - n_pos} negative patients with a "
                           "known outcome (need >= 2 of each)")
        results.append(res)
    scored = [j for j, r in enumerate(results) if r.status == "ok"]
    if not scored:
        return results

    def minority(j: int) -> int:
        y = outcomes[~np.isnan(outcomes[:, j]), j]
        return int(min(y.sum(), len(y) - y.sum()))

    strata_horizon = max(scored, key=minority)
    with_outcome = [i for i in range(len(patients)) if not np.all(np.isnan(outcomes[i]))]
    pats = [patients[i] for i in with_outcome]
    strata = np.nan_to_num(outcomes[with_outcome, strata_horizon], nan=2.0).astype(int)
    message = ""
    if minority(strata_horizon) < n_splits:
        message = f"n_splits reduced from {n_splits} to {minority(strata_horizon)} (minority class size)"
        n_splits = minority(strata_horizon)
    for res in results:
        if res.status == "ok":
            res.n_splits, res.message = n_splits, message
    outcome_of = {patients[i]: outcomes[i] for i in with_outcome}
    sums = {fs.name: {} for fs in feature_sets}
    counts = {fs.name: {} for fs in feature_sets}
    # every reading's features once: augmented (training) and as read (testing)
    designs = {}
    for fs in feature_sets:
        for visit in EXAMS:
            x_a, w_a, own_a = _design(fs, pats, visit, clinical, augment=True)
            x_r, _, own_r = _design(fs, pats, visit, clinical, augment=False)
            designs[fs.name, visit] = (x_a, w_a, np.array(own_a), x_r, np.array(own_r))
    splitter = RepeatedStratifiedKFold(n_splits=n_splits, n_repeats=n_repeats, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        folds = list(splitter.split(np.zeros(len(strata)), strata))
    for k, (train, test) in enumerate(folds):
        if progress:
            progress(f"fold {k + 1}/{len(folds)}")
        train_p, test_p = [pats[i] for i in train], [pats[i] for i in test]
        for fs in feature_sets:
            for visit in EXAMS:
                x_a, w_a, own_a, x_r, own_r = designs[fs.name, visit]
                tr, te = np.isin(own_a, train_p), np.isin(own_r, test_p)
                if not te.any() or not tr.any():
                    continue
                y_tr = np.stack([outcome_of[p] for p in own_a[tr]])
                if not (np.nansum(y_tr) > 0 and np.nansum(1 - y_tr) > 0):
                    continue
                proba = _fit(x_a[tr], y_tr, w_a[tr], fs.kind, C).predict_proba(x_r[te])
                for p, row in zip(own_r[te].tolist(), proba, strict=True):
                    key = (p, visit)
                    sums[fs.name][key] = sums[fs.name].get(key, 0.0) + row
                    counts[fs.name][key] = counts[fs.name].get(key, 0) + 1
    for j in scored:
        res = results[j]
        own = set(res.patients)
        res.oof = {name: {key: float(sums[name][key][j] / counts[name][key]) for key in sums[name] if key[0] in own}
                   for name in sums}
    return results


def latest_readings(result: HorizonResult, name: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(patients, labels, probabilities) of each patient's latest reading for feature set ``name``."""
    by_patient: dict[str, tuple[int, float]] = {}
    for (p, visit), prob in result.oof.get(name, {}).items():
        order = EXAMS.index(visit)
        if p not in by_patient or order > by_patient[p][0]:
            by_patient[p] = (order, prob)
    label_of = dict(zip(result.patients, result.labels, strict=True))
    pats = [p for p in result.patients if p in by_patient]
    return pats, np.array([label_of[p] for p in pats]), np.array([by_patient[p][1] for p in pats])


def _common(result: HorizonResult, names: Sequence[str]):
    """Patients whose latest reading exists for every named feature set, with aligned arrays."""
    per = {n: latest_readings(result, n) for n in names}
    common = set.intersection(*(set(per[n][0]) for n in names)) if names else set()
    pats = [p for p in result.patients if p in common]
    out = {}
    for n in names:
        pos = {p: i for i, p in enumerate(per[n][0])}
        out[n] = np.array([per[n][2][pos[p]] for p in pats])
    label_of = dict(zip(result.patients, result.labels, strict=True))
    return pats, np.array([label_of[p] for p in pats]), out


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
        pats, y, probs = _common(res, names)
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
        pats, y, probs = _common(res, names)
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
        pats, y, probs = _common(res, names)
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


@dataclass
class Evaluation:
    results: list[HorizonResult]
    table: pd.DataFrame
    comparisons: pd.DataFrame
    calibration: pd.DataFrame
    names: list[str]


def evaluate(feature_sets: Sequence[FeatureSet], clinical: ClinicalTable, patients: Sequence[str],
             labels_by_horizon: Mapping[str, np.ndarray], *, n_splits: int = 5, n_repeats: int = 10, seed: int = 0,
             n_boot: int = 1000, C: float = 1.0, progress: Callable[[str], None] | None = None) -> Evaluation:
    """The whole protocol of the module docstring, for every horizon."""
    names = [fs.name for fs in feature_sets]
    if len(set(names)) != len(names):
        raise ValueError(f"feature set names repeat: {names}")
    results = cross_validate(feature_sets, clinical, patients, labels_by_horizon, n_splits=n_splits,
                             n_repeats=n_repeats, seed=seed, C=C, progress=progress)
    return Evaluation(results, summary_table(results, names, n_boot=n_boot, seed=seed),
                      comparison_table(results, names, n_boot=n_boot, seed=seed),
                      calibration_by_visit(results, names), names)


# --------------------------------------------------------------------------------------------------
# zero-shot GFR reading
# --------------------------------------------------------------------------------------------------
def fit_temperature(similarities: np.ndarray, truth: np.ndarray) -> float:
    """Scale ``t`` minimising the negative log-likelihood of ``softmax(t * similarity)`` (1 <= t <= 1000)."""
    from scipy.optimize import minimize_scalar

    sims, truth = np.asarray(similarities, float), np.asarray(truth, int)

    def nll(log_t: float) -> float:
        prob = softmax(math.exp(log_t) * sims, axis=1)
        return float(-np.mean(np.log(prob[np.arange(len(truth)), truth] + 1e-12)))

    res = minimize_scalar(nll, bounds=(0.0, math.log(1000.0)), method="bounded")
    return float(math.exp(res.x))


def _patient_halves(patients: Sequence[str], seed: int) -> np.ndarray:
    """Fold 0 or 1 per item: half of the patients (drawn with ``seed``) in fold 0, the others in fold 1,
    every item with its patient (for cross-fitting a scale or a prior on patients an item's own never are)."""
    owners = np.asarray(list(patients))
    unique = np.unique(owners)
    half = set(np.random.default_rng(seed).permutation(unique)[: len(unique) // 2].tolist())
    return np.array([0 if p in half else 1 for p in owners])


def bootstrap_by_patient(patients: Sequence[str], stat: Callable[[np.ndarray], float], *, n_boot: int = 1000,
                         seed: int = 0) -> list[float]:
    """Patient-level bootstrap 95 % interval ``[low, high]`` of ``stat(item indices)`` over items owned by
    ``patients`` (one entry per item): patients are resampled with replacement, each bringing all its
    items."""
    owners = np.asarray(list(patients))
    unique = np.unique(owners)
    members = [np.flatnonzero(owners == p) for p in unique]
    values = [stat(np.concatenate([members[i] for i in chosen]))
              for chosen in _resamples(len(unique), n_boot, seed)]
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return [float(low), float(high)]


def content_evaluation(vectors: np.ndarray, exams: Sequence[str], slots: Sequence[dict], patients: Sequence[str],
                       attributes: Sequence[str], encode_text: Callable, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Prompt-content retrieval of exam embeddings on a cohort (:func:`src_train.metrics.content_items`):
    top-1 against always answering the commonest content of the visit, with patient-level bootstrap 95 %
    intervals and the paired difference on the same resamples. Empty when fewer than two contents."""
    from .metrics import content_items

    items = content_items(vectors, exams, slots, attributes, encode_text)
    if not items:
        return {}
    right, base, ranks = items["right"], items["baseline"], items["rank"]
    with_prior, prior_only = _content_with_prior(items["similarities"], items["true"], list(exams), list(patients),
                                                 seed)
    out = {"n_exams": int(len(right)), "n_patients": int(len(set(patients))), "n_contents": items["n_contents"],
           "content_attributes": [a for a in attributes if a != "exam"],
           "top1": float(right.mean()), "commonest": float(base.mean()), "difference": float(right.mean() - base.mean()),
           "mean_rank": float(ranks.mean()), "chance_mean_rank": (items["n_contents"] + 1) / 2.0}
    for name, fn in (("top1", lambda i: float(right[i].mean())), ("commonest", lambda i: float(base[i].mean())),
                     ("difference", lambda i: float(right[i].mean() - base[i].mean())),
                     ("mean_rank", lambda i: float(ranks[i].mean())),
                     ("with_prior", lambda i: float(with_prior[i].mean())),
                     ("prior_only", lambda i: float(prior_only[i].mean())),
                     ("prior_difference", lambda i: float(with_prior[i].mean() - prior_only[i].mean()))):
        out[f"{name}_ci"] = bootstrap_by_patient(patients, fn, n_boot=n_boot, seed=seed)
    out.update(with_prior=float(with_prior.mean()), prior_only=float(prior_only.mean()),
               prior_difference=float(with_prior.mean() - prior_only.mean()),
               prior_protocol="content prior per visit and similarity scale fitted on half of the patients, "
                              "scored on the other half, and the reverse")
    return out


def _content_with_prior(sims: np.ndarray, true: np.ndarray, exams: list, patients: list, seed: int):
    """Cross-fitted content reading that adds what the images say to what is common: argmax over contents
    of ``t * similarity + log prior(content | visit)`` (an InfoNCE model scores how much more likely a
    content is given the image than a priori, so the prior is added back), against the prior alone
    (the commonest content of the visit). Prior (counts + 0.5) and ``t`` are fitted on one half of the
    patients and the other half is scored, then the reverse. Returns two boolean arrays (right or not)."""
    n, k = sims.shape
    visits = np.asarray(exams)
    fold = _patient_halves(patients, seed)
    with_prior, prior_only = np.zeros(n, bool), np.zeros(n, bool)
    for f in (0, 1):
        fit, score = fold != f, fold == f
        if not fit.any() or not score.any():
            continue
        log_prior = np.zeros((n, k))
        for visit in np.unique(visits):
            counts = np.bincount(true[fit & (visits == visit)], minlength=k) + 0.5
            log_prior[visits == visit] = np.log(counts / counts.sum())

        def nll(log_t: float, rows=fit, log_prior=log_prior) -> float:
            z = np.exp(log_t) * sims[rows] + log_prior[rows]
            z = z - z.max(axis=1, keepdims=True)
            return float(-(z[np.arange(z.shape[0]), true[rows]] - np.log(np.exp(z).sum(axis=1))).mean())

        from scipy.optimize import minimize_scalar

        log_t = minimize_scalar(nll, bounds=(-3.0, math.log(200.0)), method="bounded").x
        scores = np.exp(log_t) * sims + log_prior
        with_prior[score] = scores[score].argmax(axis=1) == true[score]
        prior_only[score] = log_prior[score].argmax(axis=1) == true[score]
    return with_prior, prior_only


def zero_shot_evaluation(similarities: np.ndarray, truth: np.ndarray, patients: Sequence[str], bins: Sequence[str],
                         *, seed: int = 0) -> dict[str, Any]:
    """Zero-shot GFR-bin reading scored on patients whose temperature was fitted on other patients.

    ``similarities``: (n_exams, n_bins) cosine similarity of each exam with each bin's prompt (averaged
    over paraphrases); ``truth``: true bin index per exam. Two-fold cross-fitting by patient: the scale
    is fitted on one half of the patients and the other half is scored, then the reverse. Returns the
    pooled accuracy, balanced accuracy, confusion matrix (rows true, columns read), the accuracy of
    always answering the fitting half's most frequent bin, the median top probability, and the scale
    fitted on all patients (stored in the model card for new patients)."""
    sims, truth = np.asarray(similarities, float), np.asarray(truth, int)
    pats = np.asarray(list(patients))
    unique = np.unique(pats)
    fold = _patient_halves(pats, seed)
    n = len(bins)
    pred = np.zeros(len(truth), int)
    top = np.zeros(len(truth))
    majority = np.zeros(len(truth), bool)  # right when always answering the fitting half's commonest bin
    for k in (0, 1):
        fit, score = fold != k, fold == k
        if not fit.any() or not score.any():
            continue
        t = fit_temperature(sims[fit], truth[fit])
        prob = softmax(t * sims[score], axis=1)
        pred[score] = prob.argmax(axis=1)
        top[score] = prob.max(axis=1)
        majority[score] = truth[score] == np.bincount(truth[fit], minlength=n).argmax()
    confusion = np.zeros((n, n), int)
    np.add.at(confusion, (truth, pred), 1)
    recalls = [confusion[i, i] / confusion[i].sum() for i in range(n) if confusion[i].sum()]

    def balanced(idx: np.ndarray) -> float:
        t, r = truth[idx], pred[idx]
        return float(np.mean([np.mean(r[t == b] == b) for b in np.unique(t)]))

    intervals = {
        "accuracy_ci": bootstrap_by_patient(pats, lambda idx: float(np.mean(pred[idx] == truth[idx])), seed=seed),
        "balanced_accuracy_ci": bootstrap_by_patient(pats, balanced, seed=seed),
        "majority_accuracy_ci": bootstrap_by_patient(pats, lambda idx: float(np.mean(majority[idx])), seed=seed),
    } if len(truth) else {}
    return {"bins": list(bins), "n_exams": int(len(truth)), "n_patients": int(len(unique)),
            "accuracy": float((pred == truth).mean()) if len(truth) else math.nan,
            "balanced_accuracy": float(np.mean(recalls)) if recalls else math.nan,
            "chance_balanced_accuracy": 1.0 / len(recalls) if recalls else math.nan,
            "bins_present": int(len(recalls)), **intervals,
            "majority_accuracy": float(majority.mean()) if len(truth) else math.nan,
            "median_top_probability": float(np.median(top)) if len(truth) else math.nan,
            "confusion": confusion.tolist(),
            "temperature": fit_temperature(sims, truth) if len(truth) else math.nan,
            "protocol": "scale fitted on half of the patients, scored on the other half, and the reverse"}


# --------------------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------
# final heads
# --------------------------------------------------------------------------------------------------
def fit_heads(feature_sets: Sequence[FeatureSet], clinical: ClinicalTable, patients: Sequence[str],
              labels_by_horizon: Mapping[str, np.ndarray], C: float = 1.0) -> dict[str, PrognosisHead]:
    """The final heads: per feature set kind and visit, one model over every horizon (:mod:`.monotone`:
    shared coefficients, ordered intercepts, clinical values bounded to the sign medicine expects) fitted
    on every patient with a known outcome and that visit's image (augmented as in cross-validation), stored
    as one :class:`PrognosisHead` per horizon (same ``mean``/``scale``/``coef``, the horizon's intercept),
    so that ``head.predict_proba(x)`` equals the model's risk at that horizon. A horizon lacking 2 patients
    of each class at a visit gets no head, with a warning."""
    horizons, outcomes = _outcome_matrix(labels_by_horizon, len(patients))
    outcome_of = {p: outcomes[i] for i, p in enumerate(patients) if not np.all(np.isnan(outcomes[i]))}
    heads: dict[str, PrognosisHead] = {}
    for fs in feature_sets:
        for visit in EXAMS:
            x, w, owners = _design(fs, [p for p in patients if p in outcome_of], visit, clinical, augment=True)
            if not owners:
                continue
            y = np.stack([outcome_of[p] for p in owners])
            counts = {j: _class_counts(fs, visit, horizons[j], owners, y[:, j]) for j in range(len(horizons))}
            fitted = [j for j, c in counts.items() if c is not None]
            if not fitted:
                continue
            model = _fit(x, y, w, fs.kind, C)
            for j in fitted:
                n_pos, n_neg = counts[j]
                head = PrognosisHead(
                    horizon=horizons[j], kind=fs.kind, visit=visit, mean=model.mean, scale=model.scale,
                    coef=model.coef, intercept=float(model.intercepts[j]), features=FEATURES_ID, threshold=0.5,
                    extra={"n_patients": n_pos + n_neg, "n_positive": n_pos, "prevalence": n_pos / (n_pos + n_neg),
                           "classifier": "cumulative logit over the horizons", "model": HEAD_MODEL,
                           "outcome": OUTCOME_DEFINITION, "converged": model.converged,
                           "clinical_signs": CLINICAL_RISK_SIGNS if fs.kind != "image" else {},
                           "C": float(C), "imputation": "mean (missing values -> mean)",
                           "standardisation": "mean and standard deviation of the training rows",
                           "augmentation": "subsets of the earlier exams"},
                )
                heads[head_key(fs.kind, visit, horizons[j])] = head
    return heads


def _class_counts(fs: FeatureSet, visit: str, horizon: str, owners: Sequence[str],
                  y: np.ndarray) -> tuple[int, int] | None:
    """(positive, negative) patients with a known outcome at ``horizon``; None, with a warning, when either
    is below 2 (no head is fitted for that horizon)."""
    n_pos = len({p for p, v in zip(owners, y, strict=True) if v == 1})
    n_neg = len({p for p, v in zip(owners, y, strict=True) if v == 0})
    if min(n_pos, n_neg) < 2:
        warnings.warn(f"prognosis head {fs.kind} {visit} {horizon} not fitted: {n_pos} positive and {n_neg} "
                      "negative patients with that exam", stacklevel=3)
        return None
    return n_pos, n_neg
