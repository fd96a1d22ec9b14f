"""A small LLaMA-family causal LM in torch, built from a GGUF file, a legacy GGML file or an HF folder.

The model uses Hugging Face module names (``model.layers.0.self_attn.q_proj``) so LoRA modules
trained on it are canonical adapter names. Base weights stay in the file's block format
(``quant.PackedWeight``). LLaMA GGUF files store Q and K rows permuted for llama.cpp's rotary
layout; the loader undoes that on the packed rows so the torch model uses HF's rotate-half RoPE
(for qwen2, which llama.cpp runs with NEOX rotary, nothing is permuted).

Works without transformers' GGUF support (transformers 4.30 in A1111 has none).
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType
from torch import nn
from torch.nn import functional as F

from .._converters import converters
from ..errors import UserError
from ..training.heap import release_free_heap
from .lm_loss import sliced_cross_entropy_sum
from .quant import PackedEmbedding, PackedLinear, PackedWeight, activation_rounding_active, release_buffers
from .recompute import DEFAULT_KEPT, KEPT_BYTES, GradArena, LayerMemo, checkpointed_layer, plan_kept

SUPPORTED_ARCHES = ("llama", "mistral", "qwen2")


@dataclass
class TextConfig:
    """Hyper-parameters of a LLaMA-family model (what GGUF's ``<arch>.*`` keys say)."""

    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rms_eps: float = 1e-5
    rope_base: float = 10000.0
    context_length: int = 2048
    head_dim: int = 0
    attn_bias: bool = False  # qwen2: q/k/v have biases
    tokenizer: dict = field(default_factory=dict)  # tokenizer.ggml.* values (GGUF/GGML bases)

    def __post_init__(self) -> None:
        if not self.head_dim:
            self.head_dim = self.hidden_size // self.num_heads


class RMSNorm(nn.Module):
    """LLaMA's RMS norm with a frozen weight, computed in float32 like llama.cpp."""

    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight.to(torch.float32), persistent=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * self.weight).to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _same_dtype(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors in their widest dtype.

    Under CPU autocast the LoRA branch can come out in bf16 while the frozen projection stays fp32;
    torch < 2.3 (A1111 ships 2.1) refuses such mixed inputs to scaled_dot_product_attention.
    """
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t.to(dtype) for t in tensors)


class Attention(nn.Module):
    """Grouped-query causal self-attention with rotate-half RoPE."""

    def __init__(self, cfg: TextConfig, q: nn.Module, k: nn.Module, v: nn.Module, o: nn.Module) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = q, k, v, o
        self.n_heads, self.n_kv, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if self.n_kv != self.n_heads:
            rep = self.n_heads // self.n_kv
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(*_same_dtype(q, k, v), is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, gate: nn.Module, up: nn.Module, down: nn.Module) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = gate, up, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, input_layernorm: RMSNorm, self_attn: Attention, post_attention_layernorm: RMSNorm,
                 mlp: MLP) -> None:
        super().__init__()
        self.input_layernorm, self.self_attn = input_layernorm, self_attn
        self.post_attention_layernorm, self.mlp = post_attention_layernorm, mlp

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """Embeddings, layers and the final norm (HF's ``model.``)."""

    def __init__(self, embed_tokens: nn.Module, layers: list[DecoderLayer], norm: RMSNorm) -> None:
        super().__init__()
        self.embed_tokens = embed_tokens
        self.layers = nn.ModuleList(layers)
        self.norm = norm


class TextModel(nn.Module):
    """The causal LM: ``forward(ids) -> logits`` (float32)."""

    def __init__(self, cfg: TextConfig, backbone: Backbone, lm_head: nn.Module) -> None:
        super().__init__()
        self.config = cfg
        self.model = backbone
        self.lm_head = lm_head
        self.gradient_checkpointing = False
        self._memos = [LayerMemo() for _ in backbone.layers]
        inv = 1.0 / (cfg.rope_base ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim))
        self.register_buffer("inv_freq", inv.to(torch.float32), persistent=False)

    def _rope(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(t, dtype=torch.float32, device=self.inv_freq.device)
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos()[None, None], emb.sin()[None, None]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.hidden_states(ids)).to(torch.float32)

    def causal_lm_loss_sum(self, ids: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """Sum of next-token cross-entropy: position t predicts ``labels[:, t + 1]`` (``ignore_index`` skips one).

        Equal to the cross-entropy of ``forward(ids)``, but a packed output layer is applied a slice
        of the vocabulary at a time (``lm_loss``), so the logits never exist whole.
        """
        hidden = self.hidden_states(ids)[:, :-1]
        targets = labels[:, 1:].reshape(-1)
        hidden = hidden.reshape(-1, hidden.shape[-1])
        head = self.lm_head
        if isinstance(head, PackedLinear) and head.bias is None and not activation_rounding_active():
            return sliced_cross_entropy_sum(hidden, head.weight, targets, ignore_index)
        logits = head(hidden).to(torch.float32)  # a LoRA on lm_head, or llama.cpp emulation: plain
        return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")

    def limit_kept_outputs(self, tokens: int, budget: int = KEPT_BYTES) -> list[str]:
        """Under checkpointing, keep only the projection outputs that fit ``budget`` bytes for ``tokens``-token steps.

        Turns ``keep_output`` off where it does not fit (never on); returns the projection names still kept.
        """
        wanted: dict[str, list[PackedLinear]] = {}
        for layer in self.model.layers:
            for owner in (layer.self_attn, layer.mlp):
                for name, child in owner.named_children():
                    base = getattr(child, "base", child)  # under a LoRA wrapper
                    if isinstance(base, PackedLinear) and base.keep_output:
                        wanted.setdefault(name, []).append(base)
        kept = plan_kept({n: sum(m.out_features for m in ms) for n, ms in wanted.items()}, tokens, budget)
        for name, modules in wanted.items():
            if name not in kept:
                for module in modules:
                    module.keep_output = False
        return kept

    def largest_activation_bytes(self, tokens: int) -> int:
        """Bytes of the widest float32 activation a step over ``tokens`` tokens makes (for heap.py)."""
        return int(tokens) * max(self.config.intermediate_size, self.config.hidden_size) * 4

    def hidden_states(self, ids: torch.Tensor) -> torch.Tensor:
        """The final-norm output (batch, tokens, hidden size) that the output layer turns into logits."""
        x = self.model.embed_tokens(ids)
        cos, sin = self._rope(ids.shape[1])
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        arena = GradArena([p for p in self.model.layers.parameters() if p.requires_grad]) if checkpointing else None
        for layer, memo in zip(self.model.layers, self._memos, strict=True):
            x = checkpointed_layer(layer, memo, x, cos, sin, arena=arena) if checkpointing else layer(x, cos, sin)
        if checkpointing:  # scratch space and free heap pages are idle until the backward
            release_buffers()
            release_free_heap(x.device)
        return self.model.norm(x)


def rotary_row_order(rows: int, n_heads: int) -> torch.Tensor:
    """Index that turns llama.cpp's permuted Q/K rows back into HF order: ``hf = stored[order]``."""
    stored_from_hf = np.arange(rows).reshape(n_heads, 2, rows // n_heads // 2).swapaxes(1, 2).reshape(rows)
    return torch.from_numpy(np.argsort(stored_from_hf))


def build_model(cfg: TextConfig, tensors: dict[str, tuple[np.ndarray, GGMLQuantizationType, tuple[int, ...]]],
                permuted_qk: bool) -> TextModel:
    """Assemble a ``TextModel`` from HF-named tensors: name -> (file data, type, HF shape).

    ``permuted_qk``: Q/K rows are in llama.cpp's rotary order (GGUF/GGML llama) and are put back.
    Tensors are consumed (popped) one by one so file data is not held twice.
    """

    def take(name: str) -> tuple[np.ndarray, GGMLQuantizationType, tuple[int, ...]]:
        if name not in tensors:
            raise UserError(f"model file lacks tensor {name}; is it a complete {cfg.arch} model?")
        return tensors.pop(name)

    def packed(name: str, heads: int = 0) -> PackedWeight:
        data, qtype, shape = take(name)
        if len(shape) != 2:
            raise UserError(f"tensor {name} has shape {shape}, expected a matrix; the file is not a {cfg.arch} model")
        weight = PackedWeight.from_numpy(data, qtype, (shape[0], shape[1]))
        if heads:
            weight.permute_rows(rotary_row_order(shape[0], heads))
        return weight

    def vector(name: str) -> torch.Tensor:
        data, qtype, shape = take(name)
        return PackedWeight.from_numpy(np.asarray(data).reshape(1, -1), qtype, (1, int(np.prod(shape)))).dequantize()[0]

    def linear(name: str, heads: int = 0) -> PackedLinear:
        bias = vector(name + ".bias") if cfg.attn_bias and name + ".bias" in tensors else None
        return PackedLinear(packed(name + ".weight", heads), bias)

    embed = packed("model.embed_tokens.weight")
    layers = []
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        attn = Attention(
            cfg,
            linear(p + "self_attn.q_proj", cfg.num_heads if permuted_qk else 0),
            linear(p + "self_attn.k_proj", cfg.num_kv_heads if permuted_qk else 0),
            linear(p + "self_attn.v_proj"),
            linear(p + "self_attn.o_proj"),
        )
        mlp = MLP(linear(p + "mlp.gate_proj"), linear(p + "mlp.up_proj"), linear(p + "mlp.down_proj"))
        for owner in (attn, mlp):
            for child_name, child in owner.named_children():
                child.keep_output = child_name in DEFAULT_KEPT
        layers.append(DecoderLayer(RMSNorm(vector(p + "input_layernorm.weight"), cfg.rms_eps), attn,
                                   RMSNorm(vector(p + "post_attention_layernorm.weight"), cfg.rms_eps), mlp))
    norm = RMSNorm(vector("model.norm.weight"), cfg.rms_eps)
    head = PackedLinear(packed("lm_head.weight")) if "lm_head.weight" in tensors else PackedLinear(embed)
    model = TextModel(cfg, Backbone(PackedEmbedding(embed), layers, norm), head)
    model.requires_grad_(False)
    return model


# GGUF tensor names -> HF names (LLaMA family).
_GGUF_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_GGUF_BLOCK = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def gguf_to_hf_name(name: str) -> str | None:
    """``blk.0.attn_q.weight`` -> ``model.layers.0.self_attn.q_proj.weight``; None for unknown tensors."""
    stem, _, suffix = name.rpartition(".")
    if stem in _GGUF_TOP:
        return f"{_GGUF_TOP[stem]}.{suffix}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _GGUF_BLOCK:
        return f"model.layers.{parts[1]}.{_GGUF_BLOCK[parts[2]]}.{suffix}"
    return None


def field_value(field) -> object:
    """A GGUF metadata value as Python (str, number, list); works on gguf-py versions without ``contents()``."""
    from gguf import GGUFValueType

    def one(part: np.ndarray, vtype: GGUFValueType) -> object:
        if vtype == GGUFValueType.STRING:
            return bytes(part).decode("utf-8", errors="replace")
        return part.tolist()[0]

    main = field.types[0]
    if main == GGUFValueType.ARRAY:
        sub = field.types[-1]
        return [one(field.parts[i], sub) for i in field.data]
    return one(field.parts[field.data[0]], main)


def read_gguf_metadata(path: Path):
    """(GGUFReader, {key: value}) or UserError for files gguf-py cannot parse."""
    from gguf import GGUFReader

    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        converters.gguf_check.check_gguf(path)
    except converters.AdapterError as exc:
        raise UserError(str(exc)) from None
    try:
        reader = GGUFReader(str(path))
        meta = {name: field_value(f) for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    except Exception as exc:  # gguf-py raises ValueError/struct errors/IndexError on damaged files
        raise UserError(f"{path}: not a readable GGUF file ({exc}); re-download or re-convert it") from None
    return reader, meta


def config_from_gguf(path: Path, meta: dict) -> TextConfig:
    """``TextConfig`` from GGUF metadata, or UserError naming the supported architectures."""
    arch = str(meta.get("general.architecture", ""))
    if arch not in SUPPORTED_ARCHES:
        raise UserError(f"{path}: architecture {arch or 'unknown'!r} is not supported for text LoRA training; "
                        f"supported: {', '.join(SUPPORTED_ARCHES)}")

    def key(name: str, default: object = None) -> object:
        value = meta.get(f"{arch}.{name}", default)
        if value is None:
            raise UserError(f"{path}: GGUF metadata lacks {arch}.{name}; the file is incomplete")
        return value

    heads = int(key("attention.head_count"))
    hidden = int(key("embedding_length"))
    tokens = meta.get("tokenizer.ggml.tokens") or []
    head_dim = int(meta.get(f"{arch}.attention.key_length", 0) or hidden // heads)
    if head_dim * heads != hidden and arch == "llama":
        head_dim = hidden // heads
    return TextConfig(
        arch=arch,
        vocab_size=int(meta.get(f"{arch}.vocab_size", 0) or len(tokens)),
        hidden_size=hidden,
        intermediate_size=int(key("feed_forward_length")),
        num_layers=int(key("block_count")),
        num_heads=heads,
        num_kv_heads=int(key("attention.head_count_kv", heads)),
        rms_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_base=float(key("rope.freq_base", 10000.0)),
        context_length=int(key("context_length", 2048)),
        head_dim=head_dim,
        attn_bias=arch == "qwen2",
        tokenizer={k: v for k, v in meta.items() if k.startswith("tokenizer.")},
    )


def load_gguf_model(path: str | Path) -> TextModel:
    """Build the torch model from a GGUF base; weights stay packed (about the file size in RAM)."""
    path = Path(path)
    reader, meta = read_gguf_metadata(path)
    if meta.get("general.type") == "adapter":
        raise UserError(f"{path}: is a LoRA adapter, not a base model; pass the base .gguf as base_model")
    cfg = config_from_gguf(path, meta)
    tensors = {}
    permuted = cfg.arch in ("llama", "mistral")
    for t in reader.tensors:
        hf = gguf_to_hf_name(t.name)
        if hf is None:
            continue
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        data = t.data
        if permuted and hf.endswith(("q_proj.weight", "k_proj.weight")):
            # These get reordered into a copy; reading them without the memory map keeps their file
            # pages out of the process (otherwise Q and K would sit in RAM twice).
            data = np.fromfile(path, dtype=np.uint8, count=int(t.n_bytes), offset=int(t.data_offset))
            if data.size != int(t.n_bytes):
                raise UserError(f"{path}: truncated GGUF file (tensor {t.name}); re-download or re-convert it")
            data = data.view(t.data.dtype).reshape(t.data.shape)
        tensors[hf] = (data, GGMLQuantizationType(t.tensor_type), shape)
    del reader  # the metadata parts (large token lists) go; tensor views keep the file mapped
    emb = tensors.get("model.embed_tokens.weight")
    if emb is not None:
        cfg.vocab_size = emb[2][0]
    try:
        return build_model(cfg, tensors, permuted_qk=permuted)
    except (ValueError, IndexError) as exc:
        raise UserError(f"{path}: damaged or truncated GGUF file ({exc}); re-download or re-convert it") from None


def load_hf_model(folder: str | Path) -> TextModel:
    """Build the torch model from an HF folder (config.json + *.safetensors), weights kept as stored."""
    folder = Path(folder)
    try:
        hf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder}: no readable config.json ({exc}); pass an HF model folder") from None
    model_type = hf.get("model_type", "")
    if model_type not in SUPPORTED_ARCHES:
        known = converters.llm_names.arch_from_config({"model_type": model_type})
        shown = repr(model_type) if known else "of its config.json"  # a config's own text is not echoed
        raise UserError(f"{folder}: model_type {shown} is not supported; "
                        f"supported: {', '.join(SUPPORTED_ARCHES)}")
    heads = int(hf["num_attention_heads"])
    cfg = TextConfig(
        arch=model_type, vocab_size=int(hf["vocab_size"]), hidden_size=int(hf["hidden_size"]),
        intermediate_size=int(hf["intermediate_size"]), num_layers=int(hf["num_hidden_layers"]),
        num_heads=heads, num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        rms_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_base=float(hf.get("rope_theta", 10000.0)),
        context_length=int(hf.get("max_position_embeddings", 2048)),
        head_dim=int(hf.get("head_dim") or hf["hidden_size"] // heads), attn_bias=model_type == "qwen2",
    )
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"{folder}: no .safetensors weights; save the model with safe_serialization=True")
    io = importlib.import_module(converters.__name__ + ".safetensors_io")
    tensors = {}
    for file in files:
        sf = io.SafetensorsFile(file)
        names = sf.keys()
        for name in names:
            array = np.asarray(sf.get(name), dtype=np.float32)
            tensors[name] = (array, GGMLQuantizationType.F32, tuple(array.shape))
    if "lm_head.weight" not in tensors and not hf.get("tie_word_embeddings", False):
        raise UserError(f"{folder}: weights lack lm_head.weight; the model folder is incomplete")
    return build_model(cfg, tensors, permuted_qk=False)


def load_ggml_model(path: str | Path, n_kv_heads: int | None = None, rms_eps: float | None = None,
                    context_length: int | None = None, rope_base: float | None = None) -> TextModel:
    """A ``TextModel`` straight from a GGML file (weights stay packed)."""
    from .ggml_legacy import gguf_metadata, gguf_tensor_name, read_ggml

    ggml = read_ggml(path)
    meta = gguf_metadata(ggml, n_kv_heads, rms_eps, context_length, rope_base)
    cfg = config_from_gguf(Path(path), meta)
    tensors = {}
    for name, tensor in ggml.tensors.items():
        gguf_name = gguf_tensor_name(name)
        hf = gguf_to_hf_name(gguf_name) if gguf_name else None
        if hf is not None:
            raw = tensor.raw
            if hf.endswith(("q_proj.weight", "k_proj.weight")):
                # Reordered into a copy when the model is built: read without the map, so their file
                # pages do not stay in the process next to the copy (600 MB at 7B), as for GGUF.
                raw = np.fromfile(path, dtype=np.uint8, count=raw.size, offset=tensor.offset)
            tensors[hf] = (raw, tensor.qtype, tensor.shape)
    return build_model(cfg, tensors, permuted_qk=True)


def load_text_model(base: str | Path, ggml_options: dict | None = None) -> TextModel:
    """Load a ``.gguf``, a legacy GGML ``.bin`` or an HF folder as a ``TextModel``."""
    base = Path(base)
    if base.is_dir():
        return load_hf_model(base)
    if not base.exists():
        raise UserError(f"{base}: base model not found; set base_model to a .gguf, GGML .bin or HF folder")
    with open(base, "rb") as fh:
        magic = fh.read(4)
    if magic == b"GGUF":
        return load_gguf_model(base)
    from .ggml_legacy import GGML_MAGICS

    if int.from_bytes(magic, "little") in GGML_MAGICS:
        return load_ggml_model(base, **(ggml_options or {}))
    raise UserError(f"{base}: not a GGUF, GGML or HF model (unknown file signature); pass a .gguf base model")


def count_parameters(model: TextModel) -> int:
    """Number of base weights (elements), packed or not."""
    total = 0
    for module in model.modules():
        if isinstance(module, PackedWeight):
            total += module.shape[0] * module.shape[1]
    return total + sum(int(math.prod(b.shape)) for n, b in model.named_buffers() if n.endswith("norm.weight"))
