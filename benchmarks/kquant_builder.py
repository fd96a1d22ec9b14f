"""Random Qwen3-8B- and Gemma-3-4B-shaped Q4_K_M GGUF bases for benchmarks, written tensor by tensor.

Like ``q4_builder.py`` (LLaMA, Q4_0) but for the families with Q/K norms, GeGLU, post-norms and
sliding windows, in llama.cpp's Q4_K_M mix: every matrix Q4_K, except ``attn_v`` and ``ffn_down``
in the layers llama.cpp's ``use_more_bits`` picks (first and last eighth, every third between) and
the output layer (or the tied embedding) in Q6_K. Blocks are random bytes with scales chosen so the
weights have a std near 0.02 and a mean near 0; norms are 1. The vocabulary is the tiny SPM one
padded to the model's size (the text is plain words). Nothing is downloaded; one tensor is in memory
at a time.

    from kquant_builder import SHAPES, write_random_kquant_gguf
    write_random_kquant_gguf(path, SHAPES["qwen3-8b"])
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from q4_builder import padded_vocab, random_bytes, write_random_tensors  # noqa: E402

QK_K = 256
Q4_K_BYTES, Q6_K_BYTES = 144, 210


@dataclass(frozen=True)
class KShape:
    """A Qwen3- or Gemma-3-family model's sizes (the ``<arch>.*`` keys)."""

    arch: str  # qwen3 | gemma3
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool  # the output layer is the token embedding (Gemma 3)
    rope_base: float = 1_000_000.0
    context: int = 32768
    rms_eps: float = 1e-6
    sliding_window: int = 0  # Gemma 3: 1024, every sixth layer global
    rope_scaling: float = 0.0  # Gemma 3 4B: linear factor 8 on the global layers

    def more_bits(self, layer: int) -> bool:
        """llama.cpp's ``use_more_bits``: the layers whose attn_v/ffn_down Q4_K_M keeps in Q6_K."""
        n = self.layers
        return layer < n // 8 or layer >= 7 * n // 8 or (layer - n // 8) % 3 == 2

    def matrices(self) -> list[tuple[str, int, int, str]]:
        """(GGUF name, rows, columns, Q4_K or Q6_K) of every matrix, in file order."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        out = [("token_embd.weight", self.vocab, self.hidden, "Q6_K" if self.tied else "Q4_K")]
        for i in range(self.layers):
            b, big = f"blk.{i}.", "Q6_K" if self.more_bits(i) else "Q4_K"
            out += [(b + "attn_q.weight", q, self.hidden, "Q4_K"), (b + "attn_k.weight", kv, self.hidden, "Q4_K"),
                    (b + "attn_v.weight", kv, self.hidden, big), (b + "attn_output.weight", self.hidden, q, "Q4_K"),
                    (b + "ffn_gate.weight", self.intermediate, self.hidden, "Q4_K"),
                    (b + "ffn_up.weight", self.intermediate, self.hidden, "Q4_K"),
                    (b + "ffn_down.weight", self.hidden, self.intermediate, big)]
        return out if self.tied else out + [("output.weight", self.vocab, self.hidden, "Q6_K")]

    def vectors(self) -> list[tuple[str, int]]:
        """(GGUF name, length) of every norm weight."""
        per_layer = ["attn_norm", "ffn_norm"] + (["post_attention_norm", "post_ffw_norm"] if self.arch == "gemma3"
                                                 else [])
        out = []
        for i in range(self.layers):
            out += [(f"blk.{i}.{n}.weight", self.hidden) for n in per_layer]
            out += [(f"blk.{i}.attn_q_norm.weight", self.head_dim), (f"blk.{i}.attn_k_norm.weight", self.head_dim)]
        return out + [("output_norm.weight", self.hidden)]

    def smaller(self, layers: int) -> KShape:
        """The same widths with ``layers`` decoder layers."""
        return dataclasses.replace(self, layers=int(layers))


SHAPES = {
    # Qwen3-8B's config.json: 36 layers, 4096 wide, FFN 12288, 32 heads of 128, 8 KV heads, 151936 tokens, untied
    "qwen3-8b": KShape("qwen3", 4096, 12288, 36, 32, 8, 128, 151936, tied=False, context=40960),
    # Gemma-3-4B (text): 34 layers, 2560 wide, FFN 10240, 8 heads of 256, 4 KV heads, 262208 tokens, tied,
    # window 1024 on five layers of six, linear rope scaling 8 on the global ones
    "gemma3-4b": KShape("gemma3", 2560, 10240, 34, 8, 4, 256, 262208, tied=True, context=131072,
                        sliding_window=1024, rope_scaling=8.0),
}


def random_q4_k(rng: np.random.Generator, rows: int, cols: int, weight_std: float = 0.02) -> np.ndarray:
    """(rows, cols / 256 * 144) uint8 Q4_K blocks: random nibbles and 6-bit scales/mins, f16 d and dmin."""
    n = rows * cols // QK_K
    blocks = random_bytes(rng, n, Q4_K_BYTES)
    # value = d * sc * q - dmin * m with q, sc, m uniform: mean d*31.5*7.5 - dmin*31.5, std ~ d*36*4.6
    d = np.full(n, weight_std / (36 * 4.6), dtype=np.float16)
    dmin = (d.astype(np.float32) * 7.5).astype(np.float16)
    blocks[:, 0:2] = d.view(np.uint8).reshape(n, 2)
    blocks[:, 2:4] = dmin.view(np.uint8).reshape(n, 2)
    return blocks.reshape(rows, -1)


def random_q6_k(rng: np.random.Generator, rows: int, cols: int, weight_std: float = 0.02) -> np.ndarray:
    """(rows, cols / 256 * 210) uint8 Q6_K blocks: random 6-bit values, int8 scales in [-64, 64), f16 d."""
    n = rows * cols // QK_K
    blocks = random_bytes(rng, n, Q6_K_BYTES)
    blocks[:, 192:208] = (blocks[:, 192:208] >> 1).view(np.int8) - 64  # int8 scales in [-64, 64)
    d = np.full(n, weight_std / (18.5 * 37), dtype=np.float16)  # std of (q - 32) ~ 18.5, of the scales ~ 37
    blocks[:, 208:210] = d.view(np.uint8).reshape(n, 2)
    return blocks.reshape(rows, -1)


def _header(writer, shape: KShape, vocab) -> None:
    """The LLaMA-like keys (``add_llama_header``), then Gemma 3's sliding window and rope scaling."""
    import gguf

    from extension.tiny.llama import add_llama_header

    add_llama_header(writer, context=shape.context, hidden=shape.hidden, layers=shape.layers,
                     ffn=shape.intermediate, heads=shape.heads, kv_heads=shape.kv_heads, rms_eps=shape.rms_eps,
                     rope_base=shape.rope_base, head_dim=shape.head_dim, file_type=gguf.LlamaFileType.MOSTLY_Q4_K_M,
                     vocab=vocab)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if shape.sliding_window:
        writer.add_sliding_window(shape.sliding_window)
    if shape.rope_scaling:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(shape.rope_scaling)


def write_random_kquant_gguf(path: str | Path, shape: KShape, seed: int = 0) -> Path:
    """Write a random Q4_K_M GGUF of ``shape`` to ``path`` (through converters.atomic); returns the path."""
    import gguf

    from extension._converters import converters

    rng = np.random.default_rng(seed)
    vocab = padded_vocab(shape.vocab)
    kinds = {"Q4_K": (gguf.GGMLQuantizationType.Q4_K, Q4_K_BYTES, random_q4_k),
             "Q6_K": (gguf.GGMLQuantizationType.Q6_K, Q6_K_BYTES, random_q6_k)}
    path = Path(path)
    with converters.atomic.atomic_file(path) as tmp:
        writer = gguf.GGUFWriter(tmp, shape.arch)
        writer.add_name(f"random-q4_k_m-{shape.arch}-{shape.layers}x{shape.hidden}")
        _header(writer, shape, vocab)
        matrices = [(name, rows, cols // QK_K * size, qtype, partial(draw, rng, rows, cols))
                    for name, rows, cols, kind in shape.matrices() for qtype, size, draw in [kinds[kind]]]
        write_random_tensors(writer, matrices, shape.vectors())
    return path
