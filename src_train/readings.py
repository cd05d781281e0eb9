"""What a prognosis head reads: a reading's features (exam embeddings of the exams so far, or a synthetic
cohort's true exam parameters, with or without the clinical values), the design matrix of a visit's
readings, and the outcomes per patient and horizon."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from napari_medimp.core.prognosis import (
    ClinicalValues,
    cumulative_labels,
    exams_so_far,
    features,
    image_features,
    subsets_with_visit,
)
from napari_medimp.core.terms import EXAMS, KINDS


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


def design(fs: FeatureSet, patients: Iterable[str], visit: str, clinical, augment: bool):
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


def outcome_matrix(labels_by_horizon: Mapping[str, np.ndarray], n: int) -> tuple[list[str], np.ndarray]:
    """(horizons in order of years, (patients, horizons) outcomes by year h)."""
    for h, labels in labels_by_horizon.items():
        if len(labels) != n:
            raise ValueError(f"{n} patients but {len(labels)} labels for {h}")
    cumulative = cumulative_labels(labels_by_horizon)
    horizons = list(cumulative)
    return horizons, np.column_stack([cumulative[h] for h in horizons]) if horizons else np.zeros((n, 0))
