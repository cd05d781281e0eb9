"""Write a DCE volume as classic MR DICOM: one file per slice and phase.

Used to hand generated exams to DICOM tools (a PACS, dcm2niix) exactly as a scanner would: either one
series holding every phase (``TemporalPositionIdentifier`` per image), or one series per phase, as many
multiphase protocols store them. Geometry follows the volume's affine (RAS in memory, LPS in the files);
voxel values are stored as unsigned 16-bit integers with a rescale slope and intercept that restore them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from ..atomic import atomic_write_bytes
from ..volume import DCEVolume
from .orient import LPS_TO_RAS

_RAS_TO_LPS = np.linalg.inv(LPS_TO_RAS)


def _uid(*parts) -> str:
    """A UID derived from ``parts`` (the same parts give the same UID). pydicom joins its entropy sources
    without a separator, so the parts are joined here with one that no part holds: frame 1 slice 12 and
    frame 11 slice 2 must not meet."""
    return generate_uid(entropy_srcs=["\x1f".join(str(p) for p in parts)])


def _tm(seconds: float) -> str:
    seconds = seconds % 86400
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{int(h):02d}{int(m):02d}{s:09.6f}"


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.6e}"


def save_dicom_series(volume: DCEVolume, folder, *, patient_id: str, patient_name: str | None = None,
                      study_date: str = "20240101", study_time: float = 10 * 3600, study_uid: str | None = None,
                      description: str = "DCE", series_per_phase: bool = False,
                      phase_names: list[str] | None = None, seed: str = "") -> list[Path]:
    """Write ``volume`` under ``folder`` and return the files written.

    Frame times (seconds, else 1 s per frame) become AcquisitionTime from ``study_time`` on
    ``study_date``. With ``series_per_phase`` every phase is its own series (numbered from 2, described
    ``"<description> <phase name>"``); otherwise one series holds all phases. UIDs derive from
    ``patient_id``, ``study_date`` and ``seed``, so the same call writes the same identifiers.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    volume = volume.load()
    data = np.asarray(volume.data, dtype=np.float64)
    n_t, n_z, n_y, n_x = data.shape
    times = volume.frame_times if volume.frame_times is not None else np.arange(n_t, dtype=float)
    names = phase_names or [f"phase {t + 1}" for t in range(n_t)]

    low, high = float(data.min()), float(data.max())
    slope = (high - low) / 65535.0 if high > low else 1.0
    stored = np.clip(np.rint((data - low) / slope), 0, 65535).astype(np.uint16)

    lps = _RAS_TO_LPS @ volume.affine
    col_step, row_step = lps[:3, 0], lps[:3, 1]  # along x (columns) and y (rows)
    row_cos, col_cos = col_step / np.linalg.norm(col_step), row_step / np.linalg.norm(row_step)
    spacing_x, spacing_y = np.linalg.norm(col_step), np.linalg.norm(row_step)
    slice_gap = float(np.linalg.norm(lps[:3, 2]))

    study_uid = study_uid or _uid("study", patient_id, study_date, seed)
    frame_uid = _uid("frame", patient_id, study_date, seed)
    one_series_uid = _uid("series", patient_id, study_date, seed, description)
    written = []
    for t in range(n_t):
        series_uid = _uid("series", patient_id, study_date, seed, description, t) if series_per_phase else one_series_uid
        clock = study_time + float(times[t])
        for k in range(n_z):
            ds = Dataset()
            ds.SOPClassUID = MRImageStorage
            ds.SOPInstanceUID = _uid("image", series_uid, t, k)
            ds.Modality = "MR"
            ds.Manufacturer = "napari-medimp"
            ds.PatientID = patient_id
            ds.PatientName = patient_name or patient_id
            ds.StudyInstanceUID = study_uid
            ds.StudyDate = study_date
            ds.StudyTime = _tm(study_time)
            ds.StudyID = "1"
            ds.AccessionNumber = ""
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = 2 + t if series_per_phase else 1
            ds.SeriesDescription = f"{description} {names[t]}" if series_per_phase else description
            ds.SeriesDate = study_date
            ds.SeriesTime = _tm(clock if series_per_phase else study_time)
            ds.FrameOfReferenceUID = frame_uid
            ds.InstanceNumber = k + 1 if series_per_phase else t * n_z + k + 1
            if not series_per_phase:
                ds.TemporalPositionIdentifier = t + 1
                ds.NumberOfTemporalPositions = n_t
            ds.AcquisitionDate = study_date
            ds.AcquisitionTime = _tm(clock)
            ds.ContentDate = study_date
            ds.ContentTime = _tm(clock)
            ds.ImagePositionPatient = [_ds(v) for v in (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]]
            ds.ImageOrientationPatient = [_ds(v) for v in (*row_cos, *col_cos)]
            ds.PixelSpacing = [_ds(spacing_y), _ds(spacing_x)]
            ds.SliceThickness = _ds(slice_gap)
            ds.SpacingBetweenSlices = _ds(slice_gap)
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = n_y, n_x
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 0
            ds.RescaleSlope = _ds(slope)
            ds.RescaleIntercept = _ds(low)
            ds.RescaleType = "US"
            ds.PixelData = np.ascontiguousarray(stored[t, k]).tobytes()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta = meta
            prefix = f"s{ds.SeriesNumber:03d}_" if series_per_phase else ""
            path = folder / f"{prefix}t{t + 1:03d}_z{k + 1:03d}.dcm"
            atomic_write_bytes(path, _encode(ds))
            written.append(path)
    return written


def _encode(ds: Dataset) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()

