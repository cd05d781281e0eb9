"""NIfTI readers and writer: one 4D file, or a folder of 3D phases.

Frames are read lazily (one dask chunk per frame) when the file is large, so a viewer can show the
first frame before the rest is read. Every header is checked against the file size before anything is
allocated: a header that claims more data than the file can hold is refused with a clear message.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import json
import os
import re
import struct
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from ..atomic import atomic_write_bytes
from ..failures import quiet_logger
from ..memory import check_memory, human_bytes
from ..volume import LAZY_THRESHOLD_BYTES, DCEReadError, DCEReadWarning, DCEVolume, sanitize
from .orient import canonical_plan, reorient_xyz

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: deflate cannot compress better than about 1032:1; used to bound what a .gz can hold
_DEFLATE_MAX_RATIO = 1032


def is_nifti(path) -> bool:
    name = str(path).lower()
    return name.endswith(NIFTI_SUFFIXES)


def nifti_stem(path) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def sidecar_path(path) -> Path:
    return Path(path).with_name(nifti_stem(path) + ".json")


def read_sidecar(path) -> dict:
    side = sidecar_path(path)
    if not side.exists():
        return {}
    if not side.is_file() or side.stat().st_size > 16 * 2**20:
        warnings.warn(f"{side}: sidecar ignored, not a regular file of reasonable size", DCEReadWarning,
                      stacklevel=2)
        return {}
    try:
        content = json.loads(side.read_text())
    except RecursionError:
        warnings.warn(f"{side}: sidecar ignored, nested too deeply to be read", DCEReadWarning, stacklevel=2)
        return {}
    except (OSError, ValueError) as exc:
        warnings.warn(f"{side}: sidecar ignored, not valid JSON ({exc})", DCEReadWarning, stacklevel=2)
        return {}
    return content if isinstance(content, dict) else {}


# --------------------------------------------------------------------------------------------------
# header checks
# --------------------------------------------------------------------------------------------------
def _gzip_isize(path) -> int | None:
    """Uncompressed size modulo 2**32 recorded in a gzip footer (last member only)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            return struct.unpack("<I", fh.read(4))[0]
    except OSError:
        return None


def verify_gzip(path) -> None:
    """Read a ``.gz`` file's stream to its end once, so that its CRC-32 and length are checked (a reader
    that stops at the last voxel it needs never reaches them): a flipped byte or a cut file is refused,
    naming the file, instead of read as other voxel values."""
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 22):
                pass
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DCEReadError(Path(path), f"gzip stream is corrupt or truncated ({exc}): the file was damaged; "
                                       "copy it again from its source") from None


def _load_image(path: Path):
    if str(path).lower().endswith(".gz") and Path(path).is_file():
        verify_gzip(path)
    try:
        with quiet_logger("nibabel.global"):  # its header fixes are checked and said here
            img = nib.load(str(path))
    except FileNotFoundError:
        raise DCEReadError(path, "file not found") from None
    except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError, EOFError, OSError, zlib.error,
            ValueError) as exc:
        kind = "gzip stream is corrupt or truncated" if isinstance(exc, (EOFError, zlib.error)) else ""
        detail = kind or f"not a readable NIfTI file ({exc})"
        raise DCEReadError(path, detail) from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DCEReadError(path, f"expected a NIfTI image, found {type(img).__name__}")
    return img


def _checked_shape(path: Path, img) -> tuple[int, ...]:
    dtype = img.get_data_dtype()
    if dtype.fields is not None or dtype.kind == "V":
        raise DCEReadError(path, f"holds colour (RGB) or structured voxels ({dtype}), not the single intensity "
                                 "per voxel of a DCE-MRI series")
    if dtype.kind == "c":
        raise DCEReadError(path, f"holds complex voxels ({dtype}); export magnitude images from the scanner "
                                 "(a part of a complex value is not the intensity)")
    shape = tuple(int(s) for s in img.shape)
    if any(s == 0 for s in shape):
        raise DCEReadError(path, f"image has a zero-length axis (shape {shape})")
    while len(shape) > 4 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 4:
        raise DCEReadError(
            path, f"{len(shape)}D image (shape {shape}) is not a DCE series; expected 4D (x, y, z, t)"
        )
    if len(shape) < 3:
        raise DCEReadError(path, f"{len(shape)}D image (shape {shape}); expected 3D or 4D")
    return shape


def _check_size(path: Path, img, shape) -> int:
    """Refuse headers that claim more voxel data than the file can hold; return the data size."""
    dtype = img.get_data_dtype()
    n_bytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    offset = int(img.dataobj.offset) if hasattr(img.dataobj, "offset") else 0
    file_size = path.stat().st_size
    if str(path).lower().endswith(".gz"):
        ceiling = _DEFLATE_MAX_RATIO * file_size + 2**20
        if n_bytes + offset > ceiling:
            raise DCEReadError(
                path,
                f"header claims {human_bytes(n_bytes)} of voxels (shape {shape}, {dtype}) but a "
                f"{human_bytes(file_size)} gzip file cannot hold more than {human_bytes(ceiling)}: "
                "the header is corrupt or the file is truncated",
            )
    elif n_bytes + offset > file_size:
        raise DCEReadError(
            path,
            f"file is truncated: header needs {human_bytes(n_bytes + offset)} "
            f"(shape {shape}, {dtype}) but the file has {human_bytes(file_size)}",
        )
    return n_bytes


def _gzip_complete(path: Path, expected_total: int) -> bool:
    """True when the gzip footer agrees with the expected uncompressed size (a cheap truncation test)."""
    isize = _gzip_isize(path)
    return isize is not None and isize == expected_total % 2**32


def _raw_header(path: Path, img):
    """The header as stored (nibabel's loader replaces a zero voxel size by 1 mm before anyone sees it)."""
    try:
        with nib.openers.ImageOpener(str(path)) as fobj:
            return type(img.header).from_fileobj(fobj, check=False)
    except Exception:  # noqa: BLE001 - the checked header is then the best there is
        return img.header


#: qform and sform agree when no image corner moves more than this share of the smallest voxel
_QFORM_SFORM_TOL = 0.1
#: a transform is sheared when an image corner lies farther than this share of the smallest voxel from
#: where the nearest transform with perpendicular axes (same voxel sizes) puts it
_SHEAR_TOL = 0.5
#: xform codes the NIfTI standard defines (1 scanner, 2 aligned, 3 Talairach, 4 MNI; NIfTI-2 adds 5)
_XFORM_CODES = {1, 2, 3, 4, 5}
#: smallest vox_offset of a single-file NIfTI: the header (348 or 540 bytes) and the 4-byte extension flag
_MIN_VOX_OFFSET = {1: 352, 2: 544}


def check_vox_offset(path: Path, img) -> None:
    """Refuse a single-file NIfTI whose ``vox_offset`` points inside the header: the image would be read
    from the header's own bytes, shifted by the header's length."""
    version = 2 if isinstance(img, nib.Nifti2Image) else 1
    offset = int(getattr(img.dataobj, "offset", _MIN_VOX_OFFSET[version]))
    raw = float(_raw_header(path, img)["vox_offset"])
    least = _MIN_VOX_OFFSET[version]
    if offset < least or not np.isfinite(raw) or raw < least:
        raise DCEReadError(
            path, f"header field vox_offset is {raw:g}, inside the {least - 4}-byte header (a .nii file's voxels "
                  f"start at byte {least} or later): the voxels would be read shifted; fix vox_offset")


def _corners(shape_xyz) -> np.ndarray:
    return np.array([[x, y, z] for x in (0, shape_xyz[0] - 1) for y in (0, shape_xyz[1] - 1)
                     for z in (0, shape_xyz[2] - 1)], dtype=float)


def _transform_problem(matrix: np.ndarray, shape_xyz) -> str | None:
    """Why a 4x4 voxel-to-world transform cannot place the image (None when it can)."""
    if not np.all(np.isfinite(matrix)):
        return "holds values that are not numbers"
    linear = matrix[:3, :3]
    sizes = np.linalg.norm(linear, axis=0)
    if np.any(sizes < 1e-6) or abs(np.linalg.det(linear)) < 1e-12 * max(float(np.prod(sizes)), 1e-30):
        return "is singular (an axis has no extent or two axes coincide)"
    u, _, vt = np.linalg.svd(linear / sizes)
    nearest = (u @ vt) * sizes  # same voxel sizes, perpendicular axes
    apart = float(np.linalg.norm(_corners(shape_xyz) @ (linear - nearest).T, axis=1).max())
    if apart > _SHEAR_TOL * float(sizes.min()):
        cosines = np.abs((linear / sizes).T @ (linear / sizes) - np.eye(3)).max()
        angle = float(np.degrees(np.arccos(np.clip(cosines, -1, 1))))
        return (f"is sheared (its axes meet at {angle:.1f} degrees, not 90; the image corners lie up to "
                f"{apart:.3g} mm from any placement with perpendicular axes)")
    return None


def check_header_geometry(path: Path, img, shape_xyz) -> np.ndarray:
    """The voxel-to-world affine to use; refuse a header whose geometry cannot be right, warn what is assumed.

    * no usable sform and a voxel size (pixdim) of 0, negative zero or not a number: refused, since
      nibabel would silently read 1 mm;
    * a qform or sform code the standard does not define, or a transform that is singular, sheared or not
      numbers: that transform is ignored with a warning naming it and the one used instead; refused when
      neither is left;
    * neither qform nor sform: warned (axes and origin are assumed, the voxel size comes from pixdim);
    * qform and sform both set but placing the image differently: warned (the sform is used, as
      nibabel, ITK-SNAP and 3D Slicer do).
    """
    raw = _raw_header(path, img)
    qcode, scode = int(raw["qform_code"]), int(raw["sform_code"])
    notes = []
    transforms: dict[str, np.ndarray | None] = {"sform": None, "qform": None}
    for name, code in (("sform", scode), ("qform", qcode)):
        if code == 0:
            continue
        if code not in _XFORM_CODES:
            notes.append(f"{name}_code {code} is not a code the NIfTI standard defines (1-4), so the {name} is ignored")
            continue
        try:
            matrix = np.asarray(img.header.get_sform() if name == "sform" else img.header.get_qform(), float)
        except ValueError as exc:  # e.g. quaternion b, c, d that are not part of a unit quaternion
            notes.append(f"the {name} (code {code}) cannot be computed ({exc}), so it is ignored")
            continue
        problem = _transform_problem(matrix, shape_xyz)
        if problem:
            notes.append(f"the {name} (code {code}) {problem}, so it is ignored")
            continue
        transforms[name] = matrix
    used = "sform" if transforms["sform"] is not None else "qform" if transforms["qform"] is not None else None
    if used != "sform":
        pixdim = np.asarray(raw["pixdim"][1:4], dtype=float)
        bad = [axis for axis, size in zip("xyz", pixdim, strict=True) if not (np.isfinite(size) and size != 0)]
        if bad:
            sizes = ", ".join(f"{size:g}" for size in pixdim)
            raise DCEReadError(
                path, f"header gives no voxel size along {', '.join(bad)} (pixdim {sizes}) and has no sform: "
                "the size of a voxel in mm is unknown; fix the header (pixdim) with the scanner's values")
    if notes and used is None and (qcode != 0 or scode != 0):
        raise DCEReadError(path, f"header gives no usable position and orientation: {'; '.join(notes)}; "
                                 "fix the header's qform/sform")
    if notes:
        warnings.warn(f"{path}: {'; '.join(notes)}; the {used} (code {qcode if used == 'qform' else scode}) places "
                      "the image", DCEReadWarning, stacklevel=3)
    if used is None:
        zooms = ", ".join(f"{z:g}" for z in img.header.get_zooms()[:3])
        warnings.warn(
            f"{path}: header states no position or orientation (qform and sform codes are 0); the image axes "
            f"are taken as the patient's, with {zooms} mm voxels from pixdim", DCEReadWarning, stacklevel=3)
        return np.asarray(img.header.get_base_affine(), float)
    if used == "sform" and transforms["qform"] is not None:
        qform, sform = transforms["qform"], transforms["sform"]
        corners = np.c_[_corners(shape_xyz), np.ones(8)]
        apart = float(np.linalg.norm((corners @ qform.T - corners @ sform.T)[:, :3], axis=1).max())
        voxel = float(np.min(np.linalg.norm(sform[:3, :3], axis=0)))
        if apart > _QFORM_SFORM_TOL * voxel:
            warnings.warn(
                f"{path}: the header's qform and sform place the image {apart:.3g} mm apart at its corners; "
                "the sform is used (as in most viewers)", DCEReadWarning, stacklevel=3)
    return transforms[used]


# --------------------------------------------------------------------------------------------------
# 4D file
# --------------------------------------------------------------------------------------------------
def _frame_times_from(path: Path, img, n_frames: int, sidecar: dict) -> np.ndarray | None:
    times = sidecar.get("FrameTimes")
    if times is not None:
        try:
            times = np.asarray(times, dtype=float)
        except (TypeError, ValueError):
            times = np.asarray([])
        if times.shape == (n_frames,):
            return times  # their values are checked with the volume (volume.frame_times_problem)
        warnings.warn(
            f"{path}: sidecar lists {times.size} frame times for {n_frames} frames; ignored",
            DCEReadWarning,
            stacklevel=3,
        )
    if n_frames > 1 and len(img.header.get_zooms()) > 3:
        step = float(img.header.get_zooms()[3])
        if step > 0 and np.isfinite(step):
            unit = img.header.get_xyzt_units()[1]
            if unit in ("hz", "ppm", "rads"):
                warnings.warn(
                    f"{path}: the header's frame spacing (pixdim[4] {step:g}) is in {_UNIT_WORDS[unit]} "
                    "(xyzt_units), not a time: frame times unknown", DCEReadWarning, stacklevel=3)
                return None
            if unit not in ("sec", "msec", "usec"):
                warnings.warn(
                    f"{path}: the header gives no time unit (xyzt_units) for its frame spacing of {step:g}; "
                    "seconds assumed", DCEReadWarning, stacklevel=3)
            factor = {"msec": 1e-3, "usec": 1e-6}.get(unit, 1.0)
            return np.arange(n_frames) * step * factor
    return None


_UNIT_WORDS = {"hz": "hertz", "ppm": "parts per million", "rads": "radians per second"}


def _read_frame(path: str, frame_index: int, ornt: np.ndarray, dims: int) -> np.ndarray:
    img = nib.load(path)
    try:
        if dims == 4:
            block = img.dataobj[..., frame_index]
        else:
            block = img.dataobj[...]
        block = np.asarray(block, dtype=np.float32)
    except (EOFError, OSError, zlib.error, ValueError) as exc:
        raise DCEReadError(
            path, f"could not read frame {frame_index}: file is truncated or corrupt ({exc})"
        ) from None
    block = block.reshape(block.shape[:3])
    return sanitize(reorient_xyz(block, ornt), path, warn=False)


def load_nifti(path, lazy: bool | None = None) -> DCEVolume:
    """Read a 3D or 4D NIfTI file as a DCE volume in canonical RAS orientation.

    ``lazy=None`` chooses lazy reading for files whose voxel data exceed ``LAZY_THRESHOLD_BYTES``.
    A 3D file is accepted as a single frame (with a warning).
    """
    path = Path(path)
    img = _load_image(path)
    shape = _checked_shape(path, img)
    n_bytes = _check_size(path, img, shape)
    dims = len(shape)
    n_frames = shape[3] if dims == 4 else 1
    if dims == 3:
        warnings.warn(f"{path}: 3D image opened as a single frame", DCEReadWarning, stacklevel=2)

    check_vox_offset(path, img)
    affine = check_header_geometry(path, img, shape[:3])
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DCEReadError(path, "header has no valid voxel-to-world affine")
    ornt, canonical_affine = canonical_plan(affine, shape[:3])
    sidecar = read_sidecar(path)
    frame_times = _frame_times_from(path, img, n_frames, sidecar)

    metadata = {
        "format": "nifti",
        "source_shape_xyzt": list(shape),
        "source_dtype": str(img.get_data_dtype()),
        "source_orientation": "".join(nib.aff2axcodes(affine)),
        "sidecar": sidecar,
    }
    acquired = _sidecar_time(sidecar)
    if acquired is not None:
        metadata["acquisition_seconds"] = acquired
    if lazy is None:
        lazy = n_bytes > LAZY_THRESHOLD_BYTES
    if lazy and path.suffix.lower() == ".gz" and not _gzip_complete(path, n_bytes + int(img.dataobj.offset)):
        lazy = False  # footer disagrees: read now so that truncation is reported at open time
    n_voxels = int(np.prod(shape, dtype=np.float64))
    # eager: the file's values as float32 and the reoriented copy; lazy: every frame once the volume is
    # computed, and the frame being read (the decompressed size is what counts, not the file's)
    frame = n_voxels // n_frames
    check_memory(4 * (n_voxels + frame) if lazy else 2 * 4 * n_voxels,
                 f"{path}: reading {' x '.join(map(str, shape))} voxels")
    if lazy:
        import dask
        import dask.array as da

        canonical_xyz = [0, 0, 0]
        for axis in range(3):  # input axis `axis` becomes output axis ornt[axis, 0]
            canonical_xyz[int(ornt[axis, 0])] = shape[axis]
        frame_shape = tuple(canonical_xyz[::-1])
        frames = [
            da.from_delayed(
                dask.delayed(_read_frame)(str(path), t, ornt, dims), shape=frame_shape, dtype=np.float32
            )
            for t in range(n_frames)
        ]
        data = da.stack(frames)
        metadata["lazy"] = True
    else:
        try:
            raw = np.asarray(img.dataobj, dtype=np.float32)
        except (EOFError, OSError, zlib.error, ValueError) as exc:
            raise DCEReadError(path, f"file is truncated or corrupt ({exc})") from None
        raw = raw.reshape(shape if dims == 4 else (*shape, 1))
        data = np.stack([reorient_xyz(raw[..., t], ornt) for t in range(n_frames)])
        data = sanitize(data, str(path))
        metadata["lazy"] = False
    return DCEVolume(data, canonical_affine, frame_times, metadata, source=str(path))


def load_labels(path) -> tuple[np.ndarray, np.ndarray]:
    """A 3D label map (z, y, x) in canonical RAS and its affine (e.g. a segmentation beside a DCE exam)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*single frame", category=DCEReadWarning)
        volume = load_nifti(path, lazy=False)
    if volume.n_frames != 1:
        raise DCEReadError(path, f"a label map must be 3D; this file has {volume.n_frames} frames")
    labels = volume.data[0]
    if not np.array_equal(labels, np.round(labels)) or labels.min() < 0:
        raise DCEReadError(path, "a label map must hold non-negative whole numbers")
    dtype = np.uint8 if labels.max() < 256 else np.int32
    return labels.astype(dtype), volume.affine


def label_names(path) -> dict[int, str] | None:
    """Region names of a label map from its JSON sidecar (``{"Labels": {"2": "cortex", ...}}``); None when
    the file names none (its values are then only numbers: nothing is assumed about what they mean)."""
    labels = read_sidecar(path).get("Labels")
    if not isinstance(labels, dict):
        return None
    names = {}
    for key, name in labels.items():
        try:
            value = int(key)
        except (TypeError, ValueError):
            continue
        if value != 0 and str(name).lower() not in ("background", "soft_tissue", "soft tissue"):
            names[value] = str(name).replace("_", " ")
    return names or None


# --------------------------------------------------------------------------------------------------
# folder of 3D phases
# --------------------------------------------------------------------------------------------------
def _natural_key(name: str):
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def _sidecar_time(sidecar: dict) -> float | None:
    for key in ("FrameTime", "AcquisitionTimeSeconds"):
        if isinstance(sidecar.get(key), (int, float)):
            return float(sidecar[key])
    stamp = sidecar.get("AcquisitionTime")
    if isinstance(stamp, str):
        for fmt in ("%H:%M:%S.%f", "%H:%M:%S", "%H%M%S.%f", "%H%M%S"):
            try:
                t = _dt.datetime.strptime(stamp, fmt)
            except ValueError:
                continue
            return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond * 1e-6
    return None


def list_phase_files(folder) -> list[Path]:
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and is_nifti(p) and not p.name.startswith(".")]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _load_phase(path: Path, lazy: bool) -> DCEVolume:
    with warnings.catch_warnings():  # a phase is 3D by definition: no notice for that
        warnings.filterwarnings("ignore", message=".*single frame", category=DCEReadWarning)
        phase = load_nifti(path, lazy=lazy)
    if phase.n_frames != 1:
        raise DCEReadError(path, f"a phase folder must hold 3D files; this one has {phase.n_frames} frames")
    return phase


def load_phase_folder(folder, lazy: bool | None = None) -> DCEVolume:
    """Stack a folder of 3D NIfTI phases into one DCE volume.

    Phases are ordered by the time in their JSON sidecars when every phase has one, else by name
    (natural order: phase2 before phase10). All phases must share shape and geometry.
    """
    folder = Path(folder)
    files = list_phase_files(folder)
    if not files:
        raise DCEReadError(folder, "no NIfTI files (.nii / .nii.gz) in this folder")
    if len(files) == 1:
        return load_nifti(files[0], lazy=lazy)

    phases = [_load_phase(f, lazy=True) for f in files]  # headers only
    reference = phases[0]
    for phase, f in zip(phases[1:], files[1:], strict=True):
        if phase.shape[1:] != reference.shape[1:]:
            raise DCEReadError(
                f, f"shape {phase.shape[1:]} differs from {reference.shape[1:]} of {files[0].name}"
            )
        if not np.allclose(phase.affine, reference.affine, atol=1e-3):
            raise DCEReadError(f, f"geometry (affine) differs from that of {files[0].name}")

    times = [_sidecar_time(read_sidecar(f)) for f in files]
    frame_times = None
    order = list(range(len(files)))
    if all(t is not None for t in times):
        order = sorted(order, key=lambda i: times[i])
        t0 = times[order[0]]
        frame_times = np.array([times[i] - t0 for i in order])

    n_bytes = sum(int(np.prod(p.shape)) * 4 for p in phases)
    check_memory(n_bytes + n_bytes // len(phases), f"{folder}: reading {len(phases)} phases of "
                 f"{' x '.join(map(str, reference.shape[1:]))} voxels")
    if lazy is None:
        lazy = n_bytes > LAZY_THRESHOLD_BYTES
    if lazy:
        import dask.array as da

        data = da.concatenate([phases[i].data for i in order])
    else:
        data = np.concatenate([_load_phase(files[i], lazy=False).data for i in order])
    metadata = {
        "format": "nifti-phases",
        "phase_files": [str(files[i]) for i in order],
        "ordered_by": "sidecar time" if frame_times is not None else "file name",
        "lazy": bool(lazy),
        "source_orientation": reference.metadata.get("source_orientation"),
    }
    return DCEVolume(data, reference.affine, frame_times, metadata, source=str(folder))


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------
def to_nifti_image(data_tzyx: np.ndarray, affine: np.ndarray, dtype=np.float32, frame_step: float | None = None):
    """A NIfTI image (x, y, z[, t]) from an array in (t, z, y, x) or (z, y, x) order."""
    data = np.asarray(data_tzyx)
    if data.ndim == 4:
        arr = data.transpose(3, 2, 1, 0)
        if arr.shape[3] == 1:
            arr = arr[..., 0]
    elif data.ndim == 3:
        arr = data.transpose(2, 1, 0)
    else:
        raise ValueError(f"expected a 3D (z, y, x) or 4D (t, z, y, x) array, got shape {data.shape}")
    img = nib.Nifti1Image(np.ascontiguousarray(arr).astype(dtype, copy=False), np.asarray(affine, float))
    img.header.set_xyzt_units("mm", "sec")
    if arr.ndim == 4 and frame_step:
        zooms = list(img.header.get_zooms())
        zooms[3] = float(frame_step)
        img.header.set_zooms(zooms)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def save_nifti(path, data_tzyx: np.ndarray, affine: np.ndarray, *, dtype=np.float32,
               frame_times=None, sidecar: dict | None = None) -> Path:
    """Write an array with its geometry (and an optional JSON sidecar) atomically and reproducibly.

    ``.nii.gz`` output is byte-identical for identical input (gzip timestamp fixed at 0).
    """
    path = Path(path)
    if not is_nifti(path):
        raise ValueError(f"{path}: file name must end with .nii or .nii.gz")
    data = np.asarray(data_tzyx)
    step = None
    if frame_times is not None and len(frame_times) > 1:
        diffs = np.diff(np.asarray(frame_times, float))
        if np.allclose(diffs, diffs[0], rtol=1e-3):
            step = float(diffs[0])
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        data = np.clip(np.rint(data), info.min, info.max)
    img = to_nifti_image(data, affine, dtype=dtype, frame_step=step)
    payload = img.to_bytes()
    if path.name.lower().endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    atomic_write_bytes(path, payload)
    meta = dict(sidecar or {})
    if frame_times is not None:
        meta["FrameTimes"] = [round(float(t), 6) for t in frame_times]
    if meta:
        atomic_write_bytes(sidecar_path(path), (json.dumps(meta, indent=1) + "\n").encode())
    return path


def save_dce(volume: DCEVolume, path, *, dtype=np.float32, sidecar: dict | None = None) -> Path:
    """Write a DCE volume as a 4D NIfTI with its frame times in a JSON sidecar."""
    return save_nifti(path, volume.load().data, volume.affine, dtype=dtype,
                      frame_times=volume.frame_times, sidecar=sidecar)
