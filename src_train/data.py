"""Cohort -> (exam image, prompt) pairs for contrastive training.

A cohort is a clinical table (``clinical.csv``, one row per patient) beside an image tree
``<patient>/<exam>/<sequence>/``. Each exam with an image becomes one item; its prompt is built from the
clinical values known at that exam (the same prompt builder and preprocessing the viewer uses). The
deterministic part (reading + preprocessing) is done once and cached; random augmentations (flip,
affine, blur, noise, gamma, as in the paper) and the paraphrase variant are drawn per sample per epoch,
and the augmentations are applied to whole batches in torch, on the training device.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from napari_medimp.core.io import DCEReadError, load_dce
from napari_medimp.core.preprocess import PreprocessConfig, prepare
from napari_medimp.core.prompts import ATTRIBUTES, prompt_variants, slot_values
from napari_medimp.core.training_run import (  # the exams and their split are the dialog's too (core)
    ExamItem,
    augmentation_settings,
    cohort_items,
    split_by_patient,
)

__all__ = ["ContrastiveDataset", "ExamItem", "PrepareExam", "augment_batch", "cohort_items", "draw_augmentation",
           "split_by_patient"]


class PrepareExam:
    """Deterministic transform: item dict -> preprocessed image tensor (C, z, y, x)."""

    def __init__(self, config: PreprocessConfig):
        self.config = config

    def __call__(self, item: dict) -> dict:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = prepare(load_dce(item["path"]), self.config)
        return {**item, "image": prepared.tensor}


# --------------------------------------------------------------------------------------------------
# augmentation: the paper's set (flip, affine, blur, noise, gamma), drawn per sample, applied per batch
# --------------------------------------------------------------------------------------------------
#: probabilities and ranges: ``napari_medimp.core.training_run.AUGMENTATION_DEFAULTS`` (a training option)
#: the draws of one sample's augmentation, in the order of its parameter vector: (name, length). The
#: yes/no draws (flip, affine, blur, noise, gamma) are 1.0 or 0.0.
AUGMENT_DRAWS = (("flip", 1), ("affine", 1), ("angles", 3), ("scales", 3), ("shifts", 3), ("blur", 1),
                 ("sigmas", 3), ("noise", 1), ("noise_std", 1), ("noise_seed", 1), ("gamma", 1),
                 ("gamma_value", 1))


def _draw_slices() -> dict[str, slice | int]:
    out, start = {}, 0
    for name, length in AUGMENT_DRAWS:
        out[name] = start if length == 1 else slice(start, start + length)
        start += length
    return out


#: position of each draw in the parameter vector: an index for single values, a slice for triples
DRAW = _draw_slices()
N_AUGMENT_PARAMS = sum(length for _, length in AUGMENT_DRAWS)


def draw_augmentation(seed: int, epoch: int, index: int, settings: dict | None = None) -> torch.Tensor:
    """The augmentation of sample ``index`` in ``epoch``: a float64 vector of ``N_AUGMENT_PARAMS``
    values laid out as :data:`AUGMENT_DRAWS` (read them through :data:`DRAW`), drawn from a generator
    seeded by ``(seed, epoch, index)``, whatever was drawn before, so a resumed run, or a rank holding
    part of the batch, draws exactly what one uninterrupted process does. Every value is drawn whether
    used or not (a fixed number of draws). ``settings``: probabilities and ranges
    (:func:`~napari_medimp.core.training_run.augmentation_settings`; None: the defaults).
    """
    a = augmentation_settings(settings)
    rng = np.random.default_rng((seed, epoch, index, 1))
    coins = rng.random(5)
    angles = rng.uniform(-a["rotate"], a["rotate"], 3)
    scales = 1.0 + rng.uniform(-a["scale"], a["scale"], 3)
    shifts = rng.uniform(-1.0, 1.0, 3) * np.asarray(a["translate"])
    sigmas = rng.uniform(*a["sigma"], 3)
    std = rng.uniform(0.0, a["noise_std"])
    noise_seed = float(rng.integers(2**31))
    gamma = rng.uniform(*a["gamma_range"])
    draws = {"flip": coins[0] < a["flip"], "affine": coins[1] < a["affine"], "angles": angles, "scales": scales,
             "shifts": shifts, "blur": coins[2] < a["blur"], "sigmas": sigmas, "noise": coins[3] < a["noise"],
             "noise_std": std, "noise_seed": noise_seed, "gamma": coins[4] < a["gamma"], "gamma_value": gamma}
    vector = np.empty(N_AUGMENT_PARAMS)
    for name, position in DRAW.items():
        vector[position] = draws[name]
    return torch.from_numpy(vector)


def _rotation(angles) -> np.ndarray:
    """Rotation about the z, y and x axes (in (z, y, x) coordinates)."""
    cz, cy, cx = np.cos(angles)
    sz, sy, sx = np.sin(angles)
    about_z = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    about_x = np.array([[cx, -sx, 0], [sx, cx, 0], [0, 0, 1]])
    return about_z @ about_y @ about_x


def _affine_theta(params: np.ndarray, size_zyx) -> np.ndarray:
    """``affine_grid`` matrix (3 x 4, (x, y, z) order, normalised coordinates) of a rotation + scale
    about the centre and a translation, defined in voxel units (as MONAI's RandAffine)."""
    linear = _rotation(params[DRAW["angles"]]) @ np.diag(params[DRAW["scales"]])
    half = np.asarray(size_zyx, dtype=float) / 2.0
    norm_linear = (linear * half[None, :]) / half[:, None]  # D^-1 A D
    norm_shift = params[DRAW["shifts"]] / half
    flip = [2, 1, 0]  # (z, y, x) -> (x, y, z)
    return np.concatenate([norm_linear[np.ix_(flip, flip)], norm_shift[flip, None]], axis=1)


def _gaussian_kernel(sigma: float, device, dtype) -> torch.Tensor:
    radius = max(1, int(4.0 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def _blur(image: torch.Tensor, sigmas) -> torch.Tensor:
    """Separable Gaussian blur of one ``(C, z, y, x)`` image, zero padding (as MONAI's GaussianFilter)."""
    import torch.nn.functional as F

    out = image.unsqueeze(0)
    channels = image.shape[0]
    for axis, sigma in enumerate(sigmas):
        k = _gaussian_kernel(float(sigma), image.device, image.dtype)
        shape = [1, 1, 1]
        shape[axis] = k.numel()
        weight = k.view(1, 1, *shape).expand(channels, 1, *shape).contiguous()
        padding = [0, 0, 0]
        padding[axis] = k.numel() // 2
        out = F.conv3d(out, weight, padding=tuple(padding), groups=channels)
    return out[0]


@torch.no_grad()
def augment_batch(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Apply each sample's drawn augmentation (:func:`draw_augmentation`) to a ``(B, C, z, y, x)`` batch,
    on the batch's device: flip of x, then one ``affine_grid``/``grid_sample`` for every sample with an
    affine (bilinear, zeros outside), blur, Gaussian noise (from the sample's own seed), gamma
    contrast (MONAI's ``AdjustContrast``: on the sample's min-max range). Returns a new tensor."""
    import torch.nn.functional as F

    p = params.detach().to("cpu", torch.float64).numpy()
    if p.shape != (images.shape[0], N_AUGMENT_PARAMS):
        raise ValueError(f"expected ({images.shape[0]}, {N_AUGMENT_PARAMS}) augmentation parameters, got {p.shape}")
    x = images
    def chosen(name: str) -> np.ndarray:
        return np.flatnonzero(p[:, DRAW[name]] > 0.5)

    flips = torch.as_tensor(p[:, DRAW["flip"]] > 0.5, device=x.device).view(-1, *[1] * (x.dim() - 1))
    x = torch.where(flips, x.flip(-1), x)  # a new tensor: the input is never modified
    idx = chosen("affine")
    if idx.size:
        size = x.shape[2:]
        theta = torch.as_tensor(np.stack([_affine_theta(p[i], size) for i in idx]), dtype=x.dtype, device=x.device)
        sel = torch.as_tensor(idx, device=x.device)
        grid = F.affine_grid(theta, [idx.size, *x.shape[1:]], align_corners=False)
        x[sel] = F.grid_sample(x[sel], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    for i in chosen("blur"):
        x[i] = _blur(x[i], p[i, DRAW["sigmas"]])
    for i in chosen("noise"):
        generator = torch.Generator(device=x.device).manual_seed(int(p[i, DRAW["noise_seed"]]))
        noise = torch.randn(x.shape[1:], generator=generator, device=x.device, dtype=torch.float32)
        x[i] = x[i] + (float(p[i, DRAW["noise_std"]]) * noise).to(x.dtype)
    for i in chosen("gamma"):
        low, high = x[i].min(), x[i].max()
        span = high - low
        x[i] = ((x[i] - low) / (span + 1e-7)).clamp_min(0) ** float(p[i, DRAW["gamma_value"]]) * span + low
    return x


class ContrastiveDataset:
    """Items -> {"image": tensor, "text": prompt, "patient", "exam"}; deterministic part cached.

    Each exam is read and preprocessed once (``cache_rate`` of them kept in memory; ``num_workers``
    threads prepare them). The paraphrase variant and the augmentation of sample ``i`` in epoch ``e`` are
    drawn from generators seeded by ``(seed, e, i)``, so a resumed run draws the same prompts and
    augmentations as an uninterrupted one, whatever was drawn before.

    ``dataset[i]`` gives the augmented image; the training loop takes :meth:`sample` (the cached image
    and the drawn augmentation) and augments whole batches on the training device with
    :func:`augment_batch`, which gives the same images.
    """

    def __init__(self, items: Sequence[ExamItem], config: PreprocessConfig, *,
                 attributes: Sequence[str] = ATTRIBUTES, augment: bool = True, seed: int = 0,
                 cache_rate: float = 1.0, num_workers: int = 0, augmentation: dict | None = None):
        self.attributes = tuple(attributes)
        self.augment_settings = augmentation_settings(augmentation)
        self.seed = seed
        self.epoch = 0
        self.augment = bool(augment)
        self.items, self.prompts, self.skipped = [], [], []
        for item in items:
            variants = prompt_variants(item.record, self.attributes)
            if any(v.strip() for v in variants):
                self.items.append(item)
                self.prompts.append(variants)
            else:
                self.skipped.append(f"{item.patient}/{item.exam}: no value for {', '.join(self.attributes)}")
        if not self.items:
            raise ValueError(f"no exam has a value for the prompt attributes {', '.join(self.attributes)}")
        self._prepare = PrepareExam(config)
        n_cached = int(round(max(0.0, min(1.0, cache_rate)) * len(self.items)))
        indices = range(len(self.items))
        # every exam is opened once here: one that cannot be read or prepared is skipped with its reason
        # (cached exams are prepared, the others only opened), so a bad file never stops a run midway
        if num_workers > 0 and len(self.items) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=num_workers) as pool:
                outcomes = list(pool.map(lambda i: self._try(i, i < n_cached), indices))
        else:
            outcomes = [self._try(i, i < n_cached) for i in indices]
        keep = [i for i, (_, problem) in enumerate(outcomes) if problem is None]
        for i, (_, problem) in enumerate(outcomes):
            if problem is not None:
                self.skipped.append(f"{self.items[i].patient}/{self.items[i].exam}: {problem}")
        if not keep:
            raise ValueError(f"no exam of the cohort could be read ({self.skipped[-1]})")
        self._cached: list[torch.Tensor] = [outcomes[i][0] for i in keep if outcomes[i][0] is not None]
        self.items = [self.items[i] for i in keep]
        self.prompts = [self.prompts[i] for i in keep]

    def _try(self, index: int, cache: bool) -> tuple[torch.Tensor | None, str | None]:
        """(prepared image when ``cache``, None) or (None, why the exam cannot be used)."""
        try:
            if cache:
                return self._prepared(index), None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                load_dce(self.items[index].image, lazy=True)
            return None, None
        except (DCEReadError, ValueError, OSError, RecursionError, MemoryError) as exc:
            from napari_medimp.core.failures import failure_message

            return None, failure_message(exc)[1]

    def _prepared(self, index: int) -> torch.Tensor:
        item = self.items[index]
        image = self._prepare({"path": str(item.image), "index": index})["image"]
        image = image.as_tensor() if hasattr(image, "as_tensor") else image
        return image.float().contiguous()

    def __len__(self) -> int:
        return len(self.items)

    @property
    def fully_cached(self) -> bool:
        """Whether every exam is held prepared in memory (else some are read from disk at each use)."""
        return len(self._cached) == len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def prompt(self, index: int) -> str:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        variants = self.prompts[index]
        return variants[int(rng.integers(len(variants)))]

    def image(self, index: int) -> torch.Tensor:
        """The preprocessed, unaugmented image ``(C, z, y, x)`` (do not modify it: it is the cache)."""
        return self._cached[index] if index < len(self._cached) else self._prepared(index)

    def slots(self, index: int) -> dict:
        """The bin words of the prompt of sample ``index`` (every attribute, None where missing)."""
        return slot_values(self.items[index].record)

    def augmentation(self, index: int) -> torch.Tensor:
        """The augmentation drawn for sample ``index`` in the current epoch (see :func:`draw_augmentation`)."""
        return draw_augmentation(self.seed, self.epoch, index, self.augment_settings)

    def sample(self, index: int) -> dict:
        """Cached image, prompt and ids, plus the drawn augmentation (``"augment"``) when augmenting."""
        item = self.items[index]
        out = {"image": self.image(index), "text": self.prompt(index), "patient": item.patient, "exam": item.exam}
        if self.augment:
            out["augment"] = self.augmentation(index)
        return out

    def __getitem__(self, index: int) -> dict:
        sample = self.sample(index)
        params = sample.pop("augment", None)
        image = sample["image"]
        sample["image"] = augment_batch(image[None], params[None])[0] if params is not None else image.clone()
        return sample
