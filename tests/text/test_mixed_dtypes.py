"""Attention gets one dtype under CPU autocast, as torch < 2.3 (A1111 ships 2.1.2) requires."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from extension.text import gguf_model
from extension.text.gguf_model import load_text_model
from extension.text.lora import inject_lora

SDPA = F.scaled_dot_product_attention
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
IDS = torch.tensor([[1, 5, 100, 270, 280, 3, 9, 300, 2, 17, 33, 41]])


def _strict_sdpa(q, k, v, **kwargs):
    """torch 2.1's check: 'Expected query, key, and value to have the same dtype'."""
    if not (q.dtype == k.dtype == v.dtype):
        raise RuntimeError(f"Expected query, key, and value to have the same dtype, got {q.dtype} {k.dtype} {v.dtype}")
    return SDPA(q, k, v, **kwargs)


@pytest.mark.parametrize("quant", ["Q4_0", "Q8_0", "F32"])
@pytest.mark.parametrize("targets", [TARGETS, ["v_proj"], ["q_proj", "k_proj"]])
def test_attention_inputs_share_a_dtype_under_bf16_autocast(tiny, monkeypatch, quant, targets):
    torch.manual_seed(0)
    model = load_text_model(tiny[quant])
    inject_lora(model, targets, 4, 8, 0.0)
    monkeypatch.setattr(gguf_model.F, "scaled_dot_product_attention", _strict_sdpa)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(IDS)
    assert torch.isfinite(logits.float()).all()
