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

The loop is here; its parts are the modules beside it: :mod:`.precision` (autocast and loss scaling),
:mod:`.schedule` (parameter groups, warm-up and cosine learning rate), :mod:`.batches` (an epoch's batches,
built ahead), :mod:`.validation`, :mod:`.state` (the checkpoint and resuming) and :mod:`.run_folder` (lock,
log, options file, loss curve, exported models, provenance).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from napari_medimp.core.models import ModelConfig, build_model
from napari_medimp.core.preprocess import PreprocessConfig
from napari_medimp.core.provenance import patients_seen_entry
from napari_medimp.core.training_run import (
    AMP_MODES,
    BEST_MODEL,
    CHECKPOINT_FILE,
    LAST_MODEL,
    LOG_FILE,
    LOSS_CURVE_FILE,
    PRESETS,
    BatchPlan,
    TrainConfig,
    batch_plan,
    checkpoint_state,
    event,
)

from .batch_norm import recalibrate_batchnorm
from .batches import batch_images, batch_indices, batch_stream
from .data import ContrastiveDataset, cohort_items, split_by_patient
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
from .precision import float32_loss, resolve_amp
from .run_folder import (
    append_log_row,
    clear_earlier_run,
    cohort_provenance,
    command_line,
    export,
    plot_losses,
    reset_log,
    run_folder_lock,
    write_config,
)
from .schedule import lr_lambda, parameter_groups
from .state import (
    load_training_state,
    options_changed,
    read_checkpoint,
    remove_stale_temporaries,
    rng_state,
    save_training_state,
)
from .validation import validate

__all__ = ["AMP_MODES", "PRESETS", "TrainConfig", "train"]  # options live in core.training_run

Progress = Callable[[dict], None]


def model_config(config: TrainConfig) -> ModelConfig:
    prep = PreprocessConfig.from_dict(config.preprocessing)
    kwargs = {"text_model": config.text_model} if config.text_model else {}
    return ModelConfig(image_encoder=config.image_encoder, image_encoder_kwargs=dict(config.image_encoder_kwargs),
                       in_channels=prep.n_channels, input_size=prep.input_size, embed_dim=config.embed_dim,
                       text_trainable_layers=config.text_trainable_layers, **kwargs)


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
        with run_folder_lock(Path(config.out), run.is_main):
            if run.is_main and not resume:
                clear_earlier_run(Path(config.out), overwrite)
            return _train(config, run, resume, progress, should_stop, command, override)
    finally:
        run.close()


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
            write_config(self.out, config)
            resumed = resume and self.log_path.exists() and checkpoint_data is not None
            reset_log(self.log_path, self.start_epoch if resumed else 0)
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
        self.loss_fn = float32_loss(ContrastiveLoss(), self.precision.device_type)

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
                           float32_loss(clip_loss, self.precision.device_type), self.precision) if self.val_set else {}
        train_loss = float(np.mean(self.losses)) if self.losses else float("nan")
        if self.main:
            append_log_row(self.log_path, epoch, self.step, train_loss, self.scheduler.get_last_lr()[0], metrics)
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
