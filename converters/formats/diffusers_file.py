"""diffusers single-file LoRAs (``pytorch_lora_weights.safetensors``) and the other PEFT-side spellings.

Written form: ``unet.<path>.lora_A.weight`` / ``lora_B``, ``text_encoder.text_model.<path>...``,
``text_encoder_2.text_model.<path>...``, with every module's alpha/rank folded into its lora_B and
ranks padded to one per component (alpha = rank), because diffusers 0.31/0.32 ignore the
``lora_adapter_metadata`` header that newer versions read; the header is still written (r = alpha)
and ``lora_bridge.alpha = folded`` records the fold, which the reader undoes for ``inspect``.

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
from ..flux_names import is_flux_transformer_path
from ..model import IMAGE_FAMILIES, LoraAdapter, LoraModule, require_plain_lora
from ..safetensors_io import SafetensorsFile, read_header, write_safetensors
from ..sd_names import normalize_te_path
from .peft import (
    PEFT_PREFIX,
    SD_COMPONENTS,
    _component_files,
    component_path,
    is_te,
    modules_from_tensors,
    sd_arch_guess,
)
from .peft import split_lora_key as _split

NAME = "diffusers"
META_KEY = "lora_adapter_metadata"
FOLDED_KEY = "lora_bridge.alpha"
PADDED_KEY = "lora_bridge.padded_ranks"  # {canonical module: its rank before padding}
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


def _module_of(key: str) -> str:
    parsed = _split(key)
    return parsed[0] if parsed else key


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
    if "transformer" in groups and not any(is_flux_transformer_path(_module_of(n)) for n in groups["transformer"]):
        # an LLM whose modules live under ``transformer.`` (GPT-2, Falcon), not Flux's transformer component
        groups.setdefault("", {}).update({"transformer." + k: v for k, v in groups.pop("transformer").items()})
    if "" in groups and any(n.startswith(_UNET_HEADS) for n in groups[""]):
        groups.setdefault("unet", {}).update(groups.pop(""))
    elif "" in groups and any(is_flux_transformer_path(_module_of(n)) for n in groups[""]):
        groups.setdefault("transformer", {}).update(groups.pop(""))
    modules, full = {}, {}
    for component, tensors in groups.items():
        config = {k[len(component) + 1:]: v for k, v in packed.items() if k.startswith(component + ".")}
        prefix = component + "." if component else ""
        te = is_te(component)
        found, weights = modules_from_tensors(tensors, config, path, prefix, te=te)
        for key, value in tensors.items():  # old diffusers files: network alphas as tensors
            if key.endswith(".alpha"):
                module = key[: -len(".alpha")]
                canonical = prefix + (normalize_te_path(module) if te else module)
                if canonical in found:
                    found[canonical].alpha = float(np.asarray(value, dtype=np.float32))
        modules.update(found)
        full.update(weights)
    alpha_tensors = any(k.endswith(".alpha") for k in st.header)
    if st.metadata.get(FOLDED_KEY) == "folded":
        try:
            padded = json.loads(st.metadata.get(PADDED_KEY, "{}"))
        except ValueError:
            padded = {}
        unpad(modules, {str(k): int(v) for k, v in padded.items()} if isinstance(padded, dict) else {})
        alpha_form = "folded into weights (alpha = rank)"
    elif META_KEY in st.metadata:
        alpha_form = f"config ({META_KEY})"
    else:
        alpha_form = "alpha tensors" if alpha_tensors else "none (alpha = rank)"
    metadata = {k: v for k, v in st.metadata.items() if k not in (META_KEY, "format", FOLDED_KEY, PADDED_KEY)}
    family_sd = any(n.startswith(tuple(c + "." for c in SD_COMPONENTS)) for n in modules)
    chosen = arch or metadata.get("lora_bridge.arch")
    if chosen is None and "transformer" in groups:
        chosen = "flux"
    if chosen is None and family_sd:
        chosen = sd_arch_guess(modules) or "sd1"
    return LoraAdapter(modules=modules, arch=chosen, metadata=metadata, full_weights=full, alpha_form=alpha_form)


def fold_scale(modules: dict[str, LoraModule]) -> dict[str, LoraModule]:
    """The same deltas with scale 1 everywhere: alpha/rank folded into lora_B, every rank padded to the
    component's largest with zero rows, alpha = rank.

    diffusers <= 0.32 ignores ``lora_adapter_metadata`` and gives every module of a component
    ``lora_alpha`` = the first rank it meets; with one rank and alpha = rank, that is exact in
    every diffusers version, with or without the header.
    """
    top = max(m.rank for m in modules.values())
    out = {}
    for name, m in modules.items():
        scale = m.scale
        down, up = np.asarray(m.down, dtype=np.float32), np.asarray(m.up, dtype=np.float32) * scale
        if m.rank < top:
            pad = top - m.rank
            down = np.concatenate([down, np.zeros((pad,) + down.shape[1:], np.float32)])
            up = np.concatenate([up, np.zeros((up.shape[0], pad) + up.shape[2:], np.float32)], axis=1)
        bias = None if m.bias is None else np.asarray(m.bias, dtype=np.float32) * scale
        out[name] = LoraModule(down=down, up=up, alpha=float(top), magnitude=m.magnitude, bias=bias,
                               is_embedding=m.is_embedding)
    return out


def unpad(modules: dict[str, LoraModule], ranks: dict[str, int]) -> None:
    """Cut padded modules back to their recorded ranks (the zero rows ``fold_scale`` added), in place."""
    for name, rank in ranks.items():
        m = modules.get(name)
        if m is None or not 0 < rank < m.rank:
            continue
        down, up = np.asarray(m.down), np.asarray(m.up)
        if np.any(down[rank:]) or np.any(up[:, rank:]):
            continue  # not our padding: keep every component
        m.alpha = float(m.alpha) * rank / m.rank  # keep alpha / rank
        m.down, m.up = down[:rank], up[:, :rank]


def write(adapter: LoraAdapter, path: Path, options) -> Path:
    """Write one diffusers LoRA file whose deltas are exact in diffusers 0.31, 0.32 and current.

    Scales are folded into the weights (``fold_scale``) and the header says so
    (``lora_bridge.alpha = folded``); CLIP modules keep ``text_model.`` in their names.
    """
    path = Path(path)
    if adapter.family not in IMAGE_FAMILIES:
        raise AdapterError(f"{path}: diffusers LoRA files are for Stable Diffusion and Flux.1 pipelines; "
                           "use --to peft or gguf")
    require_plain_lora(adapter, path, "diffusers LoRA files")
    groups: dict[str, tuple[dict, dict]] = {}
    for name, module in adapter.modules.items():
        component, _, rest = name.partition(".")
        groups.setdefault(component, ({}, {}))[0][component_path(component, rest)] = module
    for name, weight in adapter.full_weights.items():
        component, _, rest = name.partition(".")
        groups.setdefault(component, ({}, {}))[1][component_path(component, rest)] = weight
    tensors: list[tuple[str, np.ndarray]] = []
    packed: dict[str, object] = {}
    top_rank = {c: max(m.rank for m in mods.values()) for c, (mods, _) in groups.items() if mods}
    for component, (mods, full) in sorted(groups.items()):
        if component not in SD_COMPONENTS or not mods:
            raise AdapterError(f"{path}: cannot write component {component!r} to a diffusers LoRA file")
        config, comp_tensors = _component_files(fold_scale(mods), full, None, path, te=is_te(component))
        for key in ("peft_type", "task_type", "base_model_name_or_path", "inference_mode"):
            config.pop(key, None)
        packed.update({f"{component}.{k}": v for k, v in config.items()})
        tensors += [(component + "." + k[len(PEFT_PREFIX):], v) for k, v in comp_tensors]
    metadata = {"format": "pt", META_KEY: json.dumps(packed, indent=2, sort_keys=True), FOLDED_KEY: "folded"}
    padded = {n: m.rank for n, m in adapter.modules.items() if m.rank < top_rank[n.partition(".")[0]]}
    if padded:
        metadata[PADDED_KEY] = json.dumps(padded, sort_keys=True)
    if adapter.arch:
        metadata["lora_bridge.arch"] = adapter.arch
    metadata.update({k: str(v) for k, v in options.metadata.items()})
    return write_safetensors(path, tensors, metadata=metadata, float_dtype=options.dtype, force=options.force)
