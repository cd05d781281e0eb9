"""Where the model looked: Grad-CAM, Grad-CAM++ and occlusion sensitivity (``monai.visualize``) and
integrated gradients.

Two targets: the similarity between the image and a prompt, or the prognosis logit of one horizon. Maps
are computed on the model grid, normalised to 0..1 with high = important (MONAI's default normaliser
maps max to 0, so it is replaced), and resampled into the source volume's geometry inside the ROI.
How faithful each method is (share on the graft, deletion and insertion, the weight-randomisation check)
is measured by :mod:`napari_medimp.core.faithfulness` and ``benchmarks/bench_saliency.py``;
:func:`randomised_copy` gives the model with randomised weights that check needs.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .preprocess import PreparedInput, RoiBox
from .prognosis import FEATURES_ID
from .prompts import EXAMS
from .terms import DEFAULT_EXAM, SALIENCY_METHODS
from .volume import DCEVolume

METHODS = SALIENCY_METHODS
#: integrated gradients: steps of the path from the baseline (zeros: the pre-contrast level, which is also
#: what the model sees around the kidney box) to the image, and the Gaussian smoothing (model voxels) of
#: the attributions' magnitude
IG_STEPS = 32
IG_SMOOTHING = 1.5


def normalize01(array) -> np.ndarray:
    """Min-max to 0..1 keeping orientation (high stays high); a constant map becomes zeros."""
    array = np.nan_to_num(np.asarray(array, np.float32))
    low, high = float(array.min()), float(array.max())
    if high - low <= 1e-12:
        return np.zeros_like(array)
    return (array - low) / (high - low)


class SimilarityTarget(nn.Module):
    """Scalar per image: cosine similarity of its embedding with a fixed text embedding."""

    def __init__(self, model: nn.Module, text_vector: np.ndarray):
        super().__init__()
        self.model = model
        self.register_buffer("text", torch.as_tensor(np.asarray(text_vector, np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.model.encode_image(x) @ self.text.to(x.dtype))[:, None]


class PrognosisTarget(nn.Module):
    """Scalar per image: the image-only (MEDIMP) prognosis logit of one horizon for a reading at the
    exam's visit, with this image as the only exam so far."""

    def __init__(self, model: nn.Module, head, exam: str):
        super().__init__()
        if head.features != FEATURES_ID:
            raise ValueError(f"prognosis head uses features {head.features!r}, expected {FEATURES_ID!r}")
        if head.kind != "image":
            raise ValueError(f"saliency explains an image-only prognosis head, not {head.kind!r}")
        exam = exam.upper()
        if exam not in EXAMS:
            raise ValueError(f"exam must be one of {', '.join(EXAMS)}, got {exam!r}")
        self.model = model
        self.register_buffer("mean", torch.as_tensor(head.mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(head.scale, dtype=torch.float32))
        self.register_buffer("coef", torch.as_tensor(head.coef, dtype=torch.float32))
        self.intercept = float(head.intercept)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embedding = self.model.encode_image(x)
        features = embedding / embedding.norm(dim=1, keepdim=True).clamp_min(1e-12)  # one exam: its unit vector
        return (((features - self.mean) / self.scale) @ self.coef + self.intercept)[:, None]


def model_grid_map(target: nn.Module, x: torch.Tensor, method: str, layer: str,
                   mask_size: int | tuple[int, int, int] | None = None, n_batch: int = 8,
                   overlap: float = 0.25) -> np.ndarray:
    """Saliency of ``target(x)[:, 0]`` on the model grid ``(z, y, x)``, 0..1, high = important.

    ``layer`` is the dotted name (inside ``target``) of the convolutional stage used by Grad-CAM.
    Occlusion costs one forward per patch position: the default patch is a quarter of the grid per
    axis with 25 % overlap (about 150 forwards), coarse but affordable on a CPU. Integrated gradients
    costs :data:`IG_STEPS` forwards and backwards; its map is the attributions' magnitude summed over
    channels and smoothed by a Gaussian of :data:`IG_SMOOTHING` voxels.
    """
    if method not in METHODS:
        raise ValueError(f"saliency method must be one of {', '.join(METHODS)}, got {method!r}")
    target.eval()
    x = x.detach().clone()
    if method == "integrated-gradients":
        return integrated_gradients_map(target, x)
    from monai.visualize import GradCAM, GradCAMpp, OcclusionSensitivity

    if method in ("gradcam", "gradcam++"):
        cam_class = GradCAM if method == "gradcam" else GradCAMpp
        cam = cam_class(nn_module=target, target_layers=layer, postprocessing=lambda m: m)
        trainable = [p for p in target.parameters() if p.requires_grad]
        try:  # gradients of activations only: no weight gradients to compute
            for p in trainable:
                p.requires_grad_(False)
            with torch.enable_grad():
                x = x.to(memory_format=torch.channels_last_3d).requires_grad_(True)
                raw = cam(x, class_idx=0)
        finally:
            for p in trainable:
                p.requires_grad_(True)
        return normalize01(raw.detach().cpu().numpy()[0, 0])
    with torch.no_grad():
        reference = float(target(x)[0, 0])
    if mask_size is None:
        mask_size = tuple(max(2, s // 4) for s in x.shape[2:])
    occlusion = OcclusionSensitivity(nn_module=target, mask_size=mask_size, n_batch=n_batch, verbose=False,
                                     mode="mean_img", overlap=overlap, activate=False)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MONAI's own indexing deprecation notices
        occluded, _ = occlusion(x)
    drop = reference - occluded.detach().cpu().numpy()[0, 0]
    return normalize01(np.clip(drop, 0.0, None))


def integrated_gradients_map(target: nn.Module, x: torch.Tensor, steps: int = IG_STEPS,
                             smoothing: float = IG_SMOOTHING, batch: int = 8) -> np.ndarray:
    """Integrated gradients (Sundararajan et al., ICML 2017) of ``target(x)[:, 0]`` from a zero baseline, as
    a 0..1 map on the model grid: the magnitude of ``x * mean gradient`` along the straight path (midpoint
    rule, ``steps`` points) summed over channels, Gaussian-smoothed by ``smoothing`` voxels.

    Written here rather than taken from Captum: it is a dozen lines of autograd, and Captum's import alone
    took 11 s on the development machine."""
    from scipy import ndimage

    trainable = [p for p in target.parameters() if p.requires_grad]
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps
    total = torch.zeros_like(x)
    try:  # gradients of the input only
        for p in trainable:
            p.requires_grad_(False)
        with torch.enable_grad():
            for start in range(0, steps, batch):
                path = (alphas[start:start + batch].view(-1, 1, 1, 1, 1) * x).requires_grad_(True)
                (gradient,) = torch.autograd.grad(target(path)[:, 0].sum(), path)
                total += gradient.sum(dim=0, keepdim=True)
    finally:
        for p in trainable:
            p.requires_grad_(True)
    magnitude = (x * total / steps).abs().sum(dim=1)[0].detach().cpu().numpy()
    if smoothing > 0:
        magnitude = ndimage.gaussian_filter(magnitude, smoothing, mode="constant")
    return normalize01(magnitude)


def randomised_copy(module: nn.Module, parts: Sequence[str] | None = None, seed: int = 0) -> nn.Module:
    """A copy of ``module`` whose weights under ``parts`` (dotted names; default: all of it) are drawn
    afresh: every layer re-initialised by its own default (``reset_parameters``, batch-norm statistics
    reset) and any other parameter redrawn from a normal law with its own standard deviation. The weight
    randomisation sanity check compares a method's maps of ``module`` and of this copy."""
    copied = copy.deepcopy(module)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        roots = [copied.get_submodule(name) for name in parts] if parts else [copied]
        for root in roots:
            for sub in root.modules():
                if hasattr(sub, "reset_parameters"):
                    sub.reset_parameters()
                if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                    sub.reset_running_stats()
                if not hasattr(sub, "reset_parameters"):
                    with torch.no_grad():
                        for param in sub.parameters(recurse=False):
                            param.normal_(0.0, float(param.std()) if param.numel() > 1 else 1.0)
    finally:
        torch.random.set_rng_state(generator_state)
    return copied.eval()


#: the image path of a saliency target: what :func:`randomised_copy` redraws for the sanity check
IMAGE_PATH = ("model.image_encoder", "model.image_projection")


@dataclass
class SaliencyMap:
    """A 0..1 map on the source voxel grid inside ``roi`` (same spacing and orientation as the source)."""

    data: np.ndarray
    roi: RoiBox
    method: str
    target: str
    score: float
    roi_affine: np.ndarray
    model_grid: np.ndarray
    #: the exam (visit) it was computed for
    exam: str | None = None
    #: the method's faithfulness on unseen labelled exams, from the model card (None: not measured)
    method_faithfulness: dict | None = None

    def layer_geometry(self, volume: DCEVolume) -> dict:
        """``scale``/``translate`` of a 3D layer that overlays the source volume's spatial axes."""
        geometry = volume.layer_geometry()
        scale = np.asarray(geometry["scale"][1:])
        translate = np.asarray(geometry["translate"][1:]) + np.asarray(self.roi.start) * scale
        return {"scale": tuple(float(s) for s in scale), "translate": tuple(float(t) for t in translate)}


def compute_saliency(predictor, volume: DCEVolume, roi=None, *, method: str = "gradcam",
                     target: str = "similarity", prompt: str | None = None, exam: str = DEFAULT_EXAM,
                     mask_size: int | tuple[int, int, int] | None = None,
                     progress: Callable[[str, float], None] | None = None) -> SaliencyMap:
    """Saliency of one exam for ``target`` = "similarity" (with ``prompt``) or a prognosis horizon."""
    if progress:
        progress("preprocessing", 0.0)
    roi = predictor.roi_for(volume, roi)
    prepared: PreparedInput = predictor.prepare(volume, roi)
    model = predictor.model
    if target == "similarity":
        if not prompt:
            raise ValueError("similarity saliency needs a prompt")
        wrapper = SimilarityTarget(model, predictor.embed_texts([prompt])[0])
    elif target in predictor.prognosis_horizons:
        wrapper = PrognosisTarget(model, predictor.prognosis_head("image", exam.upper(), target), exam)
    else:
        known = ", ".join(["similarity", *predictor.prognosis_horizons])
        raise ValueError(f"saliency target must be one of {known}; got {target!r}")
    wrapper.to(predictor.device)
    x = prepared.tensor[None].to(predictor.device)  # Grad-CAM hooks need a plain contiguous input
    if progress:
        progress(f"computing {method}", 0.3)
    with torch.no_grad():
        score = float(wrapper(x)[0, 0])
    grid = model_grid_map(wrapper, x, method, f"model.{model.gradcam_layer}", mask_size=mask_size)
    if progress:
        progress("resampling", 0.9)
    data, roi = prepared.to_source(grid)
    if progress:
        progress("done", 1.0)
    return SaliencyMap(np.clip(data, 0.0, 1.0), roi, method, target, score, prepared.roi_affine, grid,
                       exam=exam.upper(), method_faithfulness=card_faithfulness(predictor.card, method))


def card_faithfulness(card: dict, method: str) -> dict | None:
    """The model card's faithfulness figures of ``method`` (``saliency_faithfulness``, written by
    ``benchmarks/bench_saliency.py``) with the exams they were measured on; None when not measured."""
    measured = card.get("saliency_faithfulness") if isinstance(card, dict) else None
    if not isinstance(measured, dict) or not isinstance((measured.get("methods") or {}).get(method), dict):
        return None
    return {**measured["methods"][method], "exams": measured.get("exams"),
            "best_method": measured.get("best_method"), "measured": measured.get("measured")}
