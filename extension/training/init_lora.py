"""``init_lora``: start a run's LoRA from an existing adapter (incremental training), for both engines.

The file is read through the format layer (kohya, PEFT, diffusers; GGUF adapters for text) and
checked against the base before anything trains. Its modules, ranks and alphas decide the layout:

- a target list left at its default follows the file (only the file's modules are adapted);
  a target list set to something else must include every module of the file, and the modules it
  adds start fresh (PEFT's initialisation: B = 0, so they change nothing at step 0);
- ``lora_rank`` / ``lora_alpha`` (``conv_rank`` / ``conv_alpha`` for 3x3 convs) left at their
  defaults follow the file, other values must agree with it; fresh modules use them (or the
  file's single rank/alpha when left at the default).

Unlike ``resume`` nothing else carries over: optimizer, schedule and step count start anew.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._converters import converters
from ..errors import UserError
from .optimizers import setting

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


@dataclass
class ComponentLayout:
    """The LoRA layers of one model component (``unet``, ``text_encoder``, ... or ``model`` for text)."""

    names: list[str]  # module paths in the component, in model order
    ranks: dict[str, tuple[int, float]] = field(default_factory=dict)  # (rank, alpha) of every module
    loaded: dict[str, Any] = field(default_factory=dict)  # module path -> converters.LoraModule from the file


@dataclass
class InitLora:
    """An adapter file read, checked against the base, and split per component."""

    path: Path
    adapter: Any  # converters.LoraAdapter
    by_component: dict[str, dict[str, Any]]  # component -> {module path: LoraModule}

    def components(self) -> set[str]:
        """Components the file has modules for."""
        return {c for c, mods in self.by_component.items() if mods}


def read_init_lora(path: str, base: str | Path, component_of: Callable[[str], tuple[str, str]],
                   arch: str | None = None) -> InitLora:
    """Read ``path`` in any format the converters know and check every module against ``base``.

    ``component_of`` splits a canonical module name into (component, module path in that component).
    ``arch`` is the base's architecture, used when the file does not say (or says otherwise and
    the reader accepts it: SD1/SD2 kohya files without text-encoder modules look alike).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"init_lora {p}: not found; give a LoRA file or PEFT folder (e.g. from models/Lora)")
    try:
        adapter = converters.load_adapter(p, base=base)
        if arch and adapter.arch and adapter.arch != arch and adapter.family == "sd" and "sdxl" not in (arch,
                                                                                                      adapter.arch):
            adapter = converters.load_adapter(p, arch=arch, base=base)
    except converters.AdapterError as exc:
        raise UserError(f"init_lora {p}: cannot be read ({exc})") from None
    problems = converters.check_against_base(adapter, base)
    if problems:
        raise UserError(f"init_lora {p}: does not fit the base {base}: {problems[0]} ({len(problems)} problem(s)); "
                        "use a LoRA made for this model")
    if adapter.full_weights or any(m.magnitude is not None or m.bias is not None for m in adapter.modules.values()):
        raise UserError(f"init_lora {p}: has DoRA, lora_bias or modules_to_save parts, which this trainer does not "
                        "train; continue from a plain LoRA")
    by_component: dict[str, dict[str, Any]] = {}
    for name, module in adapter.modules.items():
        component, path_in = component_of(name)
        by_component.setdefault(component, {})[path_in] = module
    return InitLora(p, adapter, by_component)


def _is_conv3x3(module: Any) -> bool:
    down = np.asarray(module.down)
    return down.ndim == 4 and tuple(down.shape[2:]) != (1, 1)


def _single(values: set) -> Any:
    """The one value of ``values``, or None when there are none or several."""
    return next(iter(values)) if len(values) == 1 else None


def plan_component(init: InitLora, component: str, wanted: list[str], targets_key: str, targets_default: bool,
                   rank: tuple[str, int, bool], alpha: tuple[str, float, bool],
                   module_filter: Callable[[Any], bool] = lambda m: True) -> ComponentLayout:
    """The layout of ``component``: the file's modules (loaded) plus the wanted ones it lacks (fresh).

    ``rank``/``alpha`` are (key, value, is default) of the setting that applies to these modules;
    ``module_filter`` picks the file's modules this setting governs (linear vs 3x3 conv).
    """
    from_file = {n: m for n, m in init.by_component.get(component, {}).items() if module_filter(m)}
    rank_key, rank_value, rank_is_default = rank
    alpha_key, alpha_value, alpha_is_default = alpha
    if from_file and not targets_default:
        extra = [n for n in from_file if n not in wanted]
        if extra:
            raise UserError(f"init_lora {init.path}: has {len(extra)} {component} module(s) that {targets_key} "
                            f"leaves out (e.g. {extra[0]}); add them to {targets_key} or leave it at its default "
                            "to take the file's modules")
    file_ranks = {m.rank for m in from_file.values()}
    file_alphas = {float(m.alpha) for m in from_file.values()}
    if from_file and not rank_is_default and file_ranks != {rank_value}:
        have = ", ".join(map(str, sorted(file_ranks)))
        raise UserError(f"init_lora {init.path}: {component} modules have rank {have}"
                        f" but {rank_key} is {rank_value}; remove {rank_key} (the file's rank is used) or set it to "
                        "the file's")
    if from_file and not alpha_is_default and file_alphas != {float(alpha_value)}:
        raise UserError(f"init_lora {init.path}: {component} modules have alpha "
                        f"{', '.join(f'{a:g}' for a in sorted(file_alphas))} but {alpha_key} is {alpha_value:g}; "
                        f"remove {alpha_key} (the file's alpha is used) or set it to the file's")
    fresh_rank = rank_value if not rank_is_default or _single(file_ranks) is None else _single(file_ranks)
    fresh_alpha = alpha_value if not alpha_is_default or _single(file_alphas) is None else _single(file_alphas)
    names = list(from_file) if (from_file and targets_default) else list(dict.fromkeys(list(wanted) + list(from_file)))
    layout = ComponentLayout(names=names)
    for name in names:
        module = from_file.get(name)
        if module is not None:
            layout.ranks[name] = (module.rank, float(module.alpha))
            layout.loaded[name] = module
        else:
            layout.ranks[name] = (int(fresh_rank), float(fresh_alpha))
    return layout


def merge_layouts(*layouts: ComponentLayout) -> ComponentLayout:
    """One layout of a component from several (e.g. linear and conv modules), in the given order."""
    out = ComponentLayout(names=[])
    for layout in layouts:
        for name in layout.names:
            if name not in out.ranks:
                out.names.append(name)
            out.ranks[name] = layout.ranks[name]
            if name in layout.loaded:
                out.loaded[name] = layout.loaded[name]
    return out


def summary(init: InitLora, layouts: dict[str, ComponentLayout]) -> str:
    """The log line: how many modules came from the file and how many start fresh."""
    loaded = sum(len(lay.loaded) for lay in layouts.values())
    fresh = sum(len(lay.names) - len(lay.loaded) for lay in layouts.values())
    ranks = sorted({r for lay in layouts.values() for r, _ in lay.ranks.values()})
    return (f"init_lora {init.path} ({init.adapter.source_format}): {loaded} modules loaded from the file, "
            f"{fresh} fresh; rank {'/'.join(map(str, ranks))}")


def copy_into(param: Any, array: np.ndarray, what: str) -> None:
    """Copy a file tensor into a LoRA parameter of the same number of elements (conv 1x1 vs linear shapes)."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if tensor.numel() != param.numel():
        raise UserError(f"init_lora: {what} has shape {tuple(tensor.shape)}, the layer needs {tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(tensor.reshape(param.shape).to(param.dtype))


def is_default(config: Any, key: str) -> bool:
    """Whether ``key`` holds the schema default (then the init file's value is taken)."""
    from ..config import TrainConfig

    return setting(config, key, None) == getattr(TrainConfig(), key)


# -- image (diffusers + peft) -------------------------------------------------------------------------

_TE_KEYS = ("text_encoder", "text_encoder_2")


def _sd_component(name: str) -> tuple[str, str]:
    component, _, path = name.partition(".")
    return component, path


def _encoder_paths(encoder: Any) -> dict[str, str]:
    """Canonical CLIP path (always with ``text_model.``) -> the encoder's own module path."""
    from .lora_export import _text_path

    return {_text_path(n): n for n, _ in encoder.named_modules() if n}


def image_layout(config: Any, base: Any, log: Callable[[str], None]) -> tuple[dict[str, ComponentLayout],
                                                                              InitLora | None]:
    """LoRA layers per component (``unet``, and the text encoders when they train) and the init file, if any.

    Without ``init_lora`` this is the configured layout: unet_target_modules (LLM names mapped),
    LoCon convs when conv_rank > 0, text_encoder_target_modules when train_text_encoder.
    """
    from ..config import DEFAULT_TEXT_ENCODER_TARGETS, DEFAULT_UNET_TARGETS
    from .lora_export import conv_targets, resolve_targets

    rank, alpha = int(config.lora_rank), float(config.lora_alpha)
    conv_rank = int(setting(config, "conv_rank", 0))
    conv_alpha = setting(config, "conv_alpha", None)
    conv_alpha = float(conv_alpha if conv_alpha is not None else conv_rank)
    train_te = bool(setting(config, "train_text_encoder", False))
    unet_targets = unet_target_names(list(config.unet_target_modules), log)
    wanted = {"unet": resolve_targets(base.unet, unet_targets, "unet")}
    wanted_conv = conv_targets(base.unet) if conv_rank else []
    encoders = {}
    for i, encoder in enumerate(base.text_encoders):
        encoders[_TE_KEYS[i]] = encoder
        if train_te:
            wanted[_TE_KEYS[i]] = resolve_targets(encoder, config.text_encoder_target_modules, _TE_KEYS[i])

    source = setting(config, "init_lora", None)
    if not source:
        layouts = {}
        for key, names in wanted.items():
            lay = ComponentLayout(names=list(names), ranks={n: (rank, alpha) for n in names})
            if key == "unet" and wanted_conv:
                lay = merge_layouts(lay, ComponentLayout(names=wanted_conv,
                                                         ranks={n: (conv_rank, conv_alpha) for n in wanted_conv}))
            layouts[key] = lay
        return layouts, None

    init = read_init_lora(source, config.base_model, _sd_component, arch=base.arch)
    for key in init.components():
        if key in _TE_KEYS and not train_te:
            raise UserError(f"init_lora {init.path}: has {key} modules; set train_text_encoder: true to continue "
                            "them (training only the UNet would drop them from the output)")
        if key not in ("unet", *encoders):
            raise UserError(f"init_lora {init.path}: has {key} modules, which this base does not have")
    for key, encoder in encoders.items():  # canonical CLIP paths -> this transformers version's paths
        if key in init.by_component:
            own = _encoder_paths(encoder)
            init.by_component[key] = {own.get(p, p): m for p, m in init.by_component[key].items()}

    rank_setting = ("lora_rank", rank, is_default(config, "lora_rank"))
    alpha_setting = ("lora_alpha", alpha, is_default(config, "lora_alpha"))
    unet_default = [t.strip() for t in config.unet_target_modules] == DEFAULT_UNET_TARGETS
    layouts = {"unet": merge_layouts(
        plan_component(init, "unet", wanted["unet"], "unet_target_modules", unet_default, rank_setting,
                       alpha_setting, module_filter=lambda m: not _is_conv3x3(m)),
        plan_component(init, "unet", wanted_conv, "conv_rank", conv_rank == 0,
                       ("conv_rank", conv_rank, conv_rank == 0),
                       ("conv_alpha", conv_alpha, setting(config, "conv_alpha", None) is None),
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
    from .lora_export import ADAPTER

    for key, layout in layouts.items():
        model = models[key]
        for name, module in layout.loaded.items():
            layer = model.get_submodule(name)
            copy_into(layer.lora_A[ADAPTER].weight, module.down, f"{key}.{name} lora_down")
            copy_into(layer.lora_B[ADAPTER].weight, module.up, f"{key}.{name} lora_up")


# -- text (our packed LLaMA model) ---------------------------------------------------------------------


def text_layout(config: Any, model: Any, base: Path, log: Callable[[str], None]) -> tuple[ComponentLayout,
                                                                                         InitLora | None]:
    """The text model's LoRA layers (full module names with rank and alpha) and the init file, if any.

    ``base`` is the GGUF file (the upgraded copy for GGML bases) or HF folder the file is checked
    against; GGUF adapters need it to undo llama.cpp's Q/K row order.
    """
    from ..config import DEFAULT_LLM_TARGETS
    from ..text.lora import target_names

    rank = int(setting(config, "lora_rank", 16))
    alpha = float(setting(config, "lora_alpha", rank))
    targets = list(setting(config, "lora_target_modules", DEFAULT_LLM_TARGETS))
    source = setting(config, "init_lora", None)
    if not source:
        names = target_names(model, targets)
        return ComponentLayout(names=names, ranks={n: (rank, alpha) for n in names}), None
    init = read_init_lora(source, base, lambda name: ("model", name))
    adaptable = {n for n, m in model.named_modules() if hasattr(m, "in_features") and not n.endswith(".base")}
    cannot = [n for n in init.by_component.get("model", {}) if n not in adaptable]
    if cannot:
        raise UserError(f"init_lora {init.path}: has {len(cannot)} module(s) this trainer cannot adapt (e.g. "
                        f"{cannot[0]}: only linear layers); continue from an adapter without them")
    targets_default = [t.strip() for t in targets] == DEFAULT_LLM_TARGETS
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
