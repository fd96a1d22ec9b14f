"""Next-token cross-entropy straight from the last hidden states, without a logits tensor.

With a 32K-152K vocabulary the logits are a step's largest tensors: tokens x vocab floats, held
several times over by log-softmax and its backward (each copy is 0.3 GB for 512 tokens of a 152K
vocabulary). Here the output layer is applied one slice of the vocabulary at a time with a
running log-sum-exp, the way flash attention runs softmax. The gradient with respect to the
hidden states is accumulated in the same pass: the loss is a sum, so its incoming gradient is
one scalar that backward multiplies in. The result: one (tokens x slice) block instead of
several (tokens x vocab) ones, the two matmuls of plain training, one dequantization of the
output weight instead of two, and no work for positions whose label is ignored (prompts, padding)."""

from __future__ import annotations

import torch

from .._converters import converters
from .quant import PackedWeight, dequantize_into

GGMLQuantizationType = converters.gguf_py.installed_gguf().GGMLQuantizationType


# Output-weight elements per slice (64 MB as float32; 4096 rows of a 7B): with 1M, the 125 slices
# of a 32K vocabulary made the loss 3.7x its two matmuls at 7B (small matmuls, the gradient
# accumulator rescaled per slice); with 16M it is within ~25%. The slice is transient.
_SLICE_WEIGHTS = 1 << 24
_SLICE_LOGITS = 1 << 22  # and at most this many logits per slice
# On a GPU a slice costs a few kernel launches and a host sync rather than cache misses:
# 32M weights (128 MB) and 64M logits per slice make a 32K x 4096 output layer 4 slices.
_CUDA_SLICE_WEIGHTS = 1 << 25
_CUDA_SLICE_LOGITS = 1 << 26


def slice_budget(device: torch.device | str) -> tuple[int, int]:
    """(output-weight elements, logits) per vocabulary slice for a loss computed on ``device``."""
    if torch.device(device).type == "cuda":
        return _CUDA_SLICE_WEIGHTS, _CUDA_SLICE_LOGITS
    return _SLICE_WEIGHTS, _SLICE_LOGITS


def _slice_rows(vocab: int, hidden: int, tokens: int, device: torch.device | str = "cpu") -> int:
    weights, logits = slice_budget(device)
    rows = min(weights // max(1, hidden), logits // max(1, tokens))
    return max(64, min(vocab, rows))


class _SlicedCrossEntropy(torch.autograd.Function):
    """sum over tokens of logsumexp(h W^T) - (h W^T)[label], for labels already filtered to valid ones."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: PackedWeight, labels: torch.Tensor,  # type: ignore[override]
                need_grad: bool) -> torch.Tensor:
        h = hidden.to(torch.float32)
        n, vocab, width = h.shape[0], weight.shape[0], weight.shape[1]
        on = {"device": h.device}
        running_max = torch.full((n,), float("-inf"), **on)
        running_sum = torch.zeros(n, **on)
        target = torch.zeros(n, **on)
        acc = torch.zeros(n, width, **on) if need_grad else None
        step = _slice_rows(vocab, width, n, h.device)
        weight_space = torch.empty(step * width, device=weight.raw.device)  # both reused by every slice
        logits_space = torch.empty(n * step, **on)
        for r0 in range(0, vocab, step):
            r1 = min(vocab, r0 + step)
            w = weight.raw[r0:r1] if weight.qtype == GGMLQuantizationType.F32 else dequantize_into(
                weight.raw[r0:r1], weight.qtype, width, weight_space[:(r1 - r0) * width].view(r1 - r0, width))
            w = w.to(h.device)
            logits = torch.mm(h, w.t(), out=logits_space[:n * (r1 - r0)].view(n, r1 - r0))
            here = (labels >= r0) & (labels < r1)
            if bool(here.any()):
                rows = here.nonzero().squeeze(1)
                target[rows] = logits[rows, labels[rows] - r0]
            new_max = torch.maximum(running_max, logits.amax(dim=1))
            rescale = torch.exp(running_max - new_max)
            logits.sub_(new_max.unsqueeze(1)).exp_()
            running_sum.mul_(rescale).add_(logits.sum(dim=1))
            if acc is not None:
                acc.mul_(rescale.unsqueeze(1)).addmm_(logits, w)
            running_max = new_max
        loss = (running_max + running_sum.log() - target).sum()
        if acc is not None:
            # d/dh of logsumexp is softmax @ W; of the target logit, the label's row of W
            acc.div_(running_sum.unsqueeze(1)).sub_(weight.rows(labels.to(weight.raw.device)).to(h.device))
        ctx.grad_hidden = acc
        ctx.hidden_dtype = hidden.dtype
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        if ctx.grad_hidden is None:
            return None, None, None, None
        return (ctx.grad_hidden * grad).to(ctx.hidden_dtype), None, None, None


def sliced_cross_entropy_sum(hidden: torch.Tensor, weight: PackedWeight, labels: torch.Tensor,
                             ignore_index: int = -100) -> torch.Tensor:
    """Sum of cross-entropy of ``hidden @ weight.T`` (never built whole) against ``labels``.

    ``hidden`` is (tokens, hidden size), ``labels`` (tokens,) with ``ignore_index`` where no loss is
    wanted. Equals ``F.cross_entropy(hidden @ W.T, labels, reduction="sum")`` in float32, and so
    does its gradient with respect to ``hidden``.
    """
    valid = labels != ignore_index
    vocab = weight.shape[0]
    chosen = labels[valid]
    if chosen.numel() and (int(chosen.min()) < 0 or int(chosen.max()) >= vocab):
        raise ValueError(f"label out of range: labels must lie in [0, {vocab}) or be {ignore_index}")
    need_grad = hidden.requires_grad and torch.is_grad_enabled()
    rows = hidden[valid]  # only positions that count: prompt and padding tokens cost nothing
    if not chosen.numel():
        return (rows.sum() * 0.0).to(torch.float32)
    device_type = hidden.device.type
    with torch.autocast(device_type, enabled=False):  # the loss is computed in float32
        return _SlicedCrossEntropy.apply(rows, weight, chosen, need_grad)
