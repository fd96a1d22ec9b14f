"""XLabs-AI's Flux.1 LoRA files (x-flux ``train_flux_lora_deepspeed.py``), read only.

Keys: ``[diffusion_model.]double_blocks.N.processor.{qkv,proj}_lora{1,2}.{down,up}.weight`` (1: image
stream, 2: text stream) and ``single_blocks.N.processor.{qkv,proj}_lora.{down,up}.weight``. As x-flux's
processors apply them: ``qkv_lora1`` adds to ``img_attn.qkv``'s output, ``proj_lora1`` to ``img_attn.proj``'s,
the ``2`` twins to the ``txt_attn`` ones; in a single block ``qkv_lora`` adds to the q/k/v rows of
``linear1`` (not its MLP rows) and ``proj_lora`` (15360 -> 3072) to ``linear2``. No alpha is stored and
x-flux builds its layers without ``network_alpha``, so the scale is 1 (alpha = rank). Fused q/k/v split
exactly into the canonical modules (``flux_layout.split_module``).
"""

from __future__ import annotations

import re
from pathlib import Path

from .. import flux_layout
from ..errors import AdapterError
from ..flux_names import BflModule, bfl_modules
from ..lycoris_parts import module_from_parts
from ..model import LoraAdapter
from ..safetensors_io import SafetensorsFile, tensor_names

NAME = "xlabs"
_KEY = re.compile(r"(?:diffusion_model\.)?(double|single)_blocks\.(\d+)\.processor\.(qkv|proj)_lora([12]?)"
                  r"\.(down|up)\.weight")
_DOUBLE = {("qkv", "1"): "img_attn.qkv", ("proj", "1"): "img_attn.proj", ("qkv", "2"): "txt_attn.qkv",
           ("proj", "2"): "txt_attn.proj"}


def sniff(path: Path) -> bool:
    """A ``.safetensors`` whose tensors are all x-flux processor LoRA layers."""
    keys = tensor_names(path)
    return bool(keys) and all(_KEY.fullmatch(k) for k in keys)


def _module(kind: str, block: str, layer: str, stream: str) -> BflModule | None:
    """The BFL module (or, for a single block's qkv_lora, the q/k/v part of linear1) a processor layer adds to."""
    if kind == "double":
        path = _DOUBLE.get((layer, stream))
        return bfl_modules().get(f"double_blocks.{block}.{path}") if path else None
    if stream:
        return None
    if layer == "proj":
        return bfl_modules().get(f"single_blocks.{block}.linear2")
    linear1 = bfl_modules().get(f"single_blocks.{block}.linear1")
    return BflModule(f"single_blocks.{block}.linear1[q/k/v]", linear1.parts[:3]) if linear1 else None


def read(path: Path, arch: str | None = None) -> LoraAdapter:
    """Read an XLabs Flux LoRA into canonical (diffusers) names."""
    path = Path(path)
    if arch not in (None, "flux"):
        raise AdapterError(f"{path}: XLabs files are Flux.1 LoRAs; --arch {arch} does not apply")
    st = SafetensorsFile(path)
    found: dict[str, tuple[BflModule, dict]] = {}
    names = st.keys()
    for key in names:
        match = _KEY.fullmatch(key)
        bfl = _module(*match.groups()[:4]) if match else None
        if bfl is None:
            raise AdapterError(f"{path}: tensor {key} is not an x-flux LoRA layer of a Flux.1 block; nothing was read")
        part = "lora_down.weight" if match[5] == "down" else "lora_up.weight"
        found.setdefault(bfl.path, (bfl, {}))[1][part] = st.get(key)
    modules, fused = {}, {}
    for name, (bfl, parts) in found.items():
        split, note = flux_layout.split_module(bfl, module_from_parts(name, parts, path, "flux"), path)
        modules.update(split)
        if note:
            fused[name] = note
    return LoraAdapter(modules=modules, arch="flux", metadata=dict(st.metadata), alpha_form="none (scale 1)",
                       fused=fused)
