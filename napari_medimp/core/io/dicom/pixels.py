"""Pixel data: decoding (compressed transfer syntaxes included), phases as arrays, duplicate files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pydicom.dataset
import pydicom.uid
from pydicom.pixels import get_decoder

from ...volume import DCEReadError, DCEReadWarning, sanitize
from ..orient import reorient_xyz
from .mosaic import mosaic_tile
from .planes import _Plane
from .scan import _read_header


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


def _syntax_words(uid: pydicom.uid.UID) -> str:
    return f"'{uid.name}' ({uid})" if uid.name != str(uid) else str(uid)


def _other_decoders(uid: pydicom.uid.UID) -> str:
    """The packages of pydicom's decoders for ``uid`` that are not installed, as 'a and b, or c'."""
    try:
        missing = get_decoder(uid).missing_dependencies
    except NotImplementedError:
        return ""
    return ", or ".join(text.split(" - requires ", 1)[-1] for text in missing)


def _decoder_problem(uid) -> str | None:
    """Why pixel data in transfer syntax ``uid`` cannot be decoded here, naming the syntax and what to install;
    None for uncompressed data and for compressed data that an installed decoder reads."""
    uid = pydicom.uid.UID(str(uid))
    if not uid or (uid.is_transfer_syntax and not uid.is_compressed):
        return None
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return (f"pixel data compressed as {_syntax_words(uid)}, which no DICOM image decoder reads (a video or "
                "an unknown encoding); export the series uncompressed or as JPEG Lossless")
    if decoder.is_available:
        return None
    hint = _other_decoders(uid)
    return (f"pixel data compressed as {_syntax_words(uid)} and no decoder for it is installed"
            + (f": install {hint}" if hint else "; export the series uncompressed"))


def _check_decodable(items) -> None:
    """Refuse a series whose pixel data no installed decoder reads, before any pixel is read, naming the
    transfer syntax and what to install. ``items``: (path, header) pairs."""
    seen = set()
    for path, ds in items:
        uid = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
        if uid in seen:
            continue
        seen.add(uid)
        problem = _decoder_problem(uid)
        if problem is not None:
            raise DCEReadError(path, problem)


def _transfer_syntaxes(items) -> str:
    """The transfer syntaxes of a series' files, by name ('; ' between them)."""
    uids = {str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "") for _, ds in items}
    return "; ".join(sorted(pydicom.uid.UID(uid).name for uid in uids if uid))


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
    uid = pydicom.uid.UID(str(ds.file_meta.TransferSyntaxUID))
    problem = _decoder_problem(uid)
    if problem is not None:
        raise DCEReadError(path, problem)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(ds.pixel_array)
    except Exception as exc:
        reason = " ".join(str(exc).split())
        if uid.is_compressed:
            hint = _other_decoders(uid)
            raise DCEReadError(path, f"pixel data compressed as {_syntax_words(uid)} cannot be decoded by the "
                                     f"installed decoders ({reason})"
                                     + (f"; other decoders: install {hint}" if hint else "")) from None
        raise DCEReadError(path, f"pixel data cannot be read: file truncated or corrupt ({reason})") from None


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
        elif plane.tile is not None:
            image = mosaic_tile(array, plane.tile, (rows, cols))
        if image is None or image.shape != (rows, cols):
            raise DCEReadError(
                plane.path, f"{plane.label}: pixel data has shape {array.shape}, expected {rows} x {cols} images"
            )
        stack[k] = image.astype(np.float32) * np.float32(plane.slope) + np.float32(plane.intercept)
    return sanitize(reorient_xyz(stack.transpose(2, 1, 0), ornt), str(planes[0].path), warn=False)


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
