"""HF <-> GGUF naming, the rotary permutation, and base shapes read without loading weights."""

import gguf
import numpy as np
import pytest

from converters import AdapterError
from converters.llm_base import read_base_info, read_gguf_base_shapes, read_hf_base_shapes
from converters.llm_names import (
    arch_from_config,
    arch_from_module_names,
    gguf_to_hf,
    hf_to_gguf,
    permute_rows,
    unpermute_rows,
)

LAYER = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "gemma"])
def test_names_round_trip(arch):
    names = ["lm_head", "model.embed_tokens"] + [f"model.layers.{i}.{m}" for i in (0, 31) for m in LAYER]
    for name in names:
        assert gguf_to_hf(hf_to_gguf(name, arch), arch) == name
    assert hf_to_gguf("model.layers.3.self_attn.q_proj", arch) == "blk.3.attn_q"
    assert hf_to_gguf("model.embed_tokens", arch) == "token_embd"
    assert hf_to_gguf("lm_head", arch) == "output"


def test_other_arches_use_gguf_py_names():
    assert hf_to_gguf("model.layers.2.self_attn.qkv_proj", "phi3") == "blk.2.attn_qkv"
    assert gguf_to_hf("blk.2.attn_qkv", "phi3") == "model.layers.2.self_attn.qkv_proj"
    assert hf_to_gguf("transformer.h.1.attn.c_attn", "gpt2") == "blk.1.attn_qkv"
    assert gguf_to_hf("blk.1.attn_qkv", "gpt2") == "transformer.h.1.attn.c_attn"
    with pytest.raises(AdapterError):
        hf_to_gguf("model.layers.0.no_such_module", "llama")


def test_arch_detection():
    assert arch_from_config({"model_type": "mistral"}) == "mistral"
    assert arch_from_config({"architectures": ["Qwen2ForCausalLM"]}) == "qwen2"
    assert arch_from_module_names(["model.layers.0.self_attn.q_proj"]) == "llama"
    assert arch_from_module_names(["model.layers.0.self_attn.qkv_proj"]) == "phi3"
    assert arch_from_module_names(["unet.down_blocks.0"]) is None


def test_permutation_matches_gguf_file(llama_files):
    """The Q/K rows in the tiny GGUF are our permutation of the HF rows (K with the 2 KV heads)."""
    from converters.safetensors_io import SafetensorsFile

    hf = SafetensorsFile(llama_files["hf"] / "model.safetensors")
    tensors = {t.name: t for t in gguf.GGUFReader(llama_files["F32"]).tensors}
    q = hf.get("model.layers.1.self_attn.q_proj.weight")
    k = hf.get("model.layers.1.self_attn.k_proj.weight")
    gq = np.asarray(tensors["blk.1.attn_q.weight"].data)
    gk = np.asarray(tensors["blk.1.attn_k.weight"].data)
    np.testing.assert_array_equal(gq, permute_rows(q, 4))
    np.testing.assert_array_equal(gk, permute_rows(k, 2))
    np.testing.assert_array_equal(unpermute_rows(gk, 2), k)
    assert not np.array_equal(gq, q)


@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
def test_gguf_and_hf_base_shapes_agree(llama_files, qtype):
    arch, from_gguf = read_gguf_base_shapes(llama_files[qtype])
    hf_arch, from_hf = read_hf_base_shapes(llama_files["hf"])
    assert (arch, hf_arch) == ("llama", "llama")
    assert from_gguf == from_hf
    assert from_gguf["model.layers.0.self_attn.k_proj"] == (32, 64)  # 2 KV heads x 16
    assert from_gguf["model.embed_tokens"] == from_gguf["lm_head"]
    assert len(from_gguf) == 2 + 2 * 7


def test_base_info(llama_files, qwen2_files):
    info = read_base_info(llama_files["F32"])
    assert (info.arch, info.n_head, info.n_head_kv) == ("llama", 4, 2)
    info = read_base_info(qwen2_files["hf"])
    assert (info.arch, info.n_head, info.n_head_kv) == ("qwen2", 4, 2)


def test_config_only_hf_folder(tmp_path, llama_files):
    """A folder with config.json only (what llama.cpp's converter accepts as --base) still has shapes."""
    (tmp_path / "config.json").write_text((llama_files["hf"] / "config.json").read_text())
    _, from_config = read_hf_base_shapes(tmp_path)
    _, from_weights = read_hf_base_shapes(llama_files["hf"])
    assert from_config == from_weights
