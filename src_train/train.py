"""MEDIMP contrastive pretraining loop (single process; the loss already supports DDP's gather).

Every epoch ends with an atomic training checkpoint (``last``: weights, optimiser and scheduler state as
safetensors + a JSON state; nothing is pickled) and, when the validation loss improves, an exported model
file (``best``). ``resume=True`` continues from ``last`` exactly: data order, prompt draws and
augmentations are seeded by (seed, epoch), and the random states are restored.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from napari_medimp.core.atomic import atomic_write
from napari_medimp.core.checkpoint import save_model
from napari_medimp.core.configs import strict_from_dict
from napari_medimp.core.models import ModelConfig, build_model
from napari_medimp.core.preprocess import PreprocessConfig
from napari_medimp.core.prompts import ATTRIBUTES, TEMPLATE_VERSION

from .data import ContrastiveDataset, cohort_items, split_by_patient
from .losses import ContrastiveLoss, accumulated_step

Progress = Callable[[dict], None]


@dataclass
class TrainConfig:
    cohort: str = ""
    out: str = "medimp-run"
    image_encoder: str = "clip_resnet_tiny"
    image_encoder_kwargs: dict = field(default_factory=dict)
    embed_dim: int = 64
    text_model: str | None = None
    text_trainable_layers: int = 1
    preprocessing: dict = field(default_factory=lambda: PreprocessConfig().to_dict())
    attributes: tuple[str, ...] = ATTRIBUTES
    epochs: int = 10
    batch_size: int = 8
    micro_batch: int | None = None
    lr: float = 1e-4
    weight_decay: float = 0.1
    warmup_steps: int = 10
    grad_clip: float = 1.0
    val_fraction: float = 0.2
    seed: int = 0
    augment: bool = True

    def __post_init__(self):
        self.attributes = tuple(self.attributes)
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be >= 1 and batch_size >= 2 (a contrastive batch needs negatives)")
        if self.micro_batch is not None and not 1 <= self.micro_batch <= self.batch_size:
            raise ValueError(f"micro_batch must be between 1 and batch_size ({self.batch_size})")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["attributes"] = list(self.attributes)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        return strict_from_dict(cls, data, "training options")


PRESETS = {
    "cpu-small": {"image_encoder": "clip_resnet_tiny", "image_encoder_kwargs": {"width": 16}, "embed_dim": 64,
                  "batch_size": 8, "epochs": 30, "lr": 3e-4},
    "paper": {"image_encoder": "clip_resnet50_3d", "embed_dim": 512, "batch_size": 22, "epochs": 200,
              "lr": 1e-4, "warmup_steps": 500,
              "preprocessing": PreprocessConfig(target_spacing=(1.0, 1.0, 1.0),
                                                input_size=(192, 144, 96)).to_dict()},
}


def model_config(config: TrainConfig) -> ModelConfig:
    prep = PreprocessConfig.from_dict(config.preprocessing)
    kwargs = {"text_model": config.text_model} if config.text_model else {}
    return ModelConfig(image_encoder=config.image_encoder, image_encoder_kwargs=dict(config.image_encoder_kwargs),
                       in_channels=prep.n_channels, input_size=prep.input_size, embed_dim=config.embed_dim,
                       text_trainable_layers=config.text_trainable_layers, **kwargs)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on norms, biases and the temperature."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to 0."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def collate(samples: list[dict]) -> dict:
    return {"image": torch.stack([s["image"] for s in samples]), "text": [s["text"] for s in samples]}


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
    same as without prefetching. Stops producing when the consumer stops early.
    """
    import queue
    import threading

    items: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(done)
        except BaseException as exc:  # re-raised in the consumer
            items.put(exc)

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


def batches(dataset: ContrastiveDataset, batch_size: int, seed: int, epoch: int, shuffle: bool, drop_last: bool):
    for chunk in batch_indices(len(dataset), batch_size, seed, epoch, shuffle, drop_last):
        yield collate([dataset[int(i)] for i in chunk])


@torch.no_grad()
def validate(model, dataset: ContrastiveDataset, batch_size: int, loss_fn) -> dict:
    """Validation loss and image->text retrieval: recall@1/5 and the mean rank of the true prompt."""
    model.eval()
    images, texts = [], []
    losses = []
    for batch in batches(dataset, batch_size, 0, 0, shuffle=False, drop_last=False):
        img, txt = model.encode_image(batch["image"]), model.encode_text(batch["text"])
        losses.append(float(loss_fn(img, txt, model.clamped_logit_scale().exp())))
        images.append(img)
        texts.append(txt)
    if not images:
        return {}
    sim = torch.cat(images) @ torch.cat(texts).T
    ranks = (sim > sim.diag()[:, None]).sum(dim=1).float() + 1  # 1 = the true prompt is the best match
    return {"val_loss": float(np.mean(losses)), "recall_at_1": float((ranks <= 1).float().mean()),
            "recall_at_5": float((ranks <= 5).float().mean()), "mean_rank": float(ranks.mean()),
            "n_val": int(sim.shape[0])}


# --------------------------------------------------------------------------------------------------
# training checkpoints: safetensors + JSON, written atomically
# --------------------------------------------------------------------------------------------------
def save_training_state(folder: Path, model, optimizer, scheduler, state: dict) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, entry in opt["state"].items():
        for key, value in entry.items():
            tensors[f"optim.{pid}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous().clone()
    state = {**state, "param_groups": opt["param_groups"], "scheduler": scheduler.state_dict(),
             "torch_rng": torch.get_rng_state().tolist()}
    atomic_write(folder / "last.safetensors", lambda tmp: save_file(tensors, tmp))
    atomic_write(folder / "last.json", lambda tmp: Path(tmp).write_text(json.dumps(state, default=float)))


def load_training_state(folder: Path, model, optimizer, scheduler) -> dict:
    from safetensors.torch import load_file

    state = json.loads((folder / "last.json").read_text())
    tensors = load_file(str(folder / "last.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_state: dict = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            opt_state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    return state


# --------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------
def train(config: TrainConfig, *, resume: bool = False, progress: Progress | None = None,
          should_stop: Callable[[], bool] | None = None) -> dict:
    """Train; returns the summary. ``should_stop`` is polled after every step: a stop saves ``last``
    with the position inside the epoch, and ``resume=True`` continues from there."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    emit = progress or (lambda event: None)
    torch.manual_seed(config.seed)
    prep = PreprocessConfig.from_dict(config.preprocessing)
    items, skipped = cohort_items(config.cohort)
    train_items, val_items = split_by_patient(items, config.val_fraction, config.seed)
    train_set = ContrastiveDataset(train_items, prep, attributes=config.attributes, augment=config.augment,
                                   seed=config.seed)
    val_set = ContrastiveDataset(val_items, prep, attributes=config.attributes, augment=False,
                                 seed=config.seed) if val_items else None
    model = build_model(model_config(config))
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr)
    steps_per_epoch = max(1, len(train_set) // config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.warmup_steps, total))
    loss_fn = ContrastiveLoss()
    state: dict = {}
    start_epoch, start_batch, step, best = 0, 0, 0, float("inf")
    if resume and (out / "last.json").exists():
        state = load_training_state(out, model, optimizer, scheduler)
        start_epoch, start_batch = state["next_epoch"], state["next_batch"]
        step, best = state["step"], state["best_val_loss"]
        emit({"event": "resumed", "epoch": start_epoch, "batch": start_batch, "step": step})
    (out / "train_config.json").write_text(json.dumps(config.to_dict(), indent=1) + "\n")
    log_path = out / "log.csv"
    if not resume or not log_path.exists():
        log_path.write_text("epoch,step,train_loss,lr,val_loss,recall_at_1,recall_at_5,mean_rank\n")
    emit({"event": "start", "train_exams": len(train_set), "val_exams": len(val_set or []),
          "skipped": skipped + train_set.skipped, "steps_per_epoch": steps_per_epoch, "epochs": config.epochs})

    def checkpoint(next_epoch: int, next_batch: int, losses: list) -> None:
        save_training_state(out, model, optimizer, scheduler,
                            {"next_epoch": next_epoch, "next_batch": next_batch, "step": step,
                             "best_val_loss": best, "epoch_losses": losses, "config": config.to_dict()})

    summary: dict = {}
    for epoch in range(start_epoch, config.epochs):
        model.train()
        train_set.set_epoch(epoch)
        chunks = batch_indices(len(train_set), config.batch_size, config.seed, epoch, True, True)
        first = start_batch if epoch == start_epoch else 0
        losses = list(state.get("epoch_losses", [])) if epoch == start_epoch and first else []
        t0 = time.perf_counter()
        produced = ((b, collate([train_set[int(i)] for i in chunks[b]])) for b in range(first, len(chunks)))
        for b, batch in prefetch(produced):
            optimizer.zero_grad(set_to_none=True)
            if config.micro_batch and config.micro_batch < len(batch["text"]):
                loss = accumulated_step(model, batch["image"], batch["text"], config.micro_batch, loss_fn)
            else:
                img, txt, scale = model(batch["image"], batch["text"])
                loss_t = loss_fn(img, txt, scale)
                loss_t.backward()
                loss = float(loss_t)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            model.clamp_logit_scale_()
            scheduler.step()
            step += 1
            losses.append(loss)
            emit({"event": "step", "epoch": epoch, "step": step, "loss": loss,
                  "lr": scheduler.get_last_lr()[0], "total_steps": total})
            if should_stop and should_stop() and b + 1 < len(chunks):
                checkpoint(epoch, b + 1, losses)
                emit({"event": "stopped", "epoch": epoch, "step": step,
                      "checkpoint": str(out / "last.safetensors")})
                return {"epoch": epoch, "step": step, "stopped": True}
        metrics = validate(model, val_set, config.batch_size, loss_fn) if val_set else {}
        train_loss = float(np.mean(losses)) if losses else float("nan")
        with open(log_path, "a", newline="") as fh:
            csv.writer(fh).writerow([epoch, step, train_loss, scheduler.get_last_lr()[0],
                                     *(metrics.get(k, "") for k in ("val_loss", "recall_at_1",
                                                                      "recall_at_5", "mean_rank"))])
        if metrics and metrics["val_loss"] < best:
            best = metrics["val_loss"]
            export(model, config, out / "best", metrics, epoch, len(train_set))
        checkpoint(epoch + 1, 0, [])
        summary = {"epoch": epoch, "step": step, "train_loss": train_loss, **metrics,
                   "seconds": time.perf_counter() - t0, "best_val_loss": best}
        emit({"event": "epoch", **summary})
        if should_stop and should_stop():
            emit({"event": "stopped", "epoch": epoch, "step": step, "checkpoint": str(out / "last.safetensors")})
            return {**summary, "stopped": True}
    export(model, config, out / "last_model", summary, summary.get("epoch", config.epochs - 1), len(train_set))
    plot_losses(log_path, out / "loss_curve.png")
    best_file = out / "best.safetensors"
    emit({"event": "done", **summary, "model": str(best_file if best_file.exists() else out / "last_model.safetensors")})
    return summary


def export(model, config: TrainConfig, path: Path, metrics: dict, epoch: int, n_train: int) -> Path:
    """A model file (safetensors + card) usable by the viewer and the CLI."""
    return save_model(path, model, preprocessing=config.preprocessing, prompt_template_version=TEMPLATE_VERSION,
                      training={"data": f"cohort {config.cohort}", "epochs": epoch + 1, "train_exams": n_train,
                                "config": config.to_dict()},
                      metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))})


def plot_losses(log_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    epochs = [int(r["epoch"]) for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot(epochs, [float(r["train_loss"]) for r in rows], label="train")
    val = [(int(r["epoch"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
    if val:
        ax.plot(*zip(*val, strict=True), label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("contrastive loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
