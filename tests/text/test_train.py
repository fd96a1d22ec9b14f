"""Training on GGUF and GGML bases: loss falls, llama.cpp reproduces the torch logits, generation learned."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from textutil import HAS_LLAMA_CPP, text_config

from extension.text.engine import train_text
from extension.text.gguf_model import load_text_model
from extension.text.lora import inject_lora, load_lora_state
from extension.text.tokenizer import Tokenizer
from extension.training.checkpoint import load_training_state

LINES = ["the cat sat on the mat", "the dog ran to the mat"]
GGML_OPTS = {"ggml_n_kv_heads": 2, "ggml_rms_eps": 1e-5, "ggml_context_length": 128}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _trained_model(base, out, options):
    """The torch model with the LoRA weights of the run's final state (rebuilt independently)."""
    model = load_text_model(base, {k.removeprefix("ggml_"): v for k, v in options.items()})
    torch.manual_seed(0)
    layers = inject_lora(model, TARGETS, 8, 16)
    load_lora_state(layers, load_training_state(out / "tl-state").lora)
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("base_key", ["F32", "Q8_0", "Q4_0", "ggml-F32", "ggml-Q4_0"])
def test_overfit_and_llama_cpp_agrees(tiny, tmp_path, base_key):
    data = tmp_path / "data.txt"
    data.write_text("\n".join(LINES) + "\n")
    options = GGML_OPTS if base_key.startswith("ggml") else {}
    out = tmp_path / "out"
    events = []
    cfg = text_config(tiny[base_key], data, out, lora_target_modules=TARGETS, **options)
    result = train_text(cfg, callback=events.append)
    losses = [e.loss for e in events if e.kind == "step"]
    assert result.status == "done" and len(losses) == 30
    assert losses[-1] < 0.3 * losses[0], losses
    adapter = out / "tl.gguf"
    assert adapter.exists() and (out / "tl" / "adapter_config.json").exists()
    base_gguf = tiny[base_key].with_suffix(".gguf") if base_key.startswith("ggml") else tiny[base_key]
    assert f"llama-cli -m {base_gguf} --lora {adapter}" in result.message
    if not HAS_LLAMA_CPP:
        pytest.skip("llama-cpp-python is not installed: llama.cpp comparison skipped")

    from extension.text.llama_check import run_llama_cpp, torch_logits

    model = _trained_model(tiny[base_key], out, options)
    tok = Tokenizer.from_metadata(model.config.tokenizer)
    samples = [tok.encode(line) + [tok.eos_id] for line in LINES]
    cpp, _ = run_llama_cpp(base_gguf, adapter, samples)
    per_position = np.concatenate([np.abs(cpp[i] - torch_logits(model, s)).max(axis=1) for i, s in enumerate(samples)])
    if base_key.endswith("F32"):
        assert per_position.max() <= 1e-3
    else:
        # torch rounds activations like llama.cpp's quantized matmuls, but its inputs differ by float32 ulps
        # (RMS norm, matmul, attention order); when a block's f16 scale max|x|/127 or an element sits within
        # that noise of a rounding midpoint, the two round apart and the position (and some later ones) differs
        # by 1e-3..5e-2. Q8_0 and Q4_0 alike, no fixed tolerance is safe: most must agree to 1e-3, none grossly.
        assert np.mean(per_position <= 1e-3) >= 0.8 and per_position.max() < 0.1, per_position

    prompt = tok.encode("the cat")
    _, before = run_llama_cpp(base_gguf, None, [prompt], generate=prompt, max_new=5)
    _, after = run_llama_cpp(base_gguf, adapter, [prompt], generate=prompt, max_new=5)
    assert tok.decode(prompt + after).startswith("the cat sat on the mat"), tok.decode(prompt + after)
    assert not tok.decode(prompt + before).startswith("the cat sat on the mat")
