"""Gradient checkpointing that keeps frozen projections' outputs gives the gradients of plain training."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from extension.text.gguf_model import load_text_model
from extension.text.lora import inject_lora
from extension.text.quant import PackedLinear

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
IDS = torch.tensor([[1, 5, 100, 270, 280, 3, 9, 300, 2, 17, 33, 41], [1, 8, 12, 200, 201, 3, 9, 30, 2, 7, 3, 4]])


def _model(path, dropout: float = 0.0, keep: bool = True):
    torch.manual_seed(0)
    model = load_text_model(path)
    layers = inject_lora(model, TARGETS, 4, 8, dropout)
    with torch.no_grad():  # B = 0 at init would hide errors in everything behind it
        for layer in layers.values():
            layer.lora_B.normal_(0, 0.05)
    if not keep:
        for module in model.modules():
            if isinstance(module, PackedLinear):
                module.keep_output = False
    model.train()
    return model, layers


def _grads(model, layers, checkpointing: bool, seed: int = 1):
    model.gradient_checkpointing = checkpointing
    torch.manual_seed(seed)  # LoRA dropout masks
    logits = model(IDS)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), IDS[:, 1:].reshape(-1))
    loss.backward()
    grads = {f"{name}.{p}": getattr(layer, p).grad.clone()
             for name, layer in layers.items() for p in ("lora_A", "lora_B")}
    for layer in layers.values():
        layer.lora_A.grad = layer.lora_B.grad = None
    return loss.item(), grads


@pytest.mark.parametrize("base_key", ["F32", "Q4_0"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_checkpointed_gradients_match_plain_backward(tiny, base_key, dropout):
    model, layers = _model(tiny[base_key], dropout)
    loss_plain, plain = _grads(model, layers, checkpointing=False)
    loss_ckpt, ckpt = _grads(model, layers, checkpointing=True)
    assert loss_ckpt == loss_plain
    assert plain.keys() == ckpt.keys() and len(plain) == 2 * len(layers)
    for name in plain:
        assert plain[name].abs().max() > 0, name
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_kept_outputs_change_nothing_but_work(tiny):
    model, layers = _model(tiny["Q4_0"])
    _, kept = _grads(model, layers, checkpointing=True)
    model, layers = _model(tiny["Q4_0"], keep=False)
    _, recomputed = _grads(model, layers, checkpointing=True)
    for name in kept:
        torch.testing.assert_close(kept[name], recomputed[name], rtol=1e-6, atol=1e-8, msg=name)


def test_gradients_accumulate_over_micro_batches(tiny):
    model, layers = _model(tiny["F32"])
    model.gradient_checkpointing = True
    for ids in (IDS[:1], IDS[1:]):
        logits = model(ids)
        F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()
    total = {name: layer.lora_B.grad.clone() for name, layer in layers.items()}
    for layer in layers.values():
        layer.lora_B.grad = None
        layer.lora_A.grad = None
    for ids in (IDS[:1], IDS[1:]):
        model.gradient_checkpointing = False
        logits = model(ids)
        F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()
    for name, layer in layers.items():
        torch.testing.assert_close(total[name], layer.lora_B.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_second_forward_before_backward_is_refused(tiny):
    model, _ = _model(tiny["F32"])
    model.gradient_checkpointing = True
    first = model(IDS).sum()
    model(IDS[:, :5]).sum()  # overwrites what the first pass kept
    with pytest.raises(RuntimeError, match="second forward pass"):
        first.backward()


def test_checkpointing_under_bf16_autocast(tiny):
    model, layers = _model(tiny["Q4_0"])
    _, fp32 = _grads(model, layers, checkpointing=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, bf16 = _grads(model, layers, checkpointing=True)
    for name in fp32:
        assert torch.isfinite(bf16[name]).all()
        torch.testing.assert_close(bf16[name], fp32[name], rtol=0.1, atol=0.1 * fp32[name].abs().max().item())
