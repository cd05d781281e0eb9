"""One DICOM series (or one study's phase series) as a DCE volume."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from nibabel.orientations import aff2axcodes

from ...memory import check_memory
from ...volume import LAZY_THRESHOLD_BYTES, DCEReadError, DCEReadWarning, DCEVolume, sanitize
from ..orient import canonical_plan
from .geometry import (
    _affine,
    _check_consistent,
    _geometry_words,
    _same_geometry,
    _series_geometry,
    _slice_indices,
)
from .pixels import _check_decodable, _dedupe, _read_phase, _transfer_syntaxes
from .planes import _Plane, _planes
from .scan import _select_series, _series_listing, _several_series
from .tags import _float, _metadata
from .timing import PHASE_TAGS, _frame_times, _phases, _series_start, _unwrap_midnight


def _phase_series_planes(folder: Path, series: dict) -> tuple[list, list[_Plane], str, np.ndarray | None]:
    """One study's single-phase series of identical geometry, as the phases of one dynamic series.

    Returns the (path, header) items, their planes with a ``PhaseSeries`` rank, how the phases were
    ordered and their times (None when only the series numbers order them). Anything else (series of
    several studies, a series that is itself dynamic) is the usual "choose a series" error; phase series
    whose geometry differs are refused naming the geometries.
    """
    studies = {str(items[0][1].get("StudyInstanceUID", "")) for items in series.values()}
    if len(studies) != 1:
        raise _several_series(folder, series)
    per_series = []
    for uid, items in series.items():
        items, _ = _dedupe(items, folder)
        planes = [plane for p, ds in items for plane in _planes(p, ds)]
        if not planes:
            raise _several_series(folder, series)
        _check_consistent(planes)
        normal = np.cross(planes[0].row_cos, planes[0].col_cos)
        _, levels = _slice_indices(planes, normal)
        if len(planes) != len(levels):  # this series has several images per position: it is dynamic itself
            raise _several_series(folder, series)
        name = f"series {items[0][1].get('SeriesNumber', '?')} '{items[0][1].get('SeriesDescription', uid)}'"
        per_series.append((name, items, planes, _series_geometry(planes, normal, levels)))
    reference = per_series[0]
    for other in per_series[1:]:
        if not _same_geometry(reference[3], other[3]):
            raise DCEReadError(
                folder,
                f"phase series with different geometry: {_geometry_words(reference[0], reference[3])}, "
                f"{_geometry_words(other[0], other[3])}; they cannot be stacked as phases of one acquisition "
                f"(put the series to read in a folder of its own: {_series_listing(series)})",
            )
    starts = [_series_start(items, planes) for _, items, planes, _ in per_series]
    if all(t is not None for t, _ in starts):
        sources = {how for _, how in starts}
        order = sorted(range(len(per_series)), key=lambda i: starts[i][0])
        ordered_by = "/".join(sorted(sources))
        times = np.array([starts[i][0] for i in order]) - starts[order[0]][0]
    else:
        warnings.warn(
            f"{folder}: the {len(per_series)} phase series carry no acquisition or series time; they are "
            "ordered by SeriesNumber and their frame times are unknown",
            DCEReadWarning, stacklevel=4,
        )
        order = sorted(range(len(per_series)),
                       key=lambda i: int(_float(per_series[i][1][0][1].get("SeriesNumber"), 0)))
        ordered_by, times = "SeriesNumber", None
    all_items, all_planes = [], []
    for rank, i in enumerate(order):
        _, items, planes, _ = per_series[i]
        for plane in planes:
            plane.times["PhaseSeries"] = float(rank)
        all_items.extend(items)
        all_planes.extend(planes)
    return all_items, all_planes, ordered_by, times


def load_dicom_series(path, series_uid: str | None = None, lazy: bool | None = None) -> DCEVolume:
    """Read one DICOM series as a (t, z, y, x) float32 DCE volume in canonical RAS orientation.

    ``path`` is a folder (its files, not subfolders) or one file (then its series, looked up among the
    files of its folder). A folder with several series needs ``series_uid`` (a SeriesInstanceUID, or a
    SeriesNumber that one series alone has). Pixel scaling is applied (see :mod:`.scaling`); ``frame_times``
    are seconds from the first phase (None when no time tag is present).
    ``lazy=None`` reads lazily (one dask chunk per phase) above ``LAZY_THRESHOLD_BYTES`` of float32 data.
    """
    path = Path(path)
    folder, series, unreadable = _select_series(path, series_uid)
    source = path if path.is_file() else folder
    phase_series_times = None
    if len(series) > 1:
        items, planes, series_order, phase_series_times = _phase_series_planes(folder, series)
        n_duplicates = 0
        phase_tags = ("PhaseSeries",)
    else:
        items, n_duplicates = _dedupe(next(iter(series.values())), source)
        planes = [plane for p, ds in items for plane in _planes(p, ds)]
        phase_tags = PHASE_TAGS
    if not planes:
        raise DCEReadError(source, "the series holds no images")
    _check_consistent(planes)
    _check_decodable(items)
    _unwrap_midnight(planes, source)

    normal = np.cross(planes[0].row_cos, planes[0].col_cos)
    slice_index, levels = _slice_indices(planes, normal)
    phases, grouped_by = _phases(planes, slice_index, len(levels), source, tags=phase_tags)
    frame_times, times_from = _frame_times(planes, phases, source)
    if len(series) > 1:
        words = {"AcquisitionTime": "acquisition time", "SeriesTime": "series time", "SeriesNumber": "series number"}
        grouped_by = f"one series per phase, ordered by {' and '.join(words.get(k, k) for k in series_order.split('/'))}"
        if frame_times is None and phase_series_times is not None:
            frame_times, times_from = phase_series_times, series_order
    affine = _affine(planes, normal, levels, slice_index, source)

    rows, cols = planes[0].shape
    shape_xyz = (cols, rows, len(levels))
    ornt, canonical_affine = canonical_plan(affine, shape_xyz)
    shape_ras = [0, 0, 0]
    for axis, size in enumerate(shape_xyz):
        shape_ras[int(ornt[axis, 0])] = size
    frame_shape = tuple(shape_ras[::-1])
    phase_planes = [[planes[i] for i in phase] for phase in phases]

    n_bytes = len(phases) * len(levels) * rows * cols * 4
    if lazy is None:
        lazy = n_bytes > LAZY_THRESHOLD_BYTES
    check_memory(n_bytes + n_bytes // len(phases) if lazy else 2 * n_bytes,  # lazy: all phases once computed
                 f"{source}: reading {len(phases)} phases of {len(levels)} slices of {rows}x{cols} pixels")
    if lazy:
        import dask
        import dask.array as da

        data = da.stack([
            da.from_delayed(dask.delayed(_read_phase)(pp, ornt), shape=frame_shape, dtype=np.float32)
            for pp in phase_planes
        ])
    else:
        cache: dict = {}
        data = np.stack([_read_phase(pp, ornt, cache) for pp in phase_planes])
        data = sanitize(data, str(source))

    metadata = _metadata(
        items[0][1],
        series_uid=str(items[0][1].get("SeriesInstanceUID", "")),
        phase_series_uids=list(series) if len(series) > 1 else [],
        scaling="; ".join(sorted({p.scaling for p in planes})),
        n_files=len(items),
        n_slices=len(levels),
        n_phases=len(phases),
        grouped_by=grouped_by,
        frame_times_from=times_from,
        multiframe=any(p.frame is not None for p in planes),
        transfer_syntax=_transfer_syntaxes(items),
        source_orientation="".join(aff2axcodes(affine)),
        duplicates_ignored=n_duplicates,
        files_ignored=[str(e.path) for e in unreadable] if path.is_dir() else [],
        lazy=bool(lazy),
        **({"mosaic": True} if any(p.tile is not None for p in planes) else {}),
    )
    starts = [planes[i].times.get("AcquisitionTime") for i in phases[0]]
    if all(t is not None for t in starts):
        metadata["acquisition_seconds"] = min(starts)
    return DCEVolume(data, canonical_affine, frame_times, metadata, source=str(source))
