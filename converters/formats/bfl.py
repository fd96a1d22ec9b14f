"""Flux.1 LoRAs in BFL naming as ComfyUI writes and reads them (``diffusion_model.double_blocks.0.img_attn.qkv``).

Keys: ``diffusion_model.<BFL path>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``; the
text encoders under ``text_encoders.clip_l.transformer.`` and ``text_encoders.t5xxl.transformer.``.
Read also: the ``lora_A``/``lora_B`` spelling and LyCORIS parts on unfused modules. Written with
the ``lora_down``/``lora_up`` spelling and float32 alphas, which ComfyUI, Forge and diffusers'
Flux loader all read. Fused modules (``qkv``, ``linear1``) split and fuse exactly (``flux_layout``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import flux_layout
from ..errors import AdapterError
from ..flux_names import BFL_HEADS, COMFY_CLIP, COMFY_T5, COMFY_UNET
from ..kohya_metadata import dtype_name, safetensors_order
from ..lycoris_parts import LOHA_PARTS, LOKR_PARTS, LORA_PARTS, module_from_parts
from ..model import LoraAdapter, require_plain_lora
from ..safetensors_io import SafetensorsFile, tensor_names, write_safetensors

NAME = "bfl"
_SPELLINGS = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}
_PARTS = tuple(sorted(set(LORA_PARTS + LOHA_PARTS + LOKR_PARTS) | set(_SPELLINGS), key=len, reverse=True))
_HEADS = tuple(COMFY_UNET + h for h in BFL_HEADS) + (COMFY_CLIP, COMFY_T5)


def sniff(path: Path) -> bool:
    """A ``.safetensors`` whose tensors are BFL Flux modules under ``diffusion_model.`` or ``text_encoders.``."""
    keys = tensor_names(path)
    return bool(keys) and any(k.startswith(_HEADS) for k in keys) and all(
        k.startswith((COMFY_UNET, COMFY_CLIP, COMFY_T5)) for k in keys)


def _split(key: str) -> tuple[str, str] | None:
    for part in _PARTS:
        if key.endswith("." + part):
            return key[: -len(part) - 1], _SPELLINGS.get(part, part)
    return None


def read(path: Path, arch: str | None = None) -> LoraAdapter:
    """Read a BFL/ComfyUI-named Flux LoRA into canonical (diffusers) names, splitting fused modules."""
    path = Path(path)
    if arch not in (None, "flux"):
        raise AdapterError(f"{path}: BFL-named files are Flux.1 LoRAs; --arch {arch} does not apply")
    st = SafetensorsFile(path)
    found: dict[str, dict[str, np.ndarray]] = {}
    names = st.keys()
    for key in names:
        split = _split(key)
        if split is None:
            raise AdapterError(f"{path}: tensor {key} is not part of a LoRA module this tool understands; "
                               "nothing was converted")
        module, part = split
        if part in found.get(module, {}):
            raise AdapterError(f"{path}: {module} has its {part} twice (lora_A and lora_down spellings)")
        found.setdefault(module, {})[part] = st.get(key)
    modules, fused = flux_layout.read_named(found, "comfy", path, module_from_parts)
    return LoraAdapter(modules=modules, arch="flux", metadata=dict(st.metadata), alpha_form="alpha tensors",
                       fused=fused)


def write(adapter: LoraAdapter, path: Path, options) -> Path:
    """Write a BFL/ComfyUI-named Flux LoRA (fp16 by default, like kohya files)."""
    path = Path(path)
    if adapter.family != "flux":
        raise AdapterError(f"{path}: BFL-named files are Flux.1 LoRAs; this adapter is {adapter.arch or 'not Flux'} "
                           "(use --to kohya, diffusers or peft)")
    require_plain_lora(adapter, path, "BFL-named Flux LoRA files")
    for name, module in adapter.modules.items():
        if module.magnitude is not None or module.bias is not None or module.is_embedding:
            raise AdapterError(f"{path}: {name} is DoRA, has a lora_bias or is an embedding; use --to peft")
    float_dtype = options.dtype or "f16"
    items = []
    for key, module in flux_layout.bfl_from_canonical(adapter.modules, path).items():
        name = flux_layout.file_name(key, "comfy")
        down, up = np.asarray(module.down), np.asarray(module.up)
        items.append((name + ".lora_down.weight", down, dtype_name(down, float_dtype)))
        items.append((name + ".lora_up.weight", up, dtype_name(up, float_dtype)))
        items.append((name + ".alpha", np.asarray(module.alpha, dtype=np.float32), "F32"))
    items = safetensors_order(items)
    metadata = {k: str(v) for k, v in {**adapter.metadata, **options.metadata}.items()
                if not k.startswith("sshs_")}
    metadata["lora_bridge.arch"] = "flux"
    alphas = [n for n, _, _ in items if n.endswith(".alpha")]
    return write_safetensors(path, [(n, a) for n, a, _ in items], metadata=metadata, float_dtype=float_dtype,
                             force=options.force, keep_dtype=alphas)
