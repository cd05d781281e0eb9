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

from .clinical import ClinicalRecord
from .terms import EXAMS, HORIZONS, KIND_LABELS, KINDS  # noqa: F401  (re-exported)

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
#: identifies the head model (:func:`check_head_constraints`); stored with every prognosis head
HEAD_MODEL = "cumulative-logit/shared-coefficients/ordered-intercepts/monotone-clinical/v1"
#: what a risk at horizon h is the probability of
OUTCOME_DEFINITION = ("graft dysfunction by year h: at the h-year follow-up or at any earlier one "
                      "(cumulative, so the 2-year risk never exceeds the 3-year risk)")
#: the direction every clinical value may move a risk: +1 a higher value never lowers it, -1 a lower
#: value never lowers it (lower GFR, higher creatinine, more creatinine variability, an older donor)
CLINICAL_RISK_SIGNS = {"donor_age": 1, "gfr": -1, "creatinine_latest": 1, "creatinine_std": 1}


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


def feature_signs(kind: str, n_features: int) -> np.ndarray:
    """Allowed sign of each feature's coefficient for a head of ``kind`` with ``n_features`` features:
    0 for image features (free), :data:`CLINICAL_RISK_SIGNS` for the clinical values (always last)."""
    if kind not in KINDS:
        raise ValueError(f"unknown head kind {kind!r}; expected one of {', '.join(KINDS)}")
    signs = np.zeros(n_features, np.int8)
    if kind in ("image+clinical", "clinical"):
        k = len(CLINICAL_FEATURE_NAMES)
        if n_features < k or (kind == "clinical" and n_features != k):
            raise ValueError(f"a {KIND_LABELS[kind]} head has {n_features} features; the clinical values are {k}")
        signs[-k:] = [CLINICAL_RISK_SIGNS[n] for n in CLINICAL_FEATURE_NAMES]
    return signs


def horizon_years(horizon: str) -> float:
    """``"3y"`` -> 3.0."""
    text = str(horizon).strip().lower()
    if not text.endswith("y"):
        raise ValueError(f"a horizon is written as years, e.g. '2y', not {horizon!r}")
    try:
        return float(text[:-1])
    except ValueError:
        raise ValueError(f"a horizon is written as years, e.g. '2y', not {horizon!r}") from None


def cumulative_labels(labels_by_horizon: Mapping[str, Sequence[float]]) -> dict[str, np.ndarray]:
    """Outcomes "by year h" from the status recorded at each follow-up (1 dysfunction, 0 none, NaN
    unknown): a patient with dysfunction at an earlier follow-up has it by every later horizon, even
    where the later status is 0 or unknown. Unknown stays unknown unless an earlier one was 1.
    Idempotent; horizons come back in order of years."""
    order = sorted(labels_by_horizon, key=horizon_years)
    arrays = [np.asarray(labels_by_horizon[h], np.float64) for h in order]
    if len({a.shape for a in arrays}) > 1:
        raise ValueError("every horizon needs one outcome per patient")
    out: dict[str, np.ndarray] = {}
    seen = np.zeros(arrays[0].shape, bool) if arrays else None
    for h, a in zip(order, arrays, strict=True):
        bad = ~np.isnan(a) & ~np.isin(a, (0.0, 1.0))
        if bad.any():
            raise ValueError(f"outcome {h}: values must be 0, 1 or missing, got {a[bad][0]!r}")
        seen = seen | (a == 1.0)
        out[h] = np.where(seen, 1.0, a)
    return out


def check_head_constraints(heads: Sequence) -> list[str]:
    """What is wrong with a group of heads (one kind, one visit, every horizon; objects with ``kind``,
    ``horizon``, ``coef``, ``intercept``) for readings that make clinical sense: every horizon must share
    the coefficients (so that, with ordered intercepts, 2y <= 3y <= 4y for any input) and no clinical
    value may move a risk against :data:`CLINICAL_RISK_SIGNS`. Empty when they hold."""
    heads = sorted(heads, key=lambda h: horizon_years(h.horizon))
    if not heads:
        return []
    problems = []
    first = heads[0]
    signs = feature_signs(first.kind, first.coef.size)
    for head in heads:
        coef = np.asarray(head.coef, np.float64)
        wrong = [CLINICAL_LABELS[n] for n, c, s in zip(CLINICAL_FEATURE_NAMES, coef[-len(CLINICAL_FEATURE_NAMES):],
                                                         signs[-len(CLINICAL_FEATURE_NAMES):], strict=True)
                 if s != 0 and c * s < -1e-12]
        if wrong:
            problems.append(f"{head.horizon}: {', '.join(wrong)} would move the risk against clinical sense")
    for a, b in zip(heads, heads[1:], strict=False):
        if not np.allclose(a.coef, b.coef, rtol=1e-9, atol=1e-12) or np.any(a.mean != b.mean) or \
                np.any(a.scale != b.scale):
            problems.append(f"{a.horizon} and {b.horizon} do not share their coefficients, so their risks "
                            "may cross")
        elif b.intercept < a.intercept:
            problems.append(f"the {b.horizon} risk would be lower than the {a.horizon} risk")
    return problems


#: units of the clinical values a reading uses, for messages
CLINICAL_UNITS = {"donor_age": "years", "gfr": "mL/min/1.73 m2", "creatinine_latest": "umol/L",
                  "creatinine_std": "umol/L"}
#: a value or a combination of values is "outside the training range" beyond these quantiles of the
#: readings the heads were fitted on (0.5 % and 99.5 %; the distance limit is the 99.5 % quantile)
REFERENCE_QUANTILES = (0.005, 0.995)
#: fewer training readings than this give no range (too few to say what is usual)
MIN_REFERENCE_READINGS = 20


def _clinical_scale(matrix: np.ndarray) -> np.ndarray:
    """Values on the scale their spread is roughly even on: donor age as is, GFR and creatinine in log,
    creatinine variability in log(1 + std)."""
    m = np.array(matrix, np.float64, ndmin=2)
    out = m.copy()
    out[:, 1] = np.log(np.maximum(m[:, 1], 0.1))
    out[:, 2] = np.log(np.maximum(m[:, 2], 0.1))
    out[:, 3] = np.log1p(np.maximum(m[:, 3], 0.0))
    return out


def _subsets(n: int) -> list[tuple[int, ...]]:
    return [tuple(i for i in range(n) if mask >> i & 1) for mask in range(1, 2 ** n) if bin(mask).count("1") >= 2]


def _distances(t: np.ndarray, mean: np.ndarray, cov: np.ndarray, subset: tuple[int, ...]) -> np.ndarray:
    idx = list(subset)
    inv = np.linalg.pinv(cov[np.ix_(idx, idx)])
    diff = t[:, idx] - mean[idx]
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", diff, inv, diff), 0.0))


def clinical_reference(values: Sequence[ClinicalValues]) -> dict | None:
    """What the clinical values of the readings a head was fitted on look like: each value's 0.5-99.5 %
    range, and for every combination of two or more values the 99.5 % quantile of the Mahalanobis
    distance (on :func:`_clinical_scale`) of the readings that have them. Only summaries are kept (no
    patient's values). None with fewer than :data:`MIN_REFERENCE_READINGS` readings."""
    matrix = np.stack([v.vector() for v in values]) if len(values) else np.zeros((0, len(CLINICAL_FEATURE_NAMES)))
    if len(matrix) < MIN_REFERENCE_READINGS:
        return None
    lo_q, hi_q = REFERENCE_QUANTILES
    ranges = {}
    for j, name in enumerate(CLINICAL_FEATURE_NAMES):
        col = matrix[:, j][~np.isnan(matrix[:, j])]
        if col.size >= MIN_REFERENCE_READINGS:
            ranges[name] = [float(np.quantile(col, lo_q)), float(np.quantile(col, hi_q))]
    complete = matrix[~np.isnan(matrix).any(axis=1)]
    out = {"n_readings": int(len(matrix)), "quantiles": list(REFERENCE_QUANTILES), "range": ranges}
    if len(complete) >= MIN_REFERENCE_READINGS:
        t = _clinical_scale(complete)
        mean, cov = t.mean(axis=0), np.cov(t, rowvar=False)
        limits = {}
        all_t = _clinical_scale(np.where(np.isnan(matrix), 1.0, matrix))
        for subset in _subsets(len(CLINICAL_FEATURE_NAMES)):
            rows = ~np.isnan(matrix[:, list(subset)]).any(axis=1)
            if rows.sum() >= MIN_REFERENCE_READINGS:
                d = _distances(all_t[rows], mean, cov, subset)
                limits["+".join(CLINICAL_FEATURE_NAMES[i] for i in subset)] = float(np.quantile(d, hi_q))
        out |= {"scale": "donor age, log GFR, log creatinine, log(1 + creatinine variability)",
                "mean": mean.tolist(), "cov": cov.tolist(), "distance_limit": limits}
    return out


def _value_text(name: str, value: float) -> str:
    return f"{CLINICAL_LABELS[name]} {value:.3g} {CLINICAL_UNITS[name]}"


def outside_clinical_range(values: ClinicalValues, reference: Mapping | None, visit: str = "") -> list[str]:
    """Why ``values`` lie outside what the heads were fitted on (:func:`clinical_reference`), by value:
    a value beyond the training readings' range, or a combination unlike any of them (e.g. GFR 10 with
    creatinine 70 umol/L). Empty when inside, or when there is no reference."""
    if not reference:
        return []
    at = f" at {visit}" if visit else ""
    notes = []
    for name in values.given():
        bounds = (reference.get("range") or {}).get(name)
        value = getattr(values, name)
        if bounds and not bounds[0] <= value <= bounds[1]:
            notes.append(f"{_value_text(name, value)} is outside the range of the readings the heads were "
                         f"fitted on{at} ({bounds[0]:.3g}-{bounds[1]:.3g})")
    given = [i for i, n in enumerate(CLINICAL_FEATURE_NAMES) if n in values.given()]
    key = "+".join(CLINICAL_FEATURE_NAMES[i] for i in given)
    limit = (reference.get("distance_limit") or {}).get(key)
    if limit is not None and len(given) >= 2:
        t = _clinical_scale(np.where(np.isnan(values.vector()), 1.0, values.vector()))
        d = float(_distances(t, np.asarray(reference["mean"]), np.asarray(reference["cov"]), tuple(given))[0])
        if d > limit:
            shown = ", ".join(_value_text(CLINICAL_FEATURE_NAMES[i], getattr(values, CLINICAL_FEATURE_NAMES[i]))
                              for i in given)
            notes.append(f"the combination {shown} is unlike the readings the heads were fitted on{at} "
                         f"(distance {d:.1f}; 99.5 % of them are within {limit:.1f})")
    return notes


def subsets_with_visit(available: Sequence[str], visit: str) -> list[tuple[str, ...]]:
    """Every subset of the available exams so far that keeps ``visit`` itself (exam-subset augmentation:
    a head learns readings made with some earlier exams missing)."""
    earlier = [e for e in exams_so_far(visit)[:-1] if e in set(available)]
    out = []
    for mask in range(2 ** len(earlier)):
        out.append(tuple(e for i, e in enumerate(earlier) if mask >> i & 1) + (visit,))
    return out
