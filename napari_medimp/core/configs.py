"""Config dataclasses <-> JSON: one strict reader, so an unknown option is never silently ignored, and one
conversion of values to plain JSON types."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


def strict_from_dict(cls: type[T], data: Mapping[str, Any], what: str, hint: str = "") -> T:
    """``cls(**data)`` after refusing keys that ``cls`` does not declare (message names ``what``)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; known: {sorted(known)}{hint}")
    return cls(**dict(data))


def jsonable(value: Any, digits: int | None = None) -> Any:
    """Plain JSON types: numpy scalars/arrays, tuples, sets, paths converted; NaN/Inf become None; floats
    rounded to ``digits`` significant digits when given (compact, reproducible files)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, digits) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [jsonable(v, digits) for v in value.tolist()]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, digits) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if not math.isfinite(value):
            return None
        return float(f"{value:.{digits}g}") if digits else value
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "to_list"):  # RoiBox
        return jsonable(value.to_list(), digits)
    return str(value)
