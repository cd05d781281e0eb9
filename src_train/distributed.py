"""torch.distributed helpers: process-group set-up for torchrun, feature gathering for the contrastive
loss, gradient averaging, batch-norm statistics synchronised across ranks, small collectives.

Everything here is a no-op in a single process (or when ``torch.distributed`` is not initialised),
so the training code can call it unconditionally.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistributedRun", "SyncBatchNormCPU", "all_gather_objects", "all_reduce_gradients", "any_rank",
    "broadcast_module", "broadcast_object", "convert_sync_batchnorm", "gather_features", "is_distributed",
    "mean_over_ranks", "rank_and_world", "setup_distributed",
]


# --------------------------------------------------------------------------------------------------
# process group
# --------------------------------------------------------------------------------------------------
@dataclass
class DistributedRun:
    """Where this process stands: rank, world size, local rank, device; ``owns_group`` when
    :func:`setup_distributed` initialised the process group (and :meth:`close` tears it down)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def setup_distributed(device: str | torch.device | None = "auto") -> DistributedRun:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``), or use one that is already initialised; else a single process.

    Device: ``"auto"`` picks cuda (then mps, then cpu); under torchrun with CUDA each process takes
    ``cuda:LOCAL_RANK``. Backend: nccl on CUDA, gloo otherwise.
    """
    from napari_medimp.core.inference import pick_device

    chosen = pick_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    already = dist.is_available() and dist.is_initialized()
    if world <= 1 and not already:
        return DistributedRun(device=chosen)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(chosen)
    elif chosen.type == "mps":
        raise ValueError("multi-process training needs CUDA or the CPU; run one process on mps")
    owns = False
    if not already:
        if not dist.is_available():
            raise RuntimeError("torch.distributed is not available in this PyTorch build")
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo",
                                **({"device_id": chosen} if chosen.type == "cuda" else {}))
        owns = True
    return DistributedRun(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank,
                          device=chosen, backend=str(dist.get_backend()), owns_group=owns)


# --------------------------------------------------------------------------------------------------
# small collectives
# --------------------------------------------------------------------------------------------------
def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (a stop request reaches all ranks)."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(value: float, flag: bool = False) -> tuple[float, bool]:
    """``(mean of value over ranks, any rank's flag)`` in one collective (the step's loss and stop)."""
    if not is_distributed():
        return float(value), bool(flag)
    t = torch.tensor([float(value), 1.0 if flag else 0.0], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t[0].item()) / dist.get_world_size(), bool(t[1].item() > 0)


def broadcast_object(obj=None, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (e.g. a checkpoint's bytes read by rank 0 only)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_collective_device())
    return box[0]


def all_gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order (e.g. each rank's random-number state for a checkpoint)."""
    if not is_distributed():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers onto every rank (what DDP does at construction)."""
    if not is_distributed():
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=src)


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


def all_reduce_gradients(params: nn.Module | Iterable[nn.Parameter], bucket_mb: float = 25.0) -> None:
    """Average ``.grad`` over ranks in place (what DDP does), for training without the DDP wrapper.

    Needed when the model's encoders are called directly (as :func:`~src_train.losses.accumulated_step`
    does) instead of through ``DistributedDataParallel.forward``. Every rank must pass the same
    parameters; a parameter without a gradient contributes zeros. Gradients travel flattened in
    buckets of about ``bucket_mb`` MiB (one collective per bucket, as DDP's buckets, rather than one
    per parameter). No-op in a single process.
    """
    if not is_distributed():
        return
    world = dist.get_world_size()
    plist = list(params.parameters()) if isinstance(params, nn.Module) else list(params)
    grads = []
    for p in plist:
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    limit = int(bucket_mb * 2**20)
    buckets: dict[tuple, list[list[torch.Tensor]]] = {}
    for g in grads:
        groups = buckets.setdefault((g.device, g.dtype), [[]])
        if groups[-1] and sum(t.numel() for t in groups[-1]) * g.element_size() + g.numel() * g.element_size() > limit:
            groups.append([])
        groups[-1].append(g)
    for groups in buckets.values():
        for bucket in groups:
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat.div_(world)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()


# --------------------------------------------------------------------------------------------------
# batch norm across ranks
# --------------------------------------------------------------------------------------------------
class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the backward sums the incoming gradients over ranks (every rank's output uses
    every rank's input)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class SyncBatchNormCPU(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics cover the global batch of every rank, on any backend.

    ``torch.nn.SyncBatchNorm`` only runs on GPUs; this one works on CPU (gloo) too. Mean and variance
    are reduced over ranks with a differentiable all-reduce (two passes: sum, then the sum of squared
    deviations from the global mean), so forward and backward equal those of one batch norm over the
    concatenated batch. Statistics are computed in float32 (also under autocast). Parameter and
    buffer names are those of ``BatchNorm*d``, so state dicts are interchangeable. Outside training
    mode or a distributed run it is a plain batch norm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not (self.training and is_distributed()):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.float()
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64, device=x.device)
        dist.all_reduce(count)
        n = float(count.item())
        mean = _AllReduceSum.apply(x.sum(dims)) / n
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / n
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                unbiased = var.detach() * (n / max(n - 1.0, 1.0))
                self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return out.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Batch-norm layers that normalise with the statistics of the global batch across ranks:
    ``torch.nn.SyncBatchNorm`` on CUDA, :class:`SyncBatchNormCPU` elsewhere. Weights are kept."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNormCPU):
        new = SyncBatchNormCPU(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats, device=_param_device(module))
        with torch.no_grad():
            if module.affine:
                new.weight.copy_(module.weight)
                new.bias.copy_(module.bias)
                new.weight.requires_grad_(module.weight.requires_grad)
                new.bias.requires_grad_(module.bias.requires_grad)
            if module.track_running_stats:
                new.running_mean.copy_(module.running_mean)
                new.running_var.copy_(module.running_var)
                new.num_batches_tracked.copy_(module.num_batches_tracked)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = _convert_cpu(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


def _param_device(module: nn.Module) -> torch.device:
    for t in [*module.parameters(), *module.buffers()]:
        return t.device
    return torch.device("cpu")
