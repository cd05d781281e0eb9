"""Clinical record -> MEDIMP text prompt.

A :class:`~napari_medimp.core.clinical.ClinicalRecord` holds the validated clinicobiological values of one
DCE-MRI exam of a kidney graft. Each value is mapped to MEDIMP's bins (Milecki et al., MIDL 2023) and written
into one sentence drawn from a bank of paraphrase templates; the sentences of the selected attributes form
the prompt.

Bins (the reference; edges are exact, a value equal to a threshold falls in the upper bin)
    GFR (mL/min/1.73 m2): <15 extremely low, <30 very low, <45 low, <60 medium, else high.
    Donor age (years): <65 low, else high.
    Creatinine variability (std of the serum creatinine series, umol/L): >50 unstable, else stable.
    Exam: D15 "two weeks", D30 "first month", M3 "third month", M12 "first year" after transplantation.

Creatinine variability is the population standard deviation of the series, as in MEDIMP
(:func:`~napari_medimp.core.clinical.creatinine_variability`); fewer than two values give none and the
sentence is dropped.

Variants: every attribute has exactly :data:`N_VARIANTS` paraphrase templates. Variant ``k`` of a prompt
uses the ``k``-th paraphrase of *every* sentence, so a record has exactly ``N_VARIANTS`` variant prompts
(not the product of all combinations). Sentences always come in the order of :data:`ATTRIBUTES`.

Template versioning (:data:`TEMPLATE_VERSION`, stored in model files next to the text model):
    * bump the **major** number when bins, thresholds, bin words, slot names, attribute order or the
      way sentences are joined change (prompts of the old version no longer mean the same thing);
    * bump the **minor** number for any other change of template text (rewording, adding or removing
      paraphrases);
    * never edit :data:`TEMPLATES` without a bump: :func:`template_fingerprint` is pinned in the tests
      together with the version. New paraphrases come from ``src_train.paraphrases``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType

import numpy as np

from .clinical import ClinicalRecord, normalize_exam
from .terms import EXAMS  # noqa: F401  (re-exported)

__all__ = [
    "ABLATION_STEPS",
    "ATTRIBUTES",
    "ATTRIBUTE_BINS",
    "CREATININE_BINS",
    "DONOR_AGE_BINS",
    "EXAMS",
    "EXAM_PHRASES",
    "GFR_BINS",
    "N_VARIANTS",
    "SLOTS",
    "TEMPLATES",
    "TEMPLATE_VERSION",
    "bin_prompts",
    "build_prompt",
    "choose_variant",
    "creatinine_bin",
    "donor_age_bin",
    "exam_phrase",
    "gfr_bin",
    "prompt_from_slots",
    "prompt_variants",
    "slot_values",
    "template_fingerprint",
]

TEMPLATE_VERSION = "1.0"

# --------------------------------------------------------------------------------------------- bins
EXAM_PHRASES: Mapping[str, str] = MappingProxyType(
    {"D15": "two weeks", "D30": "first month", "M3": "third month", "M12": "first year"}
)
GFR_BINS: tuple[str, ...] = ("extremely low", "very low", "low", "medium", "high")
_GFR_EDGES: tuple[float, ...] = (15.0, 30.0, 45.0, 60.0)
DONOR_AGE_BINS: tuple[str, ...] = ("low", "high")
_DONOR_AGE_EDGE = 65.0
CREATININE_BINS: tuple[str, ...] = ("stable", "unstable")
_CREATININE_STD_EDGE = 50.0


def _finite(value: float, name: str) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return v


def gfr_bin(value: float) -> str:
    """MEDIMP GFR bin of ``value`` (mL/min/1.73 m2): one of :data:`GFR_BINS`."""
    v = _finite(value, "gfr")
    for edge, name in zip(_GFR_EDGES, GFR_BINS, strict=False):
        if v < edge:
            return name
    return GFR_BINS[-1]


def donor_age_bin(value: float) -> str:
    """MEDIMP donor-age bin: ``"low"`` below 65 years, ``"high"`` from 65 on."""
    return DONOR_AGE_BINS[0] if _finite(value, "donor_age") < _DONOR_AGE_EDGE else DONOR_AGE_BINS[1]


def creatinine_bin(std: float) -> str:
    """MEDIMP creatinine bin of a variability (std, umol/L): ``"unstable"`` above 50, else ``"stable"``."""
    return CREATININE_BINS[1] if _finite(std, "creatinine_std") > _CREATININE_STD_EDGE else CREATININE_BINS[0]


def exam_phrase(exam: str) -> str:
    """Time phrase of an exam name (case-insensitive): D15 -> "two weeks", ..., M12 -> "first year"."""
    return EXAM_PHRASES[normalize_exam(exam)]


# ---------------------------------------------------------------------------------------- templates
ATTRIBUTES: tuple[str, ...] = ("gfr", "exam", "creatinine", "donor_age")
"""All attributes, in the fixed order their sentences appear in a prompt."""
SLOTS: Mapping[str, str] = MappingProxyType(
    {"gfr": "gfr_bin", "exam": "exam_phrase", "creatinine": "creatinine_bin", "donor_age": "donor_age_bin"}
)
ATTRIBUTE_BINS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "gfr": GFR_BINS,
        "exam": tuple(EXAM_PHRASES[e] for e in EXAMS),
        "creatinine": CREATININE_BINS,
        "donor_age": DONOR_AGE_BINS,
    }
)
ABLATION_STEPS: tuple[tuple[str, ...], ...] = (
    ("gfr",),
    ("gfr", "exam"),
    ("gfr", "exam", "creatinine"),
    ("gfr", "exam", "creatinine", "donor_age"),
)
"""The paper's prompt ablation: GFR; + exam date; + creatinine variability; + donor age."""

# Slots are filled with bin words only (never raw numbers). Exam templates must read well with every
# phrase ("two weeks", "first month", "third month", "first year").
TEMPLATES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "gfr": (
            "The estimated glomerular filtration rate is {gfr_bin}.",
            "Renal function, measured by GFR, is {gfr_bin}.",
            "The glomerular filtration rate of the kidney graft is {gfr_bin}.",
            "Graft function, as reflected by the glomerular filtration rate, is {gfr_bin}.",
            "The patient's GFR is {gfr_bin}.",
            "Glomerular filtration of the transplanted kidney is {gfr_bin}.",
            "At this visit, the eGFR is {gfr_bin}.",
            "The level of glomerular filtration is {gfr_bin}.",
            "Estimated GFR for this kidney transplant recipient is {gfr_bin}.",
            "Filtration function of the renal allograft is {gfr_bin}.",
        ),
        "exam": (
            "This MRI was acquired in the {exam_phrase} after kidney transplantation.",
            "The exam took place in the {exam_phrase} following transplantation.",
            "This DCE-MRI corresponds to the {exam_phrase} of follow-up after kidney transplantation.",
            "Imaging was performed during the {exam_phrase} after the transplant.",
            "Follow-up time after kidney transplantation: {exam_phrase}.",
            "The kidney graft was imaged within the {exam_phrase} after surgery.",
            "This dynamic contrast-enhanced MRI was obtained in the {exam_phrase} after renal transplantation.",
            "The scan belongs to the {exam_phrase} of post-transplant follow-up.",
            "This renal MRI dates from the {exam_phrase} after transplantation.",
            "The transplanted kidney was scanned during the {exam_phrase} of follow-up.",
        ),
        "creatinine": (
            "The serum creatinine level is {creatinine_bin} over time.",
            "Serum creatinine has remained {creatinine_bin} since transplantation.",
            "Creatinine measurements are {creatinine_bin} across the follow-up.",
            "Blood creatinine values have been {creatinine_bin} after the transplant.",
            "The patient's creatinine trajectory is {creatinine_bin}.",
            "Serum creatinine concentrations are {creatinine_bin} between visits.",
            "Over the follow-up so far, creatinine has been {creatinine_bin}.",
            "The creatinine series of this recipient is {creatinine_bin}.",
            "Plasma creatinine is {creatinine_bin} throughout the post-transplant period.",
            "Creatinine levels of the transplant recipient are {creatinine_bin}.",
        ),
        "donor_age": (
            "The donor age is {donor_age_bin}.",
            "The kidney donor's age is {donor_age_bin}.",
            "The age of the organ donor is {donor_age_bin}.",
            "The graft comes from a donor whose age is {donor_age_bin}.",
            "Donor age at kidney procurement is {donor_age_bin}.",
            "The age of the person who donated the kidney is {donor_age_bin}.",
            "The kidney was recovered from a donor whose age is {donor_age_bin}.",
            "For this graft, the donor's age is {donor_age_bin}.",
            "Donor age for this kidney transplant is {donor_age_bin}.",
            "The age category of the renal graft donor is {donor_age_bin}.",
        ),
    }
)
N_VARIANTS: int = len(TEMPLATES["gfr"])
"""Number of paraphrases per template, hence of variant prompts per record."""
if any(len(t) != N_VARIANTS for t in TEMPLATES.values()):  # pragma: no cover - guards template edits
    raise RuntimeError("every attribute must have the same number of paraphrase templates")


def template_fingerprint() -> str:
    """sha256 of bins, phrases and templates: changes whenever a prompt could change."""
    parts = [repr(GFR_BINS), repr(_GFR_EDGES), repr(DONOR_AGE_BINS), repr(_DONOR_AGE_EDGE)]
    parts += [repr(CREATININE_BINS), repr(_CREATININE_STD_EDGE), repr(dict(EXAM_PHRASES)), repr(ATTRIBUTES)]
    parts += [f"{a}={TEMPLATES[a]!r}" for a in ATTRIBUTES]
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


def slot_values(record: ClinicalRecord) -> dict[str, str | None]:
    """Bin word of every attribute of ``record`` (None where the value is missing)."""
    var = record.creatinine_variability
    return {
        "gfr": None if record.gfr is None else gfr_bin(record.gfr),
        "exam": exam_phrase(record.exam),
        "creatinine": None if var is None else creatinine_bin(var),
        "donor_age": None if record.donor_age is None else donor_age_bin(record.donor_age),
    }


# ------------------------------------------------------------------------------------------ prompts
def _check_attributes(attributes: Iterable[str]) -> tuple[str, ...]:
    if isinstance(attributes, str):
        attributes = (attributes,)
    chosen = set(attributes)
    unknown = sorted(chosen - set(ATTRIBUTES))
    if unknown:
        raise ValueError(f"unknown prompt attribute(s) {unknown}; expected some of {list(ATTRIBUTES)}")
    if not chosen:
        raise ValueError(f"select at least one prompt attribute among {list(ATTRIBUTES)}")
    return tuple(a for a in ATTRIBUTES if a in chosen)


def _check_variant(variant: int) -> int:
    if isinstance(variant, bool) or not isinstance(variant, int | np.integer) or not 0 <= variant < N_VARIANTS:
        raise ValueError(f"variant must be an integer in [0, {N_VARIANTS - 1}], got {variant!r}")
    return int(variant)


def choose_variant(record: ClinicalRecord, seed: int) -> int:
    """Deterministic variant index in ``[0, N_VARIANTS)`` for ``(record, seed)``.

    Based on sha256 of the record's values and the seed, so it is stable across Python runs and
    machines (Python's ``hash()`` of strings is randomised per process).
    """
    key = (
        f"{int(seed)}|{record.exam}|{record.donor_age!r}|{record.gfr!r}|"
        f"{record.creatinine!r}|{record.creatinine_std!r}"
    )
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % N_VARIANTS


def build_prompt(
    record: ClinicalRecord,
    variant: int | None = None,
    seed: int | None = None,
    attributes: Iterable[str] = ATTRIBUTES,
) -> str:
    """Prompt text of ``record``: one sentence per selected, non-missing attribute, joined by a space.

    Sentences follow the order of :data:`ATTRIBUTES` whatever the order of ``attributes``. Variant
    ``k`` uses the ``k``-th paraphrase of each sentence; give ``variant`` or ``seed`` (then
    :func:`choose_variant` picks it), neither means variant 0. Returns '' when every selected value
    is missing (possible only when 'exam' is not selected).
    """
    attrs = _check_attributes(attributes)
    if variant is not None and seed is not None:
        raise ValueError("give either variant or seed, not both")
    k = choose_variant(record, seed) if seed is not None else _check_variant(0 if variant is None else variant)
    return prompt_from_slots(slot_values(record), attrs, k)


def prompt_from_slots(values: Mapping[str, str | None], attributes: Iterable[str] = ATTRIBUTES,
                      variant: int = 0) -> str:
    """The prompt of given bin words (``{"gfr": "low", "exam": "first month", ...}``, as
    :func:`slot_values` gives them; None or absent: the sentence is dropped)."""
    attrs, k = _check_attributes(attributes), _check_variant(variant)
    return " ".join(
        TEMPLATES[a][k].format(**{SLOTS[a]: values[a]}) for a in attrs if values.get(a) is not None
    )


def prompt_variants(record: ClinicalRecord, attributes: Iterable[str] = ATTRIBUTES) -> list[str]:
    """All ``N_VARIANTS`` prompts of ``record`` (variant k = k-th paraphrase of every sentence)."""
    attrs = _check_attributes(attributes)
    return [build_prompt(record, variant=k, attributes=attrs) for k in range(N_VARIANTS)]


def bin_prompts(attribute: str = "gfr", variant: int = 0) -> list[str]:
    """One single-sentence prompt per bin of ``attribute`` (order of :data:`ATTRIBUTE_BINS`), for
    zero-shot reading: e.g. the five GFR sentences of template ``variant``."""
    (attr,) = _check_attributes((attribute,))
    template = TEMPLATES[attr][_check_variant(variant)]
    return [template.format(**{SLOTS[attr]: word}) for word in ATTRIBUTE_BINS[attr]]
