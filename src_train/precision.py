"""Mixed precision of the training's forward passes: which autocast (bf16, fp16 with a loss scaler, or
float32) a device gets, and a loss kept in float32 whatever the autocast state."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from napari_medimp.core.training_run import AMP_MODES


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


def float32_loss(loss_fn, device_type: str):
    """The contrastive loss in float32 whatever the autocast state (logits and softmax stay exact)."""
    def loss(image_features, text_features, logit_scale):
        with torch.autocast(device_type, enabled=False):
            scale = logit_scale.float() if isinstance(logit_scale, torch.Tensor) else logit_scale
            return loss_fn(image_features.float(), text_features.float(), scale)
    return loss
