"""``init_lora``: start a run's LoRA from an existing adapter (incremental training), the part both engines share.

The file is read through the format layer (kohya, PEFT, diffusers; GGUF adapters for text) and
checked against the base before anything trains. Its modules, ranks and alphas decide the layout:

- a target list left at its default follows the file (only the file's modules are adapted);
  a target list set to something else must include every module of the file, and the modules it
  adds start fresh (PEFT's initialisation: B = 0, so they change nothing at step 0);
- ``lora_rank`` / ``lora_alpha`` (``conv_rank`` / ``conv_alpha`` for 3x3 convs) left at their
  defaults follow the file, other values must agree with it; fresh modules use them (or the
  file's single rank/alpha when left at the default).

Unlike ``resume`` nothing else carries over: optimizer, schedule and step count start anew.

Each engine plans its own components from these pieces: ``image/init_lora.py`` (UNet, text encoders)
and ``text/init_lora.py`` (the packed LLaMA model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._converters import converters
from ..config import TrainConfig
from ..errors import UserError


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
                   arch: str | None = None, fit: Callable[[Any], list[str]] | None = None) -> InitLora:
    """Read ``path`` in any format the converters know and check every module against ``base``.

    ``component_of`` splits a canonical module name into (component, module path in that component).
    ``arch`` is the base's architecture, used when the file does not say (or says otherwise and
    the reader accepts it: SD1/SD2 kohya files without text-encoder modules look alike).
    ``fit(adapter)`` lists how the adapter does not fit the base (default ``converters.check_against_base``);
    an engine whose parts live in several files gives its own, which may also refuse with a ``UserError``.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"init_lora {p}: not found; give a LoRA file or PEFT folder (e.g. from models/Lora)")
    try:
        adapter = converters.load_adapter(p, base=base)
        if adapter.arch != arch and {arch, adapter.arch} <= {"sd1", "sd2", "sd2-v"}:
            adapter = converters.load_adapter(p, arch=arch, base=base)
    except converters.AdapterError as exc:
        raise UserError(f"init_lora {p}: cannot be read ({exc})") from None
    values = converters.adapter_problems(adapter)
    if values:
        raise UserError(f"init_lora {p}: {values[0]} ({len(values)} problem(s)); continue from a sound LoRA")
    problems = fit(adapter) if fit is not None else converters.check_against_base(adapter, base)
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


def is_default(config: TrainConfig, key: str) -> bool:
    """Whether ``key`` holds the schema default (then the init file's value is taken)."""
    return getattr(config, key) == getattr(TrainConfig(), key)
