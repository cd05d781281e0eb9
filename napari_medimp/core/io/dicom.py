"""DICOM reader: one multi-phase MR series (classic one-slice-per-file, or enhanced multi-frame).

Slices are placed by geometry only: sorted by their position along the slice normal, never by file name
or InstanceNumber. Phases are grouped by TemporalPositionIdentifier (TemporalPositionIndex in enhanced
files), else AcquisitionTime, else TriggerTime, else ContentTime. The volume is returned in closest
canonical RAS orientation, like the NIfTI reader.
"""

from __future__ import annotations

import datetime as _dt
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pydicom.dataset
import pydicom.multival
import pydicom.uid
from nibabel.orientations import aff2axcodes

from ..memory import check_memory
from ..volume import LAZY_THRESHOLD_BYTES, DCEReadError, DCEReadWarning, DCEVolume, sanitize
from .orient import LPS_TO_RAS, canonical_plan, reorient_xyz

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
#: tags tried, in order, to group images into phases
PHASE_TAGS = ("TemporalPositionIdentifier", "TemporalPositionIndex", "AcquisitionTime", "TriggerTime",
              "ContentTime")
#: tags tried, in order, for the frame times
#: where frame times are read from, in this order of precedence; a tag whose value is the same in every
#: phase says nothing about time and the next one is used (with a notice naming the tag used)
TIME_TAGS = ("AcquisitionTime", "TriggerTime", "ContentTime", "TemporalPositionIdentifier x TemporalResolution")
_DICOMDIR_UID = "1.2.840.10008.1.3.10"
_POSITION_TOL_MM = 0.01
_ORIENTATION_TOL = 1e-4


class _NotDicom(Exception):
    pass


@dataclass
class _Plane:
    """One 2D image: a single-frame file, or one frame of a multi-frame file."""

    path: Path
    frame: int | None
    position: np.ndarray
    row_cos: np.ndarray
    col_cos: np.ndarray
    pixel_spacing: tuple[float, float] | None
    shape: tuple[int, int]
    slope: float = 1.0
    intercept: float = 0.0
    scaling: str = "stored values (no rescaling in the files)"
    times: dict[str, float] = field(default_factory=dict)
    instance: int = 0
    thickness: float | None = None
    gap: float | None = None

    @property
    def label(self) -> str:
        return self.path.name if self.frame is None else f"{self.path.name} (frame {self.frame + 1})"


# --------------------------------------------------------------------------------------------------
# file discovery
# --------------------------------------------------------------------------------------------------
def _has_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_header(path: Path) -> pydicom.Dataset:
    """Header without pixel data; raises ``_NotDicom`` for files that are not DICOM at all."""
    magic = _has_magic(path)
    if not magic and path.suffix.lower() not in DICOM_SUFFIXES:
        raise _NotDicom(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
    except Exception as exc:
        if not magic:
            raise _NotDicom(path) from None
        raise DCEReadError(path, f"unreadable or corrupt DICOM file ({exc})") from None
    if "DirectoryRecordSequence" in ds or any(tag in ds for tag in ("SOPClassUID", "SeriesInstanceUID", "Modality")):
        return ds
    if magic:
        raise DCEReadError(path, "corrupt or truncated DICOM header (no SOPClassUID, SeriesInstanceUID or Modality)")
    raise _NotDicom(path)


def is_dicom_file(path) -> bool:
    """True for a DICOM file: 'DICM' after the 128-byte preamble, or a readable preamble-less .dcm file."""
    path = Path(path)
    if not path.is_file():
        return False
    if _has_magic(path):
        return True
    try:
        _read_header(path)
    except (_NotDicom, DCEReadError):
        return False
    return True


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _dicomdir_files(path: Path, ds) -> tuple[list[Path], int]:
    """Files a DICOMDIR refers to (its IMAGE and other instance records) and how many of them are missing."""
    files, missing = [], 0
    for record in ds.get("DirectoryRecordSequence", []):
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        parts = [file_id] if isinstance(file_id, str) else list(file_id)
        target = path.parent.joinpath(*[str(part) for part in parts])
        if not target.is_file():  # media written in upper case, read on a case-sensitive file system
            match = [p for p in target.parent.glob("*") if p.name.lower() == target.name.lower()] \
                if target.parent.is_dir() else []
            target = match[0] if match else target
        if target.is_file():
            files.append(target)
        else:
            missing += 1
    return files, missing


def _scan(folder: Path, first: Path | None = None):
    """Headers of the folder's DICOM files grouped by series, the files that could not be read, the names
    of the files that are not DICOM, and the DICOMDIR files found (path and header)."""
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    unreadable: list[DCEReadError] = []
    skipped: list[str] = []
    dicomdirs: list[tuple[Path, pydicom.Dataset]] = []
    files = _folder_files(folder)
    if first is not None:
        files = [first] + [f for f in files if f.name != first.name]
    for path in files:
        try:
            ds = _read_header(path)
        except _NotDicom:
            skipped.append(path.name)
            continue
        except DCEReadError as exc:
            unreadable.append(exc)
            continue
        media_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
        if media_class == _DICOMDIR_UID or "DirectoryRecordSequence" in ds:
            dicomdirs.append((path, ds))
            continue
        series[str(ds.get("SeriesInstanceUID", ""))].append((path, ds))
    return dict(series), unreadable, skipped, dicomdirs


def _follow_dicomdir(path: Path, ds):
    """The series of the files a DICOMDIR lists (a CD or USB export), like ``_scan`` of a folder."""
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    unreadable: list[DCEReadError] = []
    files, missing = _dicomdir_files(path, ds)
    if missing:
        warnings.warn(f"{path}: {missing} file(s) listed in this DICOMDIR are missing beside it; the others are read",
                      DCEReadWarning, stacklevel=4)
    for target in files:
        try:
            header = _read_header(target)
        except _NotDicom:
            unreadable.append(DCEReadError(target, "listed in the DICOMDIR but not a DICOM file"))
            continue
        except DCEReadError as exc:
            unreadable.append(exc)
            continue
        if "DirectoryRecordSequence" not in header:
            series[str(header.get("SeriesInstanceUID", ""))].append((target, header))
    return dict(series), unreadable, missing


def find_series(folder) -> dict[str, list[Path]]:
    """DICOM files of a folder (not its subfolders) grouped by SeriesInstanceUID.

    Non-DICOM files, DICOMDIR files and files whose header cannot be read are left out.
    """
    series = _scan(Path(folder))[0]
    return {uid: [p for p, _ in items] for uid, items in series.items()}


# --------------------------------------------------------------------------------------------------
# header parsing
# --------------------------------------------------------------------------------------------------
def _tm_seconds(value) -> float | None:
    """Seconds since midnight of a DICOM TM ('HHMMSS.FFFFFF', also the old 'HH:MM:SS')."""
    text = str(value).strip().replace(":", "")
    if len(text) < 2 or not text[:2].isdigit():
        return None
    try:
        hours = int(text[:2])
        minutes = int(text[2:4]) if len(text) >= 4 else 0
        seconds = float(text[4:]) if len(text) > 4 else 0.0
    except ValueError:
        return None
    return hours * 3600 + minutes * 60 + seconds


def _da_seconds(value) -> float | None:
    text = str(value).strip().replace(".", "")
    try:
        return float(_dt.date(int(text[:4]), int(text[4:6]), int(text[6:8])).toordinal()) * 86400
    except (ValueError, IndexError):
        return None


def _dt_seconds(value) -> float | None:
    """Seconds of a DICOM DT ('YYYYMMDDHHMMSS.FFFFFF&ZZXX'); the UTC offset is ignored."""
    text = str(value).strip()
    for sign in "+-":
        if sign in text[8:]:
            text = text[: 8 + text[8:].index(sign)]
    day = _da_seconds(text[:8])
    if day is None:
        return None
    clock = _tm_seconds(text[8:]) if len(text) > 8 else 0.0
    return None if clock is None else day + clock


def _acquisition_seconds(ds) -> float | None:
    if ds.get("AcquisitionDateTime"):
        return _dt_seconds(ds.AcquisitionDateTime)
    if not ds.get("AcquisitionTime"):
        return None
    clock = _tm_seconds(ds.AcquisitionTime)
    day = _da_seconds(ds.AcquisitionDate) if ds.get("AcquisitionDate") else None
    return clock if clock is None or day is None else day + clock


def _float(value, default: float | None = None) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if np.isfinite(out) else default


def _vector(path: Path, label: str, value, n: int, tag: str) -> np.ndarray:
    try:
        vec = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        vec = np.array([])
    if vec.shape != (n,) or not np.all(np.isfinite(vec)):
        raise DCEReadError(path, f"{label}: {tag} must hold {n} numbers, found {value!r}")
    return vec


def _cosines(path: Path, label: str, iop) -> tuple[np.ndarray, np.ndarray]:
    vec = _vector(path, label, iop, 6, "ImageOrientationPatient")
    row, col = vec[:3], vec[3:]
    if np.linalg.norm(row) < 0.5 or np.linalg.norm(col) < 0.5 or abs(np.dot(row, col)) > 1e-2:
        raise DCEReadError(path, f"{label}: ImageOrientationPatient {list(vec)} is not two orthogonal unit vectors")
    return row / np.linalg.norm(row), col / np.linalg.norm(col)


def _pixel_spacing(value) -> tuple[float, float] | None:
    if value is None or len(value) != 2:
        return None
    row, col = _float(value[0]), _float(value[1])
    return (row, col) if row and col and row > 0 and col > 0 else None


_PHILIPS_CREATOR = "Philips MR Imaging DD 001"


def _private_float(ds, group: int, element: int, creator: str) -> float | None:
    """A float private element, found through its private creator (any block), value or raw bytes."""
    for block in range(0x10, 0x100):
        owner = ds.get((group, block))
        if owner is None:
            continue
        if str(owner.value).strip() != creator:
            continue
        item = ds.get((group, (block << 8) | element))
        if item is None:
            return None
        value = item.value
        if isinstance(value, bytes):
            if len(value) < 4:
                return None
            value = float(np.frombuffer(value[:4], "<f4")[0])
        elif isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
            value = value[0] if value else None
        return _float(value)
    return None


def _given_number(ds, tag: str, default: float, where: tuple[Path, str] | None, nonzero: bool = False) -> float:
    """A numeric tag of ``ds``, ``default`` when absent; a value that is present but not a usable number
    (NaN, text, a zero slope) is refused naming the file: the stored values cannot be converted."""
    raw = ds.get(tag)
    if raw is None or str(raw).strip() == "":
        return default
    value = _float(raw)
    if value is None or (nonzero and value == 0):
        path, label = where or (Path("?"), "image")
        raise DCEReadError(path, f"{label}: {tag} is {str(raw).strip()!r}, not a usable number; the stored "
                                 "pixel values cannot be turned into image values")
    return value


def _scaling(ds, rwv_item=None, where: tuple[Path, str] | None = None) -> tuple[float, float, str]:
    """(slope, intercept, what they are) turning stored pixel values into the values the reader returns.

    Philips' private scale slope gives the scanner's floating-point values, which stay comparable across
    images whose display rescaling differs (as dcm2niix does by default); else a real-world value mapping;
    else the rescale slope and intercept; else the stored values. ``where``: (file, image label) named when
    a slope or intercept is present but unusable.
    """
    rescale_slope = _given_number(ds, "RescaleSlope", 1.0, where, nonzero=True)
    rescale_intercept = _given_number(ds, "RescaleIntercept", 0.0, where)
    if "philips" in str(ds.get("Manufacturer", "")).lower():
        scale = _private_float(ds, 0x2005, 0x0E, _PHILIPS_CREATOR)
        if scale:
            return (1.0 / scale, rescale_intercept / (rescale_slope * scale),
                    "Philips floating-point values (private scale slope)")
    mapping = rwv_item if rwv_item is not None else (ds.get("RealWorldValueMappingSequence") or [None])[0]
    if mapping is not None and mapping.get("RealWorldValueSlope") is not None:
        units = mapping.get("MeasurementUnitsCodeSequence")
        unit = str(units[0].get("CodeValue", "")) if units else ""
        return (_given_number(mapping, "RealWorldValueSlope", 1.0, where, nonzero=True),
                _given_number(mapping, "RealWorldValueIntercept", 0.0, where),
                f"real-world value mapping{f' ({unit})' if unit else ''}")
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return rescale_slope, rescale_intercept, "rescale slope and intercept"
    return 1.0, 0.0, "stored values (no rescaling in the files)"


def _check_image_tags(path: Path, ds) -> tuple[int, int]:
    if "Rows" not in ds or "Columns" not in ds:
        raise DCEReadError(path, "no pixel data (Rows/Columns missing); not an image")
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "MOSAIC" in image_type:
        # several slices tiled into one image: read as one plane its geometry would be silently wrong
        raise DCEReadError(path, f"a Siemens mosaic ({ds.Rows}x{ds.Columns} image holding several slices side "
                                 "by side); it is not read, so as never to give it a wrong geometry: convert "
                                 "the series first (e.g. dcm2niix) and open the NIfTI")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DCEReadError(path, f"colour images (SamplesPerPixel={ds.SamplesPerPixel}) are not supported")
    return int(ds.Rows), int(ds.Columns)


def _missing_position(path: Path, where: str) -> DCEReadError:
    return DCEReadError(
        path, f"DICOM without position tags: {where} lacks ImagePositionPatient/ImageOrientationPatient, "
        "so its slice position is unknown"
    )


def _classic_planes(path: Path, ds) -> list[_Plane]:
    shape = _check_image_tags(path, ds)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames > 1:
        raise DCEReadError(
            path, f"multi-frame file ({n_frames} frames) without per-frame geometry is not supported"
        )
    if ds.get("ImagePositionPatient") is None or ds.get("ImageOrientationPatient") is None:
        raise _missing_position(path, "the file")
    row, col = _cosines(path, path.name, ds.ImageOrientationPatient)
    slope, intercept, scaling = _scaling(ds, where=(path, path.name))
    times = {}
    if ds.get("TemporalPositionIdentifier") is not None:
        times["TemporalPositionIdentifier"] = _float(ds.TemporalPositionIdentifier)
    times["AcquisitionTime"] = _acquisition_seconds(ds)
    if ds.get("TriggerTime") is not None:
        trigger = _float(ds.TriggerTime)
        times["TriggerTime"] = None if trigger is None else trigger / 1000.0
    if ds.get("ContentTime"):
        times["ContentTime"] = _tm_seconds(ds.ContentTime)
    position, resolution = times.get("TemporalPositionIdentifier"), _float(ds.get("TemporalResolution"))
    if position is not None and resolution is not None and resolution > 0:  # TemporalResolution is in ms
        times["TemporalPositionIdentifier x TemporalResolution"] = (position - 1) * resolution / 1000.0
    return [
        _Plane(
            path=path,
            frame=None,
            position=_vector(path, path.name, ds.ImagePositionPatient, 3, "ImagePositionPatient"),
            row_cos=row,
            col_cos=col,
            pixel_spacing=_pixel_spacing(ds.get("PixelSpacing")),
            shape=shape,
            slope=slope,
            intercept=intercept,
            scaling=scaling,
            times={k: v for k, v in times.items() if v is not None},
            instance=int(_float(ds.get("InstanceNumber"), 0)),
            thickness=_float(ds.get("SliceThickness")),
            gap=_float(ds.get("SpacingBetweenSlices")),
        )
    ]


def _enhanced_planes(path: Path, ds) -> list[_Plane]:
    shape = _check_image_tags(path, ds)
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    per_frame = ds.PerFrameFunctionalGroupsSequence
    n_frames = int(ds.get("NumberOfFrames", len(per_frame)) or len(per_frame))
    if len(per_frame) != n_frames:
        raise DCEReadError(
            path, f"NumberOfFrames is {n_frames} but PerFrameFunctionalGroupsSequence has {len(per_frame)} items"
        )

    def lookup(item, sequence: str, tag: str):
        for group in (item, shared):
            if group is not None and group.get(sequence):
                value = group[sequence][0].get(tag)
                if value is not None and value != "":
                    return value
        return None

    planes = []
    for index, item in enumerate(per_frame):
        label = f"frame {index + 1}"
        ipp = lookup(item, "PlanePositionSequence", "ImagePositionPatient")
        iop = lookup(item, "PlaneOrientationSequence", "ImageOrientationPatient")
        if ipp is None or iop is None:
            raise _missing_position(path, label)
        row, col = _cosines(path, label, iop)
        times = {}
        temporal = lookup(item, "FrameContentSequence", "TemporalPositionIndex")
        if temporal is not None:
            times["TemporalPositionIndex"] = _float(temporal)
        stamp = lookup(item, "FrameContentSequence", "FrameAcquisitionDateTime")
        if stamp is not None:
            times["AcquisitionTime"] = _dt_seconds(stamp)
        slope = lookup(item, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = lookup(item, "PixelValueTransformationSequence", "RescaleIntercept")
        frame_ds = pydicom.Dataset()
        frame_ds.Manufacturer = ds.get("Manufacturer", "")
        for tag, value in (("RescaleSlope", slope if slope is not None else ds.get("RescaleSlope")),
                           ("RescaleIntercept", intercept if intercept is not None else ds.get("RescaleIntercept"))):
            if value is not None:
                setattr(frame_ds, tag, value)
        rwv = next((group.RealWorldValueMappingSequence[0] for group in (item, shared)
                    if group is not None and group.get("RealWorldValueMappingSequence")), None)
        frame_slope, frame_intercept, scaling = _scaling(frame_ds, rwv, where=(path, label))
        planes.append(
            _Plane(
                path=path,
                frame=index,
                position=_vector(path, label, ipp, 3, "ImagePositionPatient"),
                row_cos=row,
                col_cos=col,
                pixel_spacing=_pixel_spacing(lookup(item, "PixelMeasuresSequence", "PixelSpacing")),
                shape=shape,
                slope=frame_slope,
                intercept=frame_intercept,
                scaling=scaling,
                times={k: v for k, v in times.items() if v is not None},
                instance=index,
                thickness=_float(lookup(item, "PixelMeasuresSequence", "SliceThickness")),
                gap=_float(lookup(item, "PixelMeasuresSequence", "SpacingBetweenSlices")),
            )
        )
    return planes


def _planes(path: Path, ds) -> list[_Plane]:
    if ds.get("PerFrameFunctionalGroupsSequence"):
        return _enhanced_planes(path, ds)
    return _classic_planes(path, ds)


# --------------------------------------------------------------------------------------------------
# geometry and phases
# --------------------------------------------------------------------------------------------------
def _check_consistent(planes: list[_Plane]) -> None:
    ref = planes[0]
    for plane in planes[1:]:
        if plane.shape != ref.shape:
            raise DCEReadError(
                plane.path,
                f"{plane.label} is {plane.shape[0]} rows x {plane.shape[1]} columns but {ref.label} is "
                f"{ref.shape[0]} x {ref.shape[1]}: all slices of a series must have the same size",
            )
        if (np.abs(plane.row_cos - ref.row_cos).max() > _ORIENTATION_TOL
                or np.abs(plane.col_cos - ref.col_cos).max() > _ORIENTATION_TOL):
            raise DCEReadError(
                plane.path, f"{plane.label} has a different ImageOrientationPatient from {ref.label}"
            )
        if (plane.pixel_spacing is None) != (ref.pixel_spacing is None) or (
            plane.pixel_spacing is not None and not np.allclose(plane.pixel_spacing, ref.pixel_spacing, rtol=1e-4)
        ):
            raise DCEReadError(
                plane.path, f"{plane.label} has PixelSpacing {plane.pixel_spacing}, {ref.label} has {ref.pixel_spacing}"
            )


def _slice_indices(planes: list[_Plane], normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slice index of every plane and the sorted distinct positions along the normal."""
    keys = np.array([float(np.dot(normal, p.position)) for p in planes])
    order = np.argsort(keys, kind="stable")
    index = np.empty(len(planes), dtype=int)
    levels: list[float] = []
    anchors: list[np.ndarray] = []
    for i in order:
        if not levels or keys[i] - levels[-1] > _POSITION_TOL_MM:
            levels.append(keys[i])
            anchors.append(planes[i].position)
        elif np.linalg.norm(planes[i].position - anchors[-1]) > 10 * _POSITION_TOL_MM:
            raise DCEReadError(
                planes[i].path,
                f"{planes[i].label} lies in the same plane as another slice but at a different in-plane "
                f"position ({list(planes[i].position)} vs {list(anchors[-1])})",
            )
        index[i] = len(levels) - 1
    return index, np.array(levels)


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


def _affine(planes: list[_Plane], normal: np.ndarray, levels: np.ndarray, slice_index: np.ndarray,
            source: Path) -> np.ndarray:
    """Voxel index (column, row, slice) to RAS mm."""
    ref = planes[0]
    if ref.pixel_spacing is None:
        warnings.warn(f"{source}: no PixelSpacing; 1 mm pixels assumed", DCEReadWarning, stacklevel=3)
        row_spacing, col_spacing = 1.0, 1.0
    else:
        row_spacing, col_spacing = ref.pixel_spacing
    first = planes[int(np.flatnonzero(slice_index == 0)[0])].position
    if len(levels) > 1:
        gaps = np.diff(levels)
        gap = float((levels[-1] - levels[0]) / (len(levels) - 1))
        if np.abs(gaps - gap).max() > max(_POSITION_TOL_MM, 0.01 * gap):
            warnings.warn(
                f"{source}: slice gaps are not uniform (from {gaps.min():.4g} to {gaps.max():.4g} mm); "
                f"the mean gap {gap:.4g} mm is used",
                DCEReadWarning,
                stacklevel=3,
            )
        offsets = np.array([p.position - first - normal * (lv - levels[0])
                            for p, lv in zip(planes, levels[slice_index], strict=True)])
        if np.abs(offsets).max() > 10 * _POSITION_TOL_MM:
            warnings.warn(
                f"{source}: slice positions are not stacked along the slice normal (sheared/tilted stack); "
                "the geometry is approximated",
                DCEReadWarning,
                stacklevel=3,
            )
    else:
        gap = ref.gap or ref.thickness
        if not gap or gap <= 0:
            warnings.warn(f"{source}: one slice position and neither SpacingBetweenSlices nor SliceThickness; "
                          "1 mm slices assumed", DCEReadWarning, stacklevel=3)
            gap = 1.0
    lps = np.eye(4)
    lps[:3, 0] = ref.row_cos * col_spacing
    lps[:3, 1] = ref.col_cos * row_spacing
    lps[:3, 2] = normal * gap
    lps[:3, 3] = first
    return LPS_TO_RAS @ lps


# --------------------------------------------------------------------------------------------------
# pixel data
# --------------------------------------------------------------------------------------------------
def _set_transfer_syntax(ds) -> None:
    """A file without file meta (no preamble): record the encoding it was read with."""
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        implicit, little = ds.is_implicit_VR, ds.is_little_endian
    if not little:
        uid = pydicom.uid.ExplicitVRBigEndian
    else:
        uid = pydicom.uid.ImplicitVRLittleEndian if implicit else pydicom.uid.ExplicitVRLittleEndian
    if not hasattr(ds, "file_meta"):
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid


def _pixels(path: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(path), force=True)
    except Exception as exc:
        raise DCEReadError(path, f"unreadable or corrupt DICOM file ({exc})") from None
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DCEReadError(path, "no pixel data in this file")
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        _set_transfer_syntax(ds)
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:
        raise DCEReadError(path, f"pixel data cannot be read: file truncated, corrupt or compressed "
                                 f"with an unavailable codec ({exc})") from None


def _read_phase(planes: list[_Plane], ornt: np.ndarray, cache: dict | None = None) -> np.ndarray:
    """One phase as a float32 (z, y, x) array in canonical orientation; planes sorted by slice."""
    cache = {} if cache is None else cache
    rows, cols = planes[0].shape
    stack = np.empty((len(planes), rows, cols), dtype=np.float32)
    for k, plane in enumerate(planes):
        if plane.path not in cache:
            cache[plane.path] = _pixels(plane.path)
        array = cache[plane.path]
        image = array
        if plane.frame is not None and array.ndim == 3:
            image = array[plane.frame] if plane.frame < len(array) else None
        if image is None or image.shape != (rows, cols):
            raise DCEReadError(
                plane.path, f"{plane.label}: pixel data has shape {array.shape}, expected {rows} x {cols} images"
            )
        stack[k] = image.astype(np.float32) * np.float32(plane.slope) + np.float32(plane.intercept)
    return sanitize(reorient_xyz(stack.transpose(2, 1, 0), ornt), str(planes[0].path), warn=False)


# --------------------------------------------------------------------------------------------------
# public reader
# --------------------------------------------------------------------------------------------------
def _select_series(path: Path, series_uid: str | None):
    """Folder, the series' (path, header) pairs and the unreadable files of the folder."""
    if path.is_dir():
        folder, first = path, None
    elif path.is_file():
        folder, first = path.parent, path
        try:
            header = _read_header(path)
        except _NotDicom:
            raise DCEReadError(path, "not a DICOM file") from None
        if series_uid is None:
            series_uid = str(header.get("SeriesInstanceUID", ""))
    else:
        raise DCEReadError(path, "no such file or folder")

    series, unreadable, skipped, dicomdirs = _scan(folder, first)
    if not series and dicomdirs:
        directory, header = dicomdirs[0]
        series, unreadable, missing = _follow_dicomdir(directory, header)
        skipped = []
        if not series:
            raise DCEReadError(directory, f"this DICOMDIR lists no readable image files beside it ({missing} listed "
                                          "file(s) missing); open the folder that holds the images instead")
        first = None
    if not series:
        if unreadable:
            names = "; ".join(f"{Path(e.path).name}: {e.problem}" for e in unreadable)
            raise DCEReadError(folder, f"no readable DICOM files in this folder ({names})")
        raise DCEReadError(folder, "no DICOM files in this folder")
    if unreadable and first is None:
        names = ", ".join(Path(e.path).name for e in unreadable)
        warnings.warn(
            f"{folder}: {len(unreadable)} unreadable DICOM file(s) ignored: {names}", DCEReadWarning, stacklevel=3
        )
    if skipped and first is None:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        warnings.warn(f"{folder}: {len(skipped)} file(s) that are not DICOM skipped: {shown}", DCEReadWarning,
                      stacklevel=3)
    if series_uid is None:
        return folder, series, unreadable
    if series_uid not in series:
        raise DCEReadError(folder, f"no DICOM series with SeriesInstanceUID {series_uid} in this folder")
    return folder, {series_uid: series[series_uid]}, unreadable


def _series_listing(series: dict) -> str:
    return "; ".join(
        f"{uid or '(no SeriesInstanceUID)'} '{items[0][1].get('SeriesDescription', '')}' ({len(items)} files)"
        for uid, items in series.items()
    )


def _several_series(folder: Path, series: dict) -> DCEReadError:
    return DCEReadError(
        folder, f"this folder holds {len(series)} DICOM series; put the series to read in a folder of its own: "
        f"{_series_listing(series)}"
    )


def _series_geometry(planes: list[_Plane], normal: np.ndarray, levels: np.ndarray) -> tuple:
    first = min(planes, key=lambda p: float(np.dot(normal, p.position)))
    return planes[0].shape, planes[0].row_cos, planes[0].col_cos, planes[0].pixel_spacing, levels, first.position


def _geometry_words(name: str, geometry: tuple) -> str:
    (rows, cols), _, _, spacing, levels, origin = geometry
    pixel = "unknown pixel size" if spacing is None else f"{spacing[1]:.3g}x{spacing[0]:.3g} mm pixels"
    return (f"{name} has {len(levels)} slices of {cols}x{rows} ({pixel}), first at ImagePositionPatient "
            f"({', '.join(f'{v:.1f}' for v in origin)})")


def _same_geometry(a: tuple, b: tuple) -> bool:
    return (a[0] == b[0] and np.allclose(a[1], b[1], atol=_ORIENTATION_TOL) and np.allclose(a[2], b[2], atol=_ORIENTATION_TOL)
            and (a[3] is None) == (b[3] is None) and (a[3] is None or np.allclose(a[3], b[3], rtol=1e-4))
            and len(a[4]) == len(b[4]) and np.allclose(a[4], b[4], atol=10 * _POSITION_TOL_MM)
            and np.allclose(a[5], b[5], atol=10 * _POSITION_TOL_MM))


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


def _syntax(path: Path) -> str:
    ds = _read_header(path)
    return str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))


def _same_image(a: Path, b: Path) -> bool:
    """False only when two files in the same encoding decode to different images (copies of one instance in
    other encodings, a lossy one say, or whose pixels cannot be decoded here are taken as the same)."""
    if _syntax(a) != _syntax(b):
        return True
    try:
        first, second = _pixels(a), _pixels(b)
    except DCEReadError:
        return True
    return first.shape == second.shape and bool(np.array_equal(first, second))


def _dedupe(items, source: Path | None = None):
    """Drop copies of the same SOP instance (the same image in other transfer syntaxes, say), saying how many;
    files that share a SOPInstanceUID but hold different images are refused, naming both."""
    kept, first_of = [], {}
    for path, ds in items:
        sop = str(ds.get("SOPInstanceUID", "")) or str(path)
        if sop not in first_of:
            first_of[sop] = path
            kept.append((path, ds))
            continue
        if not _same_image(first_of[sop], path):
            raise DCEReadError(path, f"shares SOPInstanceUID {sop} with {first_of[sop].name} but holds a different "
                                     "image: one of them was given a wrong identifier; remove the wrong file")
    dropped = len(items) - len(kept)
    if dropped and source is not None:
        warnings.warn(f"{source}: {dropped} duplicate file(s) ignored (same SOPInstanceUID and the same image as "
                      "another file)", DCEReadWarning, stacklevel=3)
    return kept, dropped


def _metadata(ds, **extra) -> dict:
    tags = {
        "series_description": "SeriesDescription",
        "modality": "Modality",
        "manufacturer": "Manufacturer",
        "model": "ManufacturerModelName",
        "patient_id": "PatientID",
        "study_date": "StudyDate",
        "study_uid": "StudyInstanceUID",
        "sop_class_uid": "SOPClassUID",
        "repetition_time_ms": "RepetitionTime",
        "echo_time_ms": "EchoTime",
        "flip_angle_deg": "FlipAngle",
        "field_strength_t": "MagneticFieldStrength",
    }
    meta = {"format": "dicom"}
    for key, tag in tags.items():
        value = ds.get(tag)
        if value is None or value == "":
            continue
        meta[key] = _float(value) if key.endswith(("_ms", "_deg", "_t")) else str(value)
    meta.update(extra)
    return meta


def load_dicom_series(path, series_uid: str | None = None, lazy: bool | None = None) -> DCEVolume:
    """Read one DICOM series as a (t, z, y, x) float32 DCE volume in canonical RAS orientation.

    ``path`` is a folder (its files, not subfolders) or one file (then its series, looked up among the
    files of its folder). A folder with several series needs ``series_uid``. Rescale slope/intercept are
    applied; ``frame_times`` are seconds from the first phase (None when no time tag is present).
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
        source_orientation="".join(aff2axcodes(affine)),
        duplicates_ignored=n_duplicates,
        files_ignored=[str(e.path) for e in unreadable] if path.is_dir() else [],
        lazy=bool(lazy),
    )
    starts = [planes[i].times.get("AcquisitionTime") for i in phases[0]]
    if all(t is not None for t in starts):
        metadata["acquisition_seconds"] = min(starts)
    return DCEVolume(data, canonical_affine, frame_times, metadata, source=str(source))
