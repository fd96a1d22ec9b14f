"""A minimal LoRA wrapper for the text model's frozen (packed) linear layers.

peft cannot wrap our ``PackedLinear`` layers (it wants ``nn.Linear`` or its own quantized types),
and its behaviour differs across the versions the WebUIs ship, so this stays small and local:
``y = base(x) + dropout(x) @ A.T @ B.T * alpha / r`` with PEFT's initialisation (A kaiming-uniform,
B zero) and PEFT's parameter names.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .._converters import converters
from ..errors import UserError


class LoraLinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        self.rank, self.alpha = int(rank), float(alpha)
        self.scale = self.alpha / self.rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base(x)
        down = self.dropout(x).reshape(-1, x.shape[-1]) @ self.lora_A.t().to(x.dtype)
        up = self.lora_B.t().to(base.dtype)
        flat = base.reshape(-1, base.shape[-1])
        if base._is_view():  # a buffer kept for the recompute (recompute.py): must stay as it is
            return torch.addmm(flat, down.to(base.dtype), up, alpha=self.scale).view(base.shape)
        # A fresh output (whose backward does not need it): the update goes in place, one pass
        # over the output instead of copying it first.
        return flat.addmm_(down.to(base.dtype), up, alpha=self.scale).view(base.shape)


def target_names(model: nn.Module, targets: list[str]) -> list[str]:
    """Full names of the linear layers whose name equals or ends with one of ``targets``, in model order.

    Targets are HF names such as ``q_proj`` or ``self_attn.q_proj``; UserError when none matches.
    """
    wanted = [t.strip() for t in targets if t.strip()]
    found = []
    for name, module in model.named_modules():
        if not hasattr(module, "in_features") or isinstance(module, LoraLinear) or name.endswith(".base"):
            continue
        if any(name == t or name.endswith("." + t) for t in wanted):
            found.append(name)
    if not found:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "in_features")})
        raise UserError(f"lora_target_modules {wanted} match no layer of the model; use some of: {', '.join(names)}")
    return found


def inject_lora(model: nn.Module, targets: list[str], rank: int, alpha: float, dropout: float = 0.0,
                module_ranks: dict[str, tuple[int, float]] | None = None) -> dict[str, LoraLinear]:
    """Wrap every linear layer whose name ends with one of ``targets``; returns {module name: LoraLinear}.

    The order of creation (and so of the seeded initialisation) is the model's module order.
    ``module_ranks`` gives (rank, alpha) of single modules (full names) that differ from ``rank``/``alpha``.
    """
    found: dict[str, LoraLinear] = {}
    for name in target_names(model, targets):
        module = model.get_submodule(name)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        r, a = (module_ranks or {}).get(name, (rank, alpha))
        wrapped = LoraLinear(module, r, a, dropout)
        setattr(parent, child, wrapped)
        found[name] = wrapped
    return found


def lora_state(layers: dict[str, LoraLinear]) -> dict[str, torch.Tensor]:
    """PEFT-style names -> tensors (``<module>.lora_A.weight``), for checkpoints."""
    out = {}
    for name, layer in layers.items():
        out[f"{name}.lora_A.weight"] = layer.lora_A.detach()
        out[f"{name}.lora_B.weight"] = layer.lora_B.detach()
    return out


def load_lora_state(layers: dict[str, LoraLinear], state: dict[str, torch.Tensor]) -> None:
    """Copy tensors saved by ``lora_state`` back in place; UserError when they do not fit these layers."""
    wanted = lora_state(layers)
    for key, tensor in wanted.items():
        got = state.get(key)
        if got is None or tuple(got.shape) != tuple(tensor.shape):
            have = "missing" if got is None else f"shape {tuple(got.shape)}"
            raise UserError(f"saved training state does not fit this model: {key} is {have}, expected "
                            f"{tuple(tensor.shape)} (other base, rank or target modules); set resume: none or "
                            "use a new output_dir")
    with torch.no_grad():
        for name, layer in layers.items():
            layer.lora_A.copy_(state[f"{name}.lora_A.weight"])
            layer.lora_B.copy_(state[f"{name}.lora_B.weight"])


def to_adapter(layers: dict[str, LoraLinear], arch: str, metadata: dict[str, str] | None = None):
    """The canonical ``converters.LoraAdapter`` (float32 numpy) of the trained layers."""
    modules = {}
    for name, layer in layers.items():
        modules[name] = converters.LoraModule(
            down=np.ascontiguousarray(layer.lora_A.detach().cpu().float().numpy()),
            up=np.ascontiguousarray(layer.lora_B.detach().cpu().float().numpy()),
            alpha=layer.alpha,
        )
    return converters.LoraAdapter(modules=modules, arch=arch, metadata=dict(metadata or {}))
