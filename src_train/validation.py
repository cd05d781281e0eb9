"""Validation of a training model: the contrastive loss beside its chance level and duplicate-prompt
floor, and image->text retrieval of the exact prompt and of the prompt content."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from .batches import batch_images, batches
from .data import ContrastiveDataset
from .losses import clip_loss
from .metrics import chance_loss, content_key, content_retrieval, duplicate_floor
from .precision import Precision


@torch.no_grad()
def validate(model, dataset: ContrastiveDataset, batch_size: int, loss_fn=clip_loss,
             precision: Precision | None = None) -> dict:
    """Validation loss beside its chance level and duplicate-prompt floor, image->text retrieval of the
    exact prompt (recall@1/5, mean rank of the true prompt) and of the prompt content (see
    :mod:`src_train.metrics`).

    ``loss_fn`` must not gather across ranks (every rank validates the whole set)."""
    model.eval()
    device = next(model.parameters()).device
    autocast = precision.autocast if precision else contextlib.nullcontext
    images, texts = [], []
    losses, sizes, batch_keys = [], [], []
    attributes = dataset.attributes
    slots = [dataset.slots(i) for i in range(len(dataset))]
    start = 0
    for batch in batches(dataset, batch_size, 0, 0, shuffle=False, drop_last=False):
        with autocast():
            img = model.encode_image(batch_images(batch, device))
            txt = model.encode_text(batch["text"])
        img, txt = img.float(), txt.float()
        losses.append(float(loss_fn(img, txt, model.clamped_logit_scale().exp().float())))
        images.append(img)
        texts.append(txt)
        n = len(batch["text"])
        sizes.append(n)
        batch_keys.append([content_key(slots[i], attributes) for i in range(start, start + n)])
        start += n
    if not images:
        return {}
    image_features = torch.cat(images)
    ranks = retrieval_ranks(image_features @ torch.cat(texts).T)

    def encode(prompts: list[str]) -> torch.Tensor:
        with autocast():
            return torch.cat([model.encode_text(prompts[i:i + 64]).float() for i in range(0, len(prompts), 64)])

    content = content_retrieval(image_features, [item.exam for item in dataset.items], slots, attributes, encode)
    return {"val_loss": float(np.mean(losses)), "val_chance_loss": chance_loss(sizes),
            "val_floor_loss": duplicate_floor(batch_keys), "recall_at_1": float((ranks <= 1).float().mean()),
            "recall_at_5": float((ranks <= 5).float().mean()), "mean_rank": float(ranks.mean()),
            "chance_mean_rank": (ranks.shape[0] + 1) / 2.0, "n_val": int(ranks.shape[0]), **content}


def retrieval_ranks(sim: torch.Tensor) -> torch.Tensor:
    """Rank of each image's true prompt (the diagonal) among all prompts, 1 = best. A tie counts against
    the true prompt, and a row holding NaN or Inf ranks last: a broken model never scores a win."""
    ranks = (sim >= sim.diag()[:, None]).sum(dim=1).float()
    ranks[~torch.isfinite(sim).all(dim=1)] = float(sim.shape[1])
    return ranks
