"""``init_lora`` for Flux.1 runs (sd-scripts' ``--network_weights``): start from an existing Flux.1 LoRA.

The file may be in any layout the readers accept (kohya/sd-scripts, BFL/ComfyUI, diffusers, PEFT);
fused BFL modules (``qkv``, ``linear1``) are split exactly into the transformer's layers
(``converters.flux_layout``). It is read and checked against the base's header before anything
loads; the layout (which layers, which ranks) is planned as for SD (``training.init_lora``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..._converters import converters
from ...config import DEFAULT_TEXT_ENCODER_TARGETS, DEFAULT_UNET_TARGETS, TrainConfig
from ...errors import UserError
from ...training.init_lora import ComponentLayout, InitLora, is_default, plan_component, read_init_lora, summary
from ..init_lora import component_of, to_encoder_paths

TRANSFORMER, CLIP, T5 = "transformer", "text_encoder", "text_encoder_2"


def read_flux_init(config: TrainConfig) -> InitLora | None:
    """The ``init_lora`` file read and checked against the Flux.1 base's headers (None without one); one line
    when it is no Flux.1 LoRA, holds parts this run would not train, or does not fit the transformer or CLIP-L."""
    if not config.init_lora:
        return None
    where = Path(str(config.init_lora)).expanduser()

    def fit(adapter: Any) -> list[str]:
        if adapter.arch != "flux":
            raise UserError(f"init_lora {where}: is a {adapter.arch or adapter.family} LoRA, the base is Flux.1; "
                            "continue from a Flux.1 LoRA")
        parts = {component_of(name)[0] for name in adapter.modules}
        if T5 in parts:
            raise UserError(f"init_lora {where}: has T5-XXL (text_encoder_2) modules; Flux.1 runs train no T5 LoRA "
                            "(sd-scripts neither); continue from a LoRA without lora_te3_/t5xxl modules")
        if CLIP in parts and not config.train_text_encoder:
            raise UserError(f"init_lora {where}: has CLIP-L (text_encoder) modules; set train_text_encoder: true to "
                            "continue them (training only the transformer would drop them from the output)")
        return converters.check_against_shapes(adapter, "flux", flux_module_shapes(config))

    return read_init_lora(str(where), config.base_model, component_of, arch="flux", fit=fit)


def flux_module_shapes(config: TrainConfig) -> dict[str, tuple[int, ...]]:
    """{canonical module: weight shape} of the run's transformer and CLIP-L, from their files' headers."""
    from ...models.flux_loader import find_files

    files = find_files(config)
    _, shapes = converters.base_module_shapes(files.transformer[0], "flux")
    clip, prefix = files.clip
    held = converters.flux_base.header_shapes(clip) or {}
    named = {converters.flux_names.COMFY_CLIP + k[len(prefix):]: v for k, v in held.items() if k.startswith(prefix)}
    shapes.update(converters.flux_base.canonical_shapes(named, ""))
    return shapes


def flux_layouts(config: TrainConfig, wanted: dict[str, list[str]], encoders: dict[str, Any], init: InitLora | None,
                 log: Callable[[str], None]) -> dict[str, ComponentLayout]:
    """LoRA layers per component (``transformer``, ``text_encoder`` when CLIP-L trains): ``wanted`` (the targets
    resolved on the loaded model) at lora_rank/lora_alpha, or, with ``init``, the file's modules planned as
    ``training.init_lora`` says (targets and ranks left at their defaults follow the file)."""
    rank, alpha = int(config.lora_rank), float(config.lora_alpha)
    if init is None:
        return {key: ComponentLayout(names=list(names), ranks={n: (rank, alpha) for n in names})
                for key, names in wanted.items()}
    to_encoder_paths(init, encoders)
    rank_setting = ("lora_rank", rank, is_default(config, "lora_rank"))
    alpha_setting = ("lora_alpha", alpha, is_default(config, "lora_alpha"))
    defaults = {TRANSFORMER: ("unet_target_modules", list(config.unet_target_modules) == DEFAULT_UNET_TARGETS),
                CLIP: ("text_encoder_target_modules",
                       [t.strip() for t in config.text_encoder_target_modules] == DEFAULT_TEXT_ENCODER_TARGETS)}
    layouts = {key: plan_component(init, key, names, *defaults[key], rank_setting, alpha_setting)
               for key, names in wanted.items()}
    log(summary(init, layouts))
    return layouts


def _fused_groups(names: list[str]) -> list[list[str]]:
    """Transformer layer paths grouped by the fused BFL module (``qkv``, ``linear1``) they are parts of, in model
    order; only groups of two or more parts."""
    table = converters.flux_names.bfl_of_canonical()
    groups: dict[str, list[str]] = {}
    for name in names:
        found = table.get(f"{TRANSFORMER}.{name}")
        if found is not None and found[0].fused:
            groups.setdefault(found[0].path, []).append(name)
    return [group for group in groups.values() if len(group) > 1]


def tie_fused_downs(layout: ComponentLayout, transformer: Any) -> int:
    """Share one ``lora_A`` between the layers of a fused BFL module, as sd-scripts trains ``qkv`` / ``linear1``:
    one LoRA (one down, one alpha, the up's rows per part), so the file holds it at its rank (not the parts'
    ranks added). New layers of one (rank, alpha) are tied; layers loaded from an ``init_lora`` file are tied when
    the file trained them that way (one down, one scale), and stay separate when it adapted them separately.
    Returns the number of modules tied."""
    import numpy as np

    from ..lora import ADAPTER

    def one_lora(names: list[str]) -> bool:
        if names[0] not in layout.loaded:
            return len({layout.ranks[n] for n in names}) == 1
        first = layout.loaded[names[0]]
        return all(np.array_equal(layout.loaded[n].down, first.down) and layout.loaded[n].scale == first.scale
                   for n in names)

    tied = 0
    for group in _fused_groups(layout.names):
        for names in ([n for n in group if n in layout.loaded], [n for n in group if n not in layout.loaded]):
            if len(names) < 2 or not one_lora(names):
                continue
            shared = transformer.get_submodule(names[0]).lora_A[ADAPTER]
            for name in names[1:]:
                transformer.get_submodule(name).lora_A[ADAPTER] = shared
            tied += 1
    return tied
