"""MEDIMP contrastive pretraining loop: one process, or one process per GPU (or CPU rank) under torchrun.

Every epoch ends with an atomic training checkpoint (``last.safetensors``: weights and optimiser state,
with the JSON training state in the file's metadata, so that one rename publishes all of it; nothing is
pickled; ``last.json`` is a readable copy of the state) and, when the validation loss improves, an
exported model file (``best``). ``resume=True`` continues from ``last`` exactly: data order, prompt draws
and augmentations are seeded by (seed, epoch, sample), and the random states of every rank and the
mixed-precision loss scale are restored.

Under torchrun (``WORLD_SIZE`` > 1) each rank trains on its share of every global batch (the same
batches as a single process), image and text features are gathered across ranks for the loss (every
rank's pairs are negatives for all), gradients are averaged, batch norm uses the global batch's
statistics, and only rank 0 writes files and progress. A stop request on any rank stops all of them
at the same step.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from napari_medimp.core.atomic import atomic_write, temporaries_of
from napari_medimp.core.checkpoint import save_model
from napari_medimp.core.models import ModelConfig, build_model
from napari_medimp.core.preprocess import PreprocessConfig
from napari_medimp.core.prompts import TEMPLATE_VERSION
from napari_medimp.core.provenance import patients_seen_entry
from napari_medimp.core.training_run import (
    AMP_MODES,
    BEST_MODEL,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    LAST_MODEL,
    LOG_FILE,
    LOSS_CURVE_FILE,
    PRESETS,
    RUN_FILES,
    STATE_FILE,
    STATE_KEY,
    BatchPlan,
    TrainConfig,
    batch_plan,
    checkpoint_state,
    event,
)

from .data import ContrastiveDataset, augment_batch, cohort_items, split_by_patient
from .distributed import (
    DistributedRun,
    all_gather_objects,
    all_reduce_gradients,
    any_rank,
    broadcast_module,
    broadcast_object,
    convert_sync_batchnorm,
    mean_over_ranks,
    setup_distributed,
)
from .losses import ContrastiveLoss, accumulated_step, clip_loss
from .metrics import chance_loss, content_key, content_retrieval, duplicate_floor

Progress = Callable[[dict], None]


# --------------------------------------------------------------------------------------------------
# mixed precision
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Precision:
    """How the forward passes run: ``mode`` is "off", "bf16" or "fp16" (fp16 with a loss scaler)."""

    mode: str
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.mode)

    def autocast(self):
        if self.mode == "off":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler, active for fp16 only (a disabled one passes everything through)."""
        if self.mode != "fp16":
            return torch.amp.GradScaler("cpu", enabled=False)
        return torch.amp.GradScaler(self.device_type)


def resolve_amp(mode: str, device: torch.device) -> Precision:
    """``"auto"``: bf16 on a CUDA GPU that supports it, else fp16 with loss scaling; off elsewhere.
    ``"bf16"`` runs on CUDA and the CPU; ``"fp16"`` needs CUDA; ``"off"`` is float32."""
    if mode not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {mode!r}")
    kind = device.type
    if mode == "auto":
        if kind != "cuda":
            return Precision("off", kind)
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "fp16" and kind != "cuda":
        raise ValueError(f"amp 'fp16' needs a CUDA GPU (training on {kind}); use 'bf16' or 'off'")
    if mode == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU has no bf16 support; use amp 'fp16' or 'auto'")
    if mode == "bf16" and kind not in ("cuda", "cpu"):
        raise ValueError(f"amp 'bf16' runs on CUDA or the CPU, not {kind}; use 'off'")
    return Precision(mode, kind)


def _float32_loss(loss_fn, device_type: str):
    """The contrastive loss in float32 whatever the autocast state (logits and softmax stay exact)."""
    def loss(image_features, text_features, logit_scale):
        with torch.autocast(device_type, enabled=False):
            scale = logit_scale.float() if isinstance(logit_scale, torch.Tensor) else logit_scale
            return loss_fn(image_features.float(), text_features.float(), scale)
    return loss


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


# --------------------------------------------------------------------------------------------------
# training checkpoints: one safetensors file (state in its metadata), written atomically
# --------------------------------------------------------------------------------------------------
__all__ = ["AMP_MODES", "PRESETS", "TrainConfig", "train"]  # options live in core.training_run


def rng_state(device: torch.device) -> dict:
    """This process's random states (CPU, and CUDA when training there), JSON-able."""
    state = {"cpu": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if device.type == "cuda":
        state["cuda"] = base64.b64encode(torch.cuda.get_rng_state(device).numpy().tobytes()).decode()
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    def tensor(text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

    torch.set_rng_state(tensor(state["cpu"]))
    if device.type == "cuda" and state.get("cuda"):
        torch.cuda.set_rng_state(tensor(state["cuda"]), device)


def save_training_state(folder: Path, model, optimizer, scheduler, state: dict, *,
                        rng: list[dict] | None = None, scaler: torch.amp.GradScaler | None = None) -> None:
    """Write ``last.safetensors`` (model + optimiser tensors, the JSON state in its metadata) with one
    atomic rename, then ``last.json``, a readable copy of the state. ``rng``: every rank's random state
    (default: this process's)."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, entry in opt["state"].items():
        for key, value in entry.items():
            tensors[f"optim.{pid}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous().clone()
    device = next(model.parameters()).device
    state = {**state, "param_groups": opt["param_groups"], "scheduler": scheduler.state_dict(),
             "rng": rng if rng is not None else [rng_state(device)],
             "grad_scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None}
    text = json.dumps(state, default=float)
    atomic_write(folder / CHECKPOINT_FILE, lambda tmp: save_file(tensors, tmp, metadata={STATE_KEY: text}))
    atomic_write(folder / STATE_FILE, lambda tmp: Path(tmp).write_text(text))


def read_checkpoint(folder: Path) -> tuple[bytes, str | None] | None:
    """``(last.safetensors bytes, last.json text)`` of a run folder, or ``None`` without a checkpoint."""
    weights, state = Path(folder) / CHECKPOINT_FILE, Path(folder) / STATE_FILE
    if not weights.exists():
        return None
    return weights.read_bytes(), (state.read_text() if state.exists() else None)


def load_training_state(folder: Path, model, optimizer, scheduler, *, checkpoint=None,
                        scaler: torch.amp.GradScaler | None = None, rank: int = 0) -> dict:
    """Restore model, optimiser, scheduler, loss scale and this rank's random state; returns the state.

    ``checkpoint``: what :func:`read_checkpoint` returned (rank 0 reads it and broadcasts it), else
    read from ``folder``."""
    from safetensors.torch import load as load_bytes

    checkpoint = checkpoint if checkpoint is not None else read_checkpoint(folder)
    if checkpoint is None:
        raise FileNotFoundError(f"{folder}: no training checkpoint ({CHECKPOINT_FILE})")
    payload, json_text = checkpoint
    state = checkpoint_state(payload, json_text)
    tensors = load_bytes(payload)
    broken = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise ValueError(f"{folder / CHECKPOINT_FILE} holds NaN or infinite values ({', '.join(broken[:3])}"
                         f"{', ...' if len(broken) > 3 else ''}): it cannot be resumed; start again with --overwrite")
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)[:200]
        raise ValueError(f"{folder / CHECKPOINT_FILE} was saved from another model architecture ({first}); "
                         "resume with the run's own options (its train_config.json) or start again with "
                         "--overwrite") from None
    opt_state: dict = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            opt_state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    device = next(model.parameters()).device
    if "rng" in state:
        states = state["rng"]
        set_rng_state(states[rank] if rank < len(states) else states[0], device)
    elif "torch_rng" in state:  # checkpoints of earlier versions
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    if scaler is not None and scaler.is_enabled() and state.get("grad_scaler"):
        scaler.load_state_dict(state["grad_scaler"])
    return state


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporary files of checkpoint writes that a killed run left behind (``.last.*.part``)."""
    removed = [*temporaries_of(Path(folder) / CHECKPOINT_FILE), *temporaries_of(Path(folder) / STATE_FILE)]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


#: validation metrics logged per epoch after the step, training loss and learning rate (src_train.metrics)
LOG_METRICS = ("val_loss", "recall_at_1", "recall_at_5", "mean_rank", "val_chance_loss", "val_floor_loss",
               "chance_mean_rank", "content_top1", "content_baseline", "content_mean_rank", "n_contents")
LOG_HEADER = "epoch,step,train_loss,lr," + ",".join(LOG_METRICS) + "\n"


def _reset_log(log_path: Path, keep_before_epoch: int) -> None:
    """``log.csv`` with the rows of the epochs before ``keep_before_epoch`` only: a resumed run logs the
    epochs after its checkpoint again, so rows a killed run wrote after it are dropped."""
    rows = []
    if keep_before_epoch > 0 and log_path.exists():
        with open(log_path, newline="") as fh:
            rows = [r for r in csv.reader(fh)][1:]
        rows = [r for r in rows if r and r[0].isdigit() and int(r[0]) < keep_before_epoch]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            fh.write(LOG_HEADER)
            csv.writer(fh).writerows(rows)
    atomic_write(log_path, write)


# --------------------------------------------------------------------------------------------------
# provenance
# --------------------------------------------------------------------------------------------------
def command_line(argv: list[str] | None = None, prog: str | None = None) -> str:
    """The command that started this training, as typed: ``prog`` + ``argv`` (e.g. ``python -m src_train
    train --cohort ...``); under torchrun the launcher's own command line when it can be read."""
    if os.environ.get("TORCHELASTIC_RUN_ID") or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        try:
            parts = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode().split("\0")
            parts = [p for p in parts if p]
            if any("torch" in p for p in parts):
                return shlex.join(parts)
        except OSError:
            pass
    if argv is None:
        argv = sys.argv[1:]
        prog = prog or shlex.join([Path(sys.executable).name, sys.argv[0]])
    return shlex.join([*shlex.split(prog or "python -m src_train"), *argv])


def cohort_provenance(cohort) -> dict:
    """What the cohort folder records about how it was made: the data seed and generator of a
    synthetic cohort (``ground_truth.json``), else nothing."""
    truth = Path(cohort) / "ground_truth.json"
    try:
        data = json.loads(truth.read_text())
    except (OSError, ValueError):
        return {}
    out = {}
    if isinstance(data, dict) and "seed" in data:
        out["data_seed"] = data["seed"]
        if data.get("generator"):
            out["data_generator"] = f"{data['generator']} {data.get('generator_version', '')}".strip()
        if data.get("n_patients") is not None:
            out["data_patients"] = data["n_patients"]
    return out


def set_text_dropout(model, p: float) -> None:
    """Dropout probability of every dropout of the text encoder (BERT's attention reads the module's p)."""
    for module in model.text_encoder.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = float(p)


# --------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------
def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False, override: bool = False,
          progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
          command: str | None = None) -> dict:
    """Train; returns the summary. ``should_stop`` is polled after every step: a stop saves ``last``
    with the position inside the epoch, and ``resume=True`` continues from there.

    A run folder that holds an earlier run is used only with ``resume`` (continue it) or ``overwrite``
    (its run files are removed first); a lock keeps a second training out of a folder in use.
    Under torchrun every rank calls this with the same config; the process group is joined here and
    left at the end. ``command``: the command line recorded in the model card (default: ``sys.argv``).
    """
    run = setup_distributed(config.device)
    try:
        if resume and not (Path(config.out) / CHECKPOINT_FILE).is_file():  # a new run would start silently
            out = Path(config.out)
            raise ValueError(f"--resume: nothing to resume in {out} ({'no such folder' if not out.is_dir() else f'no {CHECKPOINT_FILE}'}); "
                             "leave out --resume to start a new run there")
        # exams that make no whole batch train nothing: refused before the run folder is touched
        problem = batch_plan(config, run.world).problem()
        if problem:
            raise ValueError(problem)
        with _run_folder_lock(Path(config.out), run.is_main):
            if run.is_main and not resume:
                _clear_earlier_run(Path(config.out), overwrite)
            return _train(config, run, resume, progress, should_stop, command, override)
    finally:
        run.close()


LOCK_FILE = "run.lock"
#: options that may change when a run is resumed (paths can move, a run can be extended or moved to a GPU)
RESUMABLE_CHANGES = ("epochs", "out", "cohort", "device")


def options_changed(saved: dict, now: dict) -> list[str]:
    """'lr 0.0001 -> 0.001' for every option but :data:`RESUMABLE_CHANGES` that differs from the saved run."""
    def plain(value):  # tuples and lists, as JSON keeps them
        return json.loads(json.dumps(value, default=float))

    defaults = TrainConfig().to_dict()  # an option newer than the saved run had its default there
    changed = []
    for key in sorted(set(saved) | set(now)):
        if key in RESUMABLE_CHANGES:
            continue
        before, after = plain(saved.get(key, defaults.get(key))), plain(now.get(key, defaults.get(key)))
        if before != after:
            changed.append(f"{key} {before} -> {after}")
    return changed


def _clear_earlier_run(out: Path, overwrite: bool) -> None:
    earlier = [name for name in (CHECKPOINT_FILE, *RUN_FILES) if (out / name).exists()]
    if not earlier:
        return
    if not overwrite:
        raise ValueError(f"{out} holds an earlier run ({', '.join(earlier)}); pass --resume to continue it, "
                         "--overwrite to replace it, or choose another --out")
    for name in earlier:
        (out / name).unlink()


@contextlib.contextmanager
def _run_folder_lock(out: Path, main: bool):
    """Hold ``run.lock`` (this process id) in the run folder while training; another live process's lock
    is a refusal naming it, a dead process's lock is taken over."""
    if not main:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_FILE
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pid = None
            if pid is not None and pid != os.getpid() and _alive(pid):
                raise ValueError(f"{out} is in use by another training (process {pid}); wait for it to end or "
                                 "choose another --out") from None
            lock.unlink(missing_ok=True)  # left by a process that no longer runs
    else:
        raise ValueError(f"{out}: cannot take the run folder's lock ({LOCK_FILE})")
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _train(config: TrainConfig, run: DistributedRun, resume: bool, progress: Progress | None,
           should_stop: Callable[[], bool] | None, command: str | None, override: bool = False) -> dict:
    training = _Training(config, run, progress, should_stop)
    training.override = override
    training.start(resume, command)
    summary: dict = {}
    for epoch in range(training.start_epoch, config.epochs):
        if training.early_stopped:
            training.emit("early_stop", epoch=epoch, best_mean_rank=training.best_rank, patience=config.patience)
            summary = {**summary, "early_stopped": True}
            break
        stopped = training.train_one_epoch(epoch)
        if stopped is not None:
            return stopped
        summary = training.end_epoch(epoch)
        if summary.get("stopped"):
            return summary
    return training.finish(summary)


class _Training:
    """One training run in steps: :meth:`start` (data, model, optimiser, resume), :meth:`train_one_epoch`,
    :meth:`end_epoch` (validation, log, best model, checkpoint) and :meth:`finish` (exports).

    Only rank 0 writes files and progress events; every rank runs every step."""

    def __init__(self, config: TrainConfig, run: DistributedRun, progress: Progress | None,
                 should_stop: Callable[[], bool] | None):
        if config.batch_size % run.world:
            raise ValueError(f"batch_size {config.batch_size} must be a multiple of the number of processes "
                             f"({run.world})")
        self.config, self.run = config, run
        self.out = Path(config.out)
        self.main = run.is_main
        self.progress = progress if (progress and run.is_main) else None
        self.should_stop = should_stop or (lambda: False)
        self.device = run.device
        self.precision = resolve_amp(config.amp, self.device)
        self.n_local = config.batch_size // run.world
        self.rows = slice(run.rank * self.n_local, (run.rank + 1) * self.n_local)  # this rank's share of a batch
        self.stop_requested = False
        self.override = False
        self.state: dict = {}
        self.start_epoch, self.start_batch, self.step, self.best = 0, 0, 0, float("inf")
        self.best_rank, self.stale_epochs = float("inf"), 0
        self.losses: list[float] = []
        #: the training loss of every step so far, resumed parts included (kept in the checkpoint's state)
        self.loss_history: list[float] = []

    def emit(self, kind: str, **fields) -> None:
        if self.progress is not None:
            self.progress(event(kind, **fields))

    # -- set-up ------------------------------------------------------------------------------------
    def start(self, resume: bool, command: str | None) -> None:
        config, run = self.config, self.run
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        self._build_data()
        self._build_model()
        checkpoint_data = broadcast_object(read_checkpoint(self.out) if self.main and resume else None)
        if checkpoint_data is not None and not self.override:
            saved = checkpoint_state(*checkpoint_data).get("config") or {}
            changed = options_changed(saved, config.to_dict())
            if changed:
                raise ValueError(f"{self.out} was trained with other options ({'; '.join(changed)}); resume with "
                                 "the same options (only the number of epochs may change), or pass --override "
                                 "to resume anyway (the model card then records the new options)")
        if checkpoint_data is not None:
            self.state = load_training_state(self.out, self.model, self.optimizer, self.scheduler,
                                             checkpoint=checkpoint_data, scaler=self.scaler, rank=run.rank)
            self.start_epoch, self.start_batch = self.state["next_epoch"], self.state["next_batch"]
            self.step, self.best = self.state["step"], self.state["best_val_loss"]
            self.best_rank = self.state.get("best_mean_rank", float("inf"))
            self.stale_epochs = int(self.state.get("stale_epochs", 0))
            self.loss_history = list(self.state.get("loss_history", []))[:self.step]
            self.emit("resumed", epoch=self.start_epoch, batch=self.start_batch, step=self.step)
        self.commands = [*self.state.get("commands", []), command or command_line()]
        self.log_path = self.out / LOG_FILE
        if self.main:
            remove_stale_temporaries(self.out)
            (self.out / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=1) + "\n")
            resumed = resume and self.log_path.exists() and checkpoint_data is not None
            _reset_log(self.log_path, self.start_epoch if resumed else 0)
        self.card = {**cohort_provenance(config.cohort), "command": self.commands[0],
                     "resume_commands": self.commands[1:], "world_size": run.world, "device": self.device.type,
                     "amp": self.precision.mode, "frozen_text_layers_cached": self.frozen_text_cached,
                     "patients_seen": patients_seen_entry(config.cohort, {i.patient for i in self.train_items},
                                                          {i.patient for i in self.val_items})}
        self.emit("start", train_exams=len(self.train_set), val_exams=len(self.val_set or []),
                  val_patients=len({i.patient for i in self.val_items}),
                  skipped=self.skipped + self.train_set.skipped + (self.val_set.skipped if self.val_set else []),
                  steps_per_epoch=self.steps_per_epoch,
                  epochs=config.epochs, world_size=run.world, device=str(self.device), amp=self.precision.mode,
                  frozen_text_cached=self.frozen_text_cached)

    def _build_data(self) -> None:
        config = self.config
        prep = PreprocessConfig.from_dict(config.preprocessing)
        items, self.skipped = cohort_items(config.cohort)
        self.train_items, self.val_items = split_by_patient(items, config.val_fraction, config.seed)
        self.train_set = ContrastiveDataset(self.train_items, prep, attributes=config.attributes,
                                            augment=config.augment, seed=config.seed,
                                            augmentation=config.augmentation)
        self.val_set = ContrastiveDataset(self.val_items, prep, attributes=config.attributes, augment=False,
                                          seed=config.seed) if self.val_items else None
        # again with the exams that could be read (an unreadable one is skipped): no step, no run
        plan = BatchPlan(len(self.train_set), len({i.patient for i in self.train_set.items}),
                         len(self.val_set or []), len({i.patient for i in self.val_items}), config.batch_size,
                         self.run.world)
        if plan.problem():
            raise ValueError(plan.problem())
        self.steps_per_epoch = plan.steps_per_epoch
        self.total_steps = self.steps_per_epoch * config.epochs

    def _build_model(self) -> None:
        config, run, device = self.config, self.run, self.device
        model = build_model(model_config(config))
        if config.text_dropout is not None:
            set_text_dropout(model, config.text_dropout)
        if run.world > 1 and config.sync_batchnorm:
            model = convert_sync_batchnorm(model, device)
        if device.type == "cuda":
            model = model.to(device=device, memory_format=torch.channels_last_3d)
        else:
            model = model.to(device)
        broadcast_module(model)
        # frozen text layers as a fixed feature extractor, once per prompt (False when the model does not allow it)
        self.frozen_text_cached = bool(config.cache_frozen_text and model.text_encoder.cache_frozen_layers())
        if self.frozen_text_cached:  # every prompt variant once, before the first step
            model.text_encoder.warm_frozen_cache([v for variants in self.train_set.prompts for v in variants])
        if run.world > 1:  # identical weights everywhere, then each rank its own dropout stream
            torch.manual_seed(config.seed * 1000 + run.rank)
        self.model = model
        self.optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lr_lambda(config.warmup_steps, self.total_steps))
        self.scaler = self.precision.grad_scaler()
        self.loss_fn = _float32_loss(ContrastiveLoss(), self.precision.device_type)

    # -- steps -------------------------------------------------------------------------------------
    def _backward(self, loss: torch.Tensor) -> None:
        with torch.autocast(self.precision.device_type, enabled=False):
            self.scaler.scale(loss).backward()

    def train_step(self, images: torch.Tensor, texts: list[str]) -> float:
        """One optimiser step on this rank's share of a batch; returns its loss."""
        config, model = self.config, self.model
        self.optimizer.zero_grad(set_to_none=True)
        if config.micro_batch and config.micro_batch < len(texts):  # per-rank micro-batches, all negatives
            with self.precision.autocast():
                loss = accumulated_step(model, images, texts, config.micro_batch, self.loss_fn,
                                        backward=self._backward)
        else:
            with self.precision.autocast():
                img, txt, scale = model(images, texts)
            loss_t = self.loss_fn(img, txt, scale)
            self._backward(loss_t)
            loss = float(loss_t.detach())
        all_reduce_gradients(model)
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        model.clamp_logit_scale_()
        self.scheduler.step()
        return loss

    def train_one_epoch(self, epoch: int) -> dict | None:
        """The epoch's steps from where it stands; a stop request mid-epoch saves a checkpoint at the next
        batch and returns the summary of the stop (else None)."""
        config = self.config
        self.model.train()
        self.train_set.set_epoch(epoch)
        chunks = batch_indices(len(self.train_set), config.batch_size, config.seed, epoch, True, True)
        first = self.start_batch if epoch == self.start_epoch else 0
        self.losses = list(self.state.get("epoch_losses", [])) if epoch == self.start_epoch and first else []
        self.epoch_started = time.perf_counter()
        mine = ((b, chunks[b][self.rows]) for b in range(first, len(chunks)))
        for b, batch in batch_stream(self.train_set, mine, self.device):
            local_loss = self.train_step(batch_images(batch, self.device), batch["text"])
            self.step += 1
            loss, stop_now = mean_over_ranks(local_loss, bool(self.should_stop()))
            if not math.isfinite(loss):
                raise ValueError(f"training diverged at step {self.step} (loss {loss}); the last good checkpoint "
                                 f"is kept in {self.out / CHECKPOINT_FILE}: resume with a lower learning rate")
            self.losses.append(loss)
            self.loss_history.append(loss)
            self.emit("step", epoch=epoch, step=self.step, loss=loss, lr=self.scheduler.get_last_lr()[0],
                      total_steps=self.total_steps)
            self.stop_requested = self.stop_requested or stop_now
            if stop_now and b + 1 < len(chunks):
                self.checkpoint(epoch, b + 1, self.losses)
                self.emit("stopped", epoch=epoch, step=self.step, checkpoint=str(self.out / CHECKPOINT_FILE))
                return {"epoch": epoch, "step": self.step, "stopped": True}
        return None

    def end_epoch(self, epoch: int) -> dict:
        """Validation, the log row, the best model, the checkpoint and the epoch event."""
        config = self.config
        if not self.losses:  # the batch check before the run makes this impossible; a model never trained
            raise ValueError(f"epoch {epoch + 1} took no training step ({len(self.train_set)} training exams, "
                             f"batch {config.batch_size}); no model was written")
        if config.precise_bn:  # also without validation: the checkpoint and exported models get them
            self.recompute_batchnorm()
        metrics = validate(self.model, self.val_set, config.batch_size,
                           _float32_loss(clip_loss, self.precision.device_type), self.precision) if self.val_set else {}
        train_loss = float(np.mean(self.losses)) if self.losses else float("nan")
        if self.main:
            with open(self.log_path, "a", newline="") as fh:
                csv.writer(fh).writerow([epoch, self.step, train_loss, self.scheduler.get_last_lr()[0],
                                         *(metrics.get(k, "") for k in LOG_METRICS)])
        # the best model is the one whose validation images rank their own prompts highest (mean rank;
        # ties broken by the loss); ``patience`` epochs without a better one stop the run
        if metrics and (metrics["mean_rank"], metrics["val_loss"]) < (self.best_rank, self.best):
            self.best, self.best_rank, self.stale_epochs = metrics["val_loss"], metrics["mean_rank"], 0
            if self.main:
                export(self.model, config, self.out / BEST_MODEL, {**metrics, "best_epoch": epoch}, epoch,
                       len(self.train_set), self.card)
        elif metrics:
            self.stale_epochs += 1
        self.checkpoint(epoch + 1, 0, [])
        summary = {"epoch": epoch, "step": self.step, "train_loss": train_loss, **metrics,
                   "seconds": time.perf_counter() - self.epoch_started, "best_val_loss": self.best,
                   "best_mean_rank": self.best_rank}
        self.emit("epoch", **summary)
        if any_rank(self.stop_requested or bool(self.should_stop())):
            self.emit("stopped", epoch=epoch, step=self.step, checkpoint=str(self.out / CHECKPOINT_FILE))
            return {**summary, "stopped": True}
        return summary

    def recompute_batchnorm(self) -> None:
        """Batch-norm statistics computed exactly from about ``precise_bn`` training images spread over the
        set (unaugmented, whole batches, a fixed set, so a resumed run computes the same), instead of the
        running averages of the last steps: validation and the exported model then see the statistics of
        the data, not of the last few batches (whose swings made the validation alternate from one epoch
        to the next). Under several processes each rank takes its share of every batch, so that batch norm
        (synchronised) sees the same batches as one process."""
        from .evaluate import recalibrate_batchnorm

        size = self.config.batch_size
        n = max(size, min(self.config.precise_bn, len(self.train_set)) // size * size)
        n = min(n, len(self.train_set) // size * size)
        if n < 2:
            return
        spread = np.linspace(0, len(self.train_set) - 1, n).round().astype(int)
        batches = [torch.stack([self.train_set.image(int(i)) for i in spread[start:start + size][self.rows]])
                   for start in range(0, n, size)]
        recalibrate_batchnorm(self.model.image_encoder, batches)

    @property
    def early_stopped(self) -> bool:
        """Whether ``patience`` epochs have passed without a better validation mean rank."""
        return bool(self.config.patience and self.stale_epochs >= self.config.patience)

    def checkpoint(self, next_epoch: int, next_batch: int, losses: list) -> None:
        rngs = all_gather_objects(rng_state(self.device))  # every rank takes part
        if self.main:
            save_training_state(self.out, self.model, self.optimizer, self.scheduler,
                                {"next_epoch": next_epoch, "next_batch": next_batch, "step": self.step,
                                 "best_val_loss": self.best, "best_mean_rank": self.best_rank,
                                 "stale_epochs": self.stale_epochs, "epoch_losses": losses,
                                 "loss_history": self.loss_history,
                                 "config": self.config.to_dict(), "world_size": self.run.world,
                                 "commands": self.commands},
                                rng=rngs, scaler=self.scaler)

    def finish(self, summary: dict) -> dict:
        if self.step == 0:  # a model that never took a step is not a trained model: none is written
            raise ValueError(f"the training took no step ({len(self.train_set)} training exams, batch "
                             f"{self.config.batch_size}); no model was written")
        if self.main:
            export(self.model, self.config, self.out / LAST_MODEL, summary,
                   summary.get("epoch", self.config.epochs - 1), len(self.train_set), self.card)
            plot_losses(self.log_path, self.out / LOSS_CURVE_FILE)
            best_file = self.out / f"{BEST_MODEL}.safetensors"
            self.emit("done", **summary,
                      model=str(best_file if best_file.exists() else self.out / f"{LAST_MODEL}.safetensors"))
        any_rank(False)  # the other ranks wait for rank 0's files before leaving
        return summary


def export(model, config: TrainConfig, path: Path, metrics: dict, epoch: int, n_train: int,
           run_info: dict | None = None) -> Path:
    """A model file (safetensors + card) usable by the viewer and the CLI. ``run_info``: command line,
    data seed, world size, device and precision, recorded in the card's ``training`` entry."""
    training = {"data": f"cohort {config.cohort}", **(run_info or {}), "epochs": epoch + 1,
                "train_exams": n_train, "config": config.to_dict()}
    return save_model(path, model, preprocessing=config.preprocessing, prompt_template_version=TEMPLATE_VERSION,
                      training=training, metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))})


def plot_losses(log_path: Path, png: Path) -> None:
    """The run's loss curves (train and validation per epoch) as a PNG, without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with open(log_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    epochs = [int(r["epoch"]) for r in rows]
    fig = Figure(figsize=(5, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(epochs, [float(r["train_loss"]) for r in rows], label="train")
    val = [(int(r["epoch"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
    if val:
        ax.plot(*zip(*val, strict=True), label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("contrastive loss")
    ax.legend()
    fig.tight_layout()
    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png"))
