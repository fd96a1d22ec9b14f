"""qwen3moe (mixture of experts) on tiny bases made by llama.cpp's own converter and quantizer.

As ``test_families.py`` does per family: the torch forward equals transformers' Qwen3MoeForCausalLM on the
F32 conversion; a short run on the F16, Q8_0 and Q4_K_M files passes the run's own llama.cpp check; the PEFT
folder gives transformers + peft the trained logits; llama.cpp's ``convert_lora_to_gguf.py`` names the
adapter's tensors as we do; GGUF -> PEFT -> GGUF is exact. Each for the default LoRA (attention) and for
per-expert LoRA (``experts`` in lora_target_modules: 3-D lora_a/lora_b on ffn_{gate,up,down}_exps).
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from family_checks import (
    assert_llama_cpp_check,
    assert_names_as_llama_cpp,
    assert_peft_round_trip_exact,
    convert_lora_with_llama_cpp,
    logits_gap,
)
from test_families import IDS, _run
from textutil import text_config

from extension.text.engine import train_text
from extension.text.gguf_model import load_text_model
from extension.text.lora import inject_lora, load_lora_state
from extension.tiny.llama_cpp_bases import build_tiny_family
from extension.training.checkpoint import load_training_state

pytestmark = pytest.mark.slow  # llama.cpp's converter and quantizer run (seconds each)

TARGETS = {"attention": {}, "experts": {"lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "experts"]}}


@pytest.fixture(scope="module")
def files(family_bases):
    return family_bases("qwen3moe")


def _trained(base, out, targets):
    model = load_text_model(base)
    torch.manual_seed(0)
    names = model.expand_lora_targets(list(TARGETS[targets].get("lora_target_modules", model.default_lora_targets())))
    layers = inject_lora(model, names, 8, 16)
    load_lora_state(layers, load_training_state(out / "tl-state").lora)
    return model.eval()


def test_forward_matches_transformers(files):
    assert logits_gap(build_tiny_family("qwen3moe"), load_text_model(files["F32"]), IDS) < 1e-4


@pytest.mark.parametrize("targets", TARGETS)
@pytest.mark.parametrize("qtype", ("F16", "Q8_0", "Q4_K_M"))
def test_trains_and_llama_cpp_agrees(qtype, targets, files, tmp_path):
    out, result = _run(files[qtype], tmp_path, 0.5, llama_cpp_check="on", **TARGETS[targets])
    assert_llama_cpp_check(result, f"qwen3moe {qtype} {targets}")
    if qtype == "F16":  # the same run's adapter (one run less in CI)
        _names_as_llama_cpp_and_round_trip(out, targets, files, tmp_path)


@pytest.mark.parametrize("targets", TARGETS)
def test_peft_folder_in_transformers(targets, files, tmp_path):
    """Attention LoRA loads as is; per-expert LoRA (PEFT names per expert, as transformers 4.x modules) loads in
    transformers 5 through peft's own conversion to its fused experts (target_parameters, block-diagonal gate/up)."""
    peft = pytest.importorskip("peft")
    # fp32: an fp16 PEFT folder would round the LoRA by ~1e-3
    out, _ = _run(files["F32"], tmp_path, 0.5, save_precision="fp32", **TARGETS[targets])
    ours = _trained(files["F32"], out, targets)
    hf = peft.PeftModel.from_pretrained(build_tiny_family("qwen3moe"), str(out / "tl")).eval()
    with torch.no_grad():
        want = hf(torch.tensor([IDS])).logits[0].numpy()
        got = ours(torch.tensor([IDS]))[0].numpy()
        plain = build_tiny_family("qwen3moe")(torch.tensor([IDS])).logits[0].numpy()
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(plain - want).max() > 1e-2  # the adapter was applied
    if targets == "experts":  # ... its expert part too: without it our logits differ from transformers'
        for name, module in ours.named_modules():
            if ".experts." in name and hasattr(module, "lora_A"):
                module.scale = 0.0
        with torch.no_grad():
            assert np.abs(ours(torch.tensor([IDS]))[0].numpy() - want).max() > 1e-3


def _names_as_llama_cpp_and_round_trip(out, targets, files, tmp_path):
    """llama.cpp's convert_lora_to_gguf.py makes the same tensors of the PEFT folder; GGUF -> PEFT -> GGUF exact."""
    ref = tmp_path / "ref.gguf"
    done = convert_lora_with_llama_cpp(out / "tl", files["hf"], ref)
    assert done.returncode == 0, done.stderr[-2000:]
    ours = assert_names_as_llama_cpp(out / "tl.gguf", ref)
    if targets == "experts":
        assert ours["blk.0.ffn_up_exps.weight.lora_a"] == (256, 8, 4)  # ggml ne: in, rank, experts
        theirs_data = {t.name: np.array(t.data) for t in gguf.GGUFReader(ref).tensors}
        for t in gguf.GGUFReader(out / "tl.gguf").tensors:  # same values, expert by expert (f16 PEFT folder)
            np.testing.assert_allclose(np.array(t.data), theirs_data[t.name], rtol=0, atol=1e-3, err_msg=t.name)
    # GGUF -> PEFT -> GGUF is exact (3-D expert LoRA split per expert and stacked again).
    assert_peft_round_trip_exact(out / "tl.gguf", files["F16"], tmp_path)


def test_checkpointing_routes_the_same(files, tmp_path):
    """Under gradient checkpointing the recompute routes each token to the same experts: the same losses."""
    losses = {}
    for on in (False, True):
        data = tmp_path / "data.txt"
        data.write_text("the cat sat on the mat and the dog ran to the mat\n")
        events = []
        cfg = text_config(files["Q4_K_M"], data, tmp_path / f"out-{on}", max_train_steps=3, gradient_checkpointing=on,
                          **TARGETS["experts"])
        assert train_text(cfg, callback=events.append).status == "done"
        losses[on] = [e.loss for e in events if e.kind == "step"]
    assert losses[True] == losses[False]
