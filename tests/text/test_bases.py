"""Other bases: HF folder (own loader, PEFT output), qwen2 GGUF through llama.cpp; the demo."""

from __future__ import annotations

import pytest
import torch
from textutil import HAS_LLAMA_CPP, text_config

from extension.text.engine import train_text
from extension.text.gguf_model import load_text_model


def test_hf_folder_base_loads_and_trains(tiny, tmp_path):
    from extension.tiny.llama import save_tiny_hf

    folder = save_tiny_hf(tmp_path / "hf", model=tiny["model"], vocab=tiny["vocab"])
    ours = load_text_model(folder).eval()
    ids = torch.tensor([[1, 5, 100, 270, 280]])
    with torch.no_grad():
        assert (ours(ids) - tiny["model"](ids).logits).abs().max().item() < 1e-4
    data = tmp_path / "d.txt"
    data.write_text("the cat sat on the mat\n")
    result = train_text(text_config(folder, data, tmp_path / "out", max_train_steps=3), callback=lambda e: None)
    assert result.status == "done" and (tmp_path / "out" / "tl" / "adapter_config.json").exists()
    assert (tmp_path / "out" / "tl.gguf").exists()


@pytest.mark.slow
def test_qwen2_gguf_llama_cpp_check(tiny_qwen2, tmp_path):
    data = tmp_path / "d.txt"
    data.write_text("the cat sat on the mat\nthe dog ran to the mat\n")
    cfg = text_config(tiny_qwen2["F32"], data, tmp_path / "out", max_train_steps=10,
                      llama_cpp_check="on" if HAS_LLAMA_CPP else "off")
    result = train_text(cfg, callback=lambda e: None)
    assert result.status == "done"
    if HAS_LLAMA_CPP:
        assert "llama.cpp check: max |Δlogit|" in result.message  # the check raises above tolerance


@pytest.mark.slow
def test_text_demo(tmp_path, capsys):
    from extension.text.demo import run_text_demo

    run_text_demo(tmp_path)
    out = capsys.readouterr().out
    assert "trained 30 steps" in out
    if HAS_LLAMA_CPP:
        assert "llama.cpp after:  'the cat sat on the mat" in out
