"""DCE volumes <-> napari layer data tuples (plain data; no Qt)."""

from __future__ import annotations

import numpy as np

from .core.volume import AXIS_LABELS, DCEVolume


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


def labels_layer_data(labels: np.ndarray, volume: DCEVolume, name: str = "kidney labels") -> tuple:
    """A 3D label map in the geometry of ``volume``'s spatial axes."""
    geometry = volume.layer_geometry()
    kwargs = {
        "name": name,
        "axis_labels": AXIS_LABELS[1:],
        "units": ("mm", "mm", "mm"),
        "scale": geometry["scale"][1:],
        "translate": geometry["translate"][1:],
        "opacity": 0.6,
        "metadata": {"affine": volume.affine.tolist(), "source": volume.source},
    }
    return (np.asarray(labels), kwargs, "labels")


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
