"""Flux.1 LoRA files in BFL naming (kohya/sd-scripts, ComfyUI): fused modules split and fused exactly.

Reading: a fused BFL module (``img_attn.qkv``, ``linear1``) becomes one canonical module per part.
Part ``i`` owns the output rows ``rows_i`` of ``up``; it keeps only the columns of ``up`` that are
non-zero in those rows, with the matching rows of ``down`` and ``alpha`` scaled so alpha/rank is
unchanged. A block-diagonal ``up`` (what fusing separate q/k/v gives) thus splits back into the
original ranks; a dense ``up`` gives each part the whole ``down``. Both are exact.

Writing: the parts of a fused module are fused. Parts sharing one ``down`` and one scale (what a
split of a dense module gives) fuse back into that rank; otherwise the ``down`` matrices stack and
``up`` is block-diagonal (ranks add). Equal scales keep alpha/rank; unequal ones are folded into
each part's ``up`` and alpha = rank. A missing part is zero rows of ``up``.
"""

from __future__ import annotations

import numpy as np

from .errors import AdapterError
from .flux_names import (
    COMFY_CLIP,
    COMFY_T5,
    COMFY_UNET,
    KOHYA_CLIP,
    KOHYA_T5,
    KOHYA_UNET,
    ONETRAINER,
    TRANSFORMER,
    BflModule,
    bfl_modules,
    bfl_of_canonical,
    part_sizes,
    t5_module_names,
)
from .model import LoraModule, LycorisModule
from .sd_names import clip_module_names, normalize_te_path

_TE_COMPONENTS = {"text_encoder": "clip", "text_encoder_2": "t5"}


def _swap_halves(up: np.ndarray) -> np.ndarray:
    half = up.shape[0] // 2
    return np.concatenate([up[half:], up[:half]])


def _short(canonical: str) -> str:
    return canonical.rsplit(".", 1)[-1]


def split_module(bfl: BflModule, module: LoraModule | LycorisModule, source: object) -> tuple[dict, str | None]:
    """({canonical name: module}, note for inspect or None) of one BFL module read from a file."""
    if not bfl.fused:
        if bfl.swapped:
            if not isinstance(module, LoraModule):
                raise AdapterError(f"{source}: {bfl.path} is a LyCORIS module; only plain LoRA is read there")
            module = LoraModule(down=module.down, up=_swap_halves(np.asarray(module.up)), alpha=module.alpha)
        return {bfl.parts[0]: module}, None
    if not isinstance(module, LoraModule) or module.magnitude is not None:
        raise AdapterError(f"{source}: {bfl.path} fuses {len(bfl.parts)} layers and is not plain LoRA; "
                           "only plain LoRA modules split exactly")
    up, down = np.asarray(module.up), np.asarray(module.down)
    sizes = part_sizes(bfl, int(up.shape[0]), int(down.shape[1]))
    if min(sizes) <= 0 or sum(sizes) != up.shape[0]:
        raise AdapterError(f"{source}: {bfl.path} has {up.shape[0]} output rows, which do not split into "
                           f"{len(bfl.parts)} parts of a Flux layer (input width {down.shape[1]})")
    bounds = np.cumsum([0] + sizes)
    used = [np.flatnonzero(np.any(up[a:b] != 0, axis=0)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    if not any(len(c) for c in used):  # an untrained (zero) up: keep every part at full rank
        used = [np.arange(module.rank)] * len(sizes)
    out: dict[str, LoraModule] = {}
    for name, cols, a, b in zip(bfl.parts, used, bounds[:-1], bounds[1:], strict=True):
        if len(cols) == 0:
            continue  # this part's delta is exactly zero
        alpha = float(module.alpha) if len(cols) == module.rank else float(module.alpha) * len(cols) / module.rank
        out[name] = LoraModule(down=down[cols], up=up[a:b][:, cols], alpha=alpha)
    disjoint = sum(len(c) for c in used) == len(np.unique(np.concatenate(used)))
    kind = "block-diagonal up" if disjoint and len(out) > 1 else "shared down"
    ranks = "+".join(str(out[n].rank) if n in out else "0" for n in bfl.parts)
    return out, f"{'/'.join(_short(p) for p in bfl.parts)} ({kind}, ranks {ranks}; split exactly)"


def fuse_parts(bfl: BflModule, parts: list[LoraModule | None], sizes: list[int]) -> LoraModule:
    """One BFL module from its canonical parts (None = not adapted), with the same delta."""
    present = [p for p in parts if p is not None]
    first = present[0]
    shared = all(np.asarray(p.down).shape == np.asarray(first.down).shape
                 and np.array_equal(p.down, first.down) and p.scale == first.scale for p in present)
    if shared:
        rank = first.rank
        ups = [np.asarray(p.up, np.float32) if p is not None else np.zeros((n, rank), np.float32)
               for p, n in zip(parts, sizes, strict=True)]
        return LoraModule(down=np.asarray(first.down), up=np.concatenate(ups), alpha=float(first.alpha))
    same_scale = len({p.scale for p in present}) == 1
    total = sum(p.rank for p in present)
    down = np.concatenate([np.asarray(p.down, np.float32) for p in present])
    up = np.zeros((sum(sizes), total), np.float32)
    row = col = 0
    for p, n in zip(parts, sizes, strict=True):
        if p is not None:
            factor = 1.0 if same_scale else p.scale
            up[row:row + n, col:col + p.rank] = np.asarray(p.up, np.float32) * factor
            col += p.rank
        row += n
    alpha = first.scale * total if same_scale else float(total)
    return LoraModule(down=down, up=up, alpha=alpha)


def _part_size_of(bfl: BflModule, parts: list[LoraModule | None], source: object) -> list[int]:
    """Part sizes of a fused module from the parts present (q/k/v width = the block's input width)."""
    present = [p for p in parts if p is not None]
    width = int(np.asarray(present[0].down).shape[1])
    if bfl.path.endswith("linear1"):
        mlp = parts[3]
        if mlp is None:
            raise AdapterError(f"{source}: {bfl.parts[3]} is not adapted, so the width of {bfl.path}'s MLP part "
                               "is unknown; add a zero LoRA on it or write a diffusers/PEFT file")
        return [width] * 3 + [int(np.asarray(mlp.up).shape[0])]
    return [width] * len(parts)


def bfl_from_canonical(modules: dict, source: object) -> dict[str, LoraModule | LycorisModule]:
    """{BFL path or canonical text-encoder name: module}: transformer modules named and fused as BFL does."""
    table = bfl_of_canonical()
    groups: dict[str, list] = {}
    out: dict[str, LoraModule | LycorisModule] = {}
    for name, module in modules.items():
        if name.startswith(tuple(c + "." for c in _TE_COMPONENTS)):
            out[name] = module
            continue
        if name not in table:
            raise AdapterError(f"{source}: {name} is not a module of a Flux.1 transformer")
        bfl, index = table[name]
        if bfl.fused or bfl.swapped:
            if not isinstance(module, LoraModule) or module.magnitude is not None:
                raise AdapterError(f"{source}: {name} is not plain LoRA; BFL's fused/reordered {bfl.path} needs one")
            if module.bias is not None:
                raise AdapterError(f"{source}: {name} has a lora_bias, which BFL-named files cannot carry")
        groups.setdefault(bfl.path, [None] * len(bfl.parts))[index] = module
    for path, parts in groups.items():
        bfl = bfl_modules()[path]
        if not bfl.fused:
            module = parts[0]
            if path.startswith("final_layer.") and isinstance(module, LoraModule) and module.scale != 1:
                # diffusers' sd-scripts/ComfyUI converter ignores final_layer alphas: fold them (exact everywhere)
                module = LoraModule(down=module.down, up=np.asarray(module.up, np.float32) * module.scale,
                                    alpha=float(module.rank))
            if bfl.swapped:
                module = LoraModule(down=module.down, up=_swap_halves(np.asarray(module.up)), alpha=module.alpha)
            out[path] = module
            continue
        out[path] = fuse_parts(bfl, parts, _part_size_of(bfl, parts, source))
    return out


def canonical_from_bfl(file_modules: dict[str, LoraModule | LycorisModule],
                       source: object) -> tuple[dict, dict[str, str]]:
    """Canonical modules (and inspect notes on fused ones) from {BFL path or canonical name: module}."""
    table = bfl_modules()
    modules: dict = {}
    notes: dict[str, str] = {}
    for path, module in file_modules.items():
        if path.startswith(tuple(c + "." for c in _TE_COMPONENTS) + (TRANSFORMER,)):
            modules[path] = module
            continue
        parts, note = split_module(table[path], module, source)
        modules.update(parts)
        if note:
            notes[path] = note
    return modules, notes


# ------------------------------------------------------------------------------------------ file names
def _te_tables(style: str) -> dict[str, str]:
    """{file module name: canonical} for the CLIP-L and T5 encoders in kohya or ComfyUI spelling."""
    table: dict[str, str] = {}
    for path in clip_module_names():
        canonical = "text_encoder." + path
        if style == "kohya":
            table[KOHYA_CLIP + path.replace(".", "_")] = canonical
        else:
            table[COMFY_CLIP + path] = canonical
    for path in t5_module_names():
        canonical = "text_encoder_2." + path
        if style == "kohya":
            for prefix in KOHYA_T5:
                table[prefix + path.replace(".", "_")] = canonical
        else:
            table[COMFY_T5 + path] = canonical
    return table


_TABLES: dict[str, dict[str, str]] = {}


def file_table(style: str) -> dict[str, str]:
    """{module name as the file spells it: BFL path or canonical name} for ``kohya`` (with OneTrainer's
    ``lora_transformer_`` names) or ``comfy``."""
    if style not in _TABLES:
        table = _te_tables(style)
        for path in bfl_modules():
            table[(KOHYA_UNET + path.replace(".", "_")) if style == "kohya" else COMFY_UNET + path] = path
        if style == "kohya":
            for canonical in bfl_of_canonical():
                table[ONETRAINER + canonical[len(TRANSFORMER):].replace(".", "_")] = canonical
        _TABLES[style] = table
    return _TABLES[style]


def file_name(key: str, style: str) -> str:
    """The module name a ``kohya`` or ``comfy`` file uses for a BFL path or canonical TE name."""
    component, _, rest = key.partition(".")
    if component == "text_encoder":
        rest = normalize_te_path(rest)
        return KOHYA_CLIP + rest.replace(".", "_") if style == "kohya" else COMFY_CLIP + rest
    if component == "text_encoder_2":
        return KOHYA_T5[0] + rest.replace(".", "_") if style == "kohya" else COMFY_T5 + rest
    return KOHYA_UNET + key.replace(".", "_") if style == "kohya" else COMFY_UNET + key


def read_named(found: dict[str, dict[str, np.ndarray]], style: str, source: object,
               module_from_parts) -> tuple[dict, dict[str, str]]:
    """Canonical Flux modules and fuse notes from {file module name: {part: tensor}}; unknown names stop."""
    table = file_table(style)
    file_modules = {}
    for name, parts in found.items():
        key = table.get(name)
        if key is None:
            raise AdapterError(f"{source}: {name} is not a module of a Flux.1 transformer, CLIP-L or T5 encoder")
        file_modules[key] = module_from_parts(name, parts, source, "flux")
    return canonical_from_bfl(file_modules, source)
