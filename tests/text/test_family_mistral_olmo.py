"""mistral3 (YaRN, Llama 4 attention temperature) and olmo2 (post-norms, whole-projection Q/K norms, BPE
vocabulary) on tiny bases made by llama.cpp's own converter and quantizer: the checks of
``test_families.py`` for these two families, plus YaRN's tables against transformers' own.
"""

from __future__ import annotations

import json
import shutil

import pytest
import test_families as families_test
import torch
from textutil import needs_llama_cpp

from extension.text.blocks import yarn_scaling
from extension.text.families import Yarn

FAMILIES = ("mistral3", "olmo2", "olmo3")  # olmo3: OLMo 3, which llama.cpp converts as olmo2 with a window
slow = pytest.mark.slow


# factor, original context, beta_fast, beta_slow, mscale_all_dim: Ministral 3's own values, the fixture's (ramp
# inside the rotated dimensions, magnitude != 1), and no mscale_all_dim (llama.cpp: no log multiplier).
YARN_CASES = [(16.0, 16384, 32.0, 1.0, 1.0), (4.0, 8, 1.0, 0.05, 0.5), (8.0, 4096, 32.0, 1.0, 0.0),
              (2.0, 64, 4.0, 0.5, 0.0)]


@pytest.mark.parametrize(("factor", "orig", "fast", "slow_beta", "all_dim"), YARN_CASES)
def test_yarn_tables_match_transformers(factor, orig, fast, slow_beta, all_dim):
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": factor, "original_max_position_embeddings": orig,
              "beta_fast": fast, "beta_slow": slow_beta, "mscale": 1.0, "mscale_all_dim": all_dim}
    config = transformers.LlamaConfig(hidden_size=256, num_attention_heads=4, head_dim=64,
                                      max_position_embeddings=int(orig * factor), rope_parameters=params)
    want_inv, want_scale = ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")
    base_inv = 1.0 / (10000.0 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64))
    mix, mscale = yarn_scaling(64, 10000.0, 1.0 / factor, Yarn(orig, fast, slow_beta, all_dim))
    torch.testing.assert_close((base_inv * mix).float(), want_inv.float(), rtol=1e-6, atol=0)
    assert mscale == pytest.approx(want_scale, rel=1e-6)


@slow
@pytest.mark.parametrize("family", FAMILIES)
def test_forward_matches_transformers(family, family_bases):
    families_test.test_forward_matches_transformers(family, family_bases)


@slow
@pytest.mark.parametrize("qtype", families_test.QTYPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_trains_and_llama_cpp_agrees(family, qtype, family_bases, tmp_path):
    families_test.test_trains_and_llama_cpp_agrees(family, qtype, family_bases, tmp_path)


@slow
@pytest.mark.parametrize("family", FAMILIES)
def test_peft_folder_in_transformers(family, family_bases, tmp_path):
    families_test.test_peft_folder_in_transformers(family, family_bases, tmp_path)


def _as_mistral(files: dict) -> dict:
    """The mistral3 files with an HF folder that says MistralForCausalLM.

    llama.cpp's ``convert_lora_to_gguf.py`` subclasses the converter's model class, but ``Mistral3Model`` is a
    wrapper whose ``write`` runs a separate ``Ministral3Model`` (a ``LlamaModel``) on the folder: for
    Ministral3ForCausalLM it writes the base model, not the adapter. That inner class names and permutes the
    tensors exactly as llama's ``LlamaModel`` does, which MistralForCausalLM selects.
    """
    folder = files["hf"].with_name(files["hf"].name + "-as-mistral")
    if not folder.exists():
        shutil.copytree(files["hf"], folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "architectures": ["MistralForCausalLM"]}))
    return {**files, "hf": folder}


@slow
@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_as_llama_cpp_names_it(family, family_bases, tmp_path):
    bases = (lambda name: _as_mistral(family_bases(name))) if family == "mistral3" else family_bases
    families_test.test_adapter_as_llama_cpp_names_it(family, bases, tmp_path)


@slow
def test_mistral3_fixture_exercises_yarn_and_temperature(family_bases):
    """The llama.cpp check above proves YaRN only if the ramp falls inside the rotated dimensions, the magnitude
    is not 1 and the samples run past the original context (where the temperature steps)."""
    from extension.text.gguf_model import load_text_model
    from extension.text.tokenizer import Tokenizer

    model = load_text_model(family_bases("mistral3")["F16"])
    cfg = model.config
    mix, mscale = yarn_scaling(cfg.rope_dims, cfg.rope_base, cfg.rope_freq_scale, cfg.yarn)
    scaled = (mix - cfg.rope_freq_scale).abs() > 1e-9
    assert 0 < int(scaled.sum()) < len(mix) - 1 and mscale != pytest.approx(1.0)
    assert cfg.attn_temp_scale > 0
    tokenizer = Tokenizer.from_metadata(cfg.tokenizer, "mistral3")
    assert max(len(tokenizer.encode(line)) for line in families_test.LINES) > cfg.attn_temp_floor


@slow
@needs_llama_cpp
def test_olmo2_bpe_vocabulary_matches_llama_cpp(family_bases):
    """The olmo2 fixture's byte-level BPE (llama.cpp's shipped GPT-2 vocabulary) tokenizes as llama.cpp does."""
    from llama_cpp import Llama

    from extension.text.gguf_model import read_gguf_metadata
    from extension.text.tokenizer import Tokenizer

    path = family_bases("olmo2")["F16"]
    meta = read_gguf_metadata(path)[1]
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    ours = Tokenizer.from_metadata(meta, str(path))
    llm = Llama(str(path), vocab_only=True, verbose=False)
    for text in [*families_test.LINES, " Hello  world!\n\tdon't 12345 naïve 日本語 😀"]:
        assert ours.encode(text, add_special=False) == llm.tokenize(text.encode(), add_bos=False, special=False), text


def test_olmo3_window_layers_rotate_at_the_files_base_when_no_swa_base_is_written():
    """llama.cpp's olmo2 (llama-model.cpp load_arch_hparams): with a window, the sliding-window layers' rope base
    defaults to the file's own base and their scale to 1 (no YaRN); the pattern defaults to 3 window layers in 4."""
    from extension.text.families import config_from_gguf

    meta = {"general.architecture": "olmo2", "olmo2.block_count": 8, "olmo2.embedding_length": 256,
            "olmo2.feed_forward_length": 512, "olmo2.attention.head_count": 4, "olmo2.rope.freq_base": 500000.0,
            "olmo2.attention.sliding_window": 4096, "olmo2.rope.scaling.type": "yarn", "olmo2.rope.scaling.factor": 8.0,
            "olmo2.rope.scaling.original_context_length": 8192}
    cfg = config_from_gguf("olmo3.gguf", meta)
    assert cfg.rope_base_swa == 500000.0 and cfg.rope_freq_scale_swa == 1.0 and cfg.rope_freq_scale == 1 / 8
    assert cfg.swa_layers == (True, True, True, False) * 2
    plain = config_from_gguf("olmo2.gguf", {k: v for k, v in meta.items() if "sliding" not in k})
    assert not any(plain.swa_layers)
