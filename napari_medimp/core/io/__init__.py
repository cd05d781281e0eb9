"""Readers for kidney DCE-MRI: 4D NIfTI, folders of 3D phases, DICOM series, MEDIMP cohort trees."""

from __future__ import annotations

from pathlib import Path

from ..volume import DCEReadError, DCEReadWarning, DCEVolume
from .nifti import is_nifti, load_nifti, load_phase_folder, save_dce, save_nifti

__all__ = [
    "DCEReadError",
    "DCEReadWarning",
    "DCEVolume",
    "load_dce",
    "load_nifti",
    "load_phase_folder",
    "save_dce",
    "save_nifti",
]


def load_dce(path, lazy: bool | None = None) -> DCEVolume:
    """Open any supported DCE input and return one :class:`DCEVolume`.

    * ``*.nii`` / ``*.nii.gz``: a 4D file (a 3D file becomes one frame);
    * a folder of DICOM files: one multi-phase series;
    * a folder of 3D NIfTI phases;
    * an exam folder of a MEDIMP cohort tree ``patient/exam/sequence/``.
    """
    path = Path(path)
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
