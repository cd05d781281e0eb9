"""Memory budget: every size that an input file controls (voxel counts, a resampled grid) is checked
against it before anything is allocated, so a hostile or corrupt header gets a message instead of
exhausting the machine.

The budget is half of the machine's memory by default; ``NAPARI_MEDIMP_MEMORY_BUDGET`` sets it as a
size (``"6G"``, ``"512M"``, bytes) or a share of the memory (``"75%"``).
"""

from __future__ import annotations

import os
import re

BUDGET_ENV = "NAPARI_MEDIMP_MEMORY_BUDGET"
#: share of the machine's memory one input may take when the environment says nothing
DEFAULT_SHARE = 0.5
#: assumed machine memory when the system does not tell
_FALLBACK_TOTAL = 8 * 2**30
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


class MemoryBudgetError(ValueError):
    """An input would need more memory than the budget allows (nothing was allocated)."""


def total_memory() -> int:
    """Physical memory of this machine in bytes (8 GiB when the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return _FALLBACK_TOTAL


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def memory_budget() -> int:
    """Bytes one input may take: ``$NAPARI_MEDIMP_MEMORY_BUDGET`` or half of the machine's memory."""
    text = os.environ.get(BUDGET_ENV, "").strip()
    if not text:
        return int(DEFAULT_SHARE * total_memory())
    share = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", text)
    if share and 0 < float(share.group(1)) <= 100:
        return int(float(share.group(1)) / 100 * total_memory())
    size = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)", text)
    if size and size.group(2).lower() in _UNITS and float(size.group(1)) > 0:
        return int(float(size.group(1)) * _UNITS[size.group(2).lower()])
    raise ValueError(f"{BUDGET_ENV}={text!r} is not a size (e.g. 6G, 512M) or a share of memory (e.g. 75%)")


def check_memory(n_bytes: float, what: str) -> None:
    """Refuse, before allocating, ``what`` needing ``n_bytes`` above the budget (message names both)."""
    budget = memory_budget()
    if n_bytes > budget:
        raise MemoryBudgetError(
            f"{what} would need {human_bytes(n_bytes)} of memory, more than the budget of {human_bytes(budget)} "
            f"(set {BUDGET_ENV} to change it)")
