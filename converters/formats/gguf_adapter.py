"""GGUF LoRA adapters, the files llama.cpp loads with ``--lora``.

Layout (as llama.cpp's ``convert_lora_to_gguf.py`` writes it): KV ``general.type=adapter``,
``adapter.type=lora``, ``adapter.lora.alpha``, ``general.architecture``; tensors
``<gguf base name>.weight.lora_a`` = PEFT A (r, in) and ``.lora_b`` = PEFT B (out, r), except
``token_embd`` whose lora_a is A transposed (vocab, r). llama.cpp applies
``scale = user_scale * alpha / rank`` (``user_scale`` when alpha is 0). LLaMA-family Q/K base
weights are stored row-permuted for rotary, so lora_b rows are permuted the same way
(P(BA) = (PB)A), which needs the head counts: from the base, from the adapter, or refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_file
from ..errors import AdapterError
from ..gguf_py import installed_gguf
from ..llm_base import BaseInfo, gguf_field, info_from_config, open_gguf, read_base_info
from ..llm_names import (
    arch_from_config,
    arch_from_module_names,
    expert_modules,
    expert_tensor,
    gguf_arch,
    gguf_to_hf,
    hf_to_gguf,
    is_permuted,
    n_heads_for,
    permute_rows,
    unpermute_rows,
)
from ..model import IMAGE_FAMILIES, LoraAdapter, LoraModule
from ..safetensors_io import bf16_bits_to_f32, f32_to_bf16_bits

NAME = "gguf"
READ_USES_BASE = True  # api.load_adapter passes --base: it gives the head counts for Q/K
_A, _B = ".weight.lora_a", ".weight.lora_b"
# Our own keys (llama.cpp ignores unknown keys): what a later read needs to undo the permutation.
KEY_ARCH, KEY_HEADS, KEY_HEADS_KV = "lora_bridge.arch", "lora_bridge.head_count", "lora_bridge.head_count_kv"


def sniff(path: Path) -> bool:
    """A file starting with the GGUF magic (models are refused with a clear message by ``read``)."""
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        return handle.read(4) == b"GGUF"


# ----------------------------------------------------------------------------------------- read
def _tensor_array(tensor) -> np.ndarray:
    """A GGUF tensor as numpy in (rows, cols) order: F32/F16 as stored, anything else as float32."""
    gguf = installed_gguf()

    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    kind = tensor.tensor_type
    if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return np.asarray(tensor.data).reshape(shape)
    if kind == gguf.GGMLQuantizationType.BF16:
        return bf16_bits_to_f32(np.asarray(tensor.data).view(np.uint16)).reshape(shape)
    dequantize = getattr(getattr(gguf, "quants", None), "dequantize", None)
    if dequantize is None:  # gguf-py < 0.11
        raise AdapterError(f"tensor {tensor.name} is {kind.name}; reading it needs gguf>=0.11 (pip install -U gguf)")
    return dequantize(tensor.data, kind).reshape(shape)


def _heads_needed_message(path: Path) -> str:
    return (f"{path}: LLaMA-family Q/K LoRA needs the base model's attention head counts; "
            "pass --base BASE.gguf (or the base's Hugging Face folder)")


def read(path: Path, arch: str | None = None, base: Path | None = None) -> LoraAdapter:
    """Read a GGUF LoRA adapter into the canonical form, undoing llama.cpp's Q/K row order."""
    reader = open_gguf(path, adapter=True)
    kind = gguf_field(reader, "general.type")
    names = [t.name for t in reader.tensors]
    if kind not in (None, "adapter") or (kind is None and not any(n.endswith(_A) for n in names)):
        raise AdapterError(f"{path}: is a GGUF model, not a LoRA adapter; pass it as --base, not as the adapter")
    adapter_type = gguf_field(reader, "adapter.type") or "lora"
    if adapter_type != "lora":
        raise AdapterError(f"{path}: GGUF adapter of type {adapter_type!r}; only LoRA adapters can be converted")
    file_arch = gguf_field(reader, KEY_ARCH) or gguf_field(reader, "general.architecture") or "llama"
    arch = arch or file_arch
    info = _read_heads(reader, path, base)
    alpha = float(gguf_field(reader, "adapter.lora.alpha") or 0.0)
    tensors = {t.name: t for t in reader.tensors}

    modules: dict[str, LoraModule] = {}
    full: dict[str, np.ndarray] = {}
    for name, tensor in tensors.items():
        if name.endswith(_B):
            continue
        if not name.endswith(_A):
            # mergekit-style adapters carry replacement norm weights
            base_name, _, suffix = name.rpartition(".")
            full[f"{gguf_to_hf(base_name, arch)}.{suffix}"] = _tensor_array(tensor)
            continue
        base_name = name[: -len(_A)]
        if base_name + _B not in tensors:
            raise AdapterError(f"{path}: {name} has no matching {base_name + _B}; the file is incomplete")
        down = _tensor_array(tensor)
        up = _tensor_array(tensors[base_name + _B])
        if down.ndim == 3:  # MoE: one LoRA per expert (experts, r, in) / (experts, out, r), as llama.cpp's mul_mat_id
            modules.update(_expert_modules(path, base_name, down, up, alpha))
            continue
        module = gguf_to_hf(base_name, arch)
        embedding = base_name == "token_embd"
        if embedding:
            down = down.T
        if down.shape[0] != up.shape[1]:
            raise AdapterError(f"{path}: {base_name}: lora_a rank {down.shape[0]} != lora_b rank {up.shape[1]}")
        if is_permuted(gguf_arch(arch), module):
            if info.n_head is None:
                raise AdapterError(_heads_needed_message(path))
            up = unpermute_rows(np.asarray(up), n_heads_for(module, info.n_head, info.n_head_kv))
        rank = int(down.shape[0])
        modules[module] = LoraModule(down=down, up=up, alpha=alpha if alpha else float(rank),
                                     is_embedding=embedding)
    gguf = installed_gguf()

    metadata = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or field.types[0] == gguf.GGUFValueType.ARRAY:
            continue  # arrays (a vocabulary) are not adapter metadata: never turned into Python lists
        metadata[key] = str(gguf_field(reader, key))
    return LoraAdapter(modules=modules, arch=arch, metadata=metadata, full_weights=full)


def _expert_modules(path: Path, base_name: str, down: np.ndarray, up: np.ndarray,
                    alpha: float) -> dict[str, LoraModule]:
    """The per-expert modules of a 3-D LoRA pair on an MoE expert tensor."""
    names = expert_modules(base_name, down.shape[0])
    if names is None or up.ndim != 3 or up.shape[0] != down.shape[0] or down.shape[1] != up.shape[2]:
        raise AdapterError(f"{path}: {base_name}: 3-D LoRA tensors {down.shape} / {up.shape} are not an MoE expert "
                           "LoRA this converter knows (ffn_gate_exps, ffn_up_exps, ffn_down_exps)")
    rank = int(down.shape[1])
    return {name: LoraModule(down=down[e], up=up[e], alpha=alpha if alpha else float(rank))
            for e, name in enumerate(names)}


def _read_heads(reader, path: Path, base: Path | None) -> BaseInfo:
    """Head counts for un-permuting: the adapter's own keys, else the base."""
    n_head = gguf_field(reader, KEY_HEADS)
    if n_head:
        return BaseInfo(None, int(n_head), int(gguf_field(reader, KEY_HEADS_KV) or n_head))
    if base is not None:
        return read_base_info(Path(base))
    return BaseInfo(None)


# ---------------------------------------------------------------------------------------- write
def _adapter_base_info(adapter: LoraAdapter) -> BaseInfo:
    """Arch and head counts the adapter's metadata carries (our keys, or a base config)."""
    import json

    meta = adapter.metadata
    if meta.get(KEY_HEADS):
        return BaseInfo(meta.get(KEY_ARCH), int(meta[KEY_HEADS]), int(meta.get(KEY_HEADS_KV) or meta[KEY_HEADS]))
    for key in ("base_model_config", "base_config"):
        if meta.get(key):
            try:
                return info_from_config(json.loads(meta[key]))
            except (ValueError, TypeError):
                pass
    return BaseInfo(None)


def _resolve(adapter: LoraAdapter, path: Path, options) -> tuple[str, BaseInfo]:
    """The canonical arch and head counts to write with, or a one-line refusal."""
    base = getattr(options, "base", None)
    from_base = read_base_info(Path(base)) if base else BaseInfo(None)
    from_meta = _adapter_base_info(adapter)
    arch = options.arch or adapter.arch or from_meta.arch
    if arch is None and adapter.metadata.get("base_model_type"):
        arch = arch_from_config({"model_type": adapter.metadata["base_model_type"]})
    if arch and from_base.arch and gguf_arch(arch) != gguf_arch(from_base.arch):
        raise AdapterError(f"{path}: the adapter is for {arch} but the base {base} is {from_base.arch}; "
                           "pick the base the adapter was trained on")
    arch = arch or from_base.arch
    needs_heads = any(n.endswith(("self_attn.q_proj", "self_attn.k_proj")) for n in adapter.modules)
    if arch is None:
        guess = arch_from_module_names(adapter.modules)
        if guess == "llama" and needs_heads:
            # llama and qwen2 adapters have the same module names but need different Q/K handling.
            raise AdapterError(f"{path}: cannot tell whether the adapter is for llama/mistral or qwen2; "
                               "pass --base BASE.gguf or --arch")
        arch = guess
    if arch is None:
        raise AdapterError(f"{path}: unknown model architecture; pass --arch or --base")
    info = from_base if from_base.n_head else from_meta
    if is_permuted(arch, "self_attn.q_proj") and needs_heads and not info.n_head:
        raise AdapterError(_heads_needed_message(path))
    return arch, info


def _check_writable(adapter: LoraAdapter, path: Path) -> None:
    """Refuse what a llama.cpp LoRA cannot carry."""
    if adapter.family in IMAGE_FAMILIES:
        kind = "a Flux.1" if adapter.family == "flux" else "a Stable Diffusion"
        raise AdapterError(f"{path}: {kind} adapter cannot be a llama.cpp GGUF; "
                           "convert it to kohya .safetensors or a PEFT folder instead")
    for name, module in adapter.modules.items():
        if module.magnitude is not None:
            raise AdapterError(f"{path}: {name} is DoRA; llama.cpp GGUF adapters cannot carry DoRA "
                               "(merge it into the base instead)")
        if module.bias is not None:
            raise AdapterError(f"{path}: {name} has a LoRA bias (lora_bias); llama.cpp adapters cannot carry it")
        if module.down.ndim != 2:
            raise AdapterError(f"{path}: {name} is not a linear/embedding LoRA; llama.cpp cannot apply it")
    if adapter.full_weights:
        first = sorted(adapter.full_weights)[0]
        raise AdapterError(f"{path}: the adapter replaces whole weights ({first}, modules_to_save); "
                           "llama.cpp adapters cannot carry them; retrain without modules_to_save")


def _out_dtype(adapter: LoraAdapter, requested: str | None) -> str:
    """f32/f16/bf16: the requested one, else f16 when the input is all f16, else f32."""
    if requested:
        return requested
    dtypes = {np.asarray(m.up).dtype for m in adapter.modules.values()}
    dtypes |= {np.asarray(m.down).dtype for m in adapter.modules.values()}
    return "f16" if dtypes == {np.dtype(np.float16)} else "f32"


def _encode(array: np.ndarray, dtype: str) -> tuple[np.ndarray, object]:
    """(contiguous array, raw ggml type or None) in the output dtype."""
    gguf = installed_gguf()

    if dtype == "f16":
        return np.ascontiguousarray(array, dtype=np.float16), None
    if dtype == "bf16":
        return f32_to_bf16_bits(np.asarray(array, dtype=np.float32)), gguf.GGMLQuantizationType.BF16
    return np.ascontiguousarray(array, dtype=np.float32), None


def _plan(adapter: LoraAdapter, arch: str, info: BaseInfo, uniform: bool, path: Path):
    """Yield (gguf tensor name, function producing the array, its shape) per tensor, lazily."""
    experts = _expert_groups(adapter, path)
    for module_name in sorted(adapter.modules, key=_module_order):
        module = adapter.modules[module_name]
        found = expert_tensor(module_name)
        if found is not None:
            if found[1] == 0:  # all experts of the tensor at once, where expert 0 comes
                yield from _plan_experts(found[0], experts[found[0]], uniform)
            continue
        base = hf_to_gguf(module_name, arch)

        def lora_a(m=module):
            return np.asarray(m.down).T if m.is_embedding else np.asarray(m.down)

        def lora_b(m=module, name=module_name):
            up = _up(m, uniform)
            if is_permuted(arch, name):
                up = permute_rows(up, n_heads_for(name, info.n_head, info.n_head_kv))
            return up

        a_shape = module.down.shape[::-1] if module.is_embedding else module.down.shape
        yield f"{base}{_A}", lora_a, tuple(a_shape)
        yield f"{base}{_B}", lora_b, tuple(module.up.shape)


def _up(module: LoraModule, uniform: bool) -> np.ndarray:
    """lora_b as written: with the module's own scale baked in when the adapter's alphas differ."""
    up = np.asarray(module.up)
    return up if uniform else up.astype(np.float32) * np.float32(module.scale)


def _expert_groups(adapter: LoraAdapter, path: Path) -> dict[str, list[LoraModule]]:
    """{GGUF expert tensor: its experts' modules in expert order}; every expert needs one, all of one rank."""
    found: dict[str, dict[int, LoraModule]] = {}
    for name, module in adapter.modules.items():
        where = expert_tensor(name)
        if where is not None:
            found.setdefault(where[0], {})[where[1]] = module
    groups = {}
    for base, by_index in found.items():
        missing = sorted(set(range(max(by_index) + 1)) - set(by_index))
        ranks = {m.rank for m in by_index.values()}
        if missing or len(ranks) > 1:
            what = f"experts {missing} have no LoRA" if missing else f"experts have different ranks {sorted(ranks)}"
            raise AdapterError(f"{path}: {base}: {what}; llama.cpp applies one 3-D LoRA to all experts of a tensor, "
                               "so every expert needs one of the same rank (train with the experts target)")
        groups[base] = [by_index[i] for i in range(len(by_index))]
    return groups


def _plan_experts(base: str, group: list[LoraModule], uniform: bool):
    """The 3-D lora_a (experts, r, in) and lora_b (experts, out, r) of one MoE expert tensor."""
    n, first = len(group), group[0]
    yield f"{base}{_A}", lambda: np.stack([np.asarray(m.down) for m in group]), (n, *first.down.shape)
    yield f"{base}{_B}", lambda: np.stack([_up(m, uniform) for m in group]), (n, *first.up.shape)


def _module_order(name: str):
    """Layers in numeric order, then the rest by name."""
    parts = name.split(".")
    for index, part in enumerate(parts):
        if part.isdigit():
            return (0, int(part), ".".join(parts[index + 1 :]))
    return (1, 0, name)


def write(adapter: LoraAdapter, path: Path, options) -> Path:
    """Write a llama.cpp GGUF LoRA adapter, tensor by tensor; per-module scales baked in when they differ."""
    gguf = installed_gguf()

    _check_writable(adapter, path)
    arch, info = _resolve(adapter, path, options)
    dtype = _out_dtype(adapter, options.dtype)
    alphas = adapter.alphas()
    # llama.cpp reads alpha 0 as "scale 1", so a zero alpha must be baked in like mixed ones.
    uniform = len(alphas) == 1 and next(iter(alphas)) != 0
    alpha = next(iter(alphas)) if uniform else 0.0
    plan = list(_plan(adapter, arch, info, uniform, path))

    with atomic_file(path, force=options.force) as tmp:
        writer = gguf.GGUFWriter(tmp, gguf_arch(arch))
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        name = options.name or adapter.metadata.get("general.name") or Path(path).stem
        writer.add_name(name)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_string(KEY_ARCH, arch)
        if info.n_head:
            writer.add_uint32(KEY_HEADS, info.n_head)
            writer.add_uint32(KEY_HEADS_KV, info.n_head_kv or info.n_head)
        for key, value in sorted((options.metadata or {}).items()):
            writer.add_string(key, str(value))
        for tensor_name, _, shape in plan:
            nbytes = int(np.prod(shape)) * (4 if dtype == "f32" else 2)
            np_dtype = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16}[dtype]
            raw = gguf.GGMLQuantizationType.BF16 if dtype == "bf16" else None
            writer.add_tensor_info(tensor_name, shape, np.dtype(np_dtype), nbytes, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _, produce, _ in plan:
            data, _ = _encode(produce(), dtype)
            writer.write_tensor_data(data)
        writer.close()
    return Path(path)
