"""The clinical values of one exam of a kidney graft, validated: :class:`ClinicalRecord` and the checks of a
clinical form.

Values are stored in canonical units: donor age in years, GFR in mL/min/1.73 m2, serum creatinine in umol/L
(input in mg/dL is converted, 1 mg/dL = 88.42 umol/L). A value outside :data:`RANGES` (what a patient can
have, not the normal clinical range) is a typo or a unit mistake and raises :class:`ClinicalValueError`,
which names the field. Missing values (None, NaN, '', "NA"...) are allowed and stay None.

Creatinine variability is ``numpy.std`` of the series, i.e. the *population* standard deviation
(``ddof=0``), as in MEDIMP. Fewer than two values give no variability.

What the values become in a prompt (bins, sentences) is :mod:`napari_medimp.core.prompts`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from .terms import EXAMS, MG_DL_TO_UMOL_L

__all__ = [
    "CREATININE_UNITS",
    "FIELD_WORDS",
    "FORM_FIELDS",
    "RANGES",
    "ClinicalRecord",
    "ClinicalValueError",
    "check_form",
    "creatinine_variability",
    "normalize_exam",
]

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
