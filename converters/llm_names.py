"""LLM naming: Hugging Face module paths <-> GGUF tensor base names, the rotary Q/K row permutation,
and architecture detection.

Canonical LLM module names are HF paths without PEFT's prefix (``model.layers.0.self_attn.q_proj``);
GGUF base names have no ``.weight`` suffix (``blk.0.attn_q``). gguf-py's tensor map does the
naming for every architecture it knows; the common decoder layout is listed here too so the
reverse direction is unambiguous.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache

import numpy as np

from .errors import AdapterError
from .gguf_py import installed_gguf

# Canonical arch -> the architecture string llama.cpp uses (GGUF ``general.architecture``).
_GGUF_ARCH = {"mistral": "llama"}
# HF config ``model_type`` -> canonical arch.
_MODEL_TYPES = {
    "llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "gemma": "gemma",
    "gemma2": "gemma2", "gemma3": "gemma3", "gemma3_text": "gemma3", "phi3": "phi3", "falcon": "falcon",
    "gpt2": "gpt2", "starcoder2": "starcoder2", "granite": "granite",
    "qwen": "qwen", "baichuan": "baichuan", "chatglm": "chatglm",
    "ministral3": "mistral3",  # Ministral 3 / Mistral Small 3 text models: llama.cpp's mistral3
    "olmo2": "olmo2",
}
_MODEL_TYPES["stablelm"] = "stablelm"
_MODEL_TYPES["qwen3_moe"] = "qwen3moe"
# Architectures whose GGUF Q/K weights are stored row-permuted for llama.cpp's rotary layout.
PERMUTED_ARCHES = frozenset({"llama", "mistral", "granite", "baichuan", "mistral3"})

# The usual decoder layout (llama, mistral, qwen2, qwen3, gemma...): HF suffix -> GGUF suffix.
_LAYER_MODULES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GLOBAL_MODULES = {"lm_head": "output", "model.embed_tokens": "token_embd"}
_DECODER_ARCHES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "granite",
                             "baichuan", "mistral3", "olmo2"})
_DECODER_ARCHES |= {"stablelm"}
_DECODER_ARCHES |= {"qwen3moe"}  # attention as the others; the router and experts below
# MoE experts: GGUF holds a layer's experts as one 3-D tensor (experts, out, in); canonical names are per expert,
# as Hugging Face (transformers 4.x modules, the safetensors of every version) and PEFT name them.
_EXPERT_HF = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)$")
_EXPERT_GGUF = {"gate_proj": "ffn_gate_exps", "up_proj": "ffn_up_exps", "down_proj": "ffn_down_exps"}
_EXPERT_BASE = re.compile(r"^blk\.(\d+)\.(ffn_gate_exps|ffn_up_exps|ffn_down_exps)$")
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_GGUF_LAYER = re.compile(r"^blk\.(\d+)\.(.+)$")
# Other layouts, for the reverse direction where gguf-py lists several HF names per tensor.
_ARCH_LAYERS = {
    "phi3": ("model.layers", {"self_attn.qkv_proj": "attn_qkv", "self_attn.o_proj": "attn_output",
                              "mlp.gate_up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}),
    "gpt2": ("transformer.h", {"attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
                               "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}),
    "falcon": ("transformer.h", {"self_attention.query_key_value": "attn_qkv", "self_attention.dense": "attn_output",
                                 "mlp.dense_h_to_4h": "ffn_up", "mlp.dense_4h_to_h": "ffn_down"}),
    "starcoder2": ("model.layers", {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                                    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                                    "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}),
}
_ARCH_LAYERS["qwen3moe"] = ("model.layers", {"mlp.gate": "ffn_gate_inp"})  # the router (gguf-py: Mixtral's name first)
# The trainer's module names of the remote-code families (fused tensors as one module, as llama.cpp has them).
_ARCH_LAYERS["qwen"] = ("model.layers", {"self_attn.qkv_proj": "attn_qkv", "self_attn.o_proj": "attn_output",
                                         "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                                         "mlp.down_proj": "ffn_down"})
_ARCH_LAYERS["chatglm"] = ("model.layers", {"self_attn.qkv_proj": "attn_qkv", "self_attn.q_proj": "attn_q",
                                            "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                                            "self_attn.o_proj": "attn_output", "mlp.gate_up_proj": "ffn_up",
                                            "mlp.down_proj": "ffn_down"})
_HF_PREFIXES = {"gpt2": ("transformer.",), "falcon": ("transformer.",)}


def gguf_arch(arch: str) -> str:
    """The ``general.architecture`` llama.cpp expects for a canonical arch (Mistral is ``llama``)."""
    return _GGUF_ARCH.get(arch, arch)


def arch_from_config(config: Mapping[str, object]) -> str | None:
    """Canonical arch from an HF ``config.json`` dict (``model_type``, then ``architectures``)."""
    model_type = str(config.get("model_type") or "").lower()
    if model_type in _MODEL_TYPES:
        return _MODEL_TYPES[model_type]
    for name in config.get("architectures") or ():
        lowered = str(name).lower()
        for key, arch in _MODEL_TYPES.items():
            if lowered.startswith(key):
                return arch
    return None


def arch_from_module_names(names: Iterable[str]) -> str | None:
    """Best guess of the arch from module names alone; llama and qwen2 look alike, so ``llama``."""
    names = list(names)
    if any(".self_attn.qkv_proj" in n or ".mlp.gate_up_proj" in n for n in names):
        return "phi3"
    if any(n.startswith("transformer.h.") and ".attn.c_attn" in n for n in names):
        return "gpt2"
    if any(n.startswith("transformer.h.") and ".self_attention.query_key_value" in n for n in names):
        return "falcon"
    if any(_HF_LAYER.match(n) for n in names):
        return "llama"
    return None


@lru_cache(maxsize=32)
def _tensor_map(arch: str, n_blocks: int):
    """gguf-py's name map for ``arch`` (None when gguf-py does not know the arch)."""
    gguf = installed_gguf()

    wanted = gguf_arch(arch)
    for key, value in gguf.MODEL_ARCH_NAMES.items():
        if value == wanted:
            return gguf.get_tensor_name_map(key, n_blocks)
    return None


def hf_to_gguf(module: str, arch: str) -> str:
    """GGUF base tensor name for a canonical HF module path, e.g. ``blk.0.attn_q``."""
    if module in _GLOBAL_MODULES and arch in _DECODER_ARCHES:
        return _GLOBAL_MODULES[module]
    match = _HF_LAYER.match(module)
    if match and arch in _DECODER_ARCHES and match.group(2) in _LAYER_MODULES:
        return f"blk.{match.group(1)}.{_LAYER_MODULES[match.group(2)]}"
    block = re.search(r"\.(\d+)\.", module)
    tmap = _tensor_map(arch, int(block.group(1)) + 1 if block else 1)
    name = tmap.get_name(module) if tmap is not None else None
    if name is None:
        raise AdapterError(f"module {module!r} has no GGUF tensor name for arch {arch}")
    return name


def gguf_to_hf(base: str, arch: str) -> str:
    """Canonical HF module path for a GGUF base tensor name (reverse of :func:`hf_to_gguf`)."""
    if arch in _DECODER_ARCHES or _ARCH_LAYERS.get(arch, ("",))[0] == "model.layers":
        for hf, gg in _GLOBAL_MODULES.items():
            if gg == base:
                return hf
    if arch in _DECODER_ARCHES:
        match = _GGUF_LAYER.match(base)
        if match:
            for hf, gg in _LAYER_MODULES.items():
                if gg == match.group(2):
                    return f"model.layers.{match.group(1)}.{hf}"
    block = _GGUF_LAYER.match(base)
    if block and arch in _ARCH_LAYERS:
        prefix, table = _ARCH_LAYERS[arch]
        for hf, gg in table.items():
            if gg == block.group(2):
                return f"{prefix}.{block.group(1)}.{hf}"
    tmap = _tensor_map(arch, int(block.group(1)) + 1 if block else 1)
    if tmap is not None:
        candidates = [hf for hf, (_, gg) in tmap.mapping.items() if gg == base and hf != base]
        prefixes = _HF_PREFIXES.get(arch, ("model.",))
        for hf in candidates:
            if hf.startswith(prefixes):
                return hf
        if candidates:
            return candidates[0]
    raise AdapterError(f"GGUF tensor {base!r} has no known Hugging Face module for arch {arch}")


def expert_tensor(module: str) -> tuple[str, int] | None:
    """``model.layers.0.mlp.experts.3.up_proj`` -> (``blk.0.ffn_up_exps``, 3); None for a module that is no expert."""
    match = _EXPERT_HF.match(module)
    if match is None:
        return None
    return f"blk.{match.group(1)}.{_EXPERT_GGUF[match.group(3)]}", int(match.group(2))


def expert_modules(base: str, n_experts: int) -> list[str] | None:
    """``blk.0.ffn_up_exps`` -> the canonical module of each of its ``n_experts`` experts; None for other tensors."""
    match = _EXPERT_BASE.match(base)
    if match is None:
        return None
    proj = next(hf for hf, gg in _EXPERT_GGUF.items() if gg == match.group(2))
    return [f"model.layers.{match.group(1)}.mlp.experts.{e}.{proj}" for e in range(n_experts)]


def is_permuted(arch: str, module: str) -> bool:
    """Whether the GGUF tensor of this module is stored row-permuted (llama-family Q and K)."""
    return arch in PERMUTED_ARCHES and module.endswith(("self_attn.q_proj", "self_attn.k_proj"))


def n_heads_for(module: str, n_head: int, n_head_kv: int | None) -> int:
    """The head count the Q/K permutation uses for a module: KV heads for K."""
    if module.endswith("k_proj") and n_head_kv:
        return n_head_kv
    return n_head


def permute_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """HF -> GGUF rotary row order (llama.cpp's ``permute``) for a weight or a lora_B."""
    rows = weight.shape[0]
    if rows % (2 * n_heads):
        raise AdapterError(f"cannot split {rows} rows into {n_heads} rotary heads; wrong head count?")
    return weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def unpermute_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """GGUF -> HF rotary row order: the inverse of :func:`permute_rows`."""
    rows = weight.shape[0]
    if rows % (2 * n_heads):
        raise AdapterError(f"cannot split {rows} rows into {n_heads} rotary heads; wrong head count?")
    return weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
