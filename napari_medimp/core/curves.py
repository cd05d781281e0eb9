"""Time-intensity curves, the way DCE-MRI is read clinically."""

from __future__ import annotations

import numpy as np

from .volume import DCEVolume


def region_curves(volume: DCEVolume, labels: np.ndarray, names: dict[int, str]) -> dict[str, np.ndarray]:
    """Mean signal per frame inside each labelled region (labels on the volume's (z, y, x) grid)."""
    labels = np.asarray(labels)
    if labels.shape != volume.shape[1:]:
        raise ValueError(f"label grid {labels.shape} differs from the image grid {volume.shape[1:]}")
    curves = {}
    for value, name in names.items():
        mask = labels == value
        if mask.any():
            curves[name] = np.array([volume.frame(t)[mask].mean() for t in range(volume.n_frames)])
    return curves


#: the one definition of enhancement every figure, check and report states (see :func:`relative_enhancement`)
ENHANCEMENT_DEFINITION = ("enhancement: the rise of a mean signal over its pre-contrast baseline (the mean of the "
                          "first two frames), relative to that baseline")


def relative_enhancement(baseline: float, value: float) -> float:
    """(``value`` - ``baseline``) / ``baseline`` (:data:`ENHANCEMENT_DEFINITION`); NaN for a zero baseline."""
    baseline, value = float(baseline), float(value)
    return (value - baseline) / baseline if baseline else float("nan")


def enhancement_summary(curve: np.ndarray, times: np.ndarray, n_baseline: int = 2) -> dict:
    """Baseline, peak enhancement, time to peak and time to half peak of one curve (times in s); the
    relative peak enhancement follows :data:`ENHANCEMENT_DEFINITION`."""
    curve = np.asarray(curve, float)
    times = np.asarray(times, float)
    baseline = float(curve[:n_baseline].mean())
    enhancement = curve - baseline
    peak_index = int(np.argmax(enhancement))
    peak = float(enhancement[peak_index])
    half_time = float(times[peak_index])
    if peak > 0:
        i = int(np.argmax(enhancement >= 0.5 * peak))
        half_time = float(times[i])
        if i > 0:  # linear interpolation between the frames that bracket half the peak
            e0, e1 = enhancement[i - 1], enhancement[i]
            half_time = float(times[i - 1] + (0.5 * peak - e0) / (e1 - e0) * (times[i] - times[i - 1]))
    return {
        "baseline": baseline,
        "peak_enhancement": peak,
        "relative_peak_enhancement": relative_enhancement(baseline, baseline + peak),
        "time_to_peak_s": float(times[peak_index]),
        "time_to_half_peak_s": half_time,
    }


def describe_frame(frame: int, n_frames: int, times=None) -> str:
    """A frame named by what it is: its number, its time and where it lies in the series (``frame 19 of 20,
    224 s after the first frame, late in the 300 s series``), never a phase it was not found to be."""
    text = f"frame {int(frame) + 1} of {int(n_frames)}"
    if times is None or len(times) != n_frames:
        return text + " (time not stated in the image)"
    times = np.asarray(times, float)
    start, span = float(times[0]), float(times[-1] - times[0])
    at = float(times[frame]) - start
    where = ("the first frame" if frame == 0 else "the last frame" if frame == n_frames - 1 else
             "early" if span > 0 and at < span / 3 else "late" if span > 0 and at > 2 * span / 3 else "mid-way")
    if frame in (0, n_frames - 1):
        return f"{text}, {at:.0f} s after the first frame ({where} of the {span:.0f} s series)"
    return f"{text}, {at:.0f} s after the first frame ({where} in the {span:.0f} s series)"


#: name of the curve of the whole kidney box in :func:`roi_and_region_curves`
ROI_CURVE = "kidney ROI"

#: label values of the project's tissue maps (synthetic generator, sample exam) that are kidney regions


def _array(volume):
    return volume.data if isinstance(volume, DCEVolume) else volume


def _read(block) -> np.ndarray:
    return np.asarray(block.compute() if hasattr(block, "compute") else block, dtype=np.float64)


def roi_curve(volume, roi) -> np.ndarray:
    """Mean signal per frame inside a ROI box ``(z0, z1, y0, y1, x0, x1)`` (a ``RoiBox`` or 6 numbers).

    ``volume`` is a :class:`DCEVolume` or a 4D ``(t, z, y, x)`` array. Frames are read one at a time
    and only the box is sliced out, so a lazy (dask) volume is never loaded whole.
    """
    from .preprocess import RoiBox

    data = _array(volume)
    if len(data.shape) != 4:
        raise ValueError(f"a DCE volume is 4D (t, z, y, x); got shape {tuple(data.shape)}")
    box = RoiBox.from_sequence(roi).validate(data.shape[1:])
    return np.array([_read(data[(t, *box.slices)]).mean() for t in range(int(data.shape[0]))])


#: more distinct values than this in a label map are not regions to draw curves of
MAX_REGIONS = 64


def check_labels(volume, labels) -> np.ndarray:
    """``labels`` as an array, after checking that it lies on the volume's spatial ``(z, y, x)`` grid and
    holds at most :data:`MAX_REGIONS` regions."""
    labels = np.asarray(labels)
    grid = tuple(int(s) for s in _array(volume).shape[1:])
    if labels.shape != grid:
        raise ValueError(f"label map shape {labels.shape} (z, y, x) does not match the image's spatial shape "
                         f"{grid} (z, y, x); the labels must be drawn on this exam's grid")
    values = np.unique(labels)
    if np.count_nonzero(values) > MAX_REGIONS:
        raise ValueError(f"the label map holds {np.count_nonzero(values)} different values; at most {MAX_REGIONS} "
                         "regions can have curves (is it an image rather than labels?)")
    return labels


def default_region_names(labels) -> dict[int, str]:
    """``"label N"`` for every non-zero value: a label map without names says nothing of what they mean."""
    return {int(v): f"label {int(v)}" for v in np.unique(np.asarray(labels)) if v != 0}


def roi_and_region_curves(volume, roi=None, labels=None, names: dict[int, str] | None = None) -> dict[str, np.ndarray]:
    """Time-intensity curves of the kidney box (``"kidney ROI"``) and of each labelled region.

    ``labels`` must lie on the volume's spatial grid (``ValueError`` naming both shapes otherwise);
    ``names`` maps label values to region names (default: :func:`default_region_names`). Regions with no
    voxel are left out. Each frame is read once for all regions.
    """
    curves: dict[str, np.ndarray] = {}
    if labels is not None:
        labels = check_labels(volume, labels)
    if roi is not None:
        curves[ROI_CURVE] = roi_curve(volume, roi)
    if labels is None:
        return curves
    names = default_region_names(labels) if names is None else dict(names)
    masks = {name: labels == value for value, name in names.items()}
    masks = {name: mask for name, mask in masks.items() if mask.any()}
    if not masks:
        return curves
    data = _array(volume)
    # read only the bounding box of all regions
    where = np.argwhere(np.logical_or.reduce(list(masks.values())))
    lo, hi = where.min(axis=0), where.max(axis=0) + 1
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    masks = {name: mask[box] for name, mask in masks.items()}
    values = {name: np.empty(int(data.shape[0])) for name in masks}
    for t in range(int(data.shape[0])):
        frame = _read(data[(t, *box)])
        for name, mask in masks.items():
            values[name][t] = frame[mask].mean()
    curves.update(values)
    return curves
