"""The training's batches: which samples form each batch of an epoch (seeded), their collation, the
batched augmentation and the transfer to the training device, built ahead in a background thread where
that overlaps with something."""

from __future__ import annotations

import numpy as np
import torch

from .data import ContrastiveDataset, augment_batch


def collate(samples: list[dict]) -> dict:
    batch = {"image": torch.stack([s["image"] for s in samples]), "text": [s["text"] for s in samples]}
    if samples and "augment" in samples[0]:
        batch["augment"] = torch.stack([s["augment"] for s in samples])
    return batch


def make_batch(dataset: ContrastiveDataset, indices, pin: bool = False) -> dict:
    """Cached images, prompts and drawn augmentations of ``indices`` (see :func:`batch_stream`)."""
    batch = collate([dataset.sample(int(i)) for i in indices])
    if pin:
        batch["image"] = batch["image"].pin_memory()
    return batch


def batch_images(batch: dict, device: torch.device) -> torch.Tensor:
    """The batch's images on ``device``, augmented in one batched pass (see ``augment_batch``): on the
    GPU for CUDA, else on the CPU before the transfer (3D grid sampling is not on every backend)."""
    images = batch["image"]
    if "augment" in batch and device.type != "cuda":
        images = augment_batch(images, batch["augment"])
    images = to_device(images, device)
    if "augment" in batch and device.type == "cuda":
        images = augment_batch(images, batch["augment"])
    return images


def batch_indices(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool, drop_last: bool) -> list:
    """The epoch's batches of sample indices (seeded by (seed, epoch); batches of one are dropped)."""
    order = np.arange(n)
    if shuffle:
        np.random.default_rng((seed, epoch, 7)).shuffle(order)
    stop = n - (n % batch_size if drop_last else 0)
    return [order[i:i + batch_size] for i in range(0, stop, batch_size) if len(order[i:i + batch_size]) >= 2]


def prefetch(iterable, depth: int = 2):
    """Produce the items of ``iterable`` in a background thread, ``depth`` ahead of the consumer.

    Batches (augmentation, prompt draw, collation) are built while the model trains on the previous
    one. The order is unchanged and each sample's randomness is seeded per sample, so results are the
    same as without prefetching. When the consumer stops early (a stop request mid-epoch) the producer
    finishes the batch in hand and is joined, so no thread is still running torch code when the
    interpreter exits (a daemon thread killed inside a torch call can crash the process at exit).
    """
    import queue
    import threading

    items: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in iterable:
                if not offer(item):
                    return
            offer(done)
        except BaseException as exc:  # re-raised in the consumer
            offer(exc)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def batch_stream(dataset: ContrastiveDataset, chunks, device: torch.device):
    """``(position, batch)`` for each chunk of sample indices, as the training loop consumes them.

    Built in a background thread (:func:`prefetch`) where that overlaps with something: GPU work, or
    exams read from disk because the dataset does not hold them all in memory. On the CPU with every exam
    cached a batch takes a few milliseconds to build, and a second thread running torch ops wakes a second
    OpenMP team that spin-waits on the cores the model trains on (measured 25 % slower on 2 cores), so
    batches are built inline there.
    """
    pin = device.type == "cuda"
    produced = ((position, make_batch(dataset, chunk, pin)) for position, chunk in chunks)
    if device.type == "cuda" or not dataset.fully_cached:
        return prefetch(produced)
    return produced


def batches(dataset: ContrastiveDataset, batch_size: int, seed: int, epoch: int, shuffle: bool, drop_last: bool):
    for chunk in batch_indices(len(dataset), batch_size, seed, epoch, shuffle, drop_last):
        yield make_batch(dataset, chunk)


def to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Images to the training device; channels-last 3D on CUDA (cuDNN's preferred layout for AMP)."""
    if device.type == "cuda":
        return images.to(device=device, memory_format=torch.channels_last_3d, non_blocking=True)
    return images.to(device)
