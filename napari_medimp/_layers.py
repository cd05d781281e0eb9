"""DCE volumes <-> napari layer data tuples (plain data; no Qt)."""

from __future__ import annotations

import numpy as np

from .core.terms import KIDNEY_REGION_NAMES
from .core.volume import AXIS_LABELS, DCEVolume

#: colours of the kidney regions on the project's tissue maps; the background and the surrounding tissue
#: stay transparent so the DCE image remains visible around the graft
KIDNEY_REGION_COLOURS = {"cortex": "#ff9f1c", "medulla": "#2ec4b6", "collecting system": "#ffe66d",
                         "artery": "#e71d36"}


def contrast_limits(volume: DCEVolume, low: float = 1.0, high: float = 99.7,
                    max_samples: int = 1_000_000) -> tuple[float, float]:
    """Percentile contrast limits from at most ``max_samples`` voxels; a lazy volume reads at most three
    frames (only the first for gzip files, where later frames cost a decompression of all before)."""
    if volume.is_lazy:
        gz = str(volume.source).lower().endswith(".gz")
        picks = [0] if gz else sorted({0, volume.n_frames // 2, volume.n_frames - 1})
        per_frame = max(1, max_samples // len(picks))
        sample = np.concatenate([_strided(volume.frame(i), per_frame) for i in picks])
    else:
        sample = _strided(np.asarray(volume.data), max_samples)
    lo, hi = np.percentile(sample, [low, high])
    if not hi > lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def _strided(array: np.ndarray, n: int) -> np.ndarray:
    flat = array.ravel()
    return flat[:: max(1, flat.size // n)]


def time_axis(volume: DCEVolume) -> tuple[float, str]:
    """(scale, unit) of the time axis: seconds when frames are evenly spaced, else frame index."""
    times = volume.frame_times
    if times is not None and times.size > 1:
        steps = np.diff(times)
        if steps[0] > 0 and np.allclose(steps, steps[0], rtol=1e-3):
            return float(steps[0]), "s"
    return 1.0, "pixel"


def volume_layer_data(volume: DCEVolume, name: str | None = None, **extra) -> tuple:
    geometry = volume.layer_geometry()
    if volume.obliquity_deg > 0.5:
        import warnings

        warnings.warn(f"{volume.source}: oblique acquisition ({volume.obliquity_deg:.1f} degrees from the "
                      "scanner axes) shown in its voxel frame; saved files keep the exact geometry",
                      stacklevel=2)
    t_scale, t_unit = time_axis(volume)
    geometry["scale"] = (t_scale, *geometry["scale"][1:])
    kwargs = {
        "name": name or volume.metadata.get("name") or _default_name(volume),
        "axis_labels": AXIS_LABELS,
        "units": (t_unit, "mm", "mm", "mm"),
        "contrast_limits": contrast_limits(volume),
        "colormap": "gray",
        "metadata": {
            "medimp_volume": True,
            "source": volume.source,
            "affine": volume.affine.tolist(),
            "frame_times": None if volume.frame_times is None else volume.frame_times.tolist(),
            "dce_metadata": volume.metadata,
        },
        **geometry,
        **extra,
    }
    return (volume.data, kwargs, "image")


def labels_layer_data(labels: np.ndarray, volume: DCEVolume, name: str = "kidney labels",
                      region_names: dict[int, str] | None = None, labels_file=None) -> tuple:
    """A 3D label map of the exam ``volume``, in the geometry of its spatial axes; ``region_names`` (label
    value -> name, from the file) travel in the layer's metadata for the curves of each region, with the
    exam they belong to (``exam_identity``, :class:`~napari_medimp.core.identity.ExamIdentity`) and the
    label file (``labels_file``), so that the panel pairs them with their own exam only."""
    from .core.identity import ExamIdentity

    geometry = volume.layer_geometry()
    kwargs = {
        "name": name,
        "axis_labels": AXIS_LABELS[1:],
        "units": ("mm", "mm", "mm"),
        "scale": geometry["scale"][1:],
        "translate": geometry["translate"][1:],
        "opacity": 0.6,
        "metadata": {"affine": volume.affine.tolist(), "source": volume.source,
                     "region_names": {int(k): str(v) for k, v in region_names.items()} if region_names else None,
                     "exam_identity": ExamIdentity.from_volume(volume).to_dict(),
                     "labels_file": str(labels_file) if labels_file else None},
    }
    colours = kidney_colormap(region_names)
    if colours is not None:
        kwargs["colormap"] = colours
    return (np.asarray(labels), kwargs, "labels")


def kidney_colormap(region_names) -> dict | None:
    """Label value -> colour for a map whose regions are the project's kidney tissues (other values,
    surrounding tissue included, transparent); None for any other label map (napari's colours)."""
    if not region_names:
        return None
    names = {int(k): str(v) for k, v in region_names.items()}
    if any(KIDNEY_REGION_NAMES.get(value) != name for value, name in names.items()
           if name in KIDNEY_REGION_COLOURS):
        return None
    kidney = {value: KIDNEY_REGION_COLOURS[name] for value, name in names.items() if name in KIDNEY_REGION_COLOURS}
    if not kidney:
        return None
    return {None: "transparent", 0: "transparent", **kidney}


def layer_region_names(metadata) -> dict[int, str] | None:
    """Region names a labels layer carries (see :func:`labels_layer_data`), None when it has none."""
    names = (metadata or {}).get("region_names")
    if not isinstance(names, dict):
        return None
    out = {}
    for key, name in names.items():
        try:
            out[int(key)] = str(name)
        except (TypeError, ValueError):
            continue
    return out or None


def _default_name(volume: DCEVolume) -> str:
    patient, exam = volume.metadata.get("patient"), volume.metadata.get("exam")
    if patient and exam:
        return f"{patient} {exam}"
    from pathlib import Path

    source = Path(volume.source)
    name = source.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name or "DCE"


def layer_affine(scale, translate, metadata: dict | None = None, rotate=None) -> np.ndarray:
    """A layer's voxel-to-RAS affine: the exact source affine when the layer carries one and its
    scale/translate still match it (oblique volumes are displayed in their voxel frame), else the one
    implied by its scale/translate/rotate."""
    from .core.volume import affine_from_geometry

    implied = affine_from_geometry(scale, translate, rotate)
    exact = (metadata or {}).get("affine")
    if exact is not None:
        exact = np.asarray(exact, dtype=float)
        same_spacing = exact.shape == (4, 4) and np.allclose(np.linalg.norm(exact[:3, :3], axis=0),
                                                             np.linalg.norm(implied[:3, :3], axis=0))
        if same_spacing and np.allclose(exact[:3, 3], implied[:3, 3], atol=1e-4):
            return exact
    return implied


def volume_from_layer_data(data, scale, translate, metadata: dict | None = None, name: str = "") -> DCEVolume:
    """The DCE volume behind an image layer: its exact affine and frame times when the layer came from
    this plugin and still has the same geometry, else the ones implied by its scale and translate.

    Raises ``ValueError`` naming the layer when it is not 4D (t, z, y, x)."""
    ndim = len(getattr(data, "shape", ()))
    if ndim != 4:
        hint = " (a single 3D volume has no time axis; open the whole dynamic series)" if ndim == 3 else ""
        raise ValueError(f"layer {name!r} is {ndim}D; MEDIMP needs a 4D DCE series (t, z, y, x){hint}")
    metadata = dict(metadata or {})
    affine = layer_affine(scale, translate, metadata)
    times = metadata.get("frame_times")
    if times is not None and len(times) != data.shape[0]:
        times = None
    extra = dict(metadata.get("dce_metadata") or {})
    extra.setdefault("name", name)
    return DCEVolume(data, affine, frame_times=times, metadata=extra, source=str(metadata.get("source") or name))


def roi_from_vertices(vertices: np.ndarray, shape_zyx, fallback=None):
    """A kidney box (voxel indices, half-open) from the vertices of a drawn rectangle or box.

    ``vertices`` are (N, 3) positions in the volume's voxel coordinates (z, y, x). A rectangle drawn on
    one slice is flat along one axis: there the box takes ``fallback``'s range (a RoiBox, e.g. the
    automatic box) or else the whole axis. Raises ``ValueError`` when the box misses the volume."""
    from .core.preprocess import RoiBox

    vertices = np.asarray(vertices, dtype=float)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or len(vertices) < 2:
        raise ValueError("the ROI shape must have at least two 3D vertices (z, y, x)")
    shape = [int(s) for s in shape_zyx]
    bounds = []
    for axis in range(3):
        lo, hi = float(vertices[:, axis].min()), float(vertices[:, axis].max())
        if hi - lo < 1.0:  # flat: the slice the rectangle was drawn on
            if fallback is not None:
                start, stop = fallback.start[axis], fallback.stop[axis]
            else:
                start, stop = 0, shape[axis]
        else:
            start, stop = int(np.floor(lo + 0.5)), int(np.floor(hi + 0.5)) + 1
        start, stop = max(0, start), min(shape[axis], stop)
        if stop - start < 2:
            raise ValueError(f"the ROI box lies outside the volume along {'zyx'[axis]} "
                             f"(voxels {lo:.0f}..{hi:.0f}, volume 0..{shape[axis] - 1})")
        bounds += [start, stop]
    return RoiBox.from_sequence(bounds)


def box_rectangle(roi) -> np.ndarray:
    """The (4, 3) rectangle (voxel coordinates, z, y, x) showing ``roi`` on its middle slice."""
    z = (roi.start[0] + roi.stop[0] - 1) / 2.0
    (y0, x0), (y1, x1) = roi.start[1:], (roi.stop[1] - 1, roi.stop[2] - 1)
    return np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]], dtype=float)
