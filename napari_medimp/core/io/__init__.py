"""Readers for kidney DCE-MRI: 4D NIfTI, folders of 3D phases, DICOM series, MEDIMP cohort trees."""

from __future__ import annotations

from pathlib import Path

from ..volume import DCEReadError, DCEReadWarning, DCEVolume, keeps_reading_notes
from .nifti import is_nifti, load_nifti, load_phase_folder, save_dce, save_nifti

__all__ = [
    "DCEReadError",
    "DCEReadWarning",
    "DCEVolume",
    "chosen_series",
    "load_dce",
    "load_nifti",
    "load_phase_folder",
    "save_dce",
    "save_nifti",
]


def chosen_series(choice: str | int | None):
    """Context manager: DICOM folders holding several series open the one ``choice`` names (SeriesInstanceUID
    or SeriesNumber) inside the block; see :func:`.dicom.scan.chosen_series`."""
    from .dicom.scan import chosen_series as choose

    return choose(choice)


@keeps_reading_notes
def load_dce(path, lazy: bool | None = None, series: str | int | None = None) -> DCEVolume:
    """Open any supported DCE input and return one :class:`DCEVolume`.

    * ``*.nii`` / ``*.nii.gz``: a 4D file (a 3D file becomes one frame);
    * a folder of DICOM files: one multi-phase series;
    * a folder of 3D NIfTI phases;
    * an exam folder of a MEDIMP cohort tree ``patient/exam/sequence/``.

    ``series``: in a DICOM folder holding several series, the one to read (SeriesInstanceUID or
    SeriesNumber); folders holding one series are not affected.

    What the reader had to assume or ignore (:class:`DCEReadWarning`) is warned as usual and also kept
    in ``metadata["reading_notes"]``, so that reports state it with the result.
    """
    if series is None:
        return _open(Path(path), lazy)
    with chosen_series(series):
        return _open(Path(path), lazy)


def _open(path: Path, lazy: bool | None) -> DCEVolume:
    if not path.exists():
        raise DCEReadError(path, "no such file or folder")
    if path.is_file():
        if is_nifti(path):
            return load_nifti(path, lazy=lazy)
        from .dicom import is_dicom_file, load_dicom_series

        if is_dicom_file(path):
            return load_dicom_series(path, lazy=lazy)  # the series this file belongs to
        raise DCEReadError(path, "unsupported file type: expected .nii, .nii.gz or DICOM")
    from .cohort import load_folder

    return load_folder(path, lazy=lazy)
