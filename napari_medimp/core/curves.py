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


def enhancement_summary(curve: np.ndarray, times: np.ndarray, n_baseline: int = 2) -> dict:
    """Baseline, peak enhancement, time to peak and time to half peak of one curve (times in s)."""
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
        "relative_peak_enhancement": peak / baseline if baseline else float("nan"),
        "time_to_peak_s": float(times[peak_index]),
        "time_to_half_peak_s": half_time,
    }
