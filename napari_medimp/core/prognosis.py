"""Prognosis features: what a reading at one visit is computed from.

A reading at a visit uses the exams a patient has so far: at D30 the images of D15 and D30, at M12 all
four. Heads are fitted per visit, so a D30 reading comes from a head that was trained on D30 readings.
Nothing in the features says which exams exist (the first release appended an exam-availability mask
and its heads learned the cohort's missingness instead of the images); dropping an exam changes the
reading only through the mean of the image embeddings.

Three kinds of head, per visit and horizon:

* ``image``: MEDIMP as in the paper, the mean of the L2-normalised embeddings of the exams so far;
* ``image+clinical``: the same plus the clinical values at the visit (:data:`CLINICAL_FEATURE_NAMES`);
* ``clinical``: the clinical values alone, the reference every reading is shown with.

Training (``src_train.evaluate``) and inference (:class:`~napari_medimp.core.inference.Predictor`) both
build features here, and every head records :data:`FEATURES_ID`, so a head is never applied to
features built another way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .prompts import EXAMS, ClinicalRecord
from .terms import HORIZONS  # noqa: F401  (re-exported)

#: head kinds, in display order
KINDS = ("image", "image+clinical", "clinical")
KIND_LABELS = {"image": "images (MEDIMP)", "image+clinical": "images + clinical values",
               "clinical": "clinical values only"}
#: where an analysis result (``Analysis.to_dict``, the report) keeps each kind's risks per horizon
RESULT_KEYS = {"image": "prognosis_dysfunction_probability", "image+clinical": "prognosis_with_clinical",
               "clinical": "prognosis_clinical_only"}
#: clinical values a reading uses: donor age, GFR at the visit, the latest creatinine known at the visit
#: (umol/L) and the variability (population std) of the creatinine values so far
CLINICAL_FEATURE_NAMES = ("donor_age", "gfr", "creatinine_latest", "creatinine_std")
CLINICAL_LABELS = {"donor_age": "donor age", "gfr": "GFR", "creatinine_latest": "creatinine",
                   "creatinine_std": "creatinine variability"}
#: identifies the feature construction below; stored with every prognosis head
FEATURES_ID = "exams-so-far-mean-embedding+clinical4/v2"


def _check_visit(visit: str) -> None:
    if visit not in EXAMS:
        raise ValueError(f"unknown visit {visit!r}; expected one of {', '.join(EXAMS)}")


def _check_exam_names(names) -> None:
    unknown = sorted(set(names) - set(EXAMS))
    if unknown:
        raise ValueError(f"unknown exam names {unknown}; expected some of {', '.join(EXAMS)}")


def head_key(kind: str, visit: str, horizon: str) -> str:
    """Name of one head in a model file: ``"image/D30/2y"``."""
    if kind not in KINDS:
        raise ValueError(f"unknown head kind {kind!r}; expected one of {', '.join(KINDS)}")
    _check_visit(visit)
    return f"{kind}/{visit}/{horizon}"


def exams_so_far(visit: str) -> tuple[str, ...]:
    """The exams a reading at ``visit`` may use: every exam up to and including it."""
    _check_visit(visit)
    return EXAMS[: EXAMS.index(visit) + 1]


def latest_visit(exams) -> str:
    """The latest of ``exams`` in follow-up order."""
    names = {str(x).upper() for x in exams}
    _check_exam_names(names)
    present = [e for e in EXAMS if e in names]
    if not present:
        raise ValueError(f"no known exam among {sorted(map(str, exams))}; expected some of {', '.join(EXAMS)}")
    return present[-1]


def image_features(embeddings: Mapping[str, np.ndarray], visit: str, dim: int | None = None) -> np.ndarray:
    """Mean of the L2-normalised embeddings of the exams so far at ``visit`` (later exams are ignored).

    The visit's own exam must be among them: a reading happens at an exam."""
    present = {str(k).upper(): np.asarray(v, np.float64).ravel() for k, v in embeddings.items() if v is not None}
    _check_exam_names(present)
    if visit not in present:
        raise ValueError(f"no image for the {visit} exam: a reading at {visit} needs that exam's image")
    used = [present[e] for e in exams_so_far(visit) if e in present]
    stack = np.stack([v / max(np.linalg.norm(v), 1e-12) for v in used])
    if dim is not None and stack.shape[1] != dim:
        raise ValueError(f"exam embeddings have {stack.shape[1]} dimensions, expected {dim}")
    return stack.mean(axis=0)


@dataclass(frozen=True)
class ClinicalValues:
    """The clinical values of one reading, in canonical units; NaN where missing."""

    donor_age: float = math.nan
    gfr: float = math.nan
    creatinine_latest: float = math.nan
    creatinine_std: float = math.nan

    @classmethod
    def from_record(cls, record: ClinicalRecord | None) -> ClinicalValues:
        """From a validated record (the panel's form, or :meth:`ClinicalRecord.from_csv_row` at a visit)."""
        if record is None:
            return cls()

        def num(v):
            return math.nan if v is None else float(v)

        return cls(donor_age=num(record.donor_age), gfr=num(record.gfr),
                   creatinine_latest=num(record.creatinine[-1]) if record.creatinine else math.nan,
                   creatinine_std=num(record.creatinine_variability))

    def vector(self) -> np.ndarray:
        return np.array([getattr(self, n) for n in CLINICAL_FEATURE_NAMES], np.float64)

    def given(self) -> list[str]:
        """Names of the values present."""
        return [n for n in CLINICAL_FEATURE_NAMES if not math.isnan(getattr(self, n))]

    def missing(self) -> list[str]:
        return [n for n in CLINICAL_FEATURE_NAMES if math.isnan(getattr(self, n))]


def features(kind: str, image: np.ndarray | None, clinical: ClinicalValues | None) -> np.ndarray:
    """Feature vector of one reading for a head of ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"unknown head kind {kind!r}; expected one of {', '.join(KINDS)}")
    parts: list[np.ndarray] = []
    if kind in ("image", "image+clinical"):
        if image is None:
            raise ValueError(f"a {KIND_LABELS[kind]} reading needs the image embedding")
        parts.append(np.asarray(image, np.float64).ravel())
    if kind in ("image+clinical", "clinical"):
        parts.append((clinical or ClinicalValues()).vector())
    return np.concatenate(parts)


def subsets_with_visit(available: Sequence[str], visit: str) -> list[tuple[str, ...]]:
    """Every subset of the available exams so far that keeps ``visit`` itself (exam-subset augmentation:
    a head learns readings made with some earlier exams missing)."""
    earlier = [e for e in exams_so_far(visit)[:-1] if e in set(available)]
    out = []
    for mask in range(2 ** len(earlier)):
        out.append(tuple(e for i, e in enumerate(earlier) if mask >> i & 1) + (visit,))
    return out
