"""Tiny LLaMA-architecture models built in code: HF model, HF folder, SPM-style vocab and GGUF files.

Everything is seeded and offline. The sizes keep the real layout (GQA: 4 heads, 2 KV heads,
separate lm_head) while running in milliseconds; rows are multiples of 32 so Q8_0/Q4_0 work.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._converters import converters

TINY_LLAMA = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
    "initializer_range": 0.1,  # larger than the default 0.02 so logits and LoRA effects are O(1)
}
ARCHES = ("llama", "qwen2")
QTYPES = ("F32", "F16", "Q8_0", "Q4_0")
_WORDS = ("the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "and", "is", "in", "it", "of", "lora")

# SentencePiece token types (as stored in tokenizer.ggml.token_type).
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6


@dataclass
class TinyVocab:
    """An SPM-style vocabulary: specials, 256 byte tokens, word pieces, letters."""

    tokens: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __len__(self) -> int:
        return len(self.tokens)

    def piece_id(self, piece: str) -> int:
        """The id of a piece such as ``▁the``."""
        return self.tokens.index(piece)


def tiny_vocab() -> TinyVocab:
    """The fixed tiny vocabulary (``<unk>``, ``<s>``, ``</s>``, ``<0x00>``..``<0xFF>``, ``▁the``...)."""
    vocab = TinyVocab()

    def add(token: str, score: float, kind: int) -> None:
        vocab.tokens.append(token)
        vocab.scores.append(score)
        vocab.types.append(kind)

    add("<unk>", 0.0, UNKNOWN)
    add("<s>", 0.0, CONTROL)
    add("</s>", 0.0, CONTROL)
    for byte in range(256):
        add(f"<0x{byte:02X}>", 0.0, BYTE)
    # Every prefix of a word piece is a token too, as in a real SPM vocab: llama.cpp's SPM
    # tokenizer builds ``▁the`` by merging ``▁t`` + ``h`` + ``e`` through existing pieces.
    words = ["▁" + word for word in _WORDS]
    prefixes = sorted({w[:n] for w in words for n in range(2, len(w))} - set(words))
    pieces = words + prefixes + ["▁"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    for rank, piece in enumerate(pieces):
        add(piece, -float(rank + 1), NORMAL)
    return vocab


def _config(arch: str, vocab_size: int, overrides: dict | None = None):
    """An HF config of the tiny size for ``arch``; ``overrides`` changes sizes (e.g. hidden_size)."""
    import transformers

    settings = {**TINY_LLAMA, **(overrides or {})}
    if arch == "llama":
        return transformers.LlamaConfig(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, **settings)
    if arch == "qwen2":
        return transformers.Qwen2Config(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2,
                                        use_sliding_window=False, **settings)
    raise ValueError(f"unknown tiny arch {arch!r}; use one of {ARCHES}")


def build_tiny_llama(seed: int = 0, arch: str = "llama", vocab: TinyVocab | None = None, **overrides):
    """A seeded tiny ``LlamaForCausalLM`` (or ``Qwen2ForCausalLM`` for ``arch="qwen2"``), float32, eval mode.

    Keyword arguments override :data:`TINY_LLAMA` (e.g. ``hidden_size=32`` for a mismatching base).
    """
    import torch
    import transformers

    vocab = vocab or tiny_vocab()
    config = _config(arch, len(vocab), overrides)
    torch.manual_seed(seed)
    cls = transformers.LlamaForCausalLM if arch == "llama" else transformers.Qwen2ForCausalLM
    model = cls(config).float().eval()
    with torch.no_grad():
        # Norm weights start at 1 and biases at 0; vary them so conversions that drop them show.
        gen = torch.Generator().manual_seed(seed + 1)
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(0.1 * torch.randn(param.shape, generator=gen))
    return model


def _tokenizer(vocab: TinyVocab):
    """A fast tokenizer (Unigram with byte fallback) over ``vocab`` that transformers loads offline."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    pairs = list(zip(vocab.tokens, vocab.scores, strict=True))
    try:
        model = models.Unigram(pairs, unk_id=vocab.unk_id, byte_fallback=True)
    except TypeError:  # tokenizers < 0.14 (A1111's transformers 4.30)
        model = models.Unigram(pairs, unk_id=vocab.unk_id)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = (vocab.unk_id, vocab.bos_id, vocab.eos_id)
    tok.add_special_tokens([AddedToken(vocab.tokens[i], special=True) for i in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=vocab.tokens[vocab.unk_id],
        bos_token=vocab.tokens[vocab.bos_id],
        eos_token=vocab.tokens[vocab.eos_id],
    )


def save_tiny_hf(folder: str | Path, model=None, seed: int = 0, arch: str = "llama",
                 vocab: TinyVocab | None = None, tokenizer: bool = True) -> Path:
    """Write an HF folder (config.json, model.safetensors, tokenizer files) for a tiny model."""
    folder = Path(folder)
    vocab = vocab or tiny_vocab()
    model = model if model is not None else build_tiny_llama(seed=seed, arch=arch, vocab=vocab)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer:
        # Without a recent `tokenizers` the folder still works for weights and shapes.
        with contextlib.suppress(ImportError, TypeError):
            _tokenizer(vocab).save_pretrained(folder)
    return folder


def _rope_theta(config) -> float:
    """rope theta across transformers versions (``rope_theta`` or ``rope_parameters``)."""
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        params = getattr(config, "rope_parameters", None) or {}
        theta = params.get("rope_theta", 10000.0)
    return float(theta)


def _quantize(array: np.ndarray, qtype: str):
    """(data, raw ggml type or None) for one 2-D weight."""
    gguf = converters.gguf_py.installed_gguf()

    if qtype == "F32":
        return np.ascontiguousarray(array, dtype=np.float32), None
    if qtype == "F16":
        return np.ascontiguousarray(array, dtype=np.float16), None
    ggml_type = getattr(gguf.GGMLQuantizationType, qtype)
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), ggml_type), ggml_type


def kv_heads(model) -> int:
    """KV heads as built (transformers < 4.31 ignores ``num_key_value_heads`` and builds full K/V)."""
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    return model.model.layers[0].self_attn.k_proj.out_features // head_dim


def weight_items(model) -> list[tuple[str, object]]:
    """(name, tensor) of the model's weights: its state dict without buffers such as ``rotary_emb.inv_freq``.

    transformers < 4.31 (A1111's 4.30.2) keeps ``inv_freq`` as a persistent buffer, so it is in
    the state dict there; it is derived from the config and no file format stores it.
    """
    buffers = {name for name, _ in model.named_buffers()}
    return [(name, tensor) for name, tensor in model.state_dict().items() if name not in buffers]


def gguf_tensors(model) -> list[tuple[str, np.ndarray]]:
    """(GGUF tensor name, float32 array) for every weight, Q/K rows permuted the llama.cpp way."""
    names = converters.llm_names
    config = model.config
    arch = config.model_type
    n_kv = kv_heads(model)
    out = []
    for hf_name, tensor in weight_items(model):
        module, suffix = hf_name.rsplit(".", 1)
        array = tensor.detach().float().cpu().numpy()
        if names.is_permuted(arch, module):
            heads = names.n_heads_for(module, config.num_attention_heads, n_kv)
            array = names.permute_rows(array, heads)
        out.append((f"{names.hf_to_gguf(module, arch)}.{suffix}", array))
    return out



def add_llama_header(writer, *, context: int, hidden: int, layers: int, ffn: int, heads: int, kv_heads: int,
                     rms_eps: float, file_type: int, vocab: TinyVocab, rope_base: float = 10000.0,
                     head_dim: int | None = None) -> None:
    """Add the ``<arch>.*`` hyperparameters of a LLaMA-like model and the SPM ``tokenizer.ggml.*`` keys to a
    ``gguf.GGUFWriter`` (its arch names the keys).

    The one place every LLaMA-like GGUF writer of ours (tiny models, benchmark bases) spells these keys.
    ``head_dim``: write ``key_length``/``value_length`` (heads not ``hidden / heads`` wide, as Gemma 3's; llama.cpp
    then rotates the whole head) instead of the rope dimension count ``hidden // heads``.
    """
    writer.add_context_length(context)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(rms_eps)
    writer.add_rope_freq_base(rope_base)
    if head_dim is None:
        writer.add_rope_dimension_count(hidden // heads)
    else:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(file_type)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_unk_token_id(vocab.unk_id)

def write_tiny_gguf(model, path: str | Path, qtype: str = "F32", vocab: TinyVocab | None = None,
                    chat_template: str | None = None, name: str = "tiny-llama") -> Path:
    """Write ``model`` as a GGUF llama.cpp loads: hparams, tokenizer.ggml.*, weights as ``qtype``.

    2-D weights use ``qtype`` (F32, F16, Q8_0, Q4_0); 1-D tensors are always F32.
    """
    gguf = converters.gguf_py.installed_gguf()

    if qtype not in QTYPES:
        raise ValueError(f"unknown qtype {qtype!r}; use one of {QTYPES}")
    vocab = vocab or tiny_vocab()
    config = model.config
    arch = config.model_type
    if config.vocab_size != len(vocab):
        raise ValueError(f"model vocab {config.vocab_size} != tokenizer vocab {len(vocab)}")
    path = Path(path)
    file_types = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "Q8_0": "MOSTLY_Q8_0", "Q4_0": "MOSTLY_Q4_0"}
    with converters.atomic.atomic_file(path) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.add_name(name)
        add_llama_header(writer, context=config.max_position_embeddings, hidden=config.hidden_size,
                         layers=config.num_hidden_layers, ffn=config.intermediate_size,
                         heads=config.num_attention_heads, kv_heads=kv_heads(model), rms_eps=config.rms_norm_eps,
                         rope_base=_rope_theta(config),
                         file_type=getattr(gguf.LlamaFileType, file_types[qtype]), vocab=vocab)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        if chat_template:
            writer.add_chat_template(chat_template)
        for tensor_name, array in gguf_tensors(model):
            if array.ndim == 1:
                writer.add_tensor(tensor_name, np.ascontiguousarray(array, dtype=np.float32))
            else:
                data, raw_type = _quantize(array, qtype)
                writer.add_tensor(tensor_name, data, raw_dtype=raw_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def tiny_llama_files(folder: str | Path, seed: int = 0, arch: str = "llama",
                     qtypes: tuple[str, ...] = ("F32",)) -> dict[str, Path]:
    """Build one tiny model and write its HF folder and GGUF files: {"hf": dir, "F32": file, ...}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    model = build_tiny_llama(seed=seed, arch=arch, vocab=vocab)
    files: dict[str, Path] = {"hf": save_tiny_hf(folder / f"{arch}-hf", model=model, vocab=vocab)}
    for qtype in qtypes:
        files[qtype] = write_tiny_gguf(model, folder / f"{arch}-{qtype.lower()}.gguf", qtype=qtype, vocab=vocab)
    return files
