"""Write a legacy GGML LLaMA file (ggml, ggmf v1, ggjt v1-v3) from a tiny HF model, as old llama.cpp did.

For tests, the demo and users who want a ``*.ggmlv3.q4_0.bin`` to try the GGML path with.
Layouts as llama.cpp's pre-GGUF ``llama_file_loader`` reads them: ggml has no version field and
no vocab scores; ggmf v1 adds both; ggjt pads each tensor's data to a 32-byte file offset.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from .._converters import converters
from .llama import kv_heads, weight_items

MAGICS = {"ggml": 0x67676D6C, "ggmf": 0x67676D66, "ggjt": 0x67676A74}
_LAYER = {
    "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo", "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "feed_forward.w1",
    "mlp.down_proj": "feed_forward.w2", "mlp.up_proj": "feed_forward.w3",
}
_TOP = {"model.embed_tokens": "tok_embeddings", "model.norm": "norm", "lm_head": "output"}


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _vocab_bytes(token: str, kind: int) -> bytes:
    """What llama.cpp's old convert.py stored for an SPM piece."""
    if kind == 2:
        return " \u2047 ".encode()
    if kind == 3:
        return b""
    if kind == 6:
        return bytes([int(token[3:5], 16)])
    return token.replace("\u2581", " ").encode()


def write_ggml(model, vocab, path: Path, qtype: str = "F32", kind: str = "ggjt", version: int = 3) -> Path:
    """``kind`` file (version ignored for ggml): hparams, vocab, tensors (2-D as ``qtype``, 1-D F32).

    ``qtype`` is F32, F16 or any gguf-py quantization (Q4_0, Q5_0, ...), written in today's block
    layout whatever the version: older quantized files are only used to test that they are refused.
    """
    gguf = converters.gguf_py.installed_gguf()

    cfg = model.config
    heads = cfg.num_attention_heads
    kv = kv_heads(model)
    head_dim = cfg.hidden_size // heads
    ftype = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9}[qtype]
    out = bytearray(struct.pack("<I", MAGICS[kind]))
    if kind != "ggml":
        out += struct.pack("<I", version)
    out += struct.pack("<7I", len(vocab), cfg.hidden_size, 256, heads, cfg.num_hidden_layers, head_dim, ftype)
    for token, score, token_type in zip(vocab.tokens, vocab.scores, vocab.types, strict=False):
        data = _vocab_bytes(token, token_type)
        out += struct.pack("<I", len(data)) + data + (struct.pack("<f", score) if kind != "ggml" else b"")
    for hf_name, tensor in weight_items(model):
        module, suffix = hf_name.rsplit(".", 1)
        array = tensor.detach().float().numpy()
        if module in _TOP:
            name = f"{_TOP[module]}.{suffix}"
        else:
            parts = module.split(".", 3)
            name = f"layers.{parts[2]}.{_LAYER[parts[3]]}.{suffix}"
        if module.endswith("q_proj"):
            array = _permute(array, heads)
        elif module.endswith("k_proj"):
            array = _permute(array, kv)
        if array.ndim == 1 or qtype == "F32":
            raw, ttype = np.ascontiguousarray(array, dtype=np.float32).tobytes(), 0
        elif qtype == "F16":
            raw, ttype = np.ascontiguousarray(array, dtype=np.float16).tobytes(), 1
        else:
            qt = getattr(gguf.GGMLQuantizationType, qtype)
            raw, ttype = gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qt).tobytes(), int(qt)
        dims = list(reversed(array.shape))
        encoded = name.encode()
        out += struct.pack("<III", len(dims), len(encoded), ttype) + struct.pack(f"<{len(dims)}I", *dims) + encoded
        if kind == "ggjt":
            out += b"\0" * (-len(out) % 32)
        out += raw
    with converters.atomic.atomic_file(path) as tmp:
        tmp.write_bytes(bytes(out))
    return Path(path)
