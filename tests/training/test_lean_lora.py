"""#14: LoRA updates added in place (extension/image/lean_lora.py) give PEFT's outputs and gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from extension.image.frozen_weights import adapters_in_fp32, store_frozen_weights
from extension.image.lean_lora import use_lean_lora
from extension.image.lora import ADAPTER, inject_lora, lora_layers, lora_parameters


class _Block(torch.nn.Module):
    """A 1x1 conv in, a 3-D linear, a 3x3 conv out: the shapes an SD attention block gives its LoRA layers."""

    def __init__(self) -> None:
        super().__init__()
        self.proj_in = torch.nn.Conv2d(4, 8, 1)
        self.to_q = torch.nn.Linear(8, 8)
        self.conv = torch.nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj_in(x)
        b, c, hh, ww = h.shape
        tokens = h.permute(0, 2, 3, 1).reshape(b, hh * ww, c)
        tokens = torch.nn.functional.silu(self.to_q(tokens))
        return self.conv(tokens.reshape(b, hh, ww, c).permute(0, 3, 1, 2))


def _model(half: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = _Block().requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    if half:
        store_frozen_weights(model, torch.float16)
    with adapters_in_fp32():
        inject_lora(model, ["to_q", "proj_in"], 4, 2.0, conv_names=["conv"], conv_rank=2, conv_alpha=1.0)
    torch.manual_seed(1)
    for p in lora_parameters(model):  # fp32 as the engine keeps them (peft 0.13 casts to the base's dtype)
        p.data = torch.randn(p.shape) * 0.1  # lora_B starts at zero: give the update a value to check
    return model


@pytest.mark.parametrize("half", [False, True])
def test_inplace_add_matches_peft_outputs_and_gradients(half):
    peft_model, lean_model = _model(half), _model(half)
    assert use_lean_lora(lean_model) == 3
    assert use_lean_lora(lean_model) == 0  # wrapped once
    x = torch.randn(2, 4, 5, 5)
    outputs = []
    for model in (peft_model, lean_model):
        out = model(x)
        out.square().mean().backward()
        outputs.append(out.detach())
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-6, atol=1e-6)
    grads = [[p.grad for p in lora_parameters(m)] for m in (peft_model, lean_model)]
    assert all(g is not None and g.abs().sum() > 0 for g in grads[1])
    for lean, ref in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(lean, ref, rtol=1e-5, atol=1e-7)


def test_inplace_add_keeps_fewer_temporaries():
    """The point of it: no output-size temporaries beside the saved activations."""
    peft_model, lean_model = _model(False), _model(False)
    use_lean_lora(lean_model)
    layer = dict(lora_layers(lean_model))["to_q"]
    x = torch.randn(1, 50, 8)
    created: list[str] = []  # calls that return a new output-size tensor

    class Count(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            out = func(*args, **(kwargs or {}))
            if not isinstance(out, torch.Tensor) or out.numel() != 400:
                return out
            if not any(isinstance(a, torch.Tensor) and a.data_ptr() == out.data_ptr() for a in (*args, x)):
                created.append(getattr(func, "__name__", str(func)))
            return out

    with Count():
        layer(x)
    lean = len(created)
    created.clear()
    with Count():
        dict(lora_layers(peft_model))["to_q"](x)
    # the base output only; PEFT adds lora_B's output, its scaled copy and the sum
    assert (lean, len(created)) == (1, 4), created


def test_falls_back_to_peft_where_it_is_not_plain_lora():
    model = _model(False)
    reference = _model(False)
    use_lean_lora(model)
    x = torch.randn(1, 4, 5, 5)
    for m in (model, reference):
        for _, layer in lora_layers(m):
            layer.scaling[ADAPTER] = 0.25  # set_lora_multiplier's way: read on every call
    torch.testing.assert_close(model(x), reference(x))
    for m in (model, reference):
        for _, layer in lora_layers(m):
            layer.merge()
    torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)  # in-place ops are not autocast: PEFT's own path runs
    assert out.dtype == torch.bfloat16


def test_deep_copy_runs_on_its_own_layers():
    model, zeroed = _model(False), _model(False)
    use_lean_lora(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in (*lora_parameters(twin), *lora_parameters(zeroed)):
            p.zero_()
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(twin(x), zeroed(x))
    for _, layer in lora_layers(twin):
        layer.merge()  # PEFT's path, on the copy
    torch.testing.assert_close(twin(x), zeroed(x))
    assert not torch.allclose(model(x), zeroed(x))
