"""DICOM reader: one multi-phase MR series (classic one-slice-per-file, enhanced multi-frame, Siemens MOSAIC).

Slices are placed by geometry only: sorted by their position along the slice normal, never by file name
or InstanceNumber. Phases are grouped by TemporalPositionIdentifier (TemporalPositionIndex in enhanced
files), else AcquisitionTime, else TriggerTime, else ContentTime. The volume is returned in closest
canonical RAS orientation, like the NIfTI reader.

One module per step: :mod:`.scan` (files, series, DICOMDIR), :mod:`.tags` (tag values, dates and times),
:mod:`.scaling` (stored values to image values), :mod:`.planes` (headers to 2D planes), :mod:`.mosaic`
(Siemens mosaics: slices tiled in one image), :mod:`.geometry` (slice order, affine), :mod:`.timing` (phases,
frame times), :mod:`.pixels` (decoding) and :mod:`.reader`.
"""

from __future__ import annotations

from .reader import load_dicom_series
from .scan import DICOM_SUFFIXES, chosen_series, find_series, is_dicom_file
from .timing import PHASE_TAGS, TIME_TAGS

__all__ = [
    "DICOM_SUFFIXES", "PHASE_TAGS", "TIME_TAGS", "chosen_series", "find_series", "is_dicom_file", "load_dicom_series",
]
