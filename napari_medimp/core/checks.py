"""Is this image something the model can read? Checks made before any reading is shown.

A model trained on renal-graft DCE-MRI reads anything it is given: a brain fMRI gets a GFR bin and a
risk. These checks say, in words, when an input is outside what the model was trained on:

- ``dynamic``: a dynamic series (at least :data:`MIN_FRAMES` frames: pre-contrast baseline, arrival,
  wash-out);
- ``enhancement``: the analysed box holds an enhancing organ (the 99th percentile of the signal rise
  after the baseline is at least :data:`MIN_ENHANCEMENT` of the brightest pre-contrast signal; a kidney
  after gadolinium rises by 100-400 %, a BOLD fMRI by a few %). Enhancement has one definition
  (:data:`~napari_medimp.core.curves.ENHANCEMENT_DEFINITION`): the message gives it for the brightest
  voxels, which decide, and for the box's mean signal, the kidney-ROI curve's figure;
- ``frame_times``: frame times known, increasing, sampled at most :data:`MAX_FRAME_INTERVAL_S` apart and
  covering :data:`MIN_DURATION_S` to :data:`MAX_DURATION_S` (the first pass and early wash-out);
- ``voxel_size``: each voxel dimension within a factor :data:`MAX_SPACING_RATIO` of the model's;
- ``embedding``: the exam's embedding no farther from the model's training exams than the card's
  threshold (Mahalanobis distance; :func:`embedding_reference` computes the reference and threshold).

``ok`` is True or False, or None when a check could not be made (said in its message). Any False puts the
result "outside what this model was trained on"; a reading is still shown, labelled so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

CHECK_IDS: tuple[str, ...] = ("dynamic", "enhancement", "frame_times", "voxel_size", "embedding")
#: the label of a result that failed a check, in the panel and the report
OUTSIDE_TRAINING = "outside what this model was trained on"

MIN_FRAMES = 3
MIN_ENHANCEMENT = 0.5
MAX_FRAME_INTERVAL_S = 30.0
MIN_DURATION_S = 60.0
MAX_DURATION_S = 3600.0
MAX_SPACING_RATIO = 2.0
#: the embedding threshold: this many times the largest held-out distance of a training exam
REFERENCE_MARGIN = 1.25
MAX_REFERENCE_AXES = 64


@dataclass(frozen=True)
class Check:
    id: str
    ok: bool | None
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def outside_training(checks: Sequence[Check | Mapping]) -> bool:
    """True when any check failed (a check that could not be made does not count)."""
    return any((c.ok if isinstance(c, Check) else c.get("ok")) is False for c in checks)


def failed_messages(checks: Sequence[Check | Mapping]) -> list[str]:
    """The messages of the failed checks, in order."""
    items = [c.to_dict() if isinstance(c, Check) else dict(c) for c in checks]
    return [c["message"] for c in items if c.get("ok") is False]


# --------------------------------------------------------------------------------------------------
# the image
# --------------------------------------------------------------------------------------------------
def dynamic_check(n_frames: int) -> Check:
    if n_frames >= MIN_FRAMES:
        return Check("dynamic", True, f"dynamic series of {n_frames} frames")
    return Check("dynamic", False, f"not a dynamic series: {n_frames} frame(s), a DCE-MRI has a pre-contrast "
                                   f"baseline and at least {MIN_FRAMES - 1} frames after the injection")


def enhancement_ratio(volume, roi, baseline_frames: int = 2) -> float:
    """Rise of the signal inside ``roi`` after the baseline frames, relative to the brightest pre-contrast
    signal: 99th percentile of (robust peak - baseline) / 99th percentile of the baseline. Frames are read
    one at a time."""
    from .preprocess import baseline_and_robust_peak

    baseline, peak = baseline_and_robust_peak(volume, roi, baseline_frames)
    reference = float(np.percentile(np.abs(baseline), 99))
    rise = float(np.percentile(peak - baseline, 99))
    if reference <= 0:
        return float("inf") if rise > 0 else 0.0
    return rise / reference


def box_mean_enhancement(volume, roi, baseline_frames: int = 2) -> float:
    """Peak enhancement of the box's mean signal (the kidney-ROI curve of the report and the panel), by the
    one definition of :data:`~napari_medimp.core.curves.ENHANCEMENT_DEFINITION`."""
    from .curves import enhancement_summary, roi_curve

    curve = roi_curve(volume, roi)
    return float(enhancement_summary(curve, np.arange(len(curve), dtype=float),
                                     n_baseline=baseline_frames)["relative_peak_enhancement"])


def enhancement_check(volume, roi, baseline_frames: int = 2) -> Check:
    """Enhancement (rise over the pre-contrast baseline, relative to that baseline) of the box's brightest
    voxels decides; the message also gives the box's mean signal by the same definition, the figure of the
    kidney-ROI curve, so that the two never read as a contradiction."""
    from .terms import percent

    if volume.n_frames < 2:
        return Check("enhancement", None, "enhancement not measured: a single frame")
    ratio = enhancement_ratio(volume, roi, baseline_frames)
    mean = box_mean_enhancement(volume, roi, baseline_frames)
    both = (f"its brightest voxels (99th percentile) by {percent(ratio)}, its mean signal (the kidney-ROI curve) "
            f"by {percent(mean) if np.isfinite(mean) else 'an unknown amount'}")
    if ratio >= MIN_ENHANCEMENT:
        return Check("enhancement", True, f"enhancing kidney: over the pre-contrast baseline the box rises, {both}")
    return Check("enhancement", False, f"no enhancing kidney found: over the pre-contrast baseline the analysed box "
                                       f"rises only, {both} (a kidney's brightest voxels after contrast rise by at "
                                       f"least {100 * MIN_ENHANCEMENT:.0f} %)")


def frame_times_check(times) -> Check:
    if times is None:
        return Check("frame_times", False, "frame times unknown: the curves are in frame numbers and the image's "
                                           "timing cannot be compared with the training exams'")
    times = np.asarray(times, np.float64)
    if len(times) < 2:
        return Check("frame_times", None, "frame times not checked: a single frame")
    steps = np.diff(times)
    if not np.all(np.isfinite(times)) or np.any(steps <= 0):
        return Check("frame_times", False, "frame times do not increase from one frame to the next")
    duration, interval = float(times[-1] - times[0]), float(np.median(steps))
    words = f"{len(times)} frames over {duration:g} s, one every {interval:g} s"
    if interval > MAX_FRAME_INTERVAL_S:
        return Check("frame_times", False, f"{words}: too sparse for contrast kinetics (a renal DCE-MRI samples at "
                                           f"least every {MAX_FRAME_INTERVAL_S:g} s)")
    if not MIN_DURATION_S <= duration <= MAX_DURATION_S:
        return Check("frame_times", False, f"{words}: the acquisition should last {MIN_DURATION_S:g} s to "
                                           f"{MAX_DURATION_S / 60:g} min")
    return Check("frame_times", True, words)


def voxel_size_check(spacing: Sequence[float], model_spacing: Sequence[float]) -> Check:
    spacing = [float(s) for s in spacing]
    model_spacing = [float(s) for s in model_spacing]
    text = " x ".join(f"{s:.3g}" for s in spacing)
    model_text = " x ".join(f"{s:.3g}" for s in model_spacing)
    ratios = [s / m for s, m in zip(spacing, model_spacing, strict=True)]
    if all(1 / MAX_SPACING_RATIO <= r <= MAX_SPACING_RATIO for r in ratios):
        return Check("voxel_size", True, f"voxel size {text} mm (the model reads {model_text} mm)")
    return Check("voxel_size", False, f"voxel size {text} mm is far from the {model_text} mm the model reads "
                                      f"(more than {MAX_SPACING_RATIO:g} times larger or smaller along one axis)")


def image_checks(volume, roi, model_spacing: Sequence[float], baseline_frames: int = 2) -> list[Check]:
    """The checks that need only the image (no model): dynamic, enhancement, frame times, voxel size."""
    return [dynamic_check(volume.n_frames), enhancement_check(volume, roi, baseline_frames),
            frame_times_check(volume.frame_times), voxel_size_check(volume.spacing, model_spacing)]


# --------------------------------------------------------------------------------------------------
# the embedding
# --------------------------------------------------------------------------------------------------
def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.clip(norms, 1e-12, None)


def _fit(vectors: np.ndarray) -> dict:
    """Centre and the main axes of a shrunk covariance (Ledoit-Wolf) of unit embeddings: at most
    :data:`MAX_REFERENCE_AXES` axes, so a card stays small for wide embeddings."""
    from sklearn.covariance import LedoitWolf

    fit = LedoitWolf().fit(vectors)
    variances, axes = np.linalg.eigh(fit.covariance_)
    keep = np.argsort(variances)[::-1][:MAX_REFERENCE_AXES]
    return {"center": fit.location_, "axes": axes[:, keep].T, "variances": np.clip(variances[keep], 1e-12, None)}


def _distance(model: Mapping, vectors) -> np.ndarray:
    centred = _unit(np.atleast_2d(np.asarray(vectors, np.float64))) - np.asarray(model["center"], np.float64)
    projected = centred @ np.asarray(model["axes"], np.float64).T
    return np.sqrt((projected ** 2 / np.asarray(model["variances"], np.float64)).sum(axis=1))


def embedding_reference(vectors, groups: Sequence | None = None, cohort: str | None = None,
                        margin: float = REFERENCE_MARGIN, folds: int = 5) -> dict:
    """What the ``embedding`` check compares with, from the embeddings ``(n, d)`` of a model's training
    exams (``groups``: their patients, so that a patient's exams are held out together).

    The distance of an exam is its Mahalanobis distance from those exams (unit vectors, Ledoit-Wolf
    covariance). The threshold is ``margin`` times the largest distance of a training exam measured while
    its fold was held out (``folds``-fold), so that the training exams themselves are not judged by a
    covariance that saw them."""
    from sklearn.model_selection import GroupKFold, KFold

    vectors = np.asarray(vectors, np.float64)
    if vectors.ndim != 2 or len(vectors) < 10:
        raise ValueError(f"an embedding reference needs at least 10 exam embeddings, got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise ValueError("exam embeddings hold NaN or infinite values")
    vectors = _unit(vectors)
    held_out = np.zeros(len(vectors))
    if groups is not None and len(set(groups)) >= 2:
        splits = GroupKFold(n_splits=min(folds, len(set(groups)))).split(vectors, groups=list(groups))
    else:
        splits = KFold(n_splits=folds, shuffle=True, random_state=0).split(vectors)
    for train, test in splits:
        held_out[test] = _distance(_fit(vectors[train]), vectors[test])
    model = _fit(vectors)
    return {"cohort": cohort, "n_exams": int(len(vectors)),
            "distance": "Mahalanobis distance of the unit embedding from the training exams' (Ledoit-Wolf covariance)",
            "center": _short(model["center"]), "axes": [_short(row) for row in model["axes"]],
            "variances": _short(model["variances"]),
            "held_out": {"folds": folds, "median": float(np.median(held_out)),
                         "percentile_99": float(np.percentile(held_out, 99)), "max": float(held_out.max())},
            "margin": float(margin), "threshold": float(margin * held_out.max())}


def _short(values) -> list[float]:
    """Seven significant digits: enough for a distance, and a card that stays readable."""
    return [float(f"{float(v):.7g}") for v in values]


def embedding_distance(vector, reference: Mapping) -> float:
    vector = np.asarray(vector, np.float64).ravel()
    if vector.size != len(reference["center"]):
        raise ValueError(f"embedding of size {vector.size} but the reference has size {len(reference['center'])}")
    return float(_distance(reference, vector)[0])


def embedding_check(vector, reference: Mapping | None) -> Check:
    if not reference:
        return Check("embedding", None, "distance to the training exams not checked: the model card stores no "
                                        "reference of its training data")
    distance = embedding_distance(vector, reference)
    threshold = float(reference["threshold"])
    words = (f"distance from the training exams {distance:.1f} (limit {threshold:.1f}: "
             f"{reference.get('margin', REFERENCE_MARGIN):g} x the largest among {reference.get('n_exams', '?')} "
             "training exams, each measured while held out)")
    if distance <= threshold:
        return Check("embedding", True, words)
    return Check("embedding", False, f"the image looks unlike the exams the model was trained on: {words}")
