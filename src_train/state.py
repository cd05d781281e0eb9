"""The training state of a run folder: one safetensors file (``last.safetensors``: weights and optimiser
tensors, the JSON state in its metadata) written with one atomic rename, its readable copy (``last.json``),
every rank's random states, and which options a resumed run may change."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import torch

from napari_medimp.core.atomic import atomic_write, temporaries_of
from napari_medimp.core.training_run import (
    CHECKPOINT_FILE,
    STATE_FILE,
    STATE_KEY,
    TrainConfig,
    checkpoint_state,
)


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
