"""Which patients a model has seen, so that no table evaluates it on them.

A model card's ``training.patients_seen`` records the cohort's identity and the patient ids used for
contrastive pretraining and for checkpoint selection (the validation split that picked the best epoch).
``evaluate`` compares an evaluation cohort with it before any model work.

Identity: a synthetic cohort is identified by its data seed (the generator draws each patient from
streams seeded by ``(seed, patient index)``, so the same seed gives the same patients whatever the other
settings); any other cohort by its patient ids alone, which a hospital keeps unique.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["cohort_identity", "overlap_with_seen", "patients_seen_entry"]


def cohort_identity(cohort) -> str | None:
    """``"synthetic seed S"`` for a cohort written by the synthetic generator, else None."""
    truth = Path(cohort) / "ground_truth.json"
    if not truth.is_file():
        return None
    try:
        data = json.loads(truth.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and "seed" in data and "generator_version" in data:
        return f"synthetic seed {int(data['seed'])}"
    return None


def patients_seen_entry(cohort, pretraining: Iterable[str], checkpoint_selection: Iterable[str]) -> dict:
    """The card entry recording who a training run saw."""
    return {"cohort": cohort_identity(cohort), "cohort_path": str(cohort),
            "pretraining": sorted(set(map(str, pretraining))),
            "checkpoint_selection": sorted(set(map(str, checkpoint_selection)))}


def overlap_with_seen(card: Mapping[str, Any], cohort, patients: Iterable[str]) -> tuple[list[str], str | None]:
    """Patients of ``cohort`` that the model of ``card`` saw in pretraining or checkpoint selection.

    Returns (overlapping ids, problem): ``problem`` is None when the card records who it saw, else a
    sentence saying the overlap cannot be checked (an older model file)."""
    seen = (card.get("training") or {}).get("patients_seen")
    if not isinstance(seen, Mapping):
        return [], ("the model card does not record which patients trained the model, so an overlap with this "
                    "cohort cannot be ruled out")
    if seen.get("cohort") != cohort_identity(cohort):
        return [], None
    used = set(seen.get("pretraining") or []) | set(seen.get("checkpoint_selection") or [])
    return sorted(used & set(map(str, patients))), None
