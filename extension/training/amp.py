"""The fp16 loss scaler around an optimizer step, for optimizers accelerate did not prepare.

On CUDA with ``mixed_precision: fp16`` accelerate's ``backward`` multiplies the loss by a
GradScaler's scale (65536 at first). It unscales only optimizers passed to ``prepare``; both
engines keep their own optimizer (its state dict is what resume saves), so they unscale here:
before clipping (else the clip threshold applies to scaled gradients) and through the scaler's
``step`` (a step with inf/NaN gradients is skipped and the scale lowered). Everywhere else
(CPU, bf16, fp32) there is no scaler and these are a plain ``optimizer.step()``. ``autocast_state``
is the one place the autocast query is spelled for both torch 2.1 and current torch.
"""

from __future__ import annotations

from typing import Any

import torch


def loss_scaler(accelerator: Any) -> torch.amp.GradScaler | None:
    """The accelerator's GradScaler (fp16 on a GPU), or None."""
    return getattr(accelerator, "scaler", None) if accelerator is not None else None


def unscale_gradients(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """Divide the gradients by the loss scale (once per step, before clipping them)."""
    if scaler is not None:
        scaler.unscale_(optimizer)


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """``optimizer.step()``, through the scaler when there is one (skips non-finite steps, adapts the scale)."""
    if scaler is None:
        optimizer.step()
        return
    scaler.step(optimizer)
    scaler.update()


def autocast_state(device_type: str) -> tuple[bool, torch.dtype | None]:
    """(enabled, dtype) of autocast for ``device_type``; torch 2.1 and current spell it differently."""
    try:
        return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    except TypeError:  # torch < 2.4
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
        return torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
