"""PEFT LoRA layers that add their update into the frozen layer's output in place.

PEFT computes ``result + lora_B(lora_A(x)) * scaling``: three temporaries the size of the layer's
output (``lora_B``'s output, the scaled copy, the sum) for every adapted layer, on every step. On
the CPU those blocks land in glibc's heap between the activations the backward keeps and
fragment it: for SD1.5 at 512 px, 192 adapted layers made the peak RSS ~1.2 GiB larger than the
memory actually in use. Here a Linear's update goes into the base output with one in-place
``addmm_`` (``result += scaling * h @ B^T``) and a convolution's with one ``add_``. The math is
PEFT's (same operands, same order of scaling); only the temporaries are gone.

The lean path runs only where it is exactly PEFT's plain LoRA: one active adapter, not merged or
disabled, no DoRA or other variant, no extra arguments, and every tensor in one dtype outside
autocast (in-place ops are not autocast). Everything else calls PEFT's own forward.
"""

from __future__ import annotations

import types

import torch

from ..training.amp import autocast_state
from .lora import ADAPTER, lora_layers


def _plain_lora(layer: torch.nn.Module, x: torch.Tensor, args: tuple, kwargs: dict) -> bool:
    """True when ``layer``'s forward on ``x`` is PEFT's vanilla LoRA path with nothing else to do."""
    if args or kwargs or layer.disable_adapters or layer.merged or list(layer.active_adapters) != [ADAPTER]:
        return False
    if ADAPTER in getattr(layer, "lora_variant", {}) or getattr(layer, "use_dora", {}).get(ADAPTER, False):
        return False
    if autocast_state(x.device.type)[0]:
        return False
    return x.dtype == layer.lora_A[ADAPTER].weight.dtype == layer.lora_B[ADAPTER].weight.dtype


def _lean_forward(self: torch.nn.Module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:  # noqa: ANN002, ANN003
    peft_forward = type(self).forward  # through the class: a deep copy of the layer falls back to itself
    if not _plain_lora(self, x, args, kwargs):
        return peft_forward(self, x, *args, **kwargs)
    down, up = self.lora_A[ADAPTER], self.lora_B[ADAPTER]
    dropout, scaling = self.lora_dropout[ADAPTER], self.scaling[ADAPTER]
    if isinstance(up, torch.nn.Linear):
        # 2-D, so the base output is a fresh matrix (a 3-D F.linear returns a view, which a
        # custom autograd Function's output must not be modified through).
        flat = x.reshape(-1, x.shape[-1])
        result = self.base_layer(flat)
        if result.dtype != x.dtype:
            return peft_forward(self, x, *args, **kwargs)
        result.addmm_(down(dropout(flat)), up.weight.t(), alpha=scaling)
        if up.bias is not None:
            result.add_(up.bias, alpha=scaling)
        return result.view(*x.shape[:-1], result.shape[-1])
    result = self.base_layer(x)
    if result.dtype != x.dtype:
        return peft_forward(self, x, *args, **kwargs)
    return result.add_(up(down(dropout(x))), alpha=scaling)


def use_lean_lora(model: torch.nn.Module) -> int:
    """Give every PEFT LoRA Linear/Conv2d layer of ``model`` the in-place forward; returns how many."""
    count = 0
    for _, layer in lora_layers(model):
        if not isinstance(layer.base_layer, (torch.nn.Linear, torch.nn.Conv2d)) or "forward" in layer.__dict__:
            continue
        layer.forward = types.MethodType(_lean_forward, layer)
        count += 1
    return count
