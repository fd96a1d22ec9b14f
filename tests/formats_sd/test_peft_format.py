"""PEFT folders for LLMs: every config feature read faithfully, and what we write PEFT loads back exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from converters import load_adapter, save_adapter


def _llama(seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=64))


def _deltas(model) -> dict[str, np.ndarray]:
    out = {}
    for name, module in model.named_modules():
        adapters = getattr(module, "lora_A", {}) or getattr(module, "lora_embedding_A", {})
        if hasattr(module, "get_delta_weight") and "default" in adapters:
            out[name.removeprefix("base_model.model.")] = module.get_delta_weight("default").detach().numpy()
    return out


def _outputs(model):
    import torch

    ids = torch.arange(12).reshape(1, 12) % 64
    with torch.no_grad():
        return model(ids).logits.numpy()


CONFIGS = {
    "patterns_rslora": dict(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"],
                            rank_pattern={"layers.1.self_attn.q_proj": 2}, alpha_pattern={"v_proj": 3}),
    "embedding_and_modules_to_save": dict(r=4, lora_alpha=4, target_modules=["q_proj", "embed_tokens"],
                                          modules_to_save=["lm_head"]),
    "dora": dict(r=2, lora_alpha=4, target_modules=["q_proj", "o_proj"], use_dora=True),
    "lora_bias": dict(r=2, lora_alpha=2, target_modules=["k_proj"], lora_bias=True),
}


@pytest.mark.parametrize("label", list(CONFIGS))
def test_peft_write_loads_in_peft(tmp_path, label):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    model = get_peft_model(_llama(), LoraConfig(init_lora_weights=False, **CONFIGS[label]))
    with torch.no_grad():  # make DoRA magnitudes / biases / saved modules differ from their init
        for name, param in model.named_parameters():
            if "lora_magnitude_vector" in name or "modules_to_save" in name or name.endswith("lora_B.default.bias"):
                param.add_(0.05 * torch.randn_like(param))
    model.save_pretrained(str(tmp_path / "src"))
    want_deltas, want_logits = _deltas(model), _outputs(model)
    adapter = load_adapter(tmp_path / "src")
    assert adapter.family == "llm" and adapter.source_format == "peft"
    for name, delta in want_deltas.items():
        module = adapter.modules[name]
        if module.magnitude is None:
            np.testing.assert_allclose(module.delta(), delta, rtol=1e-5, atol=1e-7)
    out = save_adapter(adapter, tmp_path / "out", to="peft")
    loaded = PeftModel.from_pretrained(_llama(), str(out))
    got_deltas = _deltas(loaded)
    assert set(got_deltas) == set(want_deltas)
    for name, delta in want_deltas.items():
        np.testing.assert_allclose(got_deltas[name], delta, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(_outputs(loaded), want_logits, rtol=1e-5, atol=1e-5)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["use_rslora"] is False  # folded into alphas
    if label == "dora":
        assert config["use_dora"] is True
    if label == "embedding_and_modules_to_save":
        assert config["modules_to_save"] == ["lm_head"] and "lm_head.weight" in adapter.full_weights


def test_bin_adapter_read_with_weights_only(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_llama(), LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    model.save_pretrained(str(tmp_path / "bin"), safe_serialization=False)
    assert (tmp_path / "bin" / "adapter_model.bin").exists()
    adapter = load_adapter(tmp_path / "bin")
    for name, delta in _deltas(model).items():
        np.testing.assert_allclose(adapter.modules[name].delta(), delta, rtol=1e-5, atol=1e-7)


def test_unsupported_peft_method_is_one_line(tmp_path):
    from converters import AdapterError

    folder = tmp_path / "oft"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "OFT", "r": 4}))
    with pytest.raises(AdapterError, match="OFT is not supported"):
        load_adapter(folder)
    # LoHa/LoKr folders are read as SD component folders (what the writer makes), not as a bare folder.
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LOHA", "r": 4}))
    with pytest.raises(AdapterError, match="SD component folders"):
        load_adapter(folder)


def test_per_expert_targets_become_one_regex_that_matches_both_transformers_layouts():
    """PEFT >= 0.22 maps a listed per-expert path (transformers 4) onto a fused parameter path that does not exist
    in transformers 5; one regex matches each expert module (4.x) and the index-free path PEFT probes (5.x)."""
    import re

    from converters.formats.peft import target_modules

    plain = ["model.layers.0.self_attn.q_proj"]
    assert target_modules(plain) == plain
    experts = [f"model.layers.0.mlp.experts.{e}.{p}" for e in range(4) for p in ("gate_proj", "up_proj")]
    regex = target_modules(plain + experts + ["model.layers.1.mlp.experts.1.down_proj"])
    for name in plain + experts + ["model.layers.0.mlp.experts.gate_proj", "model.layers.1.mlp.experts.1.down_proj"]:
        assert re.fullmatch(regex, name), name
    for name in ("model.layers.0.mlp.experts.4.down_proj", "model.layers.1.mlp.experts.down_proj",  # expert 0 absent
                 "model.layers.1.mlp.experts.0.down_proj", "model.layers.0.self_attn.k_proj",
                 "xmodel.layers.0.self_attn.q_proj"):
        assert not re.fullmatch(regex, name), name
