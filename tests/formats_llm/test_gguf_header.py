"""``gguf_check.read_gguf_header``: the metadata values and tensor shapes gguf-py reads, without the vocabulary."""

from __future__ import annotations

import time

import gguf
import numpy as np

from converters.gguf_check import read_gguf_header
from converters.llm_base import gguf_field, read_gguf_base_info, read_gguf_base_shapes


def _write(path, n_tokens: int):
    writer = gguf.GGUFWriter(str(path), "qwen3")
    writer.add_block_count(2)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv([2, 1])  # per layer: a number array read_gguf_header keeps
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(1e6)
    writer.add_bool("lora_bridge.flag", True)
    writer.add_string("general.name", "tïny")
    writer.add_token_list([f"tok{i}" for i in range(n_tokens)])
    writer.add_token_scores([0.0] * n_tokens)
    writer.add_tensor("token_embd.weight", np.zeros((n_tokens, 64), dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((64, 64), dtype=np.float16))
    writer.add_tensor("blk.0.attn_k.weight", np.zeros((32, 64), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_header_matches_gguf_py(tmp_path):
    path = _write(tmp_path / "m.gguf", 300)
    meta, tensors = read_gguf_header(path)
    reader = gguf.GGUFReader(str(path))
    for key in reader.fields:
        if key.startswith("GGUF.") or key == "tokenizer.ggml.tokens":
            continue
        want = gguf_field(reader, key)
        assert meta[key] == (want if not isinstance(want, float) else np.float32(want)), key
    assert "tokenizer.ggml.tokens" not in meta  # string arrays are skipped, not read
    assert tensors == [(t.name, tuple(int(d) for d in t.shape.tolist())) for t in reader.tensors]
    assert read_gguf_base_info(path).n_head_kv == 2
    assert read_gguf_base_shapes(path) == ("qwen3", {"model.embed_tokens": (300, 64),
                                                     "model.layers.0.self_attn.q_proj": (64, 64),
                                                     "model.layers.0.self_attn.k_proj": (32, 64)})


def test_header_skips_a_large_vocabulary_fast(tmp_path):
    path = _write(tmp_path / "big.gguf", 150_000)  # a Qwen-sized vocabulary: gguf-py's reader takes seconds
    start = time.perf_counter()
    meta, _ = read_gguf_header(path)
    assert time.perf_counter() - start < 2.0 and meta["general.architecture"] == "qwen3"
    assert "tokenizer.ggml.scores" not in meta  # longer number arrays too
