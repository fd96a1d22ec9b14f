"""LoRA layers on diffusers/transformers components: inject with PEFT, export to the canonical adapter.

``peft.inject_adapter_in_model`` is used for every component (transformers 4.30 has no
``add_adapter``). Target names are resolved to full module paths here so that LoCon convs and
attention projections can share one adapter with their own ranks (``rank_pattern``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

from .._converters import converters
from ..errors import UserError

ADAPTER = "default"
# kohya's LoCon set: 3x3 convs of resnets and of the down/up samplers.
_CONV3X3 = re.compile(r"(resnets\.\d+\.conv[12]|downsamplers\.0\.conv|upsamplers\.0\.conv)$")


def resolve_targets(model: torch.nn.Module, targets: Iterable[str], component: str) -> list[str]:
    """Full names of Linear/Conv2d modules whose path equals or ends with one of ``targets``."""
    targets = [t.strip() for t in targets if t and t.strip()]
    found: list[str] = []
    hit: set[str] = set()
    for name, module in model.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        for t in targets:
            if name == t or name.endswith("." + t):
                found.append(name)
                hit.add(t)
                break
    missing = [t for t in targets if t not in hit]
    if missing:
        raise UserError(f"{component}: no module matches target {missing[0]!r}; check the *_target_modules setting")
    return found


def conv_targets(unet: torch.nn.Module) -> list[str]:
    """The 3x3 convolutions kohya's LoCon (conv_dim) adapts."""
    return [n for n, m in unet.named_modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
            and _CONV3X3.search(n)]


def inject_lora(model: torch.nn.Module, names: list[str], rank: int, alpha: float, dropout: float = 0.0,
                conv_names: list[str] | None = None, conv_rank: int = 0, conv_alpha: float | None = None,
                module_ranks: dict[str, tuple[int, float]] | None = None) -> None:
    """Add LoRA layers named ``default`` to ``model`` in place (lora_B starts at zero).

    ``module_ranks`` gives (rank, alpha) of single modules (full names) that differ from ``rank``/``alpha``.
    """
    from peft import LoraConfig, inject_adapter_in_model

    conv_names = list(conv_names or []) if conv_rank > 0 else []
    # Plain full names: peft 0.13 falls back to an exact lookup, newer peft matches them as patterns.
    rank_pattern = {n: conv_rank for n in conv_names}
    alpha_pattern = {n: float(conv_alpha if conv_alpha is not None else conv_rank) for n in conv_names}
    for n, (r, a) in (module_ranks or {}).items():
        if (int(r), float(a)) != (int(rank), float(alpha)):
            rank_pattern[n], alpha_pattern[n] = int(r), float(a)
    all_names = list(dict.fromkeys(list(names) + conv_names))
    if not all_names:
        raise UserError("no modules to adapt: the target module lists are empty")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=all_names,
                        rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, init_lora_weights=True)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for pname, param in model.named_parameters():
        param.requires_grad_("lora_" in pname)


def lora_layers(model: torch.nn.Module):
    """(module path, peft LoRA layer) pairs of ``model``."""
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and ADAPTER in getattr(module, "lora_A", {}):
            yield name, module


def lora_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The trainable LoRA parameters of ``model``, in a stable order."""
    return [p for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]


def set_lora_multiplier(models: Iterable[torch.nn.Module], multiplier: float, rank_alpha: dict | None = None) -> dict:
    """Set every LoRA layer's scale to ``multiplier * alpha / r``; returns the previous scales to restore."""
    previous = {}
    for model in models:
        for name, layer in lora_layers(model):
            key = (id(model), name)
            previous[key] = layer.scaling[ADAPTER]
            base = (rank_alpha or {}).get(key, layer.scaling[ADAPTER])
            layer.scaling[ADAPTER] = base * multiplier
    return previous


def restore_lora_scales(models: Iterable[torch.nn.Module], previous: dict) -> None:
    """Undo ``set_lora_multiplier``."""
    for model in models:
        for name, layer in lora_layers(model):
            if (id(model), name) in previous:
                layer.scaling[ADAPTER] = previous[(id(model), name)]


def lora_state(models: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Every LoRA tensor as ``<component>/<parameter path>`` (for training state); a tensor shared by several
    layers (a fused Flux module's one down) under each of their paths."""
    out = {}
    for component, model in models.items():
        for name, param in model.named_parameters(remove_duplicate=False):
            if "lora_" in name:
                out[f"{component}/{name}"] = param.detach()
    return out


def load_lora_state(models: dict[str, torch.nn.Module], state: dict[str, torch.Tensor]) -> None:
    """Copy tensors saved by ``lora_state`` back into the models, exactly."""
    with torch.no_grad():
        for component, model in models.items():
            params = dict(model.named_parameters(remove_duplicate=False))
            given: dict[int, torch.Tensor] = {}  # id of a shared parameter -> the value it got first
            for key, value in state.items():
                comp, name = key.split("/", 1)
                if comp != component:
                    continue
                if name not in params:
                    raise UserError(f"training state does not match the model (no {name}); the LoRA settings changed "
                                    "since it was saved: resume with the same config or start fresh")
                first = given.setdefault(id(params[name]), value)
                if first is not value and not torch.equal(first, value):
                    raise UserError(f"training state does not match the model ({name} is one tensor shared by "
                                    "several layers here, the state holds different values for them: it was saved "
                                    "by a version that trained a fused Flux module's parts apart); start fresh")
                params[name].copy_(value.to(params[name].dtype))


def _text_path(name: str) -> str:
    """CLIP paths always carry ``text_model.`` in canonical names (transformers 5 dropped it)."""
    if name.startswith(("text_model.", "text_projection")):
        return name
    return "text_model." + name


def export_adapter(models: dict[str, torch.nn.Module], arch: str, metadata: dict[str, str] | None = None):
    """A canonical ``converters.LoraAdapter`` from peft-wrapped components.

    ``models`` maps ``unet`` (``transformer`` for Flux) / ``text_encoder`` / ``text_encoder_2`` to the
    (unwrapped) modules.
    Alpha is recovered from PEFT's scale (alpha / r) so rank_pattern/alpha_pattern survive.
    """
    modules = {}
    for component, model in models.items():
        for name, layer in lora_layers(model):
            down = layer.lora_A[ADAPTER].weight.detach().float().cpu().numpy()
            up = layer.lora_B[ADAPTER].weight.detach().float().cpu().numpy()
            rank = down.shape[0]
            # scaling may hold a sample multiplier at this moment; r_alpha is PEFT's own record.
            alpha = float(layer.lora_alpha[ADAPTER]) if hasattr(layer, "lora_alpha") else layer.scaling[ADAPTER] * rank
            path = name if component in ("unet", "transformer") else _text_path(name)
            modules[f"{component}.{path}"] = converters.LoraModule(down=down.copy(), up=up.copy(), alpha=alpha)
    return converters.LoraAdapter(modules=modules, arch=arch, metadata=dict(metadata or {}))
