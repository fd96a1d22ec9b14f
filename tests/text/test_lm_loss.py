"""The sliced cross-entropy equals cross-entropy of the full logits, in value and in gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import quantize
from torch.nn import functional as F

from extension.text import lm_loss
from extension.text.gguf_model import load_text_model
from extension.text.lora import inject_lora
from extension.text.quant import PackedWeight

Q = GGMLQuantizationType


def _head(qtype: Q, vocab: int = 1000, width: int = 64) -> PackedWeight:
    w = torch.randn(vocab, width, generator=torch.Generator().manual_seed(1)) * 0.5
    if qtype == Q.F32:
        return PackedWeight(w.clone(), qtype, (vocab, width))
    return PackedWeight.from_numpy(quantize(w.numpy(), qtype), qtype, (vocab, width))


@pytest.fixture
def many_slices(monkeypatch):
    monkeypatch.setattr(lm_loss, "_SLICE_WEIGHTS", 64 * 96)  # 96-row slices: 1000 rows end in a partial one


@pytest.mark.parametrize("qtype", [Q.F32, Q.Q8_0, Q.Q4_0], ids=lambda q: q.name)
def test_loss_and_gradient_equal_full_cross_entropy(many_slices, qtype):
    head = _head(qtype)
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(37, 64, generator=gen).requires_grad_()
    labels = torch.randint(0, 1000, (37,), generator=gen)
    labels[[3, 7, 36]] = -100
    labels[0] = 999  # in the last, partial slice
    ours = lm_loss.sliced_cross_entropy_sum(hidden, head, labels)
    (ours * 0.37).backward()
    got = hidden.grad.clone()
    hidden.grad = None
    full = F.cross_entropy(hidden @ head.dequantize().t(), labels, reduction="sum")
    (full * 0.37).backward()
    torch.testing.assert_close(ours, full, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(got, hidden.grad, rtol=1e-5, atol=1e-6)
    assert got[[3, 7, 36]].abs().max() == 0 and got.abs().max() > 0


def test_only_ignored_labels_give_zero(many_slices):
    hidden = torch.randn(5, 64).requires_grad_()
    loss = lm_loss.sliced_cross_entropy_sum(hidden, _head(Q.F32), torch.full((5,), -100))
    loss.backward()
    assert loss.item() == 0 and hidden.grad.abs().max() == 0


def test_label_out_of_range_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        lm_loss.sliced_cross_entropy_sum(torch.randn(2, 64), _head(Q.F32), torch.tensor([5, 1000]))


def test_without_grad_and_under_bf16_autocast(many_slices):
    head, hidden = _head(Q.Q8_0), torch.randn(9, 64)
    labels = torch.arange(9) * 100
    with torch.no_grad():
        plain = lm_loss.sliced_cross_entropy_sum(hidden, head, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = lm_loss.sliced_cross_entropy_sum(hidden.to(torch.bfloat16).requires_grad_(), head, labels)
    assert plain.dtype == cast.dtype == torch.float32
    torch.testing.assert_close(cast, plain, rtol=2e-2, atol=0)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_model_loss_equals_logits_loss(tiny, many_slices, checkpointing):
    torch.manual_seed(0)
    model = load_text_model(tiny["Q4_0"])
    layers = inject_lora(model, ["q_proj", "v_proj", "down_proj"], 4, 8)
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B.normal_(0, 0.05)
    model.train()
    model.gradient_checkpointing = checkpointing
    ids = torch.tensor([[1, 5, 100, 270, 280, 3, 9, 300, 2], [1, 8, 12, 200, 201, 3, 9, 30, 2]])
    labels = ids.clone()
    labels[0, :4] = -100  # a prompt

    def grads():
        out = {n: (lay.lora_A.grad.clone(), lay.lora_B.grad.clone()) for n, lay in layers.items()}
        for lay in layers.values():
            lay.lora_A.grad = lay.lora_B.grad = None
        return out

    sliced = model.causal_lm_loss_sum(ids, labels)
    sliced.backward()
    sliced_grads = grads()
    logits = model(ids)
    full = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum")
    full.backward()
    torch.testing.assert_close(sliced, full, rtol=1e-6, atol=1e-4)
    for name, (a, b) in grads().items():
        torch.testing.assert_close(sliced_grads[name][0], a, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(sliced_grads[name][1], b, rtol=1e-4, atol=1e-6)
        assert b.abs().max() > 0


def test_lora_on_the_output_layer_uses_the_logits_path(tiny):
    model = load_text_model(tiny["F32"])
    inject_lora(model, ["lm_head"], 2, 2)
    ids = torch.tensor([[1, 5, 100, 270, 280]])
    loss = model.causal_lm_loss_sum(ids, ids)
    logits = model(ids)
    want = F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
    torch.testing.assert_close(loss, want)
    assert np.isfinite(loss.item())
