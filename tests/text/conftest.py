"""Tiny LLaMA bases for the text tests, built once per session: GGUF F32/Q8_0/Q4_0, GGML v3 F32/Q4_0."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from extension.tiny.ggml import write_ggml  # noqa: E402


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """{"model": HF model, "vocab": TinyVocab, "F32"/"Q8_0"/"Q4_0": gguf path, "ggml-F32"/"ggml-Q4_0": bin}."""
    import torch

    from extension.tiny.llama import build_tiny_llama, tiny_vocab, write_tiny_gguf

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny-text")
    vocab = tiny_vocab()
    model = build_tiny_llama(seed=0, vocab=vocab)
    out = {"model": model, "vocab": vocab, "root": root}
    for q in ("F32", "Q8_0", "Q4_0"):
        out[q] = write_tiny_gguf(model, root / f"tiny-{q.lower()}.gguf", qtype=q, vocab=vocab)
        out[f"ggml-{q}"] = write_ggml(model, vocab, root / f"tiny.ggmlv3.{q.lower()}.bin", q)
    return out


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory):
    """A tiny qwen2 model (q/k/v biases, no Q/K permutation) and its F32 GGUF."""
    from extension.tiny.llama import build_tiny_llama, tiny_vocab, write_tiny_gguf

    root = tmp_path_factory.mktemp("tiny-qwen2")
    vocab = tiny_vocab()
    model = build_tiny_llama(seed=3, arch="qwen2", vocab=vocab)
    return {"model": model, "F32": write_tiny_gguf(model, root / "qwen2-f32.gguf", qtype="F32", vocab=vocab)}


@pytest.fixture(scope="session")
def family_bases(tmp_path_factory):
    """make(family) -> {"hf", "F32", "F16", "Q8_0", "Q4_K_M": path}: tiny bases made by llama.cpp's own
    converter and quantizer (``tiny/llama_cpp_bases.py``), built once per family; skips without them."""
    from family_checks import family_base_factory

    from extension.tiny.llama_cpp_bases import family_files

    return family_base_factory(tmp_path_factory, "families", lambda family, root, src: family_files(
        family, root, src, qtypes=("F32", "F16", "Q8_0", "Q4_K_M")))
