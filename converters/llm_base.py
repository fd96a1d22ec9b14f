"""What an LLM base model looks like without loading its weights: module shapes and head counts.

Shapes come from GGUF tensor infos or safetensors headers (no tensor data is read); they let
``check_against_base`` refuse an adapter that would make llama.cpp fail or crash. Head counts are
what the GGUF adapter writer needs for the Q/K rotary permutation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import AdapterError
from .gguf_check import check_gguf, read_gguf_header
from .gguf_py import installed_gguf
from .llm_names import arch_from_config, expert_modules, gguf_to_hf
from .safetensors_io import read_header


@dataclass
class BaseInfo:
    """Architecture and attention head counts of a base model (None where unknown)."""

    arch: str | None
    n_head: int | None = None
    n_head_kv: int | None = None


def gguf_field(reader, key: str):
    """A GGUF metadata value as a Python value (str, number or list), or None; any gguf-py version."""
    field = reader.fields.get(key)
    if field is None:
        return None
    if hasattr(field, "contents"):
        return field.contents()
    gguf = installed_gguf()  # gguf-py < 0.11 has no contents()

    def scalar(part, vtype):
        if vtype == gguf.GGUFValueType.STRING:
            return bytes(part).decode("utf-8", errors="replace")
        return part.tolist()[0]

    if field.types[0] == gguf.GGUFValueType.ARRAY:
        return [scalar(field.parts[i], field.types[-1]) for i in field.data]
    return scalar(field.parts[field.data[0]], field.types[0])


# An adapter carries no vocabulary: a few small arrays at most. More means a model given as the adapter.
ADAPTER_ARRAY_LIMIT = 1 << 16


def _check_magic(path: Path) -> None:
    """AdapterError (one line) when ``path`` cannot be read or does not start with the GGUF magic."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise AdapterError(f"{path}: cannot read ({exc.strerror})") from None
    if magic != b"GGUF":
        raise AdapterError(f"{path}: not a GGUF file (bad magic)")


def open_gguf(path: Path, adapter: bool = False):
    """A ``gguf.GGUFReader`` for ``path``; a truncated, corrupt or oversized file raises AdapterError.

    ``adapter``: the file must be a LoRA adapter, so a model's vocabulary is refused before gguf-py
    spends memory on it.
    """
    gguf = installed_gguf()

    _check_magic(path)
    if adapter:
        check_gguf(path, ADAPTER_ARRAY_LIMIT, "is a GGUF model (it holds a vocabulary), not a LoRA adapter; "
                                              "pass it as --base, not as the adapter")
    else:
        check_gguf(path)
    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # gguf-py raises ValueError/IndexError/struct errors on damaged files
        raise AdapterError(f"{path}: truncated or corrupt GGUF file ({exc.__class__.__name__}); "
                           "re-download or re-convert it") from None


def _base_header(path: Path) -> tuple[dict[str, object], list[tuple[str, tuple[int, ...]]]]:
    """``gguf_check.read_gguf_header`` of a model GGUF (not gguf-py: its reader spends seconds per 10 k vocabulary
    entries these functions never look at); AdapterError for a file that is not a GGUF."""
    _check_magic(path)
    return read_gguf_header(path)


def read_gguf_base_shapes(path: Path) -> tuple[str | None, dict[str, tuple[int, ...]]]:
    """(arch, {canonical HF module name: weight shape (out, in)}) from a GGUF model's tensor infos."""
    meta, tensors = _base_header(path)
    if meta.get("general.type") == "adapter":
        raise AdapterError(f"{path}: is a LoRA adapter, not a base model; give the model GGUF as --base")
    arch = meta.get("lora_bridge.arch") or meta.get("general.architecture")  # ours first: mistral is not llama
    shapes: dict[str, tuple[int, ...]] = {}
    for tensor_name, dims in tensors:
        ne = tuple(int(d) for d in dims)
        experts = expert_modules(tensor_name[: -len(".weight")], ne[-1]) if len(ne) == 3 else None
        if experts:  # one 3-D MoE tensor (ne: in, out, experts) -> each expert's (out, in)
            shapes.update((name, (ne[1], ne[0])) for name in experts)
            continue
        if not tensor_name.endswith(".weight") or len(dims) != 2:
            continue
        try:
            name = gguf_to_hf(tensor_name[: -len(".weight")], arch or "llama")
        except AdapterError:
            continue
        shapes[name] = tuple(int(d) for d in reversed(dims))  # ggml ne -> (out, in)
    return arch, shapes


def read_gguf_base_info(path: Path) -> BaseInfo:
    """Arch and head counts from a GGUF model's metadata."""
    meta, _ = _base_header(path)
    arch = meta.get("general.architecture")
    n_head = meta.get(f"{arch}.attention.head_count")
    n_head_kv = meta.get(f"{arch}.attention.head_count_kv")
    return BaseInfo(meta.get("lora_bridge.arch") or arch, _int_or_none(n_head), _int_or_none(n_head_kv or n_head))


def _int_or_none(value) -> int | None:
    if isinstance(value, list):  # per-layer head counts: the permutation needs one value
        value = value[0] if value else None
    return int(value) if value is not None else None


def _read_config(folder: Path) -> dict:
    """config.json of an HF folder."""
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{folder}: cannot read config.json ({exc.__class__.__name__})") from None


def info_from_config(config: dict) -> BaseInfo:
    """Arch and head counts from an HF config dict (also a nested ``text_config``)."""
    config = config.get("text_config") or config
    n_head = config.get("num_attention_heads") or config.get("n_head")
    n_head_kv = config.get("num_key_value_heads") or n_head
    return BaseInfo(arch_from_config(config), _int_or_none(n_head), _int_or_none(n_head_kv))


def read_hf_base_info(folder: Path) -> BaseInfo:
    """Arch and head counts from an HF folder's config.json."""
    return info_from_config(_read_config(folder))


def read_base_info(path: Path) -> BaseInfo:
    """Arch and head counts of a base given as a GGUF file or an HF folder."""
    path = Path(path)
    if not path.exists():
        raise AdapterError(f"{path}: base model not found")
    if path.is_file():
        return read_gguf_base_info(path)
    if (path / "config.json").exists():
        return read_hf_base_info(path)
    raise AdapterError(f"{path}: not an LLM base; give a .gguf file or a Hugging Face folder with config.json")


def _shapes_from_config(config: dict) -> dict[str, tuple[int, ...]]:
    """Module shapes of the usual decoder layout computed from config.json alone."""
    config = config.get("text_config") or config
    try:
        hidden, inter = int(config["hidden_size"]), int(config["intermediate_size"])
        layers, vocab = int(config["num_hidden_layers"]), int(config["vocab_size"])
        n_head = int(config["num_attention_heads"])
    except (KeyError, TypeError, ValueError):
        return {}
    n_kv = int(config.get("num_key_value_heads") or n_head)
    head_dim = int(config.get("head_dim") or hidden // n_head)
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens": (vocab, hidden), "lm_head": (vocab, hidden)}
    per_layer = {
        "self_attn.q_proj": (n_head * head_dim, hidden),
        "self_attn.k_proj": (n_kv * head_dim, hidden),
        "self_attn.v_proj": (n_kv * head_dim, hidden),
        "self_attn.o_proj": (hidden, n_head * head_dim),
        "mlp.gate_proj": (inter, hidden),
        "mlp.up_proj": (inter, hidden),
        "mlp.down_proj": (hidden, inter),
    }
    for layer in range(layers):
        for suffix, shape in per_layer.items():
            shapes[f"model.layers.{layer}.{suffix}"] = shape
    return shapes


def read_hf_base_shapes(folder: Path) -> tuple[str | None, dict[str, tuple[int, ...]]]:
    """(arch, {module: weight shape}) of an HF folder from safetensors headers, else from config.json."""
    config = _read_config(folder)
    arch = info_from_config(config).arch
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return arch, _shapes_from_config(config)
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        header, _ = read_header(file)
        for key, info in header.items():
            if key == "__metadata__" or not key.endswith(".weight") or len(info["shape"]) < 2:
                continue
            shapes[key[: -len(".weight")]] = tuple(int(d) for d in info["shape"])
    tied = (config.get("text_config") or config).get("tie_word_embeddings", True)
    if tied and "lm_head" not in shapes and "model.embed_tokens" in shapes:
        # Tied embeddings: transformers (and PEFT) still expose lm_head with the embedding's shape.
        shapes["lm_head"] = shapes["model.embed_tokens"]
    return arch, shapes
