"""The fp16 loss scaler around both engines' optimizer steps, and the image engine's frozen-weight dtype by device.

The scaler exists only on CUDA with fp16; here a CPU GradScaler stands in for it (same class, same
unscale/step/update protocol), and the device choice gets ``torch.device("cuda")`` objects.
"""

from __future__ import annotations

import torch

from extension.training import amp

try:  # the image engine's home since #13
    from extension.image.engine import _weight_dtype
except ImportError:
    from extension.training.image_engine import _weight_dtype


def _one_step(scaler: torch.amp.GradScaler | None, grad_scale: float = 1.0, clip: float = 0.0) -> torch.Tensor:
    param = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    optimizer = torch.optim.SGD([param], lr=0.1)
    loss = (param * torch.tensor([3.0, 4.0])).sum() * grad_scale
    (scaler.scale(loss) if scaler is not None else loss).backward()
    amp.unscale_gradients(optimizer, scaler)
    if clip:
        torch.nn.utils.clip_grad_norm_([param], clip)
    amp.optimizer_step(optimizer, scaler)
    return param.detach()


def test_scaled_step_equals_the_unscaled_one():
    plain = _one_step(None, clip=1.0)
    scaled = _one_step(torch.amp.GradScaler("cpu", init_scale=1024.0), clip=1.0)
    assert torch.allclose(plain, scaled)
    assert not torch.allclose(plain, torch.tensor([1.0, 2.0]))


def test_non_finite_gradients_skip_the_step_and_lower_the_scale():
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    after = _one_step(scaler, grad_scale=float("inf"))
    assert torch.equal(after, torch.tensor([1.0, 2.0]))
    assert scaler.get_scale() < 1024.0


def test_loss_scaler_of_an_accelerator():
    class Acc:
        scaler = torch.amp.GradScaler("cpu")

    assert amp.loss_scaler(None) is None
    assert amp.loss_scaler(object()) is None  # CPU, bf16, fp32: accelerate sets no scaler
    assert amp.loss_scaler(Acc()) is Acc.scaler


def test_image_frozen_weights_half_only_on_cuda():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert _weight_dtype("fp16", cuda) == torch.float16
    assert _weight_dtype("bf16", cuda) == torch.bfloat16
    assert _weight_dtype("no", cuda) == torch.float32
    assert _weight_dtype("fp16", cpu) == torch.float32
    assert _weight_dtype("bf16", cpu) == torch.float32  # CPU autocast computes in bf16 from fp32 weights
