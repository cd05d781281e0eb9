"""Words both PDFs (an exam's analysis, a patient's follow-up) print for clinical values and input checks."""

from __future__ import annotations

from typing import Any

#: clinical values in words
CLINICAL_WORDS = {"gfr": "GFR", "donor_age": "donor age", "creatinine": "creatinine",
                  "creatinine_std": "creatinine variability (standard deviation)"}
#: check ids in words
CHECK_WORDS = {"dynamic": "dynamic series", "enhancement": "enhancing kidney", "frame_times": "frame times",
               "voxel_size": "voxel size", "embedding": "like the training exams"}


def check_state(ok) -> str:
    """A check's outcome (True, False, None: not made) in one word."""
    return {True: "passed", False: "FAILED"}.get(ok, "not made")


def clinical_value(value: Any) -> str:
    """A clinical value (or a series of them) as typed: floats without trailing zeros."""
    if isinstance(value, (list, tuple)):
        return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)
