"""torch.distributed helpers for the contrastive loss: feature gathering and gradient averaging.

Everything here is a no-op in a single process (or when ``torch.distributed`` is not initialised),
so the training code can call it unconditionally.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["all_reduce_gradients", "gather_features", "is_distributed", "rank_and_world"]


def is_distributed() -> bool:
    """True when ``torch.distributed`` is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside distributed runs."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _check_equal_batches(local: torch.Tensor, world: int) -> None:
    sizes = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], dtype=torch.long, device=local.device))
    found = [int(s.item()) for s in sizes]
    if len(set(found)) != 1:
        raise ValueError(
            f"every rank needs the same local batch size to gather features, got {found} "
            "(use drop_last=True in the data loader)"
        )


class _AllGatherSumGrad(torch.autograd.Function):
    """All-gather along dim 0; backward sums the incoming gradients over ranks, keeps this rank's rows.

    The gradient every rank computes for rank ``r``'s rows (as negatives in its own loss) therefore
    reaches rank ``r``. Uses ``all_reduce`` rather than ``reduce_scatter`` because gloo lacks the
    latter.
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        rank, world = dist.get_rank(), dist.get_world_size()
        local = local.contiguous()
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local)
        ctx.rows = (rank * local.shape[0], (rank + 1) * local.shape[0])
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start, stop = ctx.rows
        return grad[start:stop]


def gather_features(
    image_features: torch.Tensor, text_features: torch.Tensor, sync_grads: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather ``(n, D)`` image and text features of every rank into ``(world * n, D)`` tensors.

    Rank ``r``'s rows sit at ``r * n : (r + 1) * n``; every rank must hold the same ``n``
    (``ValueError`` otherwise). Both tensors travel in one collective.

    ``sync_grads=True`` (what :class:`~src_train.losses.ContrastiveLoss` uses): the gather is
    differentiable and its backward sums, over ranks, the gradients for each rank's rows, so a loss
    computed on local rows against gathered columns gets exact gradients (see ``ContrastiveLoss``).

    ``sync_grads=False``: detached copies of the other ranks' features with this rank's own tensors
    re-inserted at its position. Gradients then reach the local features only through this rank's
    own loss; that is exact only when every rank computes the *whole* ``N x N`` loss. With a local
    loss (local rows against all columns) it misses the terms where other ranks use this rank's
    features as negatives (``tests/test_train_loss.py`` shows the difference).

    Outside distributed runs the inputs come back unchanged.
    """
    if image_features.shape[0] != text_features.shape[0]:
        raise ValueError(
            f"image and text batches differ: {image_features.shape[0]} != {text_features.shape[0]}"
        )
    if not is_distributed():
        return image_features, text_features
    rank, world = rank_and_world()
    _check_equal_batches(image_features, world)
    d_image = image_features.shape[1]
    both = torch.cat([image_features, text_features.to(image_features.dtype)], dim=1)
    if sync_grads:
        gathered = _AllGatherSumGrad.apply(both)
    else:
        parts = [torch.empty_like(both) for _ in range(world)]
        dist.all_gather(parts, both.detach().contiguous())
        parts[rank] = both
        gathered = torch.cat(parts, dim=0)
    return gathered[:, :d_image], gathered[:, d_image:].to(text_features.dtype)


def all_reduce_gradients(params: nn.Module | Iterable[nn.Parameter]) -> None:
    """Average ``.grad`` over ranks in place (what DDP does), for training without the DDP wrapper.

    Needed when the model's encoders are called directly (as :func:`~src_train.losses.accumulated_step`
    does) instead of through ``DistributedDataParallel.forward``. Every rank must pass the same
    parameters; a parameter without a gradient contributes zeros. No-op in a single process.
    """
    if not is_distributed():
        return
    world = dist.get_world_size()
    plist = list(params.parameters()) if isinstance(params, nn.Module) else list(params)
    for p in plist:
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(world)
