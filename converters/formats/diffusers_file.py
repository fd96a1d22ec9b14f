"""diffusers single-file LoRAs (``pytorch_lora_weights.safetensors``) and the other PEFT-side spellings.

Written form: ``unet.<path>.lora_A.weight`` / ``lora_B``, ``text_encoder.<path>...``,
``text_encoder_2.<path>...``, with the per-component LoRA config in the header key
``lora_adapter_metadata`` (JSON of ``{"unet.r": .., "unet.lora_alpha": .., "unet.alpha_pattern": ..}``),
which is what ``save_lora_weights`` writes and ``load_lora_weights`` reads.

Accepted on read: ``lora_A``/``lora_B`` (optionally with an adapter-name infix), ``lora.down/up``,
``lora_linear_layer.down/up``, old ``processor.to_q_lora.down`` keys, ``.alpha`` tensors, prefixes
``unet.``, ``text_encoder.``, ``text_encoder_2.`` and ``base_model.model.``. Without a config,
alpha = rank.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import AdapterError
from ..model import LoraAdapter
from ..safetensors_io import SafetensorsFile, read_header, write_safetensors
from ..sd_names import normalize_te_path
from .peft import (
    PEFT_PREFIX,
    SD_COMPONENTS,
    _component_files,
    _module_path,
    clip_flattened,
    modules_from_tensors,
    sd_arch_guess,
)
from .peft import split_lora_key as _split

NAME = "diffusers"
META_KEY = "lora_adapter_metadata"
_UNET_HEADS = ("down_blocks.", "up_blocks.", "mid_block.", "conv_in", "conv_out", "time_embedding.",
               "add_embedding.")


def sniff(path: Path) -> bool:
    """A ``.safetensors`` with diffusers' LoRA header key or PEFT/diffusers-style LoRA tensor names."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() != ".safetensors":
        return False
    try:
        header, _ = read_header(path)
    except AdapterError:
        # Checked last among formats: claim a broken .safetensors so read() reports why it is broken
        # (truncated, corrupt header) instead of "not an adapter".
        return True
    if META_KEY in (header.get("__metadata__") or {}):
        return True
    return any(_split(k) is not None for k in header if k != "__metadata__")


def _component_of(key: str) -> tuple[str, str]:
    """(component, rest) of a tensor name; component '' for names without one."""
    if key.startswith(PEFT_PREFIX):
        key = key[len(PEFT_PREFIX):]
    head, sep, rest = key.partition(".")
    if sep and head in SD_COMPONENTS:
        return head, rest
    return "", key


def read(path: Path, arch: str | None = None) -> LoraAdapter:
    """Read a diffusers/PEFT-style single file; configs come from ``lora_adapter_metadata`` if present."""
    path = Path(path)
    st = SafetensorsFile(path)
    try:
        packed = json.loads(st.metadata[META_KEY]) if META_KEY in st.metadata else {}
    except ValueError:
        raise AdapterError(f"{path}: header {META_KEY} is not valid JSON; re-save the file") from None
    groups: dict[str, dict[str, np.ndarray]] = {}
    for key, value in st.items():
        component, rest = _component_of(key)
        groups.setdefault(component, {})[rest] = value
    if "" in groups and any(n.startswith(_UNET_HEADS) for n in groups[""]):
        groups.setdefault("unet", {}).update(groups.pop(""))
    modules, full = {}, {}
    for component, tensors in groups.items():
        config = {k[len(component) + 1:]: v for k, v in packed.items() if k.startswith(component + ".")}
        prefix = component + "." if component else ""
        te = component.startswith("text_encoder")
        found, weights = modules_from_tensors(tensors, config, path, prefix, te=te)
        for key, value in tensors.items():  # old diffusers files: network alphas as tensors
            if key.endswith(".alpha"):
                module = key[: -len(".alpha")]
                canonical = prefix + (normalize_te_path(module) if te else module)
                if canonical in found:
                    found[canonical].alpha = float(np.asarray(value, dtype=np.float32))
        modules.update(found)
        full.update(weights)
    metadata = {k: v for k, v in st.metadata.items() if k not in (META_KEY, "format")}
    family_sd = any(n.startswith(tuple(c + "." for c in SD_COMPONENTS)) for n in modules)
    chosen = arch or metadata.get("lora_bridge.arch")
    if chosen is None and family_sd:
        chosen = sd_arch_guess(modules) or "sd1"
    return LoraAdapter(modules=modules, arch=chosen, metadata=metadata, full_weights=full)


def write(adapter: LoraAdapter, path: Path, options) -> Path:
    """Write one diffusers LoRA file that ``load_lora_weights`` loads with the exact per-module alphas."""
    path = Path(path)
    if adapter.family != "sd":
        raise AdapterError(f"{path}: diffusers LoRA files are for Stable Diffusion pipelines; use --to peft or gguf")
    flatten = clip_flattened()
    groups: dict[str, tuple[dict, dict]] = {}
    for name, module in adapter.modules.items():
        component, _, rest = name.partition(".")
        groups.setdefault(component, ({}, {}))[0][_module_path(component, rest, flatten)] = module
    for name, weight in adapter.full_weights.items():
        component, _, rest = name.partition(".")
        groups.setdefault(component, ({}, {}))[1][_module_path(component, rest, flatten)] = weight
    tensors: list[tuple[str, np.ndarray]] = []
    packed: dict[str, object] = {}
    for component, (mods, full) in sorted(groups.items()):
        if component not in SD_COMPONENTS or not mods:
            raise AdapterError(f"{path}: cannot write component {component!r} to a diffusers LoRA file")
        config, comp_tensors = _component_files(mods, full, None, path)
        for key in ("peft_type", "task_type", "base_model_name_or_path", "inference_mode"):
            config.pop(key, None)
        packed.update({f"{component}.{k}": v for k, v in config.items()})
        tensors += [(component + "." + k[len(PEFT_PREFIX):], v) for k, v in comp_tensors]
    metadata = {"format": "pt", META_KEY: json.dumps(packed, indent=2, sort_keys=True)}
    if adapter.arch:
        metadata["lora_bridge.arch"] = adapter.arch
    metadata.update({k: str(v) for k, v in options.metadata.items()})
    return write_safetensors(path, tensors, metadata=metadata, float_dtype=options.dtype, force=options.force)
