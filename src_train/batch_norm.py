"""Batch-norm statistics recomputed exactly from images: the training's precise statistics before
validation and export, and the untrained baseline encoder of an evaluation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def image_batches(images: Sequence, batch_size: int = 8) -> list:
    """``images`` (each ``(C, z, y, x)``) stacked into batches of ``batch_size`` (the last may be smaller)."""
    import torch

    return [torch.stack(list(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]


def recalibrate_batchnorm(module, batches: Iterable) -> int:
    """Batch-norm running statistics of ``module`` recomputed from ``batches`` (each ``(B, C, z, y, x)``):
    reset, then an exact average over the batches (momentum None) in training mode; the module is left in
    eval mode and its weights are unchanged. Returns the number of batch-norm layers recalibrated."""
    import torch

    batches = list(batches)
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or not batches:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    device = next(module.parameters()).device
    module.train()
    try:
        with torch.no_grad():
            for batch in batches:
                module(batch.to(device))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        module.eval()
    return len(norms)
