"""Clinical record -> MEDIMP text prompt.

A :class:`ClinicalRecord` holds the validated clinicobiological values of one DCE-MRI exam of a kidney
graft. Each value is mapped to MEDIMP's bins (Milecki et al., MIDL 2023) and written into one sentence
drawn from a bank of paraphrase templates; the sentences of the selected attributes form the prompt.

Bins (the reference; edges are exact, a value equal to a threshold falls in the upper bin)
    GFR (mL/min/1.73 m2): <15 extremely low, <30 very low, <45 low, <60 medium, else high.
    Donor age (years): <65 low, else high.
    Creatinine variability (std of the serum creatinine series, umol/L): >50 unstable, else stable.
    Exam: D15 "two weeks", D30 "first month", M3 "third month", M12 "first year" after transplantation.

Creatinine variability is ``numpy.std`` of the series, i.e. the *population* standard deviation
(``ddof=0``), as in MEDIMP. Fewer than two values give no variability (the sentence is dropped).

Variants: every attribute has exactly :data:`N_VARIANTS` paraphrase templates. Variant ``k`` of a prompt
uses the ``k``-th paraphrase of *every* sentence, so a record has exactly ``N_VARIANTS`` variant prompts
(not the product of all combinations). Sentences always come in the order of :data:`ATTRIBUTES`.

Template versioning (:data:`TEMPLATE_VERSION`, stored in model files next to the text model):
    * bump the **major** number when bins, thresholds, bin words, slot names, attribute order or the
      way sentences are joined change (prompts of the old version no longer mean the same thing);
    * bump the **minor** number for any other change of template text (rewording, adding or removing
      paraphrases);
    * never edit :data:`TEMPLATES` without a bump: :func:`template_fingerprint` is pinned in the tests
      together with the version.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from .terms import EXAMS, MG_DL_TO_UMOL_L  # noqa: F401  (re-exported)

__all__ = [
    "ABLATION_STEPS",
    "ATTRIBUTES",
    "ATTRIBUTE_BINS",
    "CREATININE_BINS",
    "CREATININE_UNITS",
    "DONOR_AGE_BINS",
    "EXAMS",
    "EXAM_PHRASES",
    "GFR_BINS",
    "MG_DL_TO_UMOL_L",
    "N_VARIANTS",
    "RANGES",
    "SLOTS",
    "TEMPLATES",
    "TEMPLATE_VERSION",
    "ClinicalRecord",
    "ClinicalValueError",
    "bin_prompts",
    "build_prompt",
    "choose_variant",
    "creatinine_bin",
    "creatinine_variability",
    "donor_age_bin",
    "exam_phrase",
    "filter_paraphrases",
    "generate_paraphrases",
    "gfr_bin",
    "is_valid_paraphrase",
    "normalize_exam",
    "prompt_from_slots",
    "prompt_variants",
    "template_fingerprint",
]

log = logging.getLogger(__name__)

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

"""Serum creatinine: 1 mg/dL = 88.42 umol/L."""
CREATININE_UNITS: Mapping[str, float] = MappingProxyType(
    {"umol/l": 1.0, "µmol/l": 1.0, "μmol/l": 1.0, "mg/dl": MG_DL_TO_UMOL_L}
)

# Accepted ranges are *physiologically possible* values (anything outside is a typo or a unit
# mistake), not normal clinical ranges: a GFR of 5 or a creatinine of 900 umol/L is accepted.
RANGES: Mapping[str, tuple[float, float, str]] = MappingProxyType(
    {
        "donor_age": (0.0, 100.0, "years"),
        "gfr": (0.0, 200.0, "mL/min/1.73 m2"),
        "creatinine": (10.0, 3000.0, "umol/L"),
        "creatinine_std": (0.0, 3000.0, "umol/L"),
    }
)
#: each clinical field in a clinician's words, for messages
FIELD_WORDS: Mapping[str, str] = MappingProxyType(
    {"donor_age": "donor age", "gfr": "GFR", "creatinine": "creatinine",
     "creatinine_std": "creatinine variability (std)", "exam": "exam", "creatinine_unit": "creatinine unit"}
)
_RANGE_NOTE = "the values a patient can have"


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


def creatinine_variability(values_umol_l: Sequence[float]) -> float | None:
    """Population std (``numpy.std``, ddof=0, as MEDIMP) of a creatinine series; None below 2 values."""
    arr = np.asarray(list(values_umol_l), dtype=float)
    if arr.size < 2:
        return None
    return float(np.std(arr))


def normalize_exam(exam: str) -> str:
    """``"d15"`` / ``" M3 "`` -> ``"D15"`` / ``"M3"``; raises :class:`ClinicalValueError` otherwise."""
    key = str(exam).strip().upper() if exam is not None else ""
    if key not in EXAMS:
        raise ClinicalValueError(
            "exam", exam, f"exam {exam!r} is not a follow-up exam; expected one of {', '.join(EXAMS)}"
        )
    return key


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


# --------------------------------------------------------------------------------------- validation
class ClinicalValueError(ValueError):
    """A clinical value is non-numeric or outside its physiologically possible range."""

    def __init__(self, field_name: str, value: Any, message: str):
        super().__init__(message)
        self.field = field_name
        self.value = value


_MISSING_STRINGS = frozenset({"", "na", "n/a", "nan", "none", "null", "-"})


def _is_missing(value: Any) -> bool:
    if value is None or type(value).__name__ in ("NAType", "NaTType"):  # pandas missing markers
        return True
    if isinstance(value, str):
        return value.strip().lower() in _MISSING_STRINGS
    if isinstance(value, float | np.floating):
        return bool(np.isnan(value))
    return False


def _range_text(name: str) -> str:
    lo, hi, unit = RANGES[name]
    return f"{lo:g}-{hi:g} {unit}, {_RANGE_NOTE}"


#: a clinical number as written in a form or a table: ASCII digits, one decimal point or comma, an
#: optional sign and exponent; no digit-group underscores ("4_5"), no digits of other scripts, no line break
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def _to_float(name: str, value: Any) -> float | None:
    """Strict number: None/NaN/'' -> None; '54', '1,2' (decimal comma) -> float; anything else (``4_5``,
    digits of another script, two values on two lines, ``inf``) -> ClinicalValueError."""
    if _is_missing(value):
        return None
    if isinstance(value, bool):
        v = None
    elif isinstance(value, str):
        text = value.strip(" \t")
        if "," in text and "." not in text and text.count(",") == 1:
            text = text.replace(",", ".")
        v = float(text) if _NUMBER.fullmatch(text) else None
    else:
        try:
            v = float(value)
        except (TypeError, ValueError):
            v = None
    if v is None or not math.isfinite(v):
        raise ClinicalValueError(
            name, value, f"{FIELD_WORDS[name]} {value!r} is not a number (expected {_range_text(name)})"
        )
    return v


def _check_range(name: str, value: float | None, shown: str | None = None) -> float | None:
    if value is None:
        return None
    lo, hi, unit = RANGES[name]
    if not lo <= value <= hi:
        shown = shown or f"{value:g} {unit}"
        raise ClinicalValueError(
            name, value, f"{FIELD_WORDS[name]} {shown} is outside {_range_text(name)}"
        )
    return value


def _unit_factor(unit: str) -> float:
    key = str(unit).strip().lower().replace(" ", "")
    if key not in CREATININE_UNITS:
        raise ClinicalValueError(
            "creatinine_unit", unit, f"creatinine_unit = {unit!r} is not supported; use 'umol/L' or 'mg/dL'"
        )
    return CREATININE_UNITS[key]


def _series(value: Any) -> list[Any]:
    """A creatinine series: a sequence, a scalar, or a string.

    A string containing ';' is split on ';' only (so decimal commas work: "1,1; 1,5"); otherwise it is
    split on commas and whitespace ("80, 95 110").
    """
    if _is_missing(value):
        return []
    if isinstance(value, str):
        sep = r"\s*;\s*" if ";" in value else r"[,\s]+"
        return [p for p in re.split(sep, value.strip()) if p]
    if isinstance(value, Iterable):
        return list(value)
    return [value]


def _creatinine_series(values: Any, factor: float, unit: str) -> tuple[float, ...]:
    out = []
    for raw in _series(values):
        v = _to_float("creatinine", raw)
        if v is None:  # missing entries of a series are skipped
            continue
        conv = v * factor
        shown = f"{v:g} {unit} ({conv:g} umol/L)" if factor != 1.0 else None
        out.append(_check_range("creatinine", conv, shown))
    return tuple(out)


# ------------------------------------------------------------------------------------------- record
@dataclass(frozen=True)
class ClinicalRecord:
    """Validated clinicobiological values of one DCE-MRI exam of a kidney graft.

    Attributes:
        exam: follow-up exam, one of :data:`EXAMS` (input is case-insensitive).
        donor_age: donor age in years, or None when missing.
        gfr: GFR at this exam in mL/min/1.73 m2, or None.
        creatinine: serum creatinine series up to this exam, umol/L (missing entries dropped).
        creatinine_std: creatinine variability (std, umol/L) given directly instead of a series.
        extra: other fields (patient id, outcomes...), kept but not used in sentences.

    Direct construction accepts numbers (or numeric strings) in canonical units; use
    :meth:`from_values` for loose form inputs with a creatinine unit, :meth:`from_csv_row` for a
    cohort table. Missing values (None, NaN, '') drop their sentence.
    """

    exam: str
    donor_age: float | None = None
    gfr: float | None = None
    creatinine: tuple[float, ...] = ()
    creatinine_std: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        setattr_ = object.__setattr__
        if _is_missing(self.exam):
            raise ClinicalValueError("exam", self.exam, f"exam is required; expected one of {', '.join(EXAMS)}")
        setattr_(self, "exam", normalize_exam(self.exam))
        setattr_(self, "donor_age", _check_range("donor_age", _to_float("donor_age", self.donor_age)))
        setattr_(self, "gfr", _check_range("gfr", _to_float("gfr", self.gfr)))
        setattr_(self, "creatinine", _creatinine_series(self.creatinine, 1.0, "umol/L"))
        std = _check_range("creatinine_std", _to_float("creatinine_std", self.creatinine_std))
        if std is not None and self.creatinine:
            raise ClinicalValueError(
                "creatinine_std", std, "give either the creatinine values or their variability (std), not both"
            )
        setattr_(self, "creatinine_std", std)
        setattr_(self, "extra", dict(self.extra or {}))

    @classmethod
    def from_values(
        cls,
        exam: str,
        donor_age: Any = None,
        gfr: Any = None,
        creatinine: Any = None,
        creatinine_std: Any = None,
        creatinine_unit: str = "umol/L",
        extra: Mapping[str, Any] | None = None,
    ) -> ClinicalRecord:
        """Build a record from loose inputs (form fields, CSV strings).

        Numbers may be strings (decimal comma accepted for single values); ``creatinine`` may be a
        sequence or a string separated by ';' (then items may use a decimal comma) or, without any ';',
        by commas or whitespace. ``creatinine_unit`` ('umol/L' or 'mg/dL') applies to ``creatinine``
        and ``creatinine_std``; values are stored in umol/L.
        """
        factor = _unit_factor(creatinine_unit)
        series = _creatinine_series(creatinine, factor, creatinine_unit)
        std = _to_float("creatinine_std", creatinine_std)
        if std is not None:
            conv = std * factor
            shown = f"{std:g} {creatinine_unit} ({conv:g} umol/L)" if factor != 1.0 else None
            std = _check_range("creatinine_std", conv, shown)
        return cls(exam=exam, donor_age=donor_age, gfr=gfr, creatinine=series, creatinine_std=std,
                   extra=dict(extra or {}))

    @classmethod
    def from_csv_row(cls, row: Mapping[str, Any], exam: str, creatinine_unit: str = "umol/L") -> ClinicalRecord:
        """Record for ``exam`` from one row of a cohort clinical table (dict or pandas Series).

        Uses ``donor_age``, ``gfr_<exam>`` and the creatinine of every exam up to and including
        ``exam`` (``creatinine_D15`` ... ``creatinine_<exam>``, in :data:`EXAMS` order): the series a
        clinician knows at that visit, so no future value leaks into the prompt. At D15 the series has
        one value, so the creatinine sentence is dropped. Other columns go to ``extra``. Column names
        are matched case-insensitively.
        """
        key = normalize_exam(exam)
        cols = {str(k).strip().lower(): k for k in row.keys()}

        def get(name: str) -> Any:
            k = cols.get(name.lower())
            return None if k is None else row[k]

        used = {"donor_age"} | {f"gfr_{e}".lower() for e in EXAMS} | {f"creatinine_{e}".lower() for e in EXAMS}
        upto = EXAMS[: EXAMS.index(key) + 1]
        extra = {str(orig): row[orig] for low, orig in cols.items() if low not in used}
        return cls.from_values(
            exam=key,
            donor_age=get("donor_age"),
            gfr=get(f"gfr_{key}"),
            creatinine=[get(f"creatinine_{e}") for e in upto],
            creatinine_unit=creatinine_unit,
            extra=extra,
        )

    @property
    def creatinine_variability(self) -> float | None:
        """``creatinine_std`` if given, else the population std of the series (None below 2 values)."""
        if self.creatinine_std is not None:
            return self.creatinine_std
        return creatinine_variability(self.creatinine)

    def slot_values(self) -> dict[str, str | None]:
        """Bin word of every attribute (None where the value is missing)."""
        var = self.creatinine_variability
        return {
            "gfr": None if self.gfr is None else gfr_bin(self.gfr),
            "exam": exam_phrase(self.exam),
            "creatinine": None if var is None else creatinine_bin(var),
            "donor_age": None if self.donor_age is None else donor_age_bin(self.donor_age),
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
    return prompt_from_slots(record.slot_values(), attrs, k)


def prompt_from_slots(values: Mapping[str, str | None], attributes: Iterable[str] = ATTRIBUTES,
                      variant: int = 0) -> str:
    """The prompt of given bin words (``{"gfr": "low", "exam": "first month", ...}``, as
    :meth:`ClinicalRecord.slot_values` gives them; None or absent: the sentence is dropped)."""
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


# ------------------------------------------------------------------------------ paraphrase generator
_SLOT_RE = re.compile(r"\{(\w+)\}")


def is_valid_paraphrase(text: str, template: str, min_words: int = 3, max_words: int = 40) -> bool:
    """True when ``text`` can replace ``template``: every slot of the template exactly once, no other
    braces, one line, ``min_words``-``max_words`` words, starting with a letter or a slot and ending
    with a period."""
    if not isinstance(text, str):
        return False
    text = text.strip()
    slots = _SLOT_RE.findall(template)
    if not text or "\n" in text or not text.endswith("."):
        return False
    if not (text[0].isalpha() or text.startswith("{")):
        return False
    if any(text.count("{" + s + "}") != 1 for s in slots):
        return False
    rest = _SLOT_RE.sub("", text)
    if "{" in rest or "}" in rest or len(_SLOT_RE.findall(text)) != len(slots):
        return False
    return min_words <= len(text.split()) <= max_words


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def filter_paraphrases(candidates: Iterable[str], template: str, **kwargs: int) -> list[str]:
    """Valid (:func:`is_valid_paraphrase`), de-duplicated candidates that differ from the template."""
    kept: list[str] = []
    seen = {_norm(template)}
    for c in candidates:
        if is_valid_paraphrase(c, template, **kwargs) and _norm(c) not in seen:
            seen.add(_norm(c))
            kept.append(c.strip())
    return kept


def _clean_generation(text: str) -> str:
    """First line, first sentence, no space before punctuation, first letter capitalised."""
    text = text.strip().split("\n", 1)[0].strip().strip('"').strip()
    text = re.sub(r"\s+([.,;:!?])", r"\1", text)
    text = re.sub(r"([.!?])[.!?]+", r"\1", text)
    m = re.search(r"[.!?](\s|$)", text)
    if m:
        text = text[: m.start() + 1]
    if text[:1].islower():
        text = text[0].upper() + text[1:]
    return text


def generate_paraphrases(
    template: str,
    model_path: str | Path,
    n: int = 10,
    *,
    seed: int = 0,
    max_new_tokens: int = 48,
    temperature: float = 0.9,
    top_p: float = 0.95,
    batch_size: int = 16,
    max_rounds: int = 5,
    instruction: str | None = None,
) -> list[str]:
    """Paraphrase ``template`` with a local HuggingFace causal LM and keep only usable outputs.

    The model and tokenizer are loaded from ``model_path`` with ``local_files_only=True`` (never
    downloads). Up to ``max_rounds`` batches of ``batch_size`` samples are drawn (seeded, without
    touching the global RNG) until ``n`` paraphrases pass :func:`filter_paraphrases` (slot
    placeholders preserved exactly once, no other braces, one sentence of reasonable length).
    Returns the kept list, possibly empty; failures during generation are logged, never raised
    (a model path that cannot be loaded does raise).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(model_path), local_files_only=True)
    model.eval()
    slots = ", ".join("{" + s + "}" for s in _SLOT_RE.findall(template)) or "none"
    instruction = instruction or (
        "Rewrite the following sentence about a kidney transplant patient in different words, as one "
        f"medically correct sentence. Keep the placeholders {slots} exactly as written."
    )
    prompt = f"{instruction}\nSentence: {template}\nParaphrase:"
    if getattr(tokenizer, "chat_template", None):
        try:
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": f"{instruction}\nSentence: {template}"}],
                add_generation_prompt=True,
                tokenize=False,
            )
        except Exception:  # noqa: BLE001 - fall back to the plain prompt
            pass
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    kept: list[str] = []
    candidates: list[str] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(max_rounds):
            try:
                enc = tokenizer(prompt, return_tensors="pt")
                enc.pop("token_type_ids", None)
                with torch.no_grad():
                    out = model.generate(
                        **enc,
                        do_sample=True,
                        temperature=temperature,
                        top_p=top_p,
                        max_new_tokens=max_new_tokens,
                        num_return_sequences=batch_size,
                        pad_token_id=pad_id,
                    )
                start = enc["input_ids"].shape[1]
                texts = tokenizer.batch_decode(out[:, start:], skip_special_tokens=True)
                candidates += [_clean_generation(t) for t in texts]
            except Exception as exc:  # noqa: BLE001 - a bad generation must not break the caller
                log.warning("paraphrase generation failed: %s", exc)
                break
            kept = filter_paraphrases(candidates, template)
            if len(kept) >= n:
                break
    return kept[:n]


# ------------------------------------------------------------------------------------------- forms
FORM_FIELDS: tuple[str, ...] = ("exam", "donor_age", "gfr", "creatinine", "creatinine_std", "creatinine_unit")


def check_form(values: Mapping[str, Any]) -> tuple[ClinicalRecord | None, dict[str, str]]:
    """Validate the fields of a clinical form one by one.

    Returns ``(record, {})`` when every field is valid, else ``(None, errors)`` with one message per
    offending field (all of them, not only the first), so a form can show each next to its field.
    Unknown keys are refused: a typo in a caller would otherwise drop a value silently.
    """
    unknown = set(values) - set(FORM_FIELDS)
    if unknown:
        raise ValueError(f"unknown clinical field(s): {', '.join(sorted(unknown))}")
    exam = values.get("exam")
    unit = values.get("creatinine_unit") or "umol/L"
    errors: dict[str, str] = {}
    try:
        ClinicalRecord(exam=exam)
    except ClinicalValueError as exc:
        errors["exam"] = str(exc)
        exam = EXAMS[0]  # still check the other fields
    try:
        _unit_factor(unit)
    except ClinicalValueError as exc:
        errors["creatinine_unit"] = str(exc)
        unit = "umol/L"
    for name in ("donor_age", "gfr", "creatinine", "creatinine_std"):
        try:
            ClinicalRecord.from_values(exam=exam, creatinine_unit=unit, **{name: values.get(name)})
        except ClinicalValueError as exc:
            errors[name] = str(exc)
    if errors:
        return None, errors
    try:
        record = ClinicalRecord.from_values(**{k: v for k, v in values.items() if k != "creatinine_unit"},
                                            creatinine_unit=unit)
    except ClinicalValueError as exc:  # combinations: a creatinine series and its std both given
        return None, {exc.field: str(exc)}
    return record, {}
