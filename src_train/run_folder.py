"""A training's run folder: its lock, an earlier run's files, the options file, the per-epoch log, the
loss curve, the exported model files and what the model card records about the run's command and cohort."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shlex
import sys
from pathlib import Path

from napari_medimp.core.atomic import atomic_write
from napari_medimp.core.checkpoint import save_model
from napari_medimp.core.prompts import TEMPLATE_VERSION
from napari_medimp.core.training_run import CHECKPOINT_FILE, CONFIG_FILE, RUN_FILES, TrainConfig

LOCK_FILE = "run.lock"
#: validation metrics logged per epoch after the step, training loss and learning rate (src_train.metrics)
LOG_METRICS = ("val_loss", "recall_at_1", "recall_at_5", "mean_rank", "val_chance_loss", "val_floor_loss",
               "chance_mean_rank", "content_top1", "content_baseline", "content_mean_rank", "n_contents")
LOG_HEADER = "epoch,step,train_loss,lr," + ",".join(LOG_METRICS) + "\n"


def reset_log(log_path: Path, keep_before_epoch: int) -> None:
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


def append_log_row(log_path: Path, epoch: int, step: int, train_loss: float, lr: float, metrics: dict) -> None:
    """One epoch's row of ``log.csv`` (validation metrics left empty without a validation set)."""
    with open(log_path, "a", newline="") as fh:
        csv.writer(fh).writerow([epoch, step, train_loss, lr, *(metrics.get(k, "") for k in LOG_METRICS)])


def write_config(out: Path, config: TrainConfig) -> None:
    """The run's options (``train_config.json``), as ``--config`` reads them back."""
    (Path(out) / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=1) + "\n")


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


def clear_earlier_run(out: Path, overwrite: bool) -> None:
    earlier = [name for name in (CHECKPOINT_FILE, *RUN_FILES) if (out / name).exists()]
    if not earlier:
        return
    if not overwrite:
        raise ValueError(f"{out} holds an earlier run ({', '.join(earlier)}); pass --resume to continue it, "
                         "--overwrite to replace it, or choose another --out")
    for name in earlier:
        (out / name).unlink()


@contextlib.contextmanager
def run_folder_lock(out: Path, main: bool):
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
