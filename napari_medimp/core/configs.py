"""Config dataclasses <-> JSON: one strict reader, so an unknown option is never silently ignored."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def strict_from_dict(cls: type[T], data: Mapping[str, Any], what: str, hint: str = "") -> T:
    """``cls(**data)`` after refusing keys that ``cls`` does not declare (message names ``what``)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; known: {sorted(known)}{hint}")
    return cls(**dict(data))
