"""``init_lora`` for image runs: the UNet's and text encoders' LoRA layout, and LLM-style UNet target names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..config import DEFAULT_TEXT_ENCODER_TARGETS, DEFAULT_UNET_TARGETS, TrainConfig
from ..errors import UserError
from ..training.init_lora import (
    ComponentLayout,
    InitLora,
    copy_into,
    is_default,
    merge_layouts,
    plan_component,
    read_init_lora,
    summary,
)
from .lora import ADAPTER, _text_path, conv_targets, resolve_targets

# LLM-style attention names the lora-scripts articles use for SD UNets, and the UNet's own names.
LLM_TO_UNET = {"q_proj": "to_q", "k_proj": "to_k", "v_proj": "to_v", "o_proj": "to_out.0", "out_proj": "to_out.0"}


def unet_target_names(targets: list[str], log: Callable[[str], None]) -> list[str]:
    """``unet_target_modules`` with LLM-style names (q_proj, v_proj, ...) mapped to the UNet's (to_q, to_v, ...).

    SD UNets have no ``q_proj``; the articles' configs use those names for the attention projections.
    One line through ``log`` says what was mapped.
    """
    mapped = [LLM_TO_UNET.get(t.strip(), t.strip()) for t in targets if t and t.strip()]
    changed = [t.strip() for t in targets if t and t.strip() in LLM_TO_UNET]
    if changed:
        pairs = ", ".join(f"{t} -> {LLM_TO_UNET[t]}" for t in dict.fromkeys(changed))
        log(f"unet_target_modules: LLM names mapped to the SD UNet's attention layers ({pairs})")
    return list(dict.fromkeys(mapped))


_TE_KEYS = ("text_encoder", "text_encoder_2")


def _is_conv3x3(module: Any) -> bool:
    down = np.asarray(module.down)
    return down.ndim == 4 and tuple(down.shape[2:]) != (1, 1)


def component_of(name: str) -> tuple[str, str]:
    """(component, module path in it) of a canonical image module name (``unet.x``, ``transformer.x``, ...)."""
    component, _, path = name.partition(".")
    return component, path


def encoder_paths(encoder: Any) -> dict[str, str]:
    """Canonical CLIP path (always with ``text_model.``) -> the encoder's own module path."""
    return {_text_path(n): n for n, _ in encoder.named_modules() if n}


def to_encoder_paths(init: InitLora, encoders: dict[str, Any]) -> None:
    """Rename ``init``'s text-encoder modules from canonical CLIP paths to the loaded encoders' own paths (they
    differ between transformers versions)."""
    for key, encoder in encoders.items():
        if key in init.by_component:
            own = encoder_paths(encoder)
            init.by_component[key] = {own.get(p, p): m for p, m in init.by_component[key].items()}


def image_layout(config: TrainConfig, base: Any, log: Callable[[str], None]) -> tuple[dict[str, ComponentLayout],
                                                                              InitLora | None]:
    """LoRA layers per component (``unet``, and the text encoders when they train) and the init file, if any.

    Without ``init_lora`` this is the configured layout: unet_target_modules (LLM names mapped),
    LoCon convs when conv_rank > 0, text_encoder_target_modules when train_text_encoder.
    """
    rank, alpha = int(config.lora_rank), float(config.lora_alpha)
    conv_rank = int(config.conv_rank)
    conv_alpha = float(config.conv_alpha if config.conv_alpha is not None else conv_rank)
    train_te = bool(config.train_text_encoder)
    unet_targets = unet_target_names(list(config.unet_target_modules), log)
    wanted = {"unet": resolve_targets(base.unet, unet_targets, "unet")}
    wanted_conv = conv_targets(base.unet) if conv_rank else []
    encoders = {}
    for i, encoder in enumerate(base.text_encoders):
        encoders[_TE_KEYS[i]] = encoder
        if train_te:
            wanted[_TE_KEYS[i]] = resolve_targets(encoder, config.text_encoder_target_modules, _TE_KEYS[i])

    source = config.init_lora
    if not source:
        layouts = {}
        for key, names in wanted.items():
            lay = ComponentLayout(names=list(names), ranks={n: (rank, alpha) for n in names})
            if key == "unet" and wanted_conv:
                lay = merge_layouts(lay, ComponentLayout(names=wanted_conv,
                                                         ranks={n: (conv_rank, conv_alpha) for n in wanted_conv}))
            layouts[key] = lay
        return layouts, None

    init = read_init_lora(source, config.base_model, component_of, arch=base.arch)
    for key in init.components():
        if key in _TE_KEYS and not train_te:
            raise UserError(f"init_lora {init.path}: has {key} modules; set train_text_encoder: true to continue "
                            "them (training only the UNet would drop them from the output)")
        if key not in ("unet", *encoders):
            raise UserError(f"init_lora {init.path}: has {key} modules, which this base does not have")
    to_encoder_paths(init, encoders)

    rank_setting = ("lora_rank", rank, is_default(config, "lora_rank"))
    alpha_setting = ("lora_alpha", alpha, is_default(config, "lora_alpha"))
    unet_default = [t.strip() for t in config.unet_target_modules] == DEFAULT_UNET_TARGETS
    layouts = {"unet": merge_layouts(
        plan_component(init, "unet", wanted["unet"], "unet_target_modules", unet_default, rank_setting,
                       alpha_setting, module_filter=lambda m: not _is_conv3x3(m)),
        plan_component(init, "unet", wanted_conv, "conv_rank", conv_rank == 0,
                       ("conv_rank", conv_rank, conv_rank == 0),
                       ("conv_alpha", conv_alpha, config.conv_alpha is None),
                       module_filter=_is_conv3x3),
    )}
    te_default = [t.strip() for t in config.text_encoder_target_modules] == DEFAULT_TEXT_ENCODER_TARGETS
    for key in encoders:
        if key in wanted:
            layouts[key] = plan_component(init, key, wanted[key], "text_encoder_target_modules", te_default,
                                          rank_setting, alpha_setting)
    log(summary(init, layouts))
    return layouts, init


def load_image_init(layouts: dict[str, ComponentLayout], models: dict[str, Any]) -> None:
    """Copy the init file's weights into the peft LoRA layers of ``models`` (component -> module)."""
    for key, layout in layouts.items():
        model = models[key]
        for name, module in layout.loaded.items():
            layer = model.get_submodule(name)
            copy_into(layer.lora_A[ADAPTER].weight, module.down, f"{key}.{name} lora_down")
            copy_into(layer.lora_B[ADAPTER].weight, module.up, f"{key}.{name} lora_up")
