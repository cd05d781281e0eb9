"""npe2 sample data: one synthetic renal-graft DCE-MRI exam with its tissue labels."""

from __future__ import annotations

from ._layers import labels_layer_data, volume_layer_data
from .core.sample import sample_exam
from .core.terms import KIDNEY_REGION_NAMES


def synthetic_graft() -> list[tuple]:
    """Synthetic transplanted kidney (exam D30), generated once and cached on disk."""
    volume, labels = sample_exam()
    name = f"synthetic graft {volume.metadata.get('exam', '')}".strip()
    return [volume_layer_data(volume, name=name), labels_layer_data(labels, volume, name="graft tissues",
                                                                           region_names=KIDNEY_REGION_NAMES)]
