"""``init_lora`` for text runs: the packed LLaMA model's LoRA layout and loading the file into its layers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import DEFAULT_LLM_TARGETS, TrainConfig
from ..errors import UserError
from ..training.init_lora import (
    ComponentLayout,
    InitLora,
    copy_into,
    is_default,
    plan_component,
    read_init_lora,
    summary,
)
from .lora import target_names


def text_layout(config: TrainConfig, model: Any, base: Path, log: Callable[[str], None]) -> tuple[ComponentLayout,
                                                                                         InitLora | None]:
    """The text model's LoRA layers (full module names with rank and alpha) and the init file, if any.

    ``base`` is the GGUF file (the upgraded copy for GGML bases) or HF folder the file is checked
    against; GGUF adapters need it to undo llama.cpp's Q/K row order.
    """
    rank = int(config.lora_rank)
    alpha = float(config.lora_alpha)
    targets = list(config.lora_target_modules)
    targets_default = [t.strip() for t in targets] == DEFAULT_LLM_TARGETS
    if targets_default:
        targets = list(model.default_lora_targets())  # the family's own names (fused Q/K/V, gate/up)
    targets = model.expand_lora_targets(targets)
    source = config.init_lora
    if not source:
        names = target_names(model, targets)
        return ComponentLayout(names=names, ranks={n: (rank, alpha) for n in names}), None
    init = read_init_lora(source, base, lambda name: ("model", name))
    adaptable = {n for n, m in model.named_modules() if hasattr(m, "in_features") and not n.endswith(".base")}
    cannot = [n for n in init.by_component.get("model", {}) if n not in adaptable]
    if cannot:
        raise UserError(f"init_lora {init.path}: has {len(cannot)} module(s) this trainer cannot adapt (e.g. "
                        f"{cannot[0]}: only linear layers); continue from an adapter without them")
    wanted = target_names(model, targets)
    layout = plan_component(init, "model", wanted, "lora_target_modules", targets_default,
                            ("lora_rank", rank, is_default(config, "lora_rank")),
                            ("lora_alpha", alpha, is_default(config, "lora_alpha")))
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    layout.names.sort(key=order.__getitem__)
    log(summary(init, {"model": layout}))
    return layout, init


def load_text_init(layout: ComponentLayout, layers: dict[str, Any]) -> None:
    """Copy the init file's weights into the text model's LoRA layers (name -> LoraLinear)."""
    for name, module in layout.loaded.items():
        copy_into(layers[name].lora_A, module.down, f"{name} lora_A")
        copy_into(layers[name].lora_B, module.up, f"{name} lora_B")
