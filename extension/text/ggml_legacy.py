"""Reader for legacy llama.cpp model files (``*.ggmlv3.q4_0.bin``): ggml, ggmf and ggjt v1-v3.

Layout (llama.cpp's ``llama_file_loader`` before GGUF): u32 magic, [u32 version: not in ggml], 7 x u32
hparams (n_vocab, n_embd, n_mult, n_head, n_layer, n_rot, ftype), the vocab (n_vocab x u32 length +
bytes [+ f32 score: not in ggml]), then tensors until EOF: u32 n_dims, u32 name length, u32 type,
n_dims x u32 dims (ggml order), name, [ggjt only: zero padding up to the next 32-byte file offset],
data. Q and K are stored permuted for rotary, as in GGUF. ggml/ggmf 13B+ models were split into
``x.bin``, ``x.bin.1``, ... parts; those are refused (ggjt files are always whole).

GGML does not store the KV head count, RMS epsilon, context length or rope base: they are options
(defaults as llama.cpp's converter: no GQA, 5e-6, 2048, 10000; LLaMA-2 wants 1e-5 and 4096, 70B
8 KV heads). Quantized tensors: any from ggjt v3; from ggjt v2 only Q5_0/Q5_1, whose blocks v3 kept
(v3 changed Q4_0/Q4_1/Q8_0 scales to f16, v2 changed every block layout of v1). F32/F16 from all.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._converters import converters
from ..errors import UserError

_gguf = converters.gguf_py.installed_gguf()
GGML_QUANT_SIZES, GGMLQuantizationType = _gguf.GGML_QUANT_SIZES, _gguf.GGMLQuantizationType


GGML_MAGICS = {0x67676D6C: "ggml", 0x67676D66: "ggmf", 0x67676A74: "ggjt"}
DEFAULTS = {"n_kv_heads": None, "rms_eps": 5e-6, "context_length": 2048, "rope_base": 10000.0}
_FLOAT_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16)
# quantized types whose block layout is today's, per file version (llama.cpp PRs #1405 -> v2, #1508 -> v3)
_KNOWN_TYPES = {int(t) for t in GGMLQuantizationType}
_CURRENT_QUANTS = {("ggjt", 2): (GGMLQuantizationType.Q5_0, GGMLQuantizationType.Q5_1)}
_LAYER_NAMES = {
    "attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v", "attention.wo": "attn_output",
    "attention_norm": "attn_norm", "ffn_norm": "ffn_norm", "feed_forward.w1": "ffn_gate",
    "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up",
}
_TOP_NAMES = {"tok_embeddings": "token_embd", "norm": "output_norm", "output": "output"}


@dataclass
class GGMLHparams:
    """The seven numbers a GGML LLaMA file stores."""

    n_vocab: int
    n_embd: int
    n_mult: int
    n_head: int
    n_layer: int
    n_rot: int
    ftype: int


@dataclass
class GGMLTensor:
    """One tensor: name, type, ggml dims (row length first) and its bytes (a read-only map)."""

    name: str
    qtype: GGMLQuantizationType
    dims: tuple[int, ...]
    offset: int
    raw: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy/torch shape (rows first)."""
        return tuple(reversed(self.dims))

    def array(self) -> np.ndarray:
        """Float tensors as float32/float16 arrays; quantized ones as uint8 rows (rows, row bytes)."""
        if self.qtype == GGMLQuantizationType.F32:
            return self.raw.view(np.float32).reshape(self.shape)
        if self.qtype == GGMLQuantizationType.F16:
            return self.raw.view(np.float16).reshape(self.shape)
        rows = int(np.prod(self.shape[:-1])) if len(self.shape) > 1 else 1
        return self.raw.reshape(rows, -1)


@dataclass
class GGMLFile:
    """A parsed legacy file."""

    path: Path
    kind: str
    version: int
    hparams: GGMLHparams
    vocab: list[tuple[bytes, float]]
    tensors: dict[str, GGMLTensor] = field(default_factory=dict)


def _bad(path: Path, what: str) -> UserError:
    return UserError(f"{path}: {what}; the GGML file is damaged or not a LLaMA model (re-download it)")


def read_ggml(path: str | Path) -> GGMLFile:
    """Parse a ggml/ggmf/ggjt LLaMA file; tensor data stays memory-mapped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.stat().st_size == 0:  # numpy cannot map an empty file
        raise UserError(f"{path}: empty file (0 bytes); give a GGUF or legacy GGML model file")
    data = np.memmap(path, dtype=np.uint8, mode="r")
    size = data.shape[0]
    pos = 0

    def u32s(n: int) -> tuple[int, ...]:
        nonlocal pos
        if pos + 4 * n > size:
            raise _bad(path, f"ends early at byte {pos}")
        values = struct.unpack_from(f"<{n}I", data, pos)
        pos += 4 * n
        return values

    (magic,) = u32s(1)
    kind = GGML_MAGICS.get(magic)
    if kind is None:
        raise UserError(f"{path}: not a legacy GGML file (unknown file signature); GGUF files need no upgrade")
    version = u32s(1)[0] if kind != "ggml" else 0
    if (kind, version) not in (("ggml", 0), ("ggmf", 1), ("ggjt", 1), ("ggjt", 2), ("ggjt", 3)):
        raise UserError(f"{path}: unsupported {kind} version {version}; supported: ggml, ggmf v1, ggjt v1-v3")
    hp = GGMLHparams(*u32s(7))
    if not (0 < hp.n_vocab < 10_000_000 and 0 < hp.n_head <= hp.n_embd and 0 < hp.n_layer < 10_000):
        raise _bad(path, f"implausible hyper-parameters {hp}")
    vocab: list[tuple[bytes, float]] = []
    for _ in range(hp.n_vocab):
        (length,) = u32s(1)
        if pos + length > size:
            raise _bad(path, "vocabulary ends early")
        text = bytes(data[pos:pos + length])
        pos += length
        score = 0.0
        if kind != "ggml":
            if pos + 4 > size:
                raise _bad(path, "vocabulary ends early")
            (score,) = struct.unpack_from("<f", data, pos)
            pos += 4
        vocab.append((text, float(score)))
    result = GGMLFile(path, kind, version, hp, vocab)
    while pos < size:
        n_dims, name_len, raw_type = u32s(3)
        if not 1 <= n_dims <= 4 or name_len > 1024:
            raise _bad(path, f"bad tensor header at byte {pos - 12}")
        dims = u32s(n_dims)
        name = bytes(data[pos:pos + name_len]).decode("utf-8", errors="replace")
        pos += name_len
        qtype = _tensor_type(path, kind, version, name, raw_type)
        if kind == "ggjt":
            pos += -pos % 32
        block, type_size = GGML_QUANT_SIZES[qtype]
        n_elements = int(np.prod(dims))
        if dims[0] % block:
            raise _bad(path, f"tensor {name} row length {dims[0]} is not a multiple of {block}")
        n_bytes = n_elements // block * type_size
        if pos + n_bytes > size:
            raise _bad(path, f"tensor {name} is truncated")
        result.tensors[name] = GGMLTensor(name, qtype, tuple(dims), pos, data[pos:pos + n_bytes])
        pos += n_bytes
    embd = result.tensors.get("tok_embeddings.weight")
    if embd is None:
        raise _bad(path, "no tok_embeddings.weight tensor")
    if embd.dims[0] != hp.n_embd:
        if not embd.dims[0] or hp.n_embd % embd.dims[0]:
            raise _bad(path, f"tok_embeddings.weight has {embd.dims[0]} columns but n_embd is {hp.n_embd}")
        # llama.cpp's guess_n_parts: the parts split the embedding's columns
        raise UserError(f"{path}: this is one part of a {hp.n_embd // embd.dims[0]}-part {kind} model (with "
                        f"{path.name}.1, ...); multi-part files are not supported, use a ggjt or GGUF file")
    return result


def _tensor_type(path: Path, kind: str, version: int, name: str, raw_type: int) -> GGMLQuantizationType:
    """The tensor's type; quantized types whose block layout changed after this file version are refused."""
    label = "unversioned ggml" if kind == "ggml" else f"{kind} v{version}"
    if raw_type not in _FLOAT_TYPES and (kind, version) != ("ggjt", 3) \
            and raw_type not in _CURRENT_QUANTS.get((kind, version), ()):
        type_name = GGMLQuantizationType(raw_type).name if raw_type in _KNOWN_TYPES else f"ggml type {raw_type}"
        raise UserError(f"{path}: tensor {name} is quantized ({type_name}) in the old block layout of "
                        f"{label} files that no current tool reads; use a ggjt v3 (or GGUF) file or an F16/F32 one")
    try:
        return GGMLQuantizationType(raw_type)
    except ValueError:
        raise _bad(path, f"tensor {name} has unknown type {raw_type}") from None


def gguf_tensor_name(name: str) -> str | None:
    """``layers.0.attention.wq.weight`` -> ``blk.0.attn_q.weight``; None for unknown names."""
    stem, _, suffix = name.rpartition(".")
    if stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{suffix}"
    parts = stem.split(".", 2)
    if len(parts) == 3 and parts[0] == "layers" and parts[2] in _LAYER_NAMES:
        return f"blk.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{suffix}"
    return None


def gguf_vocab(vocab: list[tuple[bytes, float]]) -> tuple[list[str], list[float], list[int]]:
    """GGML vocab -> GGUF (tokens, scores, types), as llama.cpp's converter maps it.

    Ids 0-2 are <unk>, <s>, </s>; empty entries are control tokens; single bytes at ids 3-258 are
    byte tokens ``<0xXX>``; other entries have their spaces back as ``▁``.
    """
    tokens, scores, types = [], [], []
    for i, (text, score) in enumerate(vocab):
        kind = 1
        if i <= 2:
            text, kind = (b"<unk>", 2) if i == 0 else ((b"<s>", 3) if i == 1 else (b"</s>", 3))
        elif not text:
            kind = 3
        elif 3 <= i <= 258 and len(text) == 1:
            text, kind = f"<0x{text[0]:02X}>".encode(), 6
        else:
            text = text.replace(b" ", "▁".encode())
        tokens.append(text.decode("utf-8", errors="replace"))
        scores.append(score)
        types.append(kind)
    return tokens, scores, types


def gguf_metadata(ggml: GGMLFile, n_kv_heads: int | None = None, rms_eps: float | None = None,
                  context_length: int | None = None, rope_base: float | None = None) -> dict:
    """The GGUF key/values a converted file gets (``llama.*``, ``tokenizer.ggml.*``)."""
    hp = ggml.hparams
    kv = n_kv_heads or hp.n_head
    if hp.n_head % kv:
        raise UserError(f"{ggml.path}: n_kv_heads {kv} does not divide the {hp.n_head} attention heads")
    wk = ggml.tensors.get("layers.0.attention.wk.weight")
    head_dim = hp.n_embd // hp.n_head
    if wk is not None and wk.shape[0] != kv * head_dim:
        raise UserError(f"{ggml.path}: K weights have {wk.shape[0] // head_dim} heads, not {kv}; set n_kv_heads "
                        f"to {wk.shape[0] // head_dim} (--n-kv-heads / ggml_n_kv_heads)")
    w1 = ggml.tensors.get("layers.0.feed_forward.w1.weight")
    if w1 is None:
        raise _bad(ggml.path, "no layers.0.feed_forward.w1.weight tensor")
    tokens, scores, types = gguf_vocab(ggml.vocab)
    return {
        "general.architecture": "llama",
        "general.name": ggml.path.stem,
        "llama.context_length": int(context_length or DEFAULTS["context_length"]),
        "llama.embedding_length": hp.n_embd,
        "llama.block_count": hp.n_layer,
        "llama.feed_forward_length": int(w1.shape[0]),
        "llama.rope.dimension_count": hp.n_rot or head_dim,
        "llama.attention.head_count": hp.n_head,
        "llama.attention.head_count_kv": kv,
        "llama.attention.layer_norm_rms_epsilon": float(rms_eps if rms_eps is not None else DEFAULTS["rms_eps"]),
        "llama.rope.freq_base": float(rope_base or DEFAULTS["rope_base"]),
        "general.file_type": hp.ftype % 1000,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
