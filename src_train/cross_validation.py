"""Repeated stratified cross-validation by patient: every reading's out-of-fold probability, for every
feature set and horizon, on the same patient splits; and each patient's latest reading."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import RepeatedStratifiedKFold

from napari_medimp.core.terms import EXAMS

from .heads import fit_model
from .readings import ClinicalTable, FeatureSet, design, outcome_matrix

#: ``status`` of a horizon whose minority class has fewer than 2 patients
NOT_ENOUGH = "not enough patients"


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


def cross_validate(feature_sets: Sequence[FeatureSet], clinical: ClinicalTable, patients: Sequence[str],
                   labels_by_horizon: Mapping[str, np.ndarray], *, n_splits: int = 5, n_repeats: int = 10,
                   seed: int = 0, C: float = 1.0, progress: Callable[[str], None] | None = None) -> list[HorizonResult]:
    """Out-of-fold probabilities of every reading, for every feature set and horizon, with the same patient
    splits for all: each fold fits one model over every horizon (outcomes by year h, see
    :func:`napari_medimp.core.prognosis.cumulative_labels`). Folds are stratified on the horizon whose
    classes are most balanced; a horizon with fewer than 2 patients of a class is reported, not scored."""
    horizons, outcomes = outcome_matrix(labels_by_horizon, len(patients))
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
            x_a, w_a, own_a = design(fs, pats, visit, clinical, augment=True)
            x_r, _, own_r = design(fs, pats, visit, clinical, augment=False)
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
                proba = fit_model(x_a[tr], y_tr, w_a[tr], fs.kind, C).predict_proba(x_r[te])
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


def common_readings(result: HorizonResult, names: Sequence[str]):
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
