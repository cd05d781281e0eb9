"""npe2 reader: kidney DCE-MRI as napari image layers with their physical geometry."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ._layers import labels_layer_data, volume_layer_data
from .core.io import DCEReadError, load_dce
from .core.io.cohort import classify_folder, load_exam, patient_exams
from .core.io.nifti import is_nifti, label_names, load_labels, nifti_stem, read_sidecar

#: words in a file name that mark a label map (a segmentation), matched as parts of the name
LABEL_NAME_WORDS = ("seg", "label", "mask")


def _supported(path: Path) -> bool:
    if path.is_dir():
        try:
            classify_folder(path)
        except (DCEReadError, OSError):
            return False
        return True
    if is_nifti(path):
        return True
    from .core.io.dicom import is_dicom_file

    return path.is_file() and is_dicom_file(path)


def get_reader(path):
    """Return a reader for a supported file or folder, else None (napari then tries others)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    path = Path(path)
    if not path.exists() or not _supported(path):
        return None
    return read_dce


def _exam_layers(exam_folder: Path, name: str | None = None) -> list[tuple]:
    volume, seg_file = load_exam(exam_folder)
    layers = [volume_layer_data(volume, name=name)]
    if seg_file is not None:
        labels, affine = load_labels(seg_file)
        if labels.shape == volume.shape[1:] and np.allclose(affine, volume.affine, atol=1e-3):
            layers.append(labels_layer_data(labels, volume, name=f"{layers[0][1]['name']} labels",
                                            region_names=label_names(seg_file), labels_file=seg_file))
        else:
            warnings.warn(f"{seg_file}: segmentation grid {labels.shape} differs from the DCE grid "
                          f"{volume.shape[1:]}; not shown", stacklevel=2)
    return layers


def is_label_file(path) -> bool:
    """True for a NIfTI label map: integer voxel data stored in a 3D file, with a sidecar naming its
    labels (``{"Labels": {...}}``) or a name saying so (``*seg*``, ``*label*``, ``*mask*``). Only the
    header and the sidecar are read."""
    import nibabel as nib

    path = Path(path)
    if not (path.is_file() and is_nifti(path)):
        return False
    try:
        header = nib.load(str(path)).header
        shape = tuple(int(s) for s in header.get_data_shape())
        dtype = header.get_data_dtype()
    except Exception:  # noqa: BLE001  (an unreadable header is the image reader's to report)
        return False
    slope, _ = header.get_slope_inter()
    if len(shape) > 4 or (len(shape) == 4 and shape[3] != 1) or dtype.kind not in "iub":
        return False
    if slope is not None and slope not in (0.0, 1.0):
        return False
    words = nifti_stem(path).lower()
    named = any(word in words for word in LABEL_NAME_WORDS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sidecar = read_sidecar(path)
    except OSError:
        sidecar = {}
    return named or isinstance(sidecar.get("Labels"), dict)


def _label_file_layers(path: Path) -> list[tuple]:
    """A label file as a labels layer in its own geometry, regions named from its sidecar."""
    from .core.volume import DCEVolume

    labels, affine = load_labels(path)
    grid = DCEVolume(np.zeros((1, *labels.shape), np.float32), affine, source=str(path))
    return [labels_layer_data(labels, grid, name=nifti_stem(path), region_names=label_names(path))]


def read_dce(path) -> list[tuple]:
    """Read one path into layer data tuples. Errors carry the file name and the problem."""
    if isinstance(path, list):
        path = path[0]
    path = Path(path)
    if path.is_dir():
        kind = classify_folder(path)
        if kind.kind == "exam":
            return _exam_layers(path)
        if kind.kind == "patient":
            layers = []
            for exam, folder in patient_exams(path).items():
                layers.extend(_exam_layers(folder, name=f"{path.name} {exam}"))
            return layers
    if is_label_file(path):
        return _label_file_layers(path)
    return [volume_layer_data(load_dce(path))]
