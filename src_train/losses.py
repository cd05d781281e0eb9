"""Symmetric InfoNCE (CLIP) loss, its multi-process form, and exact gradient accumulation.

* :func:`clip_loss`: the loss on one batch.
* :class:`ContrastiveLoss`: the same loss under ``torch.distributed`` with every rank's features as
  negatives; the mean over ranks of its value and its DDP-averaged gradients equal the single-process
  loss and gradients on the concatenated batch.
* :func:`accumulated_step`: gradient accumulation that keeps the full negative set (feature cache), so
  the accumulated gradients equal those of one full-batch backward. The reference code divided the
  loss per micro-batch, so each micro-batch only saw its own negatives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import gather_features, is_distributed, rank_and_world

__all__ = ["ContrastiveLoss", "accumulated_step", "clip_loss"]

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Texts = Sequence[str] | Mapping[str, torch.Tensor]


def _symmetric_infonce(
    image_rows: torch.Tensor,
    text_rows: torch.Tensor,
    image_columns: torch.Tensor,
    text_columns: torch.Tensor,
    logit_scale: torch.Tensor | float,
    labels: torch.Tensor,
) -> torch.Tensor:
    logits_per_image = logit_scale * image_rows @ text_columns.T
    logits_per_text = logit_scale * text_rows @ image_columns.T
    return 0.5 * (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels))


def clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """Symmetric InfoNCE on one batch: mean of image->text and text->image cross-entropies.

    ``image_features`` and ``text_features`` are ``(N, D)``, unit-norm, row ``i`` of each being a
    positive pair; ``logit_scale`` is the already exponentiated scale (``1 / temperature``). The
    logits are ``logit_scale * image @ text.T``, the targets the diagonal.
    """
    labels = torch.arange(image_features.shape[0], device=image_features.device)
    return _symmetric_infonce(
        image_features, text_features, image_features, text_features, logit_scale, labels
    )


class ContrastiveLoss(nn.Module):
    """:func:`clip_loss` that, under ``torch.distributed`` (world size > 1), uses every rank's negatives.

    Variant: *local loss with differentiable gather*. Rank ``r`` holding ``n`` pairs gathers all
    ``N = world * n`` features (:func:`~src_train.distributed.gather_features` with
    ``sync_grads=True``) and computes the cross-entropy of its ``n`` local image rows against all
    ``N`` text columns, and of its ``n`` local text rows against all ``N`` image columns, with targets
    ``r * n + arange(n)``; the loss is the mean of the two. Logits cost ``n x N`` per rank, not ``N x N``.

    Hence, with equal local batches:

    * the mean over ranks of the loss equals :func:`clip_loss` on the concatenated batch;
    * the gather's backward sums over ranks the gradients each rank's loss sends to rank ``r``'s rows,
      so rank ``r``'s feature gradients are those of the *sum* of the rank losses, i.e.
      ``world x`` the single-process gradient rows; DDP's averaging of parameter gradients (or
      :func:`~src_train.distributed.all_reduce_gradients`) then yields exactly the gradient of the
      single-process loss, ``logit_scale`` included.

    In a single process it is :func:`clip_loss`.
    """

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
    ) -> torch.Tensor:
        """Loss of this rank's pairs against all gathered pairs (see the class docstring)."""
        if not is_distributed():
            return clip_loss(image_features, text_features, logit_scale)
        rank, _ = rank_and_world()
        all_images, all_texts = gather_features(image_features, text_features, sync_grads=True)
        n = image_features.shape[0]
        labels = torch.arange(n, device=image_features.device) + rank * n
        return _symmetric_infonce(image_features, text_features, all_images, all_texts, logit_scale, labels)


class ContrastiveModel(Protocol):
    """What :func:`accumulated_step` needs from a model (:class:`MedimpCLIP` provides it)."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, texts: Any) -> torch.Tensor: ...

    def clamped_logit_scale(self) -> torch.Tensor: ...

    def modules(self) -> Any: ...

    def parameters(self) -> Any: ...


def _slice_texts(texts: Texts, start: int, stop: int) -> Texts:
    if isinstance(texts, Mapping):
        return {k: v[start:stop] for k, v in texts.items()}
    return list(texts[start:stop])


def _n_texts(texts: Texts) -> int:
    if isinstance(texts, Mapping):
        return int(next(iter(texts.values())).shape[0])
    return len(texts)


def _running_stat_buffers(model: ContrastiveModel) -> list[torch.Tensor]:
    """Running statistics of every norm layer that tracks them (BatchNorm, InstanceNorm...)."""
    buffers: list[torch.Tensor] = []
    for module in model.modules():
        if (
            getattr(module, "track_running_stats", False)
            and getattr(module, "running_mean", None) is not None
        ):
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                buf = getattr(module, name, None)
                if isinstance(buf, torch.Tensor):
                    buffers.append(buf)
    return buffers


def _cuda_devices(model: ContrastiveModel, images: torch.Tensor) -> list[int]:
    devices = {p.device for p in model.parameters()} | {images.device}
    return sorted(
        {d.index if d.index is not None else torch.cuda.current_device() for d in devices if d.type == "cuda"}
    )


def _rng_state(cuda_devices: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in cuda_devices]


@contextmanager
def _replayed_rng(state: tuple[torch.Tensor, list[torch.Tensor]], cuda_devices: list[int]):
    """Run with the RNG set to ``state``; the RNG state from before comes back afterwards."""
    with torch.random.fork_rng(devices=cuda_devices):
        torch.set_rng_state(state[0])
        for d, s in zip(cuda_devices, state[1], strict=True):
            torch.cuda.set_rng_state(s, d)
        yield


def accumulated_step(
    model: ContrastiveModel,
    images: torch.Tensor,
    texts: Texts,
    micro_batch: int,
    loss_fn: LossFn | None = None,
    backward: Callable[[torch.Tensor], None] | None = None,
) -> float:
    """Accumulate into ``.grad`` the gradients of the full-batch contrastive loss, micro-batch by micro-batch.

    Feature-cache method (as in open_clip): (a) without autograd, encode every micro-batch to get
    the full batch's image and text features; (b) for each micro-batch, re-encode it with autograd,
    splice its features into the cached ones (the others stay constants), compute the *full-batch*
    loss and backward. Micro-batch ``j``'s pass yields exactly the full-batch loss's gradient with
    respect to micro-batch ``j``'s features, so the summed parameter gradients equal those of one
    full-batch backward, every micro-batch seeing all negatives, while activations are kept for one
    micro-batch at a time.

    ``logit_scale`` enters every micro-batch's loss, so those use its detached value; one final
    backward of the loss on the cached (constant) features then gives its gradient exactly once.

    Norm layers with running statistics (BatchNorm): the running statistics are saved before pass (a)
    and restored after it, so only pass (b) updates them: once per sample, as a plain train-mode
    forward of the same micro-batches would. Pass (a) still runs in the model's current mode, so its
    features equal pass (b)'s. BatchNorm in train mode normalises with micro-batch statistics, so the
    result equals a full-batch backward only for models without BatchNorm or in eval mode; in train
    mode it equals the backward of the micro-batched forward (features computed per micro-batch,
    concatenated, one loss).

    Dropout: pass (b) replays, for each micro-batch, the CPU and CUDA random state pass (a) started
    it with, so dropout masks match the cached features; the random state afterwards is the one
    left by pass (a). (On MPS the masks are not replayed.)

    Parameters
    ----------
    model:
        A :class:`~napari_medimp.core.models.MedimpCLIP` (or anything with ``encode_image``,
        ``encode_text`` and ``clamped_logit_scale``), not a DDP wrapper; under ``torch.distributed``
        average the gradients afterwards with :func:`~src_train.distributed.all_reduce_gradients`.
    images:
        ``(B, C, z, y, x)``.
    texts:
        ``B`` strings (or a token batch, a mapping of ``(B, T)`` tensors).
    micro_batch:
        Pairs per micro-batch (the last one may be smaller).
    loss_fn:
        ``(image_features, text_features, exp(logit_scale)) -> loss``; default :class:`ContrastiveLoss`
        (gathers the other ranks' features when distributed).
    backward:
        Called on each loss instead of ``loss.backward()``, e.g. ``lambda l: scaler.scale(l).backward()``.

    Returns
    -------
    float
        The full-batch loss. Gradients are added to ``.grad`` (zero them before, step after).
    """
    n = images.shape[0]
    if _n_texts(texts) != n:
        raise ValueError(f"{n} images but {_n_texts(texts)} texts")
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    loss_fn = loss_fn if loss_fn is not None else ContrastiveLoss()
    backward = backward if backward is not None else torch.Tensor.backward
    chunks = [(start, min(start + micro_batch, n)) for start in range(0, n, micro_batch)]
    cuda_devices = _cuda_devices(model, images)

    # (a) full-batch features without autograd; running statistics restored afterwards
    stats = _running_stat_buffers(model)
    saved_stats = [buf.clone() for buf in stats]
    rng_states = []
    image_parts, text_parts = [], []
    with torch.no_grad():
        for start, stop in chunks:
            rng_states.append(_rng_state(cuda_devices))
            image_parts.append(model.encode_image(images[start:stop]))
            text_parts.append(model.encode_text(_slice_texts(texts, start, stop)))
    for buf, saved in zip(stats, saved_stats, strict=True):
        buf.copy_(saved)
    image_cache = torch.cat(image_parts)
    text_cache = torch.cat(text_parts)

    # (b) one micro-batch with autograd at a time, against the full cached batch
    logit_scale = model.clamped_logit_scale().exp()
    fixed_scale = logit_scale.detach()
    for (start, stop), state in zip(chunks, rng_states, strict=True):
        with _replayed_rng(state, cuda_devices):
            image_features = model.encode_image(images[start:stop])
            text_features = model.encode_text(_slice_texts(texts, start, stop))
        all_images = torch.cat([image_cache[:start], image_features, image_cache[stop:]])
        all_texts = torch.cat([text_cache[:start], text_features, text_cache[stop:]])
        loss = loss_fn(all_images, all_texts, fixed_scale)
        if loss.requires_grad:
            backward(loss)

    # logit_scale's gradient, once (every rank runs this so collectives in loss_fn stay matched)
    loss = loss_fn(image_cache, text_cache, logit_scale)
    if loss.requires_grad:
        backward(loss)
    return float(loss.detach())
