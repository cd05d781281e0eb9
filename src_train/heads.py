"""The prognosis heads' model fitted on readings, and the final heads of a model file: per reading kind and
visit, one cumulative logit over every horizon (:mod:`src_train.monotone`), stored as one
:class:`~napari_medimp.core.checkpoint.PrognosisHead` per horizon."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from napari_medimp.core.checkpoint import PrognosisHead
from napari_medimp.core.prognosis import (
    CLINICAL_RISK_SIGNS,
    FEATURES_ID,
    HEAD_MODEL,
    OUTCOME_DEFINITION,
    feature_signs,
    head_key,
)
from napari_medimp.core.terms import EXAMS

from .monotone import CumulativeLogit, fit_cumulative_logit
from .readings import ClinicalTable, FeatureSet, design, outcome_matrix

MAX_ITER = 5000


def fit_model(x: np.ndarray, y: np.ndarray, w: np.ndarray, kind: str, C: float) -> CumulativeLogit:
    """The heads' model (:mod:`src_train.monotone`) on rows ``x`` with outcomes ``y`` (rows, horizons)."""
    return fit_cumulative_logit(x, y, w, feature_signs(kind, x.shape[1]), C=C, max_iter=MAX_ITER)


def fit_heads(feature_sets: Sequence[FeatureSet], clinical: ClinicalTable, patients: Sequence[str],
              labels_by_horizon: Mapping[str, np.ndarray], C: float = 1.0) -> dict[str, PrognosisHead]:
    """The final heads: per feature set kind and visit, one model over every horizon (:mod:`.monotone`:
    shared coefficients, ordered intercepts, clinical values bounded to the sign medicine expects) fitted
    on every patient with a known outcome and that visit's image (augmented as in cross-validation), stored
    as one :class:`PrognosisHead` per horizon (same ``mean``/``scale``/``coef``, the horizon's intercept),
    so that ``head.predict_proba(x)`` equals the model's risk at that horizon. A horizon lacking 2 patients
    of each class at a visit gets no head, with a warning."""
    horizons, outcomes = outcome_matrix(labels_by_horizon, len(patients))
    outcome_of = {p: outcomes[i] for i, p in enumerate(patients) if not np.all(np.isnan(outcomes[i]))}
    heads: dict[str, PrognosisHead] = {}
    for fs in feature_sets:
        for visit in EXAMS:
            x, w, owners = design(fs, [p for p in patients if p in outcome_of], visit, clinical, augment=True)
            if not owners:
                continue
            y = np.stack([outcome_of[p] for p in owners])
            counts = {j: _class_counts(fs, visit, horizons[j], owners, y[:, j]) for j in range(len(horizons))}
            fitted = [j for j, c in counts.items() if c is not None]
            if not fitted:
                continue
            model = fit_model(x, y, w, fs.kind, C)
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
