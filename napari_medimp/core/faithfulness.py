"""How faithful a saliency map is, measured where the truth is known (torch-free).

Three measures, each on plain arrays:

* :func:`region_shares`: where the map lies against tissue labels. Per region (cortex, medulla,
  collecting system, artery, outside) its share of the box (voxels), of the map's energy (sum of the map's
  values, as Score-CAM's energy-based pointing game) and of the map's top 10 % voxels; plus the graft
  (cortex, medulla, collecting system) and the graft with its artery. A map no better than chance puts
  on a region the region's share of the box.
* :func:`deletion_insertion`: the model's score as the most important voxels are removed from the image
  (deletion: a faithful map makes it fall fast, low area) or added to an empty image (insertion: it
  rises fast, high area), each against the same curves in random voxel orders (Petsiuk et al., RISE,
  BMVC 2018). Scores are scaled so the full image reads 1 and the empty (baseline) image 0.
* :func:`rank_correlation` / :func:`randomisation_check`: Spearman rank correlation of the maps of the
  trained model and of the same model with randomised weights; a map that survives randomisation shows
  the image, not what the model learned (Adebayo et al., Sanity checks for saliency maps, NeurIPS 2018).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .terms import ARTERY, COLLECTING_SYSTEM, CORTEX, KIDNEY_REGION_NAMES, MEDULLA, TOP_FRACTION

#: the graft's own tissues, by name
GRAFT_REGIONS: tuple[str, ...] = tuple(KIDNEY_REGION_NAMES[v] for v in (CORTEX, MEDULLA, COLLECTING_SYSTEM))
#: the regions a map's shares are given for, in this order; "outside": every other voxel of the box
REGIONS: tuple[str, ...] = (*GRAFT_REGIONS, KIDNEY_REGION_NAMES[ARTERY], "outside")
#: the groups summed from them
GROUPS: dict[str, tuple[str, ...]] = {"graft": GRAFT_REGIONS,
                                      "graft and artery": (*GRAFT_REGIONS, KIDNEY_REGION_NAMES[ARTERY])}
#: the randomisation check passes when the trained and randomised maps' rank correlation is below this
RANDOMISATION_MAX_CORRELATION = 0.5


def _check_map(saliency, name: str = "saliency map") -> np.ndarray:
    array = np.asarray(saliency, dtype=np.float64)
    if array.size == 0:
        raise ValueError(f"the {name} is empty (shape {array.shape})")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"the {name} holds {int(np.sum(~np.isfinite(array)))} NaN or infinite values")
    return array


def top_weights(saliency, fraction: float = TOP_FRACTION) -> np.ndarray:
    """Weight of each voxel in the map's top ``fraction`` of voxels: 1 above the cut, 0 below, and voxels
    tied at the cut share what is left (so ties never depend on voxel order); the weights sum to
    ``round(fraction * n)`` (at least 1)."""
    values = _check_map(saliency).ravel()
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the top fraction must be in (0, 1], got {fraction}")
    k = max(1, int(round(fraction * values.size)))
    cut = np.partition(values, values.size - k)[values.size - k]
    above = values > cut
    tied = values == cut
    weights = above.astype(np.float64)
    weights[tied] = (k - above.sum()) / tied.sum()
    return weights.reshape(np.shape(saliency))


def region_shares(saliency, labels, *, fraction: float = TOP_FRACTION,
                  names: Mapping[int, str] | None = None) -> dict:
    """Where a non-negative map lies against tissue labels of the same shape (see the module docstring).

    Returns ``{"regions": {name: {"box", "energy", "top"}}, "groups": {"graft": ..., "graft and artery":
    ...}, "top_fraction", "voxels"}``; every share is in 0..1 and each kind sums to 1 over the regions.
    ``names``: label value -> region name (default: the project's tissue labels); values whose name is not
    a kidney region (:func:`kidney_regions`) count as "outside".
    """
    array = _check_map(saliency)
    labels = np.asarray(labels)
    if array.shape != labels.shape:
        raise ValueError(f"the saliency map has shape {array.shape} but the labels have shape {labels.shape}; "
                         "give both on the same grid")
    if array.min() < 0:
        raise ValueError(f"the saliency map has negative values (down to {array.min():g}); shares need a map "
                         "of importances >= 0")
    total = array.sum()
    if total <= 0:
        raise ValueError("the saliency map is zero everywhere: it has no share to give to any region")
    values_of = kidney_regions(KIDNEY_REGION_NAMES if names is None else names)
    top = top_weights(array, fraction)
    n_top = top.sum()

    def shares(mask: np.ndarray) -> dict[str, float]:
        return {"box": float(mask.mean()), "energy": float(array[mask].sum() / total),
                "top": float(top[mask].sum() / n_top)}

    masks = {region: np.isin(labels, values) for region, values in values_of.items()}
    regions = {region: shares(masks[region]) for region in REGIONS[:-1] if region in masks}
    regions["outside"] = shares(~np.logical_or.reduce([*masks.values(), np.zeros(labels.shape, bool)]))
    groups = {name: shares(np.logical_or.reduce([masks[r] for r in members]))
              for name, members in GROUPS.items() if all(r in masks for r in members)}
    return {"regions": regions, "groups": groups, "top_fraction": float(fraction), "voxels": int(array.size)}


def kidney_regions(names: Mapping[int, str] | None) -> dict[str, list[int]]:
    """Kidney region (cortex, medulla, collecting system, artery) -> the label values a label file names so
    (case and underscores ignored); regions it does not name are left out. Label values are never taken
    for tissues by their numbers: ``None`` (a file that names nothing) gives no region."""
    wanted = {name.replace("_", " ").strip().lower(): name for name in REGIONS[:-1]}
    out: dict[str, list[int]] = {}
    for value, name in (names or {}).items():
        region = wanted.get(str(name).replace("_", " ").strip().lower())
        if region is not None:
            out.setdefault(region, []).append(int(value))
    return {region: out[region] for region in REGIONS[:-1] if region in out}


# --------------------------------------------------------------------------------------------------
# deletion and insertion
# --------------------------------------------------------------------------------------------------
def _order(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Voxel indices from the most to the least important; ties in a random order."""
    return np.lexsort((rng.permutation(values.size), -values))


def deletion_insertion(score: Callable[[np.ndarray], Sequence[float]], image, saliency, *, steps: int = 20,
                       baseline: float | np.ndarray = 0.0, n_random: int = 3, batch: int = 8,
                       block: Sequence[int] | None = None, seed: int = 0) -> dict:
    """Deletion and insertion curves of a map, with their areas, against random voxel orders.

    ``score(images) -> scores``: the model's output for a stack of images (first axis); ``image``: the
    input the map explains, of shape ``saliency.shape`` or with leading channel axes (a voxel is removed in
    every channel); ``baseline``: what a removed voxel becomes (a value, or an array like ``image``).
    After each of ``steps`` equal steps the curves hold ``(score - score(empty)) / (score(full) -
    score(empty))``, so 1 is the full image and 0 the empty one; areas are the trapezoid rule over the
    removed (added) share 0..1. Deletion: lower is better; insertion: higher is better; a faithful map
    beats the mean of ``n_random`` random orders on both. ``block``: remove and add blocks of that many
    voxels per axis, ordered by the map's mean in each block (scattered single voxels make images a model
    never saw, and a random order then scores below the empty image).
    """
    image = _check_map(image, "image")
    values = _check_map(saliency)
    if image.shape[image.ndim - values.ndim:] != values.shape:
        raise ValueError(f"the saliency map has shape {values.shape} but the image has shape {image.shape}; "
                         "the map must cover the image's voxels")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    base = np.broadcast_to(np.asarray(baseline, np.float64), image.shape)
    full, empty = (float(s) for s in np.asarray(score(np.stack([image, base])), np.float64))
    span = full - empty
    if not abs(span) > 1e-9 * max(1.0, abs(full)):
        raise ValueError(f"the score is the same for the image and for the baseline ({full:g}): deletion and "
                         "insertion curves cannot be scaled")
    units = _block_ids(values.shape, block)
    n_units = int(units.max()) + 1
    unit_values = np.bincount(units.ravel(), values.ravel(), n_units) / np.bincount(units.ravel(), None, n_units)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions * n_units).astype(np.int64)
    rng = np.random.default_rng(seed)

    def curves(order):
        rank = np.empty(n_units, np.int64)
        rank[order] = np.arange(n_units)
        deleted, inserted = _curves_for(score, image, base, rank[units], counts, batch)
        return (deleted - empty) / span, (inserted - empty) / span

    deletion, insertion = curves(_order(unit_values, rng))
    random = [curves(rng.permutation(n_units)) for _ in range(max(0, n_random))]
    area = _trapezoid
    out = {"fractions": fractions, "deletion": deletion, "insertion": insertion,
           "deletion_auc": area(deletion, fractions), "insertion_auc": area(insertion, fractions),
           "score_full": full, "score_empty": empty}
    if random:
        out["random_deletion"] = np.mean([d for d, _ in random], axis=0)
        out["random_insertion"] = np.mean([i for _, i in random], axis=0)
        out["random_deletion_auc"] = area(out["random_deletion"], fractions)
        out["random_insertion_auc"] = area(out["random_insertion"], fractions)
    return out


def _block_ids(shape: tuple[int, ...], block: Sequence[int] | None) -> np.ndarray:
    """Index of the block each voxel belongs to (each voxel its own block when ``block`` is None)."""
    if block is None:
        return np.arange(int(np.prod(shape))).reshape(shape)
    block = tuple(int(b) for b in block)
    if len(block) != len(shape) or min(block) < 1:
        raise ValueError(f"block must give a size >= 1 for each of the map's {len(shape)} axes, got {block}")
    per_axis = [np.arange(n) // b for n, b in zip(shape, block, strict=True)]
    n_blocks = [int(a[-1]) + 1 for a in per_axis]
    return np.ravel_multi_index(np.meshgrid(*per_axis, indexing="ij"), n_blocks)


def _curves_for(score, image: np.ndarray, baseline: np.ndarray, rank: np.ndarray, counts: np.ndarray,
                batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores after removing (adding) the voxels whose ``rank`` is below each count."""
    lead = (1,) * (image.ndim - rank.ndim)  # channel axes: a voxel goes in every channel
    deleted, inserted = [], []
    for start in range(0, len(counts), batch):
        chunk = counts[start:start + batch]
        masks = (rank[None] < chunk.reshape((-1,) + (1,) * rank.ndim)).reshape((len(chunk), *lead, *rank.shape))
        deleted.append(np.asarray(score(np.where(masks, baseline, image)), np.float64))
        inserted.append(np.asarray(score(np.where(masks, image, baseline)), np.float64))
    return np.concatenate(deleted), np.concatenate(inserted)


def _trapezoid(curve: np.ndarray, grid: np.ndarray) -> float:
    from scipy.integrate import trapezoid

    return float(trapezoid(curve, grid))


# --------------------------------------------------------------------------------------------------
# model randomisation
# --------------------------------------------------------------------------------------------------
def rank_correlation(first, second) -> float:
    """Spearman rank correlation of two maps of the same shape (scipy); 0 when either map is constant
    (it has no order to share)."""
    from scipy.stats import spearmanr

    a, b = _check_map(first, "first map"), _check_map(second, "second map")
    if a.shape != b.shape:
        raise ValueError(f"maps of different shapes cannot be compared: {a.shape} and {b.shape}")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    rho = float(spearmanr(a.ravel(), b.ravel())[0])
    return 0.0 if math.isnan(rho) else rho


def randomisation_check(trained, randomised, max_correlation: float = RANDOMISATION_MAX_CORRELATION) -> dict:
    """``{"rank_correlation", "passed"}``: passed when the trained model's map and the randomised model's
    map share less rank order than ``max_correlation``. A constant map of the trained model shows nothing
    that randomisation could destroy: never passed."""
    rho = rank_correlation(trained, randomised)
    measurable = np.ptp(_check_map(trained, "trained model's map")) > 0
    return {"rank_correlation": rho, "passed": bool(measurable and rho < max_correlation)}
