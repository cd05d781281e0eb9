"""Planes to phases (temporal tags, else the order at each slice position) and the frame times."""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from ...volume import DCEReadError, DCEReadWarning
from .planes import _Plane
from .tags import _da_seconds, _tm_seconds

#: tags tried, in order, to group images into phases
PHASE_TAGS = ("TemporalPositionIdentifier", "TemporalPositionIndex", "AcquisitionTime", "TriggerTime",
              "ContentTime")


#: tags tried, in order, for the frame times
#: where frame times are read from, in this order of precedence; a tag whose value is the same in every
#: phase says nothing about time and the next one is used (with a notice naming the tag used)
TIME_TAGS = ("AcquisitionTime", "TriggerTime", "ContentTime", "TemporalPositionIdentifier x TemporalResolution")


def _groups(planes: list[_Plane], tag: str) -> dict[float, list[int]]:
    groups: dict[float, list[int]] = defaultdict(list)
    for i, plane in enumerate(planes):
        groups[round(plane.times[tag], 6)].append(i)
    return dict(sorted(groups.items()))


def _group_problem(groups: dict[float, list[int]], slice_index: np.ndarray, n_slices: int, tag: str) -> str | None:
    start = next(iter(groups))
    for number, (value, members) in enumerate(groups.items(), start=1):
        counts = Counter(slice_index[members].tolist())
        if len(members) != n_slices or len(counts) != n_slices:
            when = f"{tag} {value:g}" if tag.startswith("Temporal") else f"{tag} +{value - start:g} s"
            sizes = Counter(len(m) for m in groups.values())
            typical = ", ".join(f"{n} phase(s) have {k}" for k, n in sorted(sizes.items()))
            repeated = sum(c > 1 for c in counts.values())
            extra = f", {repeated} of them more than once" if repeated else ""
            return (
                f"phase {number} of {len(groups)} ({when}) has {len(members)} images at {len(counts)} of the "
                f"{n_slices} slice positions{extra} ({typical} images): every phase must cover the same slices"
            )
    return None


def _phases(planes: list[_Plane], slice_index: np.ndarray, n_slices: int, source: Path, tags=PHASE_TAGS):
    """Plane indices per phase (each sorted by slice), in temporal order, and how they were grouped."""
    available = [t for t in tags if all(t in p.times for p in planes)]
    first_problem = None
    for tag in available:
        groups = _groups(planes, tag)
        problem = _group_problem(groups, slice_index, n_slices, tag)
        if problem is None:
            phases = [sorted(m, key=lambda i: slice_index[i]) for m in groups.values()]
            return phases, tag
        first_problem = first_problem or problem

    per_slice: dict[int, list[int]] = defaultdict(list)
    for i, k in enumerate(slice_index):
        per_slice[int(k)].append(i)
    counts = {len(v) for v in per_slice.values()}
    if len(counts) == 1:
        n_phases = counts.pop()
        if n_phases == 1:
            return [sorted(range(len(planes)), key=lambda i: slice_index[i])], "none (single phase)"
        for tag in available:
            distinct = len({round(plane.times[tag], 6) for plane in planes})
            if 1 < distinct < n_phases:
                raise DCEReadError(
                    source, f"{len(planes)} images lie at {n_slices} slice position(s) but {tag} names only "
                    f"{distinct} phases: images of one phase share an ImagePositionPatient, so their slices "
                    "cannot be placed (positions missing or copied)")
        time_tag = next((t for t in TIME_TAGS if t in available), None)
        if time_tag is None:
            warnings.warn(
                f"{source}: no temporal tag separates the {n_phases} images at each slice position; "
                "phases are ordered by InstanceNumber",
                DCEReadWarning,
                stacklevel=3,
            )
        for members in per_slice.values():
            members.sort(key=lambda i: (planes[i].times.get(time_tag, 0.0) if time_tag else 0.0,
                                        planes[i].instance))
        phases = [[per_slice[k][t] for k in range(n_slices)] for t in range(n_phases)]
        return phases, f"order at each slice position ({time_tag or 'InstanceNumber'})"
    if first_problem:
        raise DCEReadError(source, first_problem)
    sizes = Counter(len(v) for v in per_slice.values())
    raise DCEReadError(
        source,
        "slice positions hold different numbers of images ("
        + ", ".join(f"{n} positions have {k}" for k, n in sorted(sizes.items()))
        + ") and no temporal tag groups them into phases",
    )


_DAY_S = 86400.0


def _clock(seconds: float) -> str:
    seconds = seconds % _DAY_S
    return f"{int(seconds // 3600):02d}:{int(seconds % 3600 // 60):02d}:{seconds % 60:04.1f}"


def _unwrap_midnight(planes: list[_Plane], source: Path) -> None:
    """Times of day without a date that span more than half a day: the acquisition crossed midnight, so
    the times after 00:00 count on the next day (said in a notice)."""
    for tag in ("AcquisitionTime", "ContentTime"):
        values = np.array([p.times[tag] for p in planes if tag in p.times])
        if values.size < 2 or values.max() >= _DAY_S or values.max() - values.min() <= _DAY_S / 2:
            continue
        late = values[values >= _DAY_S / 2].min()
        early = values[values < _DAY_S / 2].max()
        for plane in planes:
            if tag in plane.times and plane.times[tag] < _DAY_S / 2:
                plane.times[tag] += _DAY_S
        warnings.warn(f"{source}: {tag} runs from {_clock(late)} to {_clock(early)} without a date; the "
                      "acquisition is taken to cross midnight (times after 00:00 count on the next day)",
                      DCEReadWarning, stacklevel=3)


def _frame_times(planes: list[_Plane], phases: list[list[int]], source: Path):
    """(frame times from the first phase, the tag they were read from), the first tag of :data:`TIME_TAGS`
    that every plane has and that differs between phases; (None, None) when none does."""
    constant = []
    for tag in TIME_TAGS:
        if all(planes[i].times.get(tag) is not None for phase in phases for i in phase):
            starts = np.array([min(planes[i].times[tag] for i in phase) for phase in phases])
            times = starts - starts[0]
            if len(phases) > 1 and np.all(times == 0):
                constant.append(tag)
                continue
            if constant:
                warnings.warn(f"{source}: frame times read from {tag} ({' and '.join(constant)} the same in every "
                              "phase)", DCEReadWarning, stacklevel=3)
            if np.any(np.diff(times) < 0):
                warnings.warn(
                    f"{source}: {tag} does not increase with the phase order; frame times are unknown",
                    DCEReadWarning,
                    stacklevel=3,
                )
                return None, None
            return times, tag
    return None, None


def _series_start(items, planes: list[_Plane]) -> tuple[float | None, str]:
    """When a series was acquired: its first AcquisitionTime, else its SeriesTime, else None."""
    acquired = [p.times.get("AcquisitionTime") for p in planes]
    if all(t is not None for t in acquired):
        return min(acquired), "AcquisitionTime"
    ds = items[0][1]
    if ds.get("SeriesTime"):
        clock = _tm_seconds(ds.SeriesTime)
        day = _da_seconds(ds.SeriesDate) if ds.get("SeriesDate") else None
        if clock is not None:
            return (clock if day is None else day + clock), "SeriesTime"
    return None, ""
