"""Random LLaMA-shaped Q4_0 GGUF bases for benchmarks, written tensor by tensor in seconds.

``write_random_q4_gguf(path, LLAMA2_7B)`` writes a 3.79 GB file with LLaMA-2-7B's shapes (32
layers, hidden 4096, FFN 11008, 32 heads, vocabulary 32000), every matrix Q4_0 with random
nibbles and f16 scales around ``weight_std / 4.6`` (the std of uniform nibbles minus 8), norms
at 1.0, and an SPM vocabulary (the tiny one padded with ``▁tokN`` pieces). Only one tensor is in
memory at a time; the text engine and llama.cpp both load the result. Nothing is downloaded.

Shared with the other benchmarks (``gpu_check.py``; ``bench_text_7b.py`` may import it):

    from q4_builder import LLAMA2_7B, write_random_q4_gguf
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

Q4_0_BLOCK, Q4_0_BYTES = 32, 18
_NIBBLE_STD = 4.61  # std of (uniform 0..15) - 8


@dataclass(frozen=True)
class LlamaShape:
    """The sizes of a LLaMA-family model (what the GGUF ``llama.*`` keys say)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    context: int = 4096
    rms_eps: float = 1e-5

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def matrices(self) -> list[tuple[str, int, int]]:
        """(GGUF name, rows, columns) of every matrix, in file order."""
        out = [("token_embd.weight", self.vocab, self.hidden)]
        for i in range(self.layers):
            b = f"blk.{i}."
            out += [(b + "attn_q.weight", self.hidden, self.hidden), (b + "attn_k.weight", self.kv_dim, self.hidden),
                    (b + "attn_v.weight", self.kv_dim, self.hidden),
                    (b + "attn_output.weight", self.hidden, self.hidden),
                    (b + "ffn_gate.weight", self.intermediate, self.hidden),
                    (b + "ffn_up.weight", self.intermediate, self.hidden),
                    (b + "ffn_down.weight", self.hidden, self.intermediate)]
        return out + [("output.weight", self.vocab, self.hidden)]

    def vectors(self) -> list[tuple[str, int]]:
        """(GGUF name, length) of every norm weight."""
        out = []
        for i in range(self.layers):
            out += [(f"blk.{i}.attn_norm.weight", self.hidden), (f"blk.{i}.ffn_norm.weight", self.hidden)]
        return out + [("output_norm.weight", self.hidden)]

    def q4_bytes(self) -> int:
        """Bytes of all Q4_0 matrices (about the file size)."""
        return sum(r * c // Q4_0_BLOCK * Q4_0_BYTES for _, r, c in self.matrices())

    def smaller(self, layers: int) -> LlamaShape:
        """The same widths with ``layers`` decoder layers (a quick check of real-width kernels)."""
        return dataclasses.replace(self, layers=int(layers))


LLAMA2_7B = LlamaShape(hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32, vocab=32000)
TINY = LlamaShape(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, vocab=512, context=256)


def random_bytes(rng: np.random.Generator, n_blocks: int, size: int) -> np.ndarray:
    """(n_blocks, size) random uint8, drawn as uint64 words (6x faster than ``rng.bytes``)."""
    words = rng.integers(0, np.iinfo(np.uint64).max, -(-n_blocks * size // 8), dtype=np.uint64, endpoint=True)
    return words.view(np.uint8)[:n_blocks * size].reshape(n_blocks, size)


def random_q4_0(rng: np.random.Generator, rows: int, cols: int, weight_std: float = 0.02) -> np.ndarray:
    """(rows, cols / 32 * 18) uint8: Q4_0 blocks with random nibbles and f16 scales near ``weight_std / 4.6``."""
    if cols % Q4_0_BLOCK:
        raise ValueError(f"Q4_0 rows need a multiple of {Q4_0_BLOCK} columns, got {cols}")
    n_blocks = rows * cols // Q4_0_BLOCK
    blocks = random_bytes(rng, n_blocks, Q4_0_BYTES)
    scales = (rng.random(n_blocks, dtype=np.float32) + 0.5) * (weight_std / _NIBBLE_STD)
    blocks[:, :2] = scales.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(rows, cols // Q4_0_BLOCK * Q4_0_BYTES)


def padded_vocab(size: int):
    """The tiny SPM vocabulary padded with ``▁tokN`` pieces to ``size`` tokens (a ``TinyVocab``)."""
    from extension.tiny.llama import NORMAL, tiny_vocab

    vocab = tiny_vocab()
    if size < len(vocab):
        raise ValueError(f"vocabulary size {size} is below the tiny vocabulary's {len(vocab)}")
    low = min(vocab.scores)
    for i in range(size - len(vocab)):
        vocab.tokens.append(f"▁tok{i}")
        vocab.scores.append(low - 1.0 - i)
        vocab.types.append(NORMAL)
    return vocab


def write_random_tensors(writer, matrices: list[tuple[str, int, int, int, Callable[[], np.ndarray]]],
                         vectors: list[tuple[str, int]]) -> None:
    """Declare, then write one tensor in memory at a time, ``matrices`` as raw quantized blocks and ``vectors`` as
    F32 ones, after ``writer``'s header and keys; closes ``writer``.

    ``matrices``: (GGUF name, rows, bytes a row, GGML type, make) where ``make()`` draws the (rows, bytes a row)
    uint8 blocks, called in order; ``vectors``: (GGUF name, length) of the norm weights.
    """
    for name, rows, row_bytes, qtype, _ in matrices:
        writer.add_tensor_info(name, (rows, row_bytes), np.dtype(np.uint8), rows * row_bytes, raw_dtype=qtype)
    for name, n in vectors:
        writer.add_tensor_info(name, (n,), np.dtype(np.float32), n * 4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for *_, make in matrices:
        writer.write_tensor_data(make())
    for _, n in vectors:
        writer.write_tensor_data(np.ones(n, dtype=np.float32))
    writer.close()


def write_random_q4_gguf(path: str | Path, shape: LlamaShape = LLAMA2_7B, seed: int = 0,
                         weight_std: float = 0.02) -> Path:
    """Write a random Q4_0 GGUF of ``shape`` to ``path`` (through converters.atomic); returns the path."""
    import gguf

    from extension._converters import converters
    from extension.tiny.llama import add_llama_header

    rng = np.random.default_rng(seed)
    vocab = padded_vocab(shape.vocab)
    path = Path(path)
    with converters.atomic.atomic_file(path) as tmp:
        writer = gguf.GGUFWriter(tmp, "llama")
        writer.add_name(f"random-q4_0-{shape.layers}x{shape.hidden}")
        add_llama_header(writer, context=shape.context, hidden=shape.hidden, layers=shape.layers,
                         ffn=shape.intermediate, heads=shape.heads, kv_heads=shape.kv_heads, rms_eps=shape.rms_eps,
                         file_type=gguf.LlamaFileType.MOSTLY_Q4_0, vocab=vocab)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        q4 = gguf.GGMLQuantizationType.Q4_0
        write_random_tensors(writer, [(name, rows, cols // Q4_0_BLOCK * Q4_0_BYTES, q4,
                                       partial(random_q4_0, rng, rows, cols, weight_std))
                                      for name, rows, cols in shape.matrices()], shape.vectors())
    return path


if __name__ == "__main__":
    import argparse
    import time

    parser = argparse.ArgumentParser(description="write a random LLaMA-2-7B-shaped Q4_0 GGUF")
    parser.add_argument("path")
    parser.add_argument("--layers", type=int, default=LLAMA2_7B.layers)
    args = parser.parse_args()
    start = time.perf_counter()
    out = write_random_q4_gguf(args.path, LLAMA2_7B.smaller(args.layers))
    print(f"{out}: {out.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - start:.1f} s")
