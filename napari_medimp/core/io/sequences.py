"""Exams stored as one 3D volume per contrast phase, each in its own sequence sub-folder.

This is how MEDIMP's own cohort is laid out::

    patient/exam/3_WATER_AX_LAVA-Flex_ss_IV/volume.nii.gz     pre-contrast ("sans injection")
    patient/exam/4_WATER_AX_LAVA-Flex_ART/volume.nii.gz       arterial
    patient/exam/5_WATER_AX_LAVA-Flex_tub/volume.nii.gz       tubular (late)

A sub-folder belongs to the dynamic acquisition when its name holds enough of the sequence keywords
(``WATER``, ``AX``, ``LAVA``: at least 3, as in the reference code). Its phase comes from the phase keyword
map. The phases are ordered by acquisition time when every phase records one (JSON sidecar or DICOM),
else by phase (pre-contrast, arterial, portal or nephrographic, tubular or late) and then by the series
number that prefixes the folder name.

Both keyword lists are settings: a ``medimp_layout.json`` in the exam folder or one of its parents (the
patient or cohort folder) replaces them, for example::

    {"sequence_keywords": ["WATER", "AX", "LAVA"], "min_sequence_keywords": 3,
     "phase_keywords": {"pre-contrast": ["ss_IV", "pre"], "arterial": ["ART"],
                        "portal or nephrographic": ["PORT", "neph"], "tubular or late": ["tub", "late"]}}
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..memory import check_memory
from ..volume import LAZY_THRESHOLD_BYTES, DCEReadError, DCEReadWarning, DCEVolume

LAYOUT_FILE = "medimp_layout.json"
#: phase name -> keywords (matched case-insensitively inside the folder name), in acquisition order
DEFAULT_PHASE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "pre-contrast": ("ss_IV", "sans_IV", "pre", "native", "noinj"),
    "arterial": ("ART",),
    "portal or nephrographic": ("PORT", "neph", "veno", "VEIN"),
    "tubular or late": ("tub", "late", "tard", "excr", "delay"),
}
DEFAULT_SEQUENCE_KEYWORDS = ("WATER", "AX", "LAVA")
_NUMBER_PREFIX = re.compile(r"^(\d+)[_\- ]")
_MAX_LAYOUT_BYTES = 64 * 1024


@dataclass(frozen=True)
class PhaseLayout:
    """Which sequence folders form the dynamic series, and how their names map to contrast phases."""

    sequence_keywords: tuple[str, ...] = DEFAULT_SEQUENCE_KEYWORDS
    min_sequence_keywords: int = 3
    phase_keywords: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_PHASE_KEYWORDS))
    source: str = "built-in keywords"

    def is_dynamic(self, name: str) -> bool:
        """True when the folder name holds enough sequence keywords (case-sensitive, as the reference)."""
        return sum(key in name for key in self.sequence_keywords) >= self.min_sequence_keywords

    def phase_of(self, name: str) -> tuple[int, str] | None:
        """(rank in acquisition order, phase name) of a folder name, None when no keyword matches.

        The sequence keywords are removed first, so that ``WATER`` never reads as a phase. Several phases
        matching one name is an error naming them.
        """
        rest = name
        for key in self.sequence_keywords:
            rest = rest.replace(key, " ")
        rest = rest.lower()
        hits = [(rank, phase) for rank, (phase, keys) in enumerate(self.phase_keywords.items())
                if any(k.lower() in rest for k in keys)]
        if len(hits) > 1:
            raise DCEReadError(name, f"the folder name matches several phases ({', '.join(p for _, p in hits)}); "
                                     f"make the keywords in {LAYOUT_FILE} more specific")
        return hits[0] if hits else None

    @classmethod
    def from_file(cls, path) -> PhaseLayout:
        path = Path(path)
        if not path.is_file():
            raise DCEReadError(path, "the layout settings must be a regular file")
        if path.stat().st_size > _MAX_LAYOUT_BYTES:
            raise DCEReadError(path, f"layout settings larger than {_MAX_LAYOUT_BYTES // 1024} KiB; not read")
        try:
            raw = json.loads(path.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError, RecursionError) as exc:
            raise DCEReadError(path, f"layout settings are not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise DCEReadError(path, "layout settings must be a JSON object")
        unknown = set(raw) - {"sequence_keywords", "min_sequence_keywords", "phase_keywords"}
        if unknown:
            raise DCEReadError(path, f"unknown layout setting(s): {', '.join(sorted(unknown))}")

        def words(value, what) -> tuple[str, ...]:
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                raise DCEReadError(path, f"{what} must be a non-empty list of words")
            return tuple(value)

        seq = words(raw.get("sequence_keywords", list(DEFAULT_SEQUENCE_KEYWORDS)), "sequence_keywords")
        minimum = raw.get("min_sequence_keywords", min(3, len(seq)))
        if not isinstance(minimum, int) or isinstance(minimum, bool) or not 1 <= minimum <= len(seq):
            raise DCEReadError(path, f"min_sequence_keywords must be a whole number from 1 to {len(seq)}")
        phases = raw.get("phase_keywords", {k: list(v) for k, v in DEFAULT_PHASE_KEYWORDS.items()})
        if not isinstance(phases, dict) or not phases:
            raise DCEReadError(path, "phase_keywords must map each phase name to a list of words")
        return cls(seq, minimum, {str(k): words(v, f"phase_keywords['{k}']") for k, v in phases.items()},
                   source=str(path))


def layout_for(folder, levels: int = 3) -> PhaseLayout:
    """The layout settings that apply to an exam folder: the nearest ``medimp_layout.json`` up to the cohort."""
    folder = Path(folder)
    for parent in [folder, *folder.parents][: levels + 1]:
        candidate = parent / LAYOUT_FILE
        if candidate.exists():
            return PhaseLayout.from_file(candidate)
    return PhaseLayout()


def _series_number(name: str) -> int | None:
    match = _NUMBER_PREFIX.match(name)
    return int(match.group(1)) if match else None


def dynamic_sequences(exam_folder, candidates: list[Path], layout: PhaseLayout | None = None) -> list[Path]:
    """The sequence folders of an exam that belong to its dynamic acquisition (by name)."""
    layout = layout or layout_for(exam_folder)
    return [d for d in candidates if layout.is_dynamic(d.name)]


def _acquisition_time(volume: DCEVolume) -> float | None:
    value = volume.metadata.get("acquisition_seconds")
    return float(value) if isinstance(value, (int, float)) and np.isfinite(value) else None


def _geometry_text(volume: DCEVolume) -> str:
    z, y, x = volume.shape[1:]
    sz, sy, sx = volume.spacing
    return f"{x}x{y}x{z} voxels of {sx:.3g}x{sy:.3g}x{sz:.3g} mm at origin ({', '.join(f'{v:.1f}' for v in volume.origin)})"


def load_phase_sequences(exam_folder, folders: list[Path], load_sequence, layout: PhaseLayout | None = None,
                         lazy: bool | None = None) -> DCEVolume:
    """Stack one 3D volume per sequence folder into a dynamic series (see the module docstring)."""
    exam_folder = Path(exam_folder)
    layout = layout or layout_for(exam_folder)
    phases = []
    for folder in folders:
        with warnings.catch_warnings():  # each phase is 3D by definition
            warnings.filterwarnings("ignore", message=".*single frame", category=DCEReadWarning)
            volume = load_sequence(folder, lazy=True)
        if volume.n_frames != 1:
            raise DCEReadError(folder, f"holds {volume.n_frames} frames; a phase folder of a "
                                       f"{'/'.join(layout.sequence_keywords)} exam must hold one 3D volume")
        phases.append(volume)

    reference = phases[0]
    for folder, volume in zip(folders[1:], phases[1:], strict=True):
        if volume.shape[1:] != reference.shape[1:] or not np.allclose(volume.affine, reference.affine, atol=1e-2):
            raise DCEReadError(
                exam_folder,
                f"phase series with different geometry: {folders[0].name} is {_geometry_text(reference)}, "
                f"{folder.name} is {_geometry_text(volume)}; the phases cannot be stacked without resampling",
            )

    times = [_acquisition_time(v) for v in phases]
    ranks = [layout.phase_of(f.name) for f in folders]
    if all(t is not None for t in times):
        order = sorted(range(len(folders)), key=lambda i: times[i])
        ordered_by = "acquisition time"
        t0 = times[order[0]]
        frame_times = np.array([times[i] - t0 for i in order])
        by_name = [i for i in order if ranks[i] is not None]
        if by_name != sorted(by_name, key=lambda i: (ranks[i][0], _series_number(folders[i].name) or 0)):
            warnings.warn(
                f"{exam_folder}: the acquisition times order the phases "
                f"{', '.join(folders[i].name for i in order)}, unlike their names; the times are used",
                DCEReadWarning, stacklevel=3,
            )
    else:
        unknown = [f.name for f, r in zip(folders, ranks, strict=True) if r is None]
        if unknown:
            known = "; ".join(f"{phase}: {', '.join(keys)}" for phase, keys in layout.phase_keywords.items())
            raise DCEReadError(
                exam_folder,
                f"unknown phase name(s) {', '.join(unknown)} and no acquisition times to order the phases by; "
                f"known phase keywords ({layout.source}) are {known}. Add the missing words to {LAYOUT_FILE} "
                "in the exam, patient or cohort folder",
            )
        order = sorted(range(len(folders)), key=lambda i: (ranks[i][0], _series_number(folders[i].name) or 0,
                                                            folders[i].name))
        ordered_by = "phase keywords"
        frame_times = None
        missing = [folders[i].name for i, t in enumerate(times) if t is None]
        warnings.warn(
            f"{exam_folder}: no acquisition time for {', '.join(missing)}; phases ordered by their names "
            f"({', '.join(ranks[i][1] for i in order)}) and frame times unknown",
            DCEReadWarning, stacklevel=3,
        )

    n_bytes = sum(int(np.prod(v.shape)) * 4 for v in phases)
    if lazy is None:
        lazy = n_bytes > LAZY_THRESHOLD_BYTES
    # eager: every phase read, then the stacked copy; lazy: one phase at a time beside the stack once computed
    check_memory(n_bytes + n_bytes // len(phases) if lazy else 2 * n_bytes,
                 f"{exam_folder}: stacking {len(phases)} phase series of "
                 f"{' x '.join(map(str, reference.shape[1:]))} voxels")
    if lazy:
        import dask.array as da

        data = da.concatenate([da.asarray(phases[i].data) for i in order])
    else:
        data = np.concatenate([np.asarray(phases[i].load().data) for i in order])
    metadata = dict(reference.metadata)
    metadata.pop("acquisition_seconds", None)
    metadata.update({
        "format": f"{reference.metadata.get('format', 'image')} phase sequences",
        "phase_sequences": [folders[i].name for i in order],
        "phase_names": [ranks[i][1] if ranks[i] else "unknown" for i in order],
        "ordered_by": ordered_by,
        "layout": layout.source,
        "lazy": bool(lazy),
    })
    if times[order[0]] is not None:
        metadata["acquisition_seconds"] = times[order[0]]
    return DCEVolume(data, reference.affine, frame_times, metadata, source=str(exam_folder))
