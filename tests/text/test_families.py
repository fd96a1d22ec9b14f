"""Every supported family on tiny bases made by llama.cpp's own converter and quantizer.

Per family: the torch forward equals transformers' model on the F32 conversion; a short run on the
F16, Q8_0 and Q4_K_M files passes the run's own llama.cpp check (base only and with the adapter); the
PEFT folder gives transformers + peft the trained logits; llama.cpp's ``convert_lora_to_gguf.py`` names
the adapter's tensors as we do; GGUF -> PEFT -> GGUF is exact.
"""

from __future__ import annotations

import pytest
import torch
from family_checks import (
    assert_llama_cpp_check,
    assert_names_as_llama_cpp,
    assert_peft_round_trip_exact,
    convert_lora_with_llama_cpp,
    logits_gap,
)
from textutil import text_config

from extension.text.engine import train_text
from extension.text.gguf_model import load_text_model
from extension.text.lora import inject_lora, load_lora_state
from extension.tiny.llama_cpp_bases import build_tiny_family
from extension.training.checkpoint import load_training_state

pytestmark = pytest.mark.slow  # llama.cpp's converter and quantizer run per family (seconds each)

FAMILIES = ("qwen3", "gemma3", "gemma2", "phi3", "llama3", "granite")
QTYPES = ("F16", "Q8_0", "Q4_K_M")
# Longer than gemma3's tiny sliding window (4 tokens), so the window is exercised.
LINES = ["the cat sat on the mat and the dog ran to the mat", "the dog ran to the cat and it sat on a mat"]
# Granite divides the logits by its logits_scaling (8 here): 12 steps move the loss less (measured 0.78x).
LOSS_DROP = {"granite": 0.9}
IDS = [1, 259, 260, 261, 50, 100, 7, 300, 20, 21, 22, 23]


def _run(base, tmp_path, drop=0.5, **extra):
    data = tmp_path / "data.txt"
    data.write_text("\n".join(LINES) + "\n")
    out = tmp_path / "out"
    events = []
    cfg = text_config(base, data, out, max_train_steps=12, **extra)
    result = train_text(cfg, callback=events.append)
    losses = [e.loss for e in events if e.kind == "step"]
    assert result.status == "done", result
    assert losses[-1] < drop * losses[0], losses
    return out, result


def _trained(base, out):
    model = load_text_model(base)
    torch.manual_seed(0)
    layers = inject_lora(model, list(model.default_lora_targets()), 8, 16)
    load_lora_state(layers, load_training_state(out / "tl-state").lora)
    return model.eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_matches_transformers(family, family_bases):
    files = family_bases(family)
    # the seeded model the fixture converted
    assert logits_gap(build_tiny_family(family), load_text_model(files["F32"]), IDS) < 1e-4


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_trains_and_llama_cpp_agrees(family, qtype, family_bases, tmp_path):
    base = family_bases(family)[qtype]
    _, result = _run(base, tmp_path, LOSS_DROP.get(family, 0.5), llama_cpp_check="on")
    assert_llama_cpp_check(result, f"{family} {qtype}", flip_allowed=qtype != "F32")


@pytest.mark.parametrize("family", FAMILIES)
def test_peft_folder_in_transformers(family, family_bases, tmp_path):
    peft = pytest.importorskip("peft")
    files = family_bases(family)
    # fp32: an fp16 PEFT folder would round the LoRA by ~1e-3
    out, _ = _run(files["F32"], tmp_path, LOSS_DROP.get(family, 0.5), save_precision="fp32")
    ours = _trained(files["F32"], out)
    hf = peft.PeftModel.from_pretrained(build_tiny_family(family), str(out / "tl")).eval()
    assert logits_gap(hf, ours, IDS) < 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_as_llama_cpp_names_it(family, family_bases, tmp_path):
    files = family_bases(family)
    out, _ = _run(files["F16"], tmp_path, LOSS_DROP.get(family, 0.5))
    ref = tmp_path / "ref.gguf"
    done = convert_lora_with_llama_cpp(out / "tl", files["hf"], ref)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_names_as_llama_cpp(out / "tl.gguf", ref)
    # GGUF -> PEFT -> GGUF is exact (the Q/K handling and names of the family undone and redone).
    assert_peft_round_trip_exact(out / "tl.gguf", files["F16"], tmp_path)
