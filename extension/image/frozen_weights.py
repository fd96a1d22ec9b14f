"""Frozen UNet weights stored in fp16/bf16 and computed in fp32 (what Forge's ``--unet-in-fp16`` does).

Every frozen ``nn.Linear``/``nn.Conv2d`` keeps its weight in the storage dtype and runs through an
autograd Function that upcasts the weight for the forward and upcasts it again in the backward.
Plain ``F.linear(x, w.float())`` would let autograd keep each fp32 upcast alive until the backward
(the whole fp32 UNet again, at the memory peak); the Function keeps only the half weight (already
held by the module) and, since the weight needs no gradient, no copy of a conv's input either.

Real checkpoints ship fp16, so storing their UNet in fp16 loses nothing: the upcast values are the
very floats the fp32 path computes with. Low-resolution convolutions with big weights run in slices
of output channels (``chunk_rows``), whether the weights are stored in half or in fp32, so both
storages train the same LoRA.
"""

from __future__ import annotations

import contextlib
import threading
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own alias

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def storage_dtype(choice: str, file_dtype: torch.dtype | None, compute_dtype: torch.dtype) -> torch.dtype:
    """The dtype frozen UNet weights are kept in.

    ``auto`` keeps the checkpoint's own precision (fp16 for the usual fp16 files, so nothing is lost);
    when the run already computes in half precision (GPU mixed precision) the lever is moot.
    """
    if compute_dtype != torch.float32:
        return compute_dtype
    if choice == "bf16-compute":  # bf16 storage and bf16 matmuls, see store_frozen_weights
        return torch.bfloat16
    if choice == "auto":
        return file_dtype if file_dtype in (torch.float16, torch.bfloat16) else torch.float32
    return DTYPES[choice]


_SCRATCH = threading.local()


def _upcast(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` in ``dtype``, written into one reused buffer per thread.

    A fresh fp32 tensor per layer and pass would be a fresh mmap each time: the kernel zero-fills
    every page (GBs per step), which costs more than the conversion itself. The result is only
    valid until the next upcast; the callers use it for one op whose output does not alias it.
    """
    key = (dtype, weight.device)
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    buffer = buffers.get(key)
    if buffer is None or buffer.numel() < weight.numel():
        buffer = buffers[key] = torch.empty(weight.numel(), dtype=dtype, device=weight.device)
    out = buffer[: weight.numel()].view(weight.shape)
    out.copy_(weight)
    return out


class _HalfLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):  # noqa: ANN001, ANN205 - autograd signature
        ctx.save_for_backward(weight)
        return F.linear(x, _upcast(weight, x.dtype), None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        (weight,) = ctx.saved_tensors
        return grad.matmul(_upcast(weight, grad.dtype)), None, None


class _FrozenConv2d(torch.autograd.Function):
    """A frozen conv: half weights upcast per call, and low-resolution calls sliced (``chunk_rows``)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):  # noqa: ANN001, ANN205
        ctx.save_for_backward(weight)
        rows = chunk_rows(weight, x, stride, groups)
        ctx.conf = (tuple(x.shape), stride, padding, dilation, groups, rows)
        if rows:
            return torch.cat([F.conv2d(x, _weight_in(weight[a:a + rows], x.dtype),
                                       None if bias is None else bias[a:a + rows].to(x.dtype), stride, padding,
                                       dilation, groups) for a in range(0, weight.shape[0], rows)], dim=1)
        return F.conv2d(x, _weight_in(weight, x.dtype), None if bias is None else bias.to(x.dtype), stride, padding,
                        dilation, groups)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        (weight,) = ctx.saved_tensors
        shape, stride, padding, dilation, groups, rows = ctx.conf
        if not rows:
            grad_x = torch.nn.grad.conv2d_input(shape, _weight_in(weight, grad.dtype), grad, stride, padding, dilation,
                                                groups)
            return grad_x, None, None, None, None, None, None
        grad_x = None
        for a in range(0, weight.shape[0], rows):
            part = torch.nn.grad.conv2d_input(shape, _weight_in(weight[a:a + rows], grad.dtype), grad[:, a:a + rows],
                                              stride, padding, dilation, groups)
            grad_x = part if grad_x is None else grad_x.add_(part)
        return grad_x, None, None, None, None, None, None


# Low-resolution convolutions with big weights (SD's 1280-channel blocks at 4x4-16x16) are bound by
# reading the weight: oneDNN reorders the whole fp32 weight on every call, out of cache. Done in
# slices of output channels, each slice is upcast/reordered while it sits in cache: 3x faster at
# 8x8 (measured 27 -> 8 ms for 1280->1280, forward and backward alike). Forward outputs are the
# same floats; the input gradient sums the slices' parts, so it differs from one whole call by rounding.
CHUNK_MAX_TOKENS = 256  # output positions (batch x height x width) up to which slicing pays
CHUNK_MIN_WEIGHT = 1 << 20  # elements; smaller weights stay in cache anyway
CHUNK_BYTES = 8 << 20  # fp32 bytes of one slice


def chunk_rows(weight: torch.Tensor, x: torch.Tensor, stride: object, groups: int) -> int:
    """Output channels per slice for this frozen conv call on the CPU, or 0 to run it whole."""
    if x.device.type != "cpu" or groups != 1 or weight.numel() < CHUNK_MIN_WEIGHT or x.dim() != 4:
        return 0
    step = stride if isinstance(stride, int) else stride[0]
    tokens = x.shape[0] * -(-x.shape[2] // step) * -(-x.shape[3] // step)
    if tokens > CHUNK_MAX_TOKENS:
        return 0
    rows = max(16, CHUNK_BYTES // (weight[0].numel() * 4) // 16 * 16)
    return rows if rows * 2 <= weight.shape[0] else 0


def _weight_in(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return weight if weight.dtype == dtype else _upcast(weight, dtype)


class _Bf16Linear(torch.autograd.Function):
    """bf16 matmul (oneDNN, fp32 accumulation) on bf16-stored weights; input, bias and output stay fp32."""

    @staticmethod
    def forward(ctx, x, weight, bias):  # noqa: ANN001, ANN205
        ctx.save_for_backward(weight)
        out = F.linear(x.to(torch.bfloat16), weight).to(x.dtype)
        return out if bias is None else out + bias.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        (weight,) = ctx.saved_tensors
        return grad.to(torch.bfloat16).matmul(weight).to(grad.dtype), None, None


class _Bf16Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):  # noqa: ANN001, ANN205
        ctx.save_for_backward(weight)
        ctx.conf = (tuple(x.shape), stride, padding, dilation, groups)
        out = F.conv2d(x.to(torch.bfloat16), weight, None, stride, padding, dilation, groups).to(x.dtype)
        return out if bias is None else out + bias.to(x.dtype).view(1, -1, 1, 1)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        (weight,) = ctx.saved_tensors
        shape, stride, padding, dilation, groups = ctx.conf
        grad_x = torch.nn.grad.conv2d_input(shape, weight, grad.to(torch.bfloat16), stride, padding, dilation, groups)
        return grad_x.to(grad.dtype), None, None, None, None, None, None


def _bf16_linear_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return _Bf16Linear.apply(x, self.weight, self.bias)


def _bf16_conv_forward(self: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if self.padding_mode != "zeros":
        return _conv_forward(self, x)
    return _Bf16Conv2d.apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _linear_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if x.dtype == self.weight.dtype:
        return F.linear(x, self.weight, self.bias)
    return _HalfLinear.apply(x, self.weight, self.bias)


def _sliced(self: torch.nn.Conv2d, x: torch.Tensor) -> bool:
    return (x.dtype == self.weight.dtype and self.padding_mode == "zeros" and isinstance(self.padding, tuple)
            and bool(chunk_rows(self.weight, x, self.stride, self.groups)))


def _fp32_conv_forward(self: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if _sliced(self, x):
        return _FrozenConv2d.apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
    return type(self).forward(self, x)  # torch's own (autocast and all, on a GPU)


def _conv_forward(self: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if x.dtype == self.weight.dtype and not _sliced(self, x):
        return self._conv_forward(x, self.weight, self.bias)
    if self.padding_mode != "zeros":  # no UNet uses these; keep torch's own path
        return self._conv_forward(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
    return _FrozenConv2d.apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def frozen_layers(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Plain ``nn.Linear``/``nn.Conv2d`` modules whose parameters do not train (LoRA's own layers excluded)."""
    for name, module in model.named_modules():
        if type(module) not in (torch.nn.Linear, torch.nn.Conv2d) or ".lora_" in f".{name}":
            continue
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        yield module


def store_frozen_weights(model: torch.nn.Module, dtype: torch.dtype, compute: str = "fp32") -> int:
    """Keep the frozen Linear/Conv2d weights of ``model`` in ``dtype``, computed in the input's dtype.

    ``compute="bf16"`` stores them in bf16 and runs those layers' matmuls/convolutions in bf16
    (fp32 accumulation; inputs rounded to bf16, outputs and bias in fp32): not the fp32 math any more,
    but 3-10x faster on CPUs with AVX512-BF16/AMX. Returns the bytes the stored weights take
    (0 when nothing changes: fp32 storage and compute).
    """
    bf16_compute = compute == "bf16"
    if bf16_compute:
        dtype = torch.bfloat16
    if dtype == torch.float32:  # fp32 math on fp32 weights: only the sliced low-resolution convolutions
        for module in frozen_layers(model):
            if isinstance(module, torch.nn.Conv2d):
                module.forward = types.MethodType(_fp32_conv_forward, module)
        return 0
    total = 0
    for module in frozen_layers(model):
        for key, param in list(module._parameters.items()):
            if key == "bias" and dtype.itemsize == 1:  # 8-bit storage (fp8) is for matrices; biases keep theirs
                continue
            if param is not None and param.dtype != dtype:
                module._parameters[key] = torch.nn.Parameter(param.detach().to(dtype), requires_grad=False)
            if param is not None:
                total += module._parameters[key].numel() * module._parameters[key].element_size()
        linear = isinstance(module, torch.nn.Linear)
        if bf16_compute:
            forward = _bf16_linear_forward if linear else _bf16_conv_forward
        else:
            forward = _linear_forward if linear else _conv_forward
        module.forward = types.MethodType(forward, module)
    return total


@contextlib.contextmanager
def adapters_in_fp32() -> Iterator[None]:
    """While active, new PEFT LoRA layers stay float32 next to a half-stored base layer.

    PEFT casts a new adapter to its base layer's dtype; its fp32 init would otherwise be rounded
    through fp16 and the run would start from other values than the fp32 path's.
    """
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        yield
        return
    original = BaseTunerLayer.__dict__.get("_get_base_layer_device_and_dtype")
    if original is None:  # peft < 0.14 (the WebUIs' 0.13.2) moves and casts in one method
        mover = BaseTunerLayer._move_adapter_to_device_of_base_layer
        BaseTunerLayer._move_adapter_to_device_of_base_layer = _move_to_base_device_only
        try:
            yield
        finally:
            BaseTunerLayer._move_adapter_to_device_of_base_layer = mover
        return
    function = original.__func__ if isinstance(original, staticmethod) else original

    def device_only(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        device, _ = function(*args, **kwargs)
        return device, None

    BaseTunerLayer._get_base_layer_device_and_dtype = (staticmethod(device_only) if isinstance(original, staticmethod)
                                                      else device_only)
    try:
        yield
    finally:
        BaseTunerLayer._get_base_layer_device_and_dtype = original


def _move_to_base_device_only(self, adapter_name: str, device: torch.device | None = None) -> None:  # noqa: ANN001
    """peft 0.13's ``_move_adapter_to_device_of_base_layer`` without its cast to the base layer's dtype."""
    base = self.get_base_layer()
    weight = next((w for w in (getattr(base, "weight", None), getattr(base, "qweight", None)) if w is not None), None)
    if device is None and weight is None:
        return
    device = device if device is not None else weight.device
    for name in self.adapter_layer_names + self.other_param_names:
        layer = getattr(self, name, None)
        if not isinstance(layer, torch.nn.Module) or adapter_name not in layer:
            continue
        if any(p.device.type == "meta" for p in layer.parameters()):
            continue
        layer[adapter_name] = layer[adapter_name].to(device)


def frozen_weight_names(model: torch.nn.Module) -> set[str]:
    """Parameter names of every plain Linear/Conv2d of ``model`` (a UNet before LoRA is added)."""
    return {f"{name}.{key}" if name else key
            for name, module in model.named_modules() if type(module) in (torch.nn.Linear, torch.nn.Conv2d)
            for key in module._parameters}
