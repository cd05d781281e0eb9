"""Prognosis evaluation: cross-validated AUC / F1 of per-horizon classifiers, and the final heads.

No napari, no Qt, no torch training here: this module only needs numpy, pandas and scikit-learn, and is
what ``python -m src_train evaluate`` calls.

Leakage rules (the reference code fitted its scalers on the whole cohort *before* the split):

* every row of ``features`` is one **patient** (exams are already combined by
  :func:`napari_medimp.core.prognosis.patient_features`), so splitting rows splits patients: a patient
  is never in a training fold and a test fold at the same time;
* imputation, standardisation and the classifier form one scikit-learn :class:`~sklearn.pipeline.Pipeline`
  (:func:`build_pipeline`) that is fitted **inside** each fold on the training rows only;
* patients with an unknown label for a horizon are dropped for that horizon only.

Splits come from :class:`~sklearn.model_selection.RepeatedStratifiedKFold` seeded by ``seed``; with the
same labels and seed every feature set sees the same folds, so feature sets are compared pairwise.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import RepeatedStratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from napari_medimp.core.checkpoint import PrognosisHead
from napari_medimp.core.prognosis import FEATURES_ID, HORIZONS
from napari_medimp.core.prompts import EXAMS, creatinine_variability

__all__ = [
    "CLASSIFIERS",
    "CLINICAL_FEATURE_NAMES",
    "CLINICAL_FEATURES_ID",
    "HORIZONS",
    "NOT_ENOUGH",
    "build_pipeline",
    "clinical_features",
    "cross_validate",
    "evaluate_feature_sets",
    "fit_heads",
    "labels_from_rows",
    "to_markdown_table",
    "write_csv",
]

CLASSIFIERS = ("logistic",)
MAX_ITER = 5000
#: ``status`` of a horizon whose minority class has fewer than 2 patients
NOT_ENOUGH = "not enough patients"
#: columns of :func:`clinical_features`
CLINICAL_FEATURE_NAMES: tuple[str, ...] = (
    ("donor_age",)
    + tuple(f"gfr_{e}" for e in EXAMS)
    + tuple(f"creatinine_{e}" for e in EXAMS)
    + ("creatinine_std",)
)
CLINICAL_FEATURES_ID = "clinical:" + ",".join(CLINICAL_FEATURE_NAMES) + "/v1"


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


def clinical_features(rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> np.ndarray:
    """Clinical-values-only features, columns :data:`CLINICAL_FEATURE_NAMES`: donor age, GFR and
    creatinine (umol/L) at each exam, and the population std of the available creatinine values
    (as in the prompts; NaN with fewer than 2 values). Missing values are NaN."""
    out = []
    for i, row in enumerate(_records(rows)):
        vals = [_float_or_nan(row.get(name), f"row {i} {name}") for name in CLINICAL_FEATURE_NAMES[:-1]]
        creat = [v for v in vals[1 + len(EXAMS):] if not math.isnan(v)]
        std = creatinine_variability(creat) if len(creat) >= 2 else None
        out.append(vals + [math.nan if std is None else float(std)])
    return np.asarray(out, np.float64).reshape(-1, len(CLINICAL_FEATURE_NAMES))


def _check_xy(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(features, np.float64)
    y = np.asarray(labels, np.float64).ravel()
    if x.ndim != 2:
        raise ValueError(f"features must be (n_patients, n_features), got shape {x.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} feature rows but {y.shape[0]} labels")
    if np.isinf(x).any():
        raise ValueError("features contain infinite values")
    known = y[~np.isnan(y)]
    if not np.isin(known, (0.0, 1.0)).all():
        raise ValueError("labels must be 0, 1 or NaN")
    return x, y


# --------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------
def build_pipeline(classifier: str = "logistic", C: float = 1.0) -> Pipeline:
    """Mean imputation -> standardisation -> balanced logistic regression, to be fitted on training rows
    only. All-NaN columns are kept (filled with 0) so the feature count never changes."""
    if classifier not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {classifier!r}; choose from {', '.join(CLASSIFIERS)}")
    if not C > 0:
        raise ValueError(f"C must be positive, got {C}")
    return Pipeline([
        ("impute", SimpleImputer(strategy="mean", keep_empty_features=True)),
        ("scale", StandardScaler()),
        ("clf", LogisticRegression(C=float(C), class_weight="balanced", max_iter=MAX_ITER)),
    ])


def _mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if not math.isnan(x)], np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std())


def cross_validate(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    n_splits: int = 5,
    n_repeats: int = 10,
    seed: int = 0,
    classifier: str = "logistic",
    C: float = 1.0,
) -> dict[str, Any]:
    """Repeated stratified K-fold AUC and F1 of one horizon.

    ``features`` is (n_patients, d), one row per patient, NaN allowed (imputed inside each fold);
    ``labels`` is (n_patients,) 0/1 with NaN for unknown (those patients are dropped). Splitting rows
    splits patients, so no patient is in both the training and the test part of a fold. The pipeline of
    :func:`build_pipeline` is fitted on the training rows of each fold only.

    When the minority class has fewer patients than ``n_splits`` the number of splits is reduced to that
    count (if >= 2); below 2 the result has ``status`` :data:`NOT_ENOUGH` and NaN metrics. A fold whose
    test part lacks a class gets no AUC (counted in ``n_auc_skipped``; its F1 is still computed with
    ``zero_division=0``). F1 uses the 0.5 probability threshold. Means and (population) stds are over
    folds.

    Returns a dict: status, message, n_patients, n_positive, n_splits (used), n_repeats, n_folds,
    n_auc_skipped, auc_mean, auc_std, f1_mean, f1_std, fold_auc, fold_f1 (lists, NaN for a skipped AUC)
    and folds (per fold: repeat, fold, test_index (rows of ``features``), n_test, n_test_positive, auc,
    f1, proba (test-row probabilities)).
    """
    x, y = _check_xy(features, labels)
    if n_splits < 2 or n_repeats < 1:
        raise ValueError("n_splits must be >= 2 and n_repeats >= 1")
    build_pipeline(classifier, C)  # validate the settings even when nothing is fitted
    rows = np.flatnonzero(~np.isnan(y))
    xk, yk = x[rows], y[rows].astype(int)
    n_pos = int(yk.sum())
    minority = min(n_pos, len(yk) - n_pos)
    result: dict[str, Any] = {
        "status": "ok", "message": "", "n_patients": int(len(yk)), "n_positive": n_pos,
        "n_splits": int(n_splits), "n_repeats": int(n_repeats), "n_folds": 0, "n_auc_skipped": 0,
        "auc_mean": math.nan, "auc_std": math.nan, "f1_mean": math.nan, "f1_std": math.nan,
        "fold_auc": [], "fold_f1": [], "folds": [],
    }
    if minority < 2:
        result.update(status=NOT_ENOUGH, n_splits=0,
                      message=f"{NOT_ENOUGH}: {n_pos} positive and {len(yk) - n_pos} negative "
                              "patients with a known label (need >= 2 of each)")
        return result
    if minority < n_splits:
        result["message"] = f"n_splits reduced from {n_splits} to {minority} (minority class size)"
        n_splits = minority
        result["n_splits"] = int(n_splits)

    splitter = RepeatedStratifiedKFold(n_splits=n_splits, n_repeats=n_repeats, random_state=seed)
    for k, (train, test) in enumerate(splitter.split(xk, yk)):
        fold = {"repeat": k // n_splits, "fold": k % n_splits, "test_index": rows[test].tolist(),
                "n_test": int(len(test)), "n_test_positive": int(yk[test].sum()),
                "auc": math.nan, "f1": math.nan, "proba": []}
        if len(np.unique(yk[train])) < 2:  # cannot happen with stratification and minority >= n_splits
            result["n_auc_skipped"] += 1
            result["folds"].append(fold)
            continue
        model = build_pipeline(classifier, C).fit(xk[train], yk[train])
        proba = model.predict_proba(xk[test])[:, 1]
        fold["proba"] = proba.tolist()
        if len(np.unique(yk[test])) == 2:
            fold["auc"] = float(roc_auc_score(yk[test], proba))
        else:
            result["n_auc_skipped"] += 1
        fold["f1"] = float(f1_score(yk[test], (proba >= 0.5).astype(int), zero_division=0))
        result["folds"].append(fold)

    result["n_folds"] = len(result["folds"])
    result["fold_auc"] = [f["auc"] for f in result["folds"]]
    result["fold_f1"] = [f["f1"] for f in result["folds"]]
    result["auc_mean"], result["auc_std"] = _mean_std(result["fold_auc"])
    result["f1_mean"], result["f1_std"] = _mean_std(result["fold_f1"])
    if result["n_auc_skipped"]:
        skipped = f"AUC skipped in {result['n_auc_skipped']} fold(s) lacking a class"
        result["message"] = "; ".join(m for m in (result["message"], skipped) if m)
    return result


# --------------------------------------------------------------------------------------------------
# feature-set comparison and reporting
# --------------------------------------------------------------------------------------------------
COLUMNS = ("feature_set", "horizon", "n_patients", "n_positive", "n_splits", "n_folds", "n_auc_skipped",
           "auc_mean", "auc_std", "f1_mean", "f1_std", "status", "message")


def evaluate_feature_sets(
    feature_sets: Mapping[str, np.ndarray],
    labels_by_horizon: Mapping[str, np.ndarray],
    *,
    n_splits: int = 5,
    n_repeats: int = 10,
    seed: int = 0,
    classifier: str = "logistic",
    C: float = 1.0,
    return_details: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, dict[tuple[str, str], dict]]:
    """One row per (feature set, horizon) with the :func:`cross_validate` summary, plus per feature set a
    row ``horizon == "mean"`` holding the mean over its evaluated horizons of auc_mean and f1_mean (its
    stds and counts are empty). All feature sets use the same splits (same labels, same ``seed``).
    With ``return_details`` also returns the full cross_validate dicts keyed by (feature set, horizon)."""
    n = {name: np.asarray(f).shape[0] for name, f in feature_sets.items()}
    n |= {f"labels {h}": np.asarray(v).ravel().shape[0] for h, v in labels_by_horizon.items()}
    if len(set(n.values())) > 1:
        raise ValueError(f"feature sets and labels disagree on the number of patients: {n}")
    rows, details = [], {}
    for name, feats in feature_sets.items():
        aucs, f1s = [], []
        for horizon, labels in labels_by_horizon.items():
            res = cross_validate(feats, labels, n_splits=n_splits, n_repeats=n_repeats, seed=seed,
                                 classifier=classifier, C=C)
            details[(name, horizon)] = res
            rows.append({"feature_set": name, "horizon": horizon, **{c: res[c] for c in COLUMNS[2:]}})
            aucs.append(res["auc_mean"])
            f1s.append(res["f1_mean"])
        auc_mean, _ = _mean_std(aucs)
        f1_mean, _ = _mean_std(f1s)
        rows.append({"feature_set": name, "horizon": "mean", "auc_mean": auc_mean, "f1_mean": f1_mean,
                     "status": "ok" if not math.isnan(auc_mean) else NOT_ENOUGH, "message": ""})
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for c in ("n_patients", "n_positive", "n_splits", "n_folds", "n_auc_skipped"):
        df[c] = df[c].astype("Int64")
    return (df, details) if return_details else df


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


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` as CSV (no index), creating parent folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------------------------------
# final heads
# --------------------------------------------------------------------------------------------------
def fit_heads(
    features: np.ndarray,
    labels_by_horizon: Mapping[str, np.ndarray],
    feature_id: str = FEATURES_ID,
    C: float = 1.0,
    classifier: str = "logistic",
) -> dict[str, PrognosisHead]:
    """Fit the final :func:`build_pipeline` per horizon on all patients with a known label and convert it
    exactly into :class:`PrognosisHead` parameters: ``mean``/``scale`` from the scaler, ``coef``/
    ``intercept`` from the logistic regression.

    On NaN-free rows ``head.predict_proba(x)`` equals the pipeline's ``predict_proba(x)[:, 1]``. The
    imputer's statistics equal the scaler's ``mean`` (mean imputation does not move a column's mean), so
    at inference a missing feature value must be replaced by ``head.mean`` at that position (its
    standardised value is then 0). Horizons whose label has fewer than 2 patients in a class are skipped
    with a warning."""
    x = np.asarray(features, np.float64)
    heads = {}
    for horizon, labels in labels_by_horizon.items():
        x, y = _check_xy(x, labels)
        keep = ~np.isnan(y)
        yk = y[keep].astype(int)
        n_pos = int(yk.sum())
        if min(n_pos, len(yk) - n_pos) < 2:
            warnings.warn(f"prognosis head {horizon} not fitted: {n_pos} positive and {len(yk) - n_pos} "
                          "negative patients with a known label", stacklevel=2)
            continue
        model = build_pipeline(classifier, C).fit(x[keep], yk)
        scaler, clf = model.named_steps["scale"], model.named_steps["clf"]
        scale = np.asarray(scaler.scale_, np.float64)
        heads[horizon] = PrognosisHead(
            horizon=horizon,
            mean=np.asarray(scaler.mean_, np.float64),
            scale=scale,
            coef=np.asarray(clf.coef_, np.float64).ravel(),
            intercept=float(clf.intercept_[0]),
            features=feature_id,
            threshold=0.5,
            extra={"n_patients": int(len(yk)), "n_positive": n_pos, "classifier": classifier, "C": float(C),
                   "class_weight": "balanced", "imputation": "mean (missing values -> mean)",
                   "standardisation": "StandardScaler", "sklearn": sklearn.__version__},
        )
    return heads

