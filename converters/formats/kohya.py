"""kohya ``.safetensors`` LoRA files, the form A1111, Forge, ComfyUI and diffusers all load.

Keys: ``<name>.lora_down.weight``, ``<name>.lora_up.weight`` and ``<name>.alpha`` (float32, 0-dim)
with names from ``sd_names.kohya_name``. Weights are fp16 unless another dtype is asked for.
OpenCLIP-style encoders (SD2, SDXL's second) get all four attention projections per layer,
because A1111 only applies q/k/v deltas when q, k, v and out are all present.

Flux.1 files (sd-scripts ``flux_train_network.py``) use BFL module names, fused as BFL's weights
are (``lora_unet_double_blocks_0_img_attn_qkv``); ``flux_layout`` splits and fuses them exactly.
OneTrainer's Flux files (``lora_transformer_<diffusers path>``) are read too.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .. import flux_base, flux_layout
from ..errors import AdapterError
from ..kohya_metadata import arch_from_metadata, build_metadata, dtype_name, hashes, safetensors_order
from ..lycoris_parts import module_from_parts, split_part
from ..model import FLUX_ARCHES, SD_ARCHES, LoraAdapter, LoraModule, LycorisModule, require_plain_lora
from ..safetensors_io import SafetensorsFile, has_tensor_prefix, write_safetensors
from ..sd_names import canonical_from_kohya, kohya_name, unet_from_diffusers_style_kohya

NAME = "kohya"
_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "lora_transformer_")
_FLUX_NAMES = ("lora_unet_double_blocks_", "lora_unet_single_blocks_", "lora_te3_", "lora_transformer_")
_OPENCLIP = re.compile(r"^(?P<head>.+\.encoder\.layers\.\d+\.self_attn\.)(?P<proj>[qkv]_proj|out_proj)$")


def sniff(path: Path) -> bool:
    """A ``.safetensors`` whose tensor names start with kohya's ``lora_unet_``/``lora_te*_`` prefixes."""
    return has_tensor_prefix(path, _PREFIXES)


def detect_arch(names: list[str], shapes: dict[str, tuple[int, ...]], metadata: dict[str, str]) -> str:
    """The SD architecture of a kohya file: metadata first, then SDXL-only names, then TE width."""
    declared = arch_from_metadata(metadata)
    if declared:
        return declared
    if any(n.startswith(_FLUX_NAMES) for n in names):
        return "flux"
    if any(n.startswith(("lora_te2_", "lora_unet_input_blocks", "lora_unet_output_blocks", "lora_unet_middle_block",
                         "lora_unet_label_emb")) for n in names):
        return "sdxl"
    for name, shape in shapes.items():
        if name.startswith(("lora_te_", "lora_te1_")) and name.endswith(("q_proj.lora_down.weight",
                                                                        "q_proj.hada_w1_b")):
            return "sd2" if shape[1] == 1024 else "sd1"
    return "sd1"


def group_parts(keys, get, path: Path, prefixes: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
    """Tensors grouped per module; any tensor that is not a part this tool understands stops the read."""
    found: dict[str, dict[str, np.ndarray]] = {}
    for key in keys:
        split = split_part(key)
        if split is None or not key.startswith(prefixes):
            raise AdapterError(f"{path}: tensor {key} is not part of a LoRA/LoCon/LoHa/LoKr module this tool "
                               "understands; nothing was converted")
        found.setdefault(split[0], {})[split[1]] = get(key)
    return found


def read(path: Path, arch: str | None = None) -> LoraAdapter:
    """Read a kohya LoRA (LoCon, Tucker LoCon, DoRA, LoHa, LoKr) into canonical names for ``arch``."""
    path = Path(path)
    st = SafetensorsFile(path)
    keys = st.keys()
    found = group_parts(keys, st.get, path, _PREFIXES)
    if not found:
        raise AdapterError(f"{path}: no kohya LoRA tensors (lora_down/lora_up) found")
    shapes = {k: st.shape(k) for k in keys}
    chosen = arch or detect_arch(list(found), shapes, st.metadata)
    if chosen in FLUX_ARCHES:
        modules, fused = flux_layout.read_named(found, "kohya", path, module_from_parts)
        return LoraAdapter(modules=modules, arch=chosen, metadata=dict(st.metadata), alpha_form="alpha tensors",
                           fused=fused)
    if chosen not in SD_ARCHES:
        raise AdapterError(f"{path}: kohya files are Stable Diffusion or Flux.1 LoRAs; --arch {chosen} does not apply")
    modules: dict[str, LoraModule | LycorisModule] = {}
    for name, parts in found.items():
        canonical = _canonical(name, chosen)
        if canonical is None:
            raise AdapterError(f"{path}: {name} is not a module of an {chosen} model; pass the right --arch")
        modules[canonical] = module_from_parts(name, parts, path, chosen)
    return LoraAdapter(modules=modules, arch=chosen, metadata=dict(st.metadata), alpha_form="alpha tensors")


def _canonical(name: str, arch: str) -> str | None:
    if arch != "sdxl" and name.startswith("lora_te1_"):
        name = "lora_te_" + name[len("lora_te1_"):]  # diffusers' converter writes lora_te1 for SD1/SD2
    canonical = canonical_from_kohya(name, arch)
    if canonical is None and arch == "sdxl":
        canonical = unet_from_diffusers_style_kohya(name)
    return canonical


def _is_openclip(component: str, arch: str) -> bool:
    if arch == "sdxl":
        return component == "text_encoder_2"
    return component == "text_encoder" and arch.startswith("sd2")


def complete_openclip(modules: dict[str, LoraModule], arch: str) -> dict[str, LoraModule]:
    """Add zero modules so each adapted OpenCLIP attention has q, k, v and out (A1111 needs all four)."""
    out = dict(modules)
    for name, module in modules.items():
        m = _OPENCLIP.match(name)
        if not m or not _is_openclip(name.split(".", 1)[0], arch):
            continue
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sibling = m["head"] + proj
            if sibling not in out:
                hidden = int(module.down.shape[1])
                out[sibling] = LoraModule(down=np.zeros((module.rank, hidden), np.float32),
                                          up=np.zeros((hidden, module.rank), np.float32), alpha=float(module.alpha))
    return out


def _refuse(adapter: LoraAdapter, path: Path) -> None:
    if adapter.family not in ("sd", "flux"):
        raise AdapterError(f"{path}: kohya files are for Stable Diffusion and Flux.1; this is an LLM adapter "
                           "(use --to gguf/peft)")
    require_plain_lora(adapter, path, "kohya LoRA files")
    if any(m.magnitude is not None for m in adapter.modules.values()):
        raise AdapterError(f"{path}: DoRA adapters have no faithful kohya form; convert to peft or diffusers instead")
    if adapter.full_weights:
        raise AdapterError(f"{path}: kohya files cannot carry modules_to_save ({sorted(adapter.full_weights)[0]}); "
                           "use --to peft")
    if any(m.bias is not None for m in adapter.modules.values()):
        raise AdapterError(f"{path}: kohya files cannot carry lora_bias; use --to peft")
    if any(m.is_embedding for m in adapter.modules.values()):
        raise AdapterError(f"{path}: kohya files cannot carry embedding LoRA; use --to peft")


def _sd_names(modules: dict[str, LoraModule], arch: str, path: Path) -> dict[str, LoraModule]:
    """{kohya name: module} of an SD adapter; two modules on one name stop the write."""
    named: dict[str, LoraModule] = {}
    seen: dict[str, str] = {}
    for canonical, module in modules.items():
        name = kohya_name(canonical, arch)
        if name in seen:
            raise AdapterError(f"{path}: {canonical} and {seen[name]} map to the same kohya name {name}")
        seen[name] = canonical
        named[name] = module
    return named


def write(adapter: LoraAdapter, path: Path, options) -> Path:
    """Write a kohya LoRA: WebUI names, real per-module alpha (float32), fp16 by default, metadata, hashes."""
    path = Path(path)
    _refuse(adapter, path)
    arch = options.arch or adapter.arch
    if adapter.family == "flux" or arch in FLUX_ARCHES:
        arch = "flux"
        named = {flux_layout.file_name(k, "kohya"): m
                 for k, m in flux_layout.bfl_from_canonical(adapter.modules, path).items()}
    elif arch not in SD_ARCHES:
        raise AdapterError(f"{path}: unknown SD architecture {arch!r}; pass --arch sd1|sd2|sd2-v|sdxl")
    else:
        named = _sd_names(complete_openclip(adapter.modules, arch), arch, path)
    float_dtype = options.dtype or "f16"
    items: list[tuple[str, np.ndarray, str]] = []
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    conv: set[str] = set()
    for name, module in named.items():
        down, up = np.asarray(module.down), np.asarray(module.up)
        if down.ndim == 4 and up.ndim == 2:
            up = up.reshape(up.shape + (1, 1))
        if down.ndim == 4 and down.shape[2:] != (1, 1):
            conv.add(name)  # kohya's conv_dim covers kernels > 1x1 only; 1x1 convs count as network_dim
        ranks[name], alphas[name] = module.rank, float(module.alpha)
        items.append((name + ".lora_down.weight", down, dtype_name(down, float_dtype)))
        items.append((name + ".lora_up.weight", up, dtype_name(up, float_dtype)))
        items.append((name + ".alpha", np.asarray(module.alpha, dtype=np.float32), "F32"))
    items = safetensors_order(items)
    variant = flux_base.adapter_variant(adapter, options.base)[0] if arch == "flux" else None
    meta = build_metadata(arch, options.name or path.stem, ranks, alphas, conv, adapter.metadata, options.metadata,
                          variant)
    meta.update(hashes(items, meta))
    alpha_names = [n for n, _, _ in items if n.endswith(".alpha")]
    return write_safetensors(path, [(n, a) for n, a, _ in items], metadata=meta, float_dtype=float_dtype,
                             force=options.force, keep_dtype=alpha_names)
