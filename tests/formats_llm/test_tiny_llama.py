"""The tiny LLaMA fixtures themselves: HF folder loads offline, llama.cpp runs the GGUFs like HF."""

import gguf
import numpy as np
import pytest

from .conftest import IDS, run_llama


def _hf_logits(folder):
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(torch.tensor([IDS])).logits[0].numpy()


def test_hf_folder_loads_offline(llama_files):
    import transformers

    from extension.tiny.llama import build_tiny_llama

    tok = transformers.AutoTokenizer.from_pretrained(llama_files["hf"])
    assert tok("the cat sat")["input_ids"][-3:] == [259, 260, 261]
    assert tok.decode(tok("the cat sat!")["input_ids"], skip_special_tokens=True) == "the cat sat!"
    import torch

    with torch.no_grad():
        fresh = build_tiny_llama(seed=0)(torch.tensor([IDS])).logits[0].numpy()
    np.testing.assert_array_equal(_hf_logits(llama_files["hf"]), fresh)


def test_gguf_metadata(llama_files, tmp_path):
    from extension.tiny.llama import build_tiny_llama, write_tiny_gguf

    path = write_tiny_gguf(build_tiny_llama(), tmp_path / "chat.gguf", chat_template="{{ messages }}")
    fields = gguf.GGUFReader(path).fields
    assert fields["llama.attention.head_count_kv"].contents() == 2
    assert fields["tokenizer.ggml.model"].contents() == "llama"
    assert fields["tokenizer.chat_template"].contents() == "{{ messages }}"
    tokens = fields["tokenizer.ggml.tokens"].contents()
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and tokens[3 + 0x41] == "<0x41>" and "▁the" in tokens
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(llama_files["Q8_0"]).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32


@pytest.mark.llama_cpp
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_llama_cpp_matches_hf(arch, llama_files, qwen2_files, tmp_path):
    pytest.importorskip("llama_cpp")
    files = llama_files if arch == "llama" else qwen2_files
    assert np.abs(run_llama(files["F32"], tmp_path) - _hf_logits(files["hf"])).max() <= 1e-4


@pytest.mark.llama_cpp
def test_llama_cpp_tokenizes_like_hf(llama_files):
    llama_cpp = pytest.importorskip("llama_cpp")
    import transformers

    llm = llama_cpp.Llama(model_path=str(llama_files["F32"]), n_ctx=16, vocab_only=True, verbose=False)
    tok = transformers.AutoTokenizer.from_pretrained(llama_files["hf"])
    for text in ("the cat sat on the mat", "a dog ran"):
        assert llm.tokenize(text.encode(), add_bos=False) == tok(text, add_special_tokens=False)["input_ids"]
