"""Receiving a retrieval's images (C-GET or C-MOVE alike) and checking that they make whole phases.

:class:`Receiver` is the C-STORE handler of both transfers: it writes each image into the retrieval's
temporary folder, counts, reports progress, honours a cancel, refuses images of series nobody asked for,
and keeps the few header values the completeness check needs. :func:`completeness_problem` then says,
with numbers, when the images of a series do not form complete phases (a slice or a phase missing, an
image sent twice), whatever the archive counted.
"""

from __future__ import annotations

import re
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_write_bytes

#: C-STORE statuses this station answers (PS3.4 B.2.3)
STORED, OUT_OF_RESOURCES, NOT_ASKED_FOR = 0x0000, 0xA700, 0xC000


@dataclass(frozen=True)
class Instance:
    """What the completeness check needs of one received image."""

    series_uid: str
    sop_uid: str
    temporal_position: int | None
    temporal_positions: int | None
    position: tuple[float, float, float] | None
    grid: tuple  # rows, columns, orientation: series of the same grid are phases of one acquisition


def _int(value) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def instance_of(ds) -> Instance:
    position = ds.get("ImagePositionPatient")
    try:
        where = tuple(round(float(v), 2) for v in position) if position is not None and len(position) == 3 else None
    except (TypeError, ValueError):
        where = None
    orientation = ds.get("ImageOrientationPatient")
    try:
        cosines = tuple(round(float(v), 3) for v in orientation) if orientation is not None else ()
    except (TypeError, ValueError):
        cosines = ()
    return Instance(str(ds.get("SeriesInstanceUID", "")), str(ds.get("SOPInstanceUID", "")),
                    _int(ds.get("TemporalPositionIdentifier")), _int(ds.get("NumberOfTemporalPositions")),
                    where, (_int(ds.get("Rows")), _int(ds.get("Columns")), cosines))


class Receiver:
    """The C-STORE handler of one retrieval into ``folder``."""

    def __init__(self, folder: Path, series_uids, progress: Callable[[int, int | None], None] | None,
                 cancel: threading.Event, expected: int | None):
        self.folder, self.series_uids = folder, set(series_uids)
        self.progress, self.cancel, self.expected = progress, cancel, expected
        self.instances: list[Instance] = []
        self.seen: set[str] = set()
        self.n = self.duplicates = self.not_asked_for = self.write_failures = 0
        self._lock = threading.Lock()  # a C-MOVE archive may send over several associations at once

    def on_store(self, event) -> int:
        if self.cancel.is_set():
            return OUT_OF_RESOURCES  # refuse further images; the transfer is abandoned by the caller
        try:
            instance = instance_of(event.dataset)
        except Exception:  # an image whose header does not decode is not stored: the retrieval stays incomplete
            with self._lock:
                self.write_failures += 1
            return NOT_ASKED_FOR
        if instance.series_uid not in self.series_uids:
            with self._lock:
                self.not_asked_for += 1
            return NOT_ASKED_FOR
        sop = re.sub(r"[^0-9.]", "_", str(event.request.AffectedSOPInstanceUID))[:64]
        with self._lock:
            if instance.sop_uid in self.seen:
                self.duplicates += 1
                return STORED  # the same image again: kept once, and the check refuses the retrieval
            try:
                atomic_write_bytes(self.folder / f"{sop}.dcm", event.encoded_dataset())
            except OSError:
                self.write_failures += 1
                return OUT_OF_RESOURCES
            self.seen.add(instance.sop_uid)
            self.instances.append(instance)
            self.n += 1
            n = self.n
        if self.progress:
            self.progress(n, self.expected)
        return STORED


def _slices(counts) -> str:
    values = list(counts)
    return values[0] if len(values) == 1 else f"{', '.join(map(str, values[:-1]))} and {values[-1]}"


def _series_problem(label: str, items: list[Instance]) -> tuple[str | None, int | None]:
    """(problem, slices of its one phase when the series is one phase) for the images of one series."""
    with_time = [i for i in items if i.temporal_position is not None]
    announced = {i.temporal_positions for i in items if i.temporal_positions}
    if len(announced) > 1:
        return f"{label} announces different numbers of temporal positions ({_slices(sorted(announced))})", None
    if with_time:
        if len(with_time) != len(items):
            return (f"{label}: {len(items) - len(with_time)} of its {len(items)} images have no temporal "
                    "position"), None
        per_phase = Counter(i.temporal_position for i in items)
        if announced and len(per_phase) != next(iter(announced)):
            return (f"{label} announces {next(iter(announced))} temporal positions; images of "
                    f"{len(per_phase)} arrived"), None
        if len(set(per_phase.values())) > 1:
            counts = [per_phase[t] for t in sorted(per_phase)]
            return f"{label}: its phases hold {_slices(counts)} slices", None
        return None, None
    placed = [i for i in items if i.position is not None]
    if len(placed) != len(items):
        return None, None  # no geometry to check against (multi-frame or unusual images): the reader decides
    per_position = Counter(i.position for i in items)
    phases = max(per_position.values())
    if announced and phases != next(iter(announced)):
        return (f"{label} announces {next(iter(announced))} temporal positions; its slice positions hold "
                f"{phases} image(s)"), None
    if len(set(per_position.values())) > 1:
        short = sum(1 for n in per_position.values() if n < phases)
        return (f"{label}: {len(items)} images do not make whole phases of {len(per_position)} slices "
                f"({short} slice position(s) hold fewer than {phases} images)"), None
    return None, len(per_position) if phases == 1 else None


def completeness_problem(instances: list[Instance], duplicates: int, labels: dict[str, str]) -> str | None:
    """Why the received images are not whole phases, with numbers; None when they are.

    Per series: phases of equal slice counts, the number of temporal positions the images announce, and
    no image twice. Series of one phase each on the same grid (an exam stored as one series per phase)
    must hold the same number of slices."""
    if duplicates:
        return f"{duplicates} image(s) arrived twice (same SOPInstanceUID)"
    by_series: dict[str, list[Instance]] = defaultdict(list)
    for instance in instances:
        by_series[instance.series_uid].append(instance)
    single_phase: dict[tuple, list[tuple[str, int]]] = defaultdict(list)
    for uid, items in by_series.items():
        problem, slices = _series_problem(labels.get(uid, f"series {uid}"), items)
        if problem:
            return problem
        if slices is not None:
            single_phase[items[0].grid].append((labels.get(uid, f"series {uid}"), slices))
    for phases in single_phase.values():
        if len({n for _, n in phases}) > 1:
            return "the phase series hold different numbers of slices: " + ", ".join(f"{label} {n}"
                                                                                      for label, n in phases)
    return None
