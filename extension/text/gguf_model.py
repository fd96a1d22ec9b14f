"""A decoder-only causal LM in torch, built from a GGUF file, a legacy GGML file or an HF folder.

The model is composed of the shared blocks (``blocks.py``) that its family's row (``families.py``)
names, and uses Hugging Face module names (``model.layers.0.self_attn.q_proj``) so LoRA modules
trained on it are canonical adapter names. Base weights stay in the file's block format
(``quant.PackedWeight``). LLaMA GGUF files store Q and K rows permuted for llama.cpp's rotary
layout; the loader undoes that on the packed rows so the torch model uses rotate-half RoPE
(the other families run llama.cpp's NEOX rotary, and nothing is permuted).

Works without transformers (transformers 4.30 in A1111 has no GGUF support and none of the newer
model classes): the public interface is ``load_text_model(path)`` and ``model(ids) -> logits``.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .._converters import converters
from ..errors import UserError
from ..training.heap import release_free_heap
from .blocks import (
    MLP,
    Attention,
    Backbone,
    DecoderLayer,
    FusedMLP,
    LayerNorm,
    Norm,
    PlainMLP,
    RMSNorm,
    Rotary,
    SparseMoE,
)
from .families import (
    FAMILIES,
    HF_MODEL_TYPES,
    SUPPORTED_ARCHES,
    Family,
    TextConfig,
    config_from_gguf,
    hf_name,
    tensor_names,
)
from .lm_loss import sliced_cross_entropy_sum
from .quant import PackedEmbedding, PackedLinear, PackedWeight, activation_rounding_active, release_buffers
from .recompute import DEFAULT_KEPT, KEPT_BYTES, GradArena, LayerMemo, checkpointed_layer, plan_kept

GGMLQuantizationType = converters.gguf_py.installed_gguf().GGMLQuantizationType


__all__ = ["SUPPORTED_ARCHES", "TextConfig", "TextModel", "config_from_gguf", "load_text_model"]


class TextModel(nn.Module):
    """The causal LM: ``forward(ids) -> logits`` (float32)."""

    def __init__(self, cfg: TextConfig, backbone: Backbone, lm_head: nn.Module,
                 rotaries: list[Rotary] | None = None) -> None:
        super().__init__()
        self.config = cfg
        self.model = backbone
        self.lm_head = lm_head
        self.gradient_checkpointing = False
        self._memos = [LayerMemo() for _ in backbone.layers]
        self.rotaries = nn.ModuleList(rotaries or [Rotary(cfg.rope_dims, cfg.rope_base)])

    def _rope(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin tables of every rotary, stacked (layer ``i`` uses entry ``rope_index``)."""
        tables = [rotary.tables(t) for rotary in self.rotaries]
        return torch.stack([c for c, _ in tables]), torch.stack([s for _, s in tables])

    def default_lora_targets(self) -> tuple[str, ...]:
        """The projections a LoRA adapts unless told otherwise: the matmuls llama.cpp applies LoRA to."""
        return self._family().lora_targets

    def expand_lora_targets(self, targets: list[str]) -> list[str]:
        """``targets`` with the family's words for several layers spelled out (qwen3moe: ``experts``)."""
        aliases = dict(self._family().target_aliases)
        return [name for t in targets for name in aliases.get(t.strip(), (t,))]

    def _family(self) -> Family:
        return FAMILIES[HF_MODEL_TYPES.get(self.config.arch, self.config.arch)]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits (batch, tokens, vocab) in float32."""
        return self._logits(self.lm_head(self.hidden_states(ids)).to(torch.float32))

    def _logits(self, logits: torch.Tensor) -> torch.Tensor:
        cap = self.config.final_softcap
        if self.config.logit_scale != 1.0:  # Granite
            logits = logits / self.config.logit_scale
        return torch.tanh(logits / cap) * cap if cap else logits

    def causal_lm_loss_sum(self, ids: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """Sum of next-token cross-entropy: position t predicts ``labels[:, t + 1]`` (``ignore_index`` skips one).

        Equal to the cross-entropy of ``forward(ids)``, but a packed output layer is applied a slice
        of the vocabulary at a time (``lm_loss``), so the logits never exist whole.
        """
        hidden = self.hidden_states(ids)[:, :-1]
        targets = labels[:, 1:].reshape(-1)
        hidden = hidden.reshape(-1, hidden.shape[-1])
        head = self.lm_head
        if (isinstance(head, PackedLinear) and head.bias is None and not activation_rounding_active()
                and not self.config.final_softcap and self.config.logit_scale == 1.0):
            return sliced_cross_entropy_sum(hidden, head.weight, targets, ignore_index)
        logits = self._logits(head(hidden).to(torch.float32))  # a LoRA on lm_head, or llama.cpp emulation: plain
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
        if self.config.embed_scale != 1.0:
            x = x * self.config.embed_scale
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
    Tensors are consumed (popped) one by one so file data is not held twice; one left over when the
    model is built is an error (a piece of the model the torch graph would leave out).
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

    def experts(name: str) -> list[PackedLinear]:
        """One linear layer per expert over a 3-D (experts, out, in) tensor, sharing its file data."""
        data, qtype, shape = take(name + ".weight")
        if len(shape) != 3 or shape[0] != cfg.num_experts:
            raise UserError(f"tensor {name} has shape {shape}, expected ({cfg.num_experts}, out, in); "
                            f"the file is not a {cfg.arch} model")
        whole = PackedWeight.from_numpy(data, qtype, (shape[0] * shape[1], shape[2]))
        return [PackedLinear(w) for w in whole.split_rows(shape[0])]

    def moe(p: str) -> SparseMoE:
        gates, ups, downs = (experts(p + f"mlp.experts.{kind}") for kind in ("gate_proj", "up_proj", "down_proj"))
        return SparseMoE(linear(p + "mlp.gate"), [MLP(g, u, d) for g, u, d in zip(gates, ups, downs, strict=True)],
                         cfg.experts_used, cfg.expert_weights_norm, cfg.expert_weights_scale)

    def vector(name: str) -> torch.Tensor:
        data, qtype, shape = take(name)
        return PackedWeight.from_numpy(np.asarray(data).reshape(1, -1), qtype, (1, int(np.prod(shape)))).dequantize()[0]

    def linear(name: str, heads: int = 0) -> PackedLinear:
        bias = vector(name + ".bias") if name + ".bias" in tensors else None
        return PackedLinear(packed(name + ".weight", heads), bias)

    def norm(name: str) -> Norm:
        if cfg.norm == "layer":
            return LayerNorm(vector(name + ".weight"), vector(name + ".bias") if name + ".bias" in tensors else None,
                             cfg.rms_eps)
        return RMSNorm(vector(name + ".weight"), cfg.rms_eps)

    def optional_norm(name: str) -> Norm | None:
        return norm(name) if name + ".weight" in tensors else None

    factors = None
    for name in ("rope_freqs.weight", "rope_factors_short.weight"):
        if name in tensors:
            factors = vector(name)
    if "rope_factors_long.weight" in tensors:
        # llama.cpp uses the long factors only when it runs with a context above the original one
        # (``rope.scaling.original_context_length``); training samples stay within it.
        take("rope_factors_long.weight")
    rotaries = [Rotary(cfg.rope_dims, cfg.rope_base, cfg.rope_freq_scale, factors, cfg.rope_attn_factor,
                       yarn=cfg.yarn, interleaved=cfg.rope_interleaved)]
    if any(cfg.swa_layers):  # llama.cpp: sliding-window layers have their own rope base and scale
        rotaries.append(Rotary(cfg.rope_dims, cfg.rope_base_swa or cfg.rope_base, cfg.rope_freq_scale_swa, factors,
                               cfg.rope_attn_factor, interleaved=cfg.rope_interleaved))
    embed = packed("model.embed_tokens.weight")
    layers = []
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        swa = bool(cfg.swa_layers[i]) if cfg.swa_layers else False
        if p + "self_attn.qkv_proj.weight" in tensors:
            projections = (linear(p + "self_attn.qkv_proj"), None, None)
        else:
            projections = (linear(p + "self_attn.q_proj", cfg.num_heads if permuted_qk else 0),
                           linear(p + "self_attn.k_proj", cfg.num_kv_heads if permuted_qk else 0),
                           linear(p + "self_attn.v_proj"))
        attn = Attention(cfg, *projections, linear(p + "self_attn.o_proj"),
                         q_norm=optional_norm(p + "self_attn.q_norm"), k_norm=optional_norm(p + "self_attn.k_norm"),
                         window=cfg.sliding_window if swa else 0)
        if p + "mlp.gate.weight" in tensors:
            mlp = moe(p)
        elif p + "mlp.c_fc.weight" in tensors:
            mlp = PlainMLP(linear(p + "mlp.c_fc"), linear(p + "mlp.c_proj"), cfg.activation)
        elif p + "mlp.gate_up_proj.weight" in tensors:
            mlp = FusedMLP(linear(p + "mlp.gate_up_proj"), linear(p + "mlp.down_proj"), cfg.activation)
        else:
            mlp = MLP(linear(p + "mlp.gate_proj"), linear(p + "mlp.up_proj"), linear(p + "mlp.down_proj"),
                      cfg.activation)
        for owner in (attn, mlp):
            for child_name, child in owner.named_children():
                child.keep_output = child_name in DEFAULT_KEPT
        layers.append(DecoderLayer(norm(p + "input_layernorm") if cfg.pre_norms else None, attn,
                                   norm(p + "post_attention_layernorm") if cfg.pre_norms else None, mlp,
                                   post_attn_norm=optional_norm(p + "post_attn_norm"),
                                   post_ffn_norm=optional_norm(p + "post_ffn_norm"), rope_index=1 if swa else 0,
                                   residual_scale=cfg.residual_scale))
    final_norm = norm("model.norm")
    head = PackedLinear(packed("lm_head.weight")) if "lm_head.weight" in tensors else PackedLinear(embed)
    if tensors:
        raise UserError(f"tensor {sorted(tensors)[0]} is not used by the trainer's {cfg.arch} graph; "
                        "the file does not match its architecture")
    model = TextModel(cfg, Backbone(PackedEmbedding(embed), layers, final_norm), head, rotaries)
    model.requires_grad_(False)
    return model


def field_value(field) -> object:
    """A GGUF metadata value as Python (str, number, list); works on gguf-py versions without ``contents()``."""
    value_type = converters.gguf_py.installed_gguf().GGUFValueType

    def one(part: np.ndarray, vtype: int) -> object:
        if vtype == value_type.STRING:
            return bytes(part).decode("utf-8", errors="replace")
        return part.tolist()[0]

    main = field.types[0]
    if main == value_type.ARRAY:
        sub = field.types[-1]
        return [one(field.parts[i], sub) for i in field.data]
    return one(field.parts[field.data[0]], main)


def _header_metadata(path: Path) -> dict:
    """A GGUF's metadata without its string arrays; ``<arch>.vocab_size`` from ``token_embd`` when the file lacks it."""
    try:
        meta, tensors = converters.gguf_check.read_gguf_header(path)
    except converters.AdapterError as exc:
        raise UserError(str(exc)) from None
    vocab_key = f"{meta.get('general.architecture', '')}.vocab_size"
    embedding = dict(tensors).get("token_embd.weight")
    if not meta.get(vocab_key) and embedding:
        meta = {**meta, vocab_key: int(embedding[-1])}  # ggml order: (hidden, vocabulary)
    return meta


def read_gguf_metadata(path: Path) -> tuple[list, dict[str, object]]:
    """(tensor infos, {key: value}) or UserError for a file that is not a readable GGUF.

    Read by ``converters.gguf_check.read_gguf_contents`` (the values gguf-py's reader gives, about 30x faster
    on a 150 k vocabulary: gguf-py builds two numpy views per token).
    """
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        tensors, meta = converters.gguf_check.read_gguf_contents(path)[::-1]
    except converters.AdapterError as exc:
        raise UserError(str(exc)) from None
    return tensors, meta


_PLAIN_DTYPES = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16,
                 GGMLQuantizationType.F64: np.float64, GGMLQuantizationType.I8: np.int8,
                 GGMLQuantizationType.I16: np.int16, GGMLQuantizationType.I32: np.int32,
                 GGMLQuantizationType.I64: np.int64}


def tensor_view(mapped: np.ndarray, path: Path, info) -> tuple[np.ndarray, GGMLQuantizationType]:
    """A tensor's data as gguf-py's reader gives it (a view of the mapped file): numbers in numpy order for plain
    types, bytes per row for block types."""
    # GGML_QUANT_SIZES, not quant_shape_to_byte_shape: older gguf-py copies lack it
    quant_sizes = converters.gguf_py.installed_gguf().GGML_QUANT_SIZES
    try:
        ggml_type = GGMLQuantizationType(info.ggml_type)
    except ValueError:
        raise UserError(f"{path}: tensor {info.name} has ggml type {info.ggml_type}, which this gguf version does "
                        "not know; update gguf or re-convert the file") from None
    dims = tuple(reversed(info.dims))
    raw = mapped[info.offset:info.offset + info.n_bytes]
    dtype = _PLAIN_DTYPES.get(ggml_type)
    if dtype is not None:
        return raw.view(dtype).reshape(dims), ggml_type
    block, block_bytes = quant_sizes[ggml_type]
    return raw.reshape(dims[:-1] + (dims[-1] // block * block_bytes,)), ggml_type


def load_gguf_model(path: str | Path) -> TextModel:
    """Build the torch model from a GGUF base; weights stay packed (about the file size in RAM)."""
    path = Path(path)
    infos, meta = read_gguf_metadata(path)
    if meta.get("general.type") == "adapter":
        raise UserError(f"{path}: is a LoRA adapter, not a base model; pass the base .gguf as base_model")
    cfg = config_from_gguf(path, meta)
    family = FAMILIES[cfg.arch]
    names = tensor_names(cfg.arch)
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    tensors = {}
    for info in infos:
        hf = hf_name(info.name, names, path, family)
        shape = tuple(int(d) for d in reversed(info.dims))
        data, ggml_type = tensor_view(mapped, path, info)
        if family.permuted_qk and hf.endswith(("q_proj.weight", "k_proj.weight")):
            # These get reordered into a copy; reading them without the memory map keeps their file
            # pages out of the process (otherwise Q and K would sit in RAM twice).
            copy = np.fromfile(path, dtype=np.uint8, count=int(info.n_bytes), offset=int(info.offset))
            if copy.size != int(info.n_bytes):
                raise UserError(f"{path}: truncated GGUF file (tensor {info.name}); re-download or re-convert it")
            data = copy.view(data.dtype).reshape(data.shape)
        tensors[hf] = (data, ggml_type, shape)
    del meta  # the large token lists go; tensor views keep the file mapped
    emb = tensors.get("model.embed_tokens.weight")
    if emb is not None:
        cfg.vocab_size = emb[2][0]
    try:
        return build_model(cfg, tensors, permuted_qk=family.permuted_qk)
    except (ValueError, IndexError) as exc:
        raise UserError(f"{path}: damaged or truncated GGUF file ({exc}); re-download or re-convert it") from None


def load_hf_model(folder: str | Path) -> TextModel:
    """Build the torch model from an HF folder (config.json + *.safetensors), weights kept as stored."""
    folder = Path(folder)
    cfg, hf = hf_text_config(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"{folder}: no .safetensors weights; save the model with safe_serialization=True")
    io = importlib.import_module(converters.__name__ + ".safetensors_io")
    tensors = {}
    for file in files:
        sf = io.SafetensorsFile(file)
        names = sf.keys()
        for name in names:
            if name.endswith("rotary_emb.inv_freq"):  # transformers < 4.31 saves this derived buffer
                continue
            array = np.asarray(sf.get(name), dtype=np.float32)
            tensors[name] = (array, GGMLQuantizationType.F32, tuple(array.shape))
    if "lm_head.weight" not in tensors and not hf.get("tie_word_embeddings", False):
        raise UserError(f"{folder}: weights lack lm_head.weight; the model folder is incomplete")
    return build_model(cfg, tensors, permuted_qk=False)


def hf_text_config(folder: Path) -> tuple[TextConfig, dict]:
    """(``TextConfig``, config.json as read) of an HF model folder, or UserError naming what is supported."""
    try:
        hf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder}: no readable config.json ({exc}); pass an HF model folder") from None
    model_type = hf.get("model_type", "")
    if model_type not in HF_MODEL_TYPES:
        known = converters.llm_names.arch_from_config({"model_type": model_type})
        shown = repr(model_type) if known else "of its config.json"  # a config's own text is not echoed
        raise UserError(f"{folder}: model_type {shown} is not supported as an HF folder; supported: "
                        f"{', '.join(HF_MODEL_TYPES)} (convert other models to GGUF with llama.cpp's "
                        "convert_hf_to_gguf.py; GGUF bases of these run: " + ", ".join(SUPPORTED_ARCHES) + ")")
    heads = int(hf["num_attention_heads"])
    cfg = TextConfig(
        arch=model_type, vocab_size=int(hf["vocab_size"]), hidden_size=int(hf["hidden_size"]),
        intermediate_size=int(hf["intermediate_size"]), num_layers=int(hf["num_hidden_layers"]),
        num_heads=heads, num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        rms_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_base=float(hf.get("rope_theta", 10000.0)),
        context_length=int(hf.get("max_position_embeddings", 2048)),
        head_dim=int(hf.get("head_dim") or hf["hidden_size"] // heads), attn_bias=model_type == "qwen2",
    )
    return cfg, hf


def load_ggml_model(path: str | Path, n_kv_heads: int | None = None, rms_eps: float | None = None,
                    context_length: int | None = None, rope_base: float | None = None) -> TextModel:
    """A ``TextModel`` straight from a GGML file (weights stay packed)."""
    from .ggml_legacy import gguf_metadata, gguf_tensor_name, read_ggml

    ggml = read_ggml(path)
    meta = gguf_metadata(ggml, n_kv_heads, rms_eps, context_length, rope_base)
    cfg = config_from_gguf(Path(path), meta)
    names = tensor_names(cfg.arch)
    tensors = {}
    for name, tensor in ggml.tensors.items():
        gguf_name = gguf_tensor_name(name)
        if gguf_name is None:
            raise UserError(f"{path}: GGML tensor {name} is not part of a LLaMA model; the file is not supported")
        hf = hf_name(gguf_name, names, path)
        raw = tensor.raw
        if hf.endswith(("q_proj.weight", "k_proj.weight")):
            # Reordered into a copy when the model is built: read without the map, so their file
            # pages do not stay in the process next to the copy (600 MB at 7B), as for GGUF.
            raw = np.fromfile(path, dtype=np.uint8, count=raw.size, offset=tensor.offset)
        tensors[hf] = (raw, tensor.qtype, tensor.shape)
    return build_model(cfg, tensors, permuted_qk=True)


def base_kind(base: Path) -> str:
    """"hf", "gguf" or "ggml": what kind of base ``base`` is, or UserError."""
    if base.is_dir():
        return "hf"
    if not base.exists():
        raise UserError(f"{base}: base model not found; set base_model to a .gguf, GGML .bin or HF folder")
    with open(base, "rb") as fh:
        magic = fh.read(4)
    if magic == b"GGUF":
        return "gguf"
    from .ggml_legacy import GGML_MAGICS

    if int.from_bytes(magic, "little") in GGML_MAGICS:
        return "ggml"
    raise UserError(f"{base}: not a GGUF, GGML or HF model (unknown file signature); pass a .gguf base model")


def load_text_model(base: str | Path, ggml_options: dict | None = None) -> TextModel:
    """Load a ``.gguf``, a legacy GGML ``.bin`` or an HF folder as a ``TextModel``."""
    base = Path(base)
    kind = base_kind(base)
    if kind == "hf":
        return load_hf_model(base)
    if kind == "gguf":
        return load_gguf_model(base)
    return load_ggml_model(base, **(ggml_options or {}))


def read_text_config(base: str | Path, ggml_options: dict | None = None, vocabulary: bool = True) -> TextConfig:
    """The ``TextConfig`` of a base (shapes, tokenizer metadata) from its header alone: no weight is read.

    What a run needs before the model loads (the memory plan, the tokenizer); same checks as
    ``load_text_model`` for files that are not bases. ``vocabulary=False``: a GGUF's header is read
    without its string arrays (``gguf_check.read_gguf_header``, fast at any vocabulary size), so the
    config has no tokenizer; its vocabulary size comes from ``token_embd``'s shape when no key says it.
    """
    base = Path(base)
    kind = base_kind(base)
    if kind == "hf":
        return hf_text_config(base)[0]
    if kind == "gguf":
        meta = read_gguf_metadata(base)[1] if vocabulary else _header_metadata(base)
        if meta.get("general.type") == "adapter":
            raise UserError(f"{base}: is a LoRA adapter, not a base model; pass the base .gguf as base_model")
        return config_from_gguf(base, meta)
    from .ggml_legacy import gguf_metadata, read_ggml

    return config_from_gguf(base, gguf_metadata(read_ggml(base), **(ggml_options or {})))


def count_parameters(model: TextModel) -> int:
    """Number of base weights (elements), packed or not."""
    total = 0
    for module in model.modules():
        if isinstance(module, PackedWeight):
            total += module.shape[0] * module.shape[1]
    return total + sum(int(math.prod(b.shape)) for n, b in model.named_buffers() if n.endswith("norm.weight"))
