"""Patient-level features for prognosis: how the exams of one patient are combined.

Training (fitting the heads) and inference (applying them) both call :func:`patient_features`, and the
heads record :data:`FEATURES_ID`, so a head is never applied to features built another way.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .prompts import EXAMS

HORIZONS = ("2y", "3y", "4y")
#: identifies the feature construction below; stored with every prognosis head
FEATURES_ID = "mean-exam-embedding+exam-mask/v1"


def patient_features(embeddings: Mapping[str, np.ndarray], dim: int | None = None) -> np.ndarray:
    """Mean of the L2-normalised embeddings of the available exams, then a 0/1 mask of which of
    D15, D30, M3, M12 were available. A patient without any exam gets zeros (mask all 0)."""
    present = {str(k).upper(): np.asarray(v, np.float64).ravel() for k, v in embeddings.items() if v is not None}
    unknown = sorted(set(present) - set(EXAMS))
    if unknown:
        raise ValueError(f"unknown exam names {unknown}; expected some of {', '.join(EXAMS)}")
    if dim is None:
        if not present:
            raise ValueError("no exam embeddings and no dimension given")
        dim = next(iter(present.values())).size
    if present:
        stack = np.stack([v / max(np.linalg.norm(v), 1e-12) for v in present.values()])
        if stack.shape[1] != dim:
            raise ValueError(f"exam embeddings have {stack.shape[1]} dimensions, expected {dim}")
        mean = stack.mean(axis=0)
    else:
        mean = np.zeros(dim)
    mask = np.array([1.0 if exam in present else 0.0 for exam in EXAMS])
    return np.concatenate([mean, mask])
