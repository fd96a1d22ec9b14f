"""Gradient checkpointing of decoder layers that keeps the frozen projections' outputs.

Checkpointing runs a layer's forward twice per step: once keeping nothing, and again in
backward to rebuild what the gradient needs. In a LoRA the base projections are frozen, so
their outputs depend only on the layer input, which the second run reproduces exactly. Keeping
some of them from the first run (``DEFAULT_KEPT``; a few MB per layer) spares their matmul and
their dequantization in the second run. Everything else (norms, rotary, attention, LoRA updates,
activations) is recomputed as usual, and the gradients are those of plain training.

Memory behaviour matters as much as the arithmetic here (measured on a 300M Q4_0 model): the
first run builds no autograd graph, kept outputs and layer inputs live in buffers allocated once
and reused every step, and parameter gradients land in one block (``GradArena``). Long-lived
small blocks scattered among a step's temporaries had fragmented glibc's heap by hundreds of MB.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from ..training.amp import autocast_state

# Outputs kept by default: the attention projections and down_proj (gate_proj and up_proj are
# recomputed). Per token and layer that is 2*hidden + 2*kv_dim + hidden floats, and it saves
# about half of the second run's matmul work; keeping gate/up too would save the rest for
# 2*intermediate more floats.
DEFAULT_KEPT = ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")
# Which of them go first when a step's kept outputs would not fit in KEPT_BYTES (as at 7B, where
# each costs 128 MB at batch 4 x 64 tokens): matmul work saved per byte kept is the projection's
# input width, which for down_proj is the MLP width (2.7x the others' in LLaMA shapes).
KEPT_PRIORITY = ("down_proj", "o_proj", "q_proj", "k_proj", "v_proj")
KEPT_BYTES = 256 << 20


def plan_kept(out_features: dict[str, int], tokens: int, budget: int = KEPT_BYTES) -> list[str]:
    """Projections whose outputs to keep: ``KEPT_PRIORITY`` order, while their float32 outputs fit ``budget``.

    ``out_features`` maps a projection name to its output width summed over all layers; names not
    in ``KEPT_PRIORITY`` come after those in it.
    """
    order = [n for n in KEPT_PRIORITY if n in out_features] + [n for n in out_features if n not in KEPT_PRIORITY]
    kept, total = [], 0
    for name in order:
        size = int(tokens) * 4 * out_features[name]
        if total + size <= budget:
            kept.append(name)
            total += size
    return kept


class _Active(threading.local):
    memo: LayerMemo | None = None


_ACTIVE = _Active()


def active_memo() -> LayerMemo | None:
    """The memo of the decoder layer running in this thread, when it runs under checkpointing."""
    return _ACTIVE.memo


class LayerMemo:
    """What one decoder layer keeps between its forward and its backward.

    Calls of frozen projections are numbered in the order the layer makes them; the first
    run records the outputs of the kept ones, the second run (the recompute in backward) takes
    them back in the same order.
    """

    def __init__(self) -> None:
        self._buffers: list[torch.Tensor | None] = []
        self._kept: list[torch.Tensor | None] = []
        self._input: torch.Tensor | None = None
        self._call = 0
        self.generation = 0
        self.replaying = False

    def _buffer(self, index: int, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        while len(self._buffers) <= index:
            self._buffers.append(None)
        n = 1
        for dim in shape:
            n *= int(dim)
        buf = self._buffers[index]
        if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buffers[index] = torch.empty(n, dtype=like.dtype, device=like.device)
        return buf[:n].view(shape)

    def hold_input(self, x: torch.Tensor) -> None:
        """Keep a copy of the layer input ``x`` for the recompute."""
        self._input = self._buffer(0, x, tuple(x.shape)).copy_(x)

    def held_input(self) -> torch.Tensor:
        """The input kept by ``hold_input``."""
        assert self._input is not None
        return self._input

    def next_call(self) -> int:
        """Number of the next frozen-projection call within the current run."""
        self._call += 1
        return self._call

    def output_buffer(self, call: int, x: torch.Tensor, out_features: int) -> torch.Tensor:
        """Where the first run writes call ``call``'s output (it is kept until the recompute)."""
        buf = self._buffer(call, x, (*x.shape[:-1], out_features))
        while len(self._kept) <= call:
            self._kept.append(None)
        self._kept[call] = buf
        return buf

    def kept_output(self, call: int) -> torch.Tensor | None:
        """The output recorded for call ``call`` in the first run, or None."""
        return self._kept[call] if call < len(self._kept) else None

    def start(self, replay: bool) -> int:
        """Begin a run (the first, or the recompute); returns the generation of what is kept."""
        self._call = 0
        self.replaying = replay
        if not replay:
            self.generation += 1
            self._kept = []
        return self.generation


class KeptMatmul(torch.autograd.Function):
    """Returns the output recorded in the first run; backward is the frozen weight's usual ``grad @ W``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kept: tuple[torch.Tensor], backward: Callable) -> torch.Tensor:  # type: ignore[override]
        ctx.grad_fn = backward
        return kept[0].view_as(kept[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return ctx.grad_fn(grad), None, None


class _CheckpointedLayer(torch.autograd.Function):
    """Forward without building a graph; backward recomputes the layer (taking kept outputs) and differentiates.

    Unlike torch's non-reentrant checkpoint, the first run creates no autograd nodes: nodes kept alive
    from every layer's forward until its backward were what fragmented the heap. Parameter gradients
    are returned through this node (not accumulated inside), so DDP sees them the usual way.
    """

    @staticmethod
    def forward(ctx, layer: torch.nn.Module, memo: LayerMemo, arena: GradArena | None, n_args: int,  # type: ignore[override]
                x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        ctx.layer, ctx.memo, ctx.arena, ctx.n_args = layer, memo, arena, n_args
        ctx.args, ctx.params = rest[:n_args], rest[n_args:]
        ctx.device = x.device
        ctx.autocast = autocast_state(x.device.type)
        ctx.rng = torch.get_rng_state()
        ctx.cuda_rng = torch.cuda.get_rng_state(x.device) if x.is_cuda else None
        ctx.generation = memo.start(replay=False)
        memo.hold_input(x)
        with _Using(memo):
            return layer(x, *ctx.args)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        memo = ctx.memo
        if memo.generation != ctx.generation:
            raise RuntimeError("a second forward pass ran before this one's backward; with gradient checkpointing "
                               "call backward after each forward")
        x = memo.held_input().detach().requires_grad_(ctx.needs_input_grad[4])
        wanted = ctx.needs_input_grad[5 + ctx.n_args:]  # which parameters need a gradient
        params = [p for p, needed in zip(ctx.params, wanted, strict=True) if needed]
        enabled, dtype = ctx.autocast
        with torch.random.fork_rng(devices=[ctx.device] if ctx.cuda_rng is not None else []), torch.enable_grad(), \
                torch.autocast(ctx.device.type, dtype=dtype, enabled=enabled):
            torch.set_rng_state(ctx.rng)
            if ctx.cuda_rng is not None:
                torch.cuda.set_rng_state(ctx.cuda_rng, ctx.device)
            memo.start(replay=True)
            with _Using(memo):
                out = ctx.layer(x, *ctx.args)
        wants_x = x.requires_grad
        inputs = ([x] if wants_x else []) + params
        grads = list(torch.autograd.grad(out, inputs, grad, allow_unused=True)) if inputs else []
        grad_x = grads.pop(0) if wants_x else None
        del out, x, inputs
        if ctx.arena is not None:
            grads = [ctx.arena.hold(p, g) for p, g in zip(params, grads, strict=True)]
        param_grads = iter(grads)
        rest = [next(param_grads) if needed else None for needed in wanted]
        return (None, None, None, None, grad_x, *([None] * ctx.n_args), *rest)


class _Using:
    """Make ``memo`` the one frozen projections see in this thread, for the duration of a ``with``."""

    def __init__(self, memo: LayerMemo) -> None:
        self.memo = memo

    def __enter__(self) -> None:
        self.previous, _ACTIVE.memo = _ACTIVE.memo, self.memo

    def __exit__(self, *exc: object) -> None:
        _ACTIVE.memo = self.previous


def checkpointed_layer(layer: torch.nn.Module, memo: LayerMemo, x: torch.Tensor, *args: torch.Tensor,
                       arena: GradArena | None = None) -> torch.Tensor:
    """``layer(x, *args)`` that keeps only its input (and ``memo``'s kept outputs) for backward.

    ``args`` must not need gradients (rotary tables); the layer's trainable parameters get theirs,
    in ``arena`` when one is given.
    """
    params = [p for p in layer.parameters() if p.requires_grad]
    return _CheckpointedLayer.apply(layer, memo, arena, len(args), x, *args, *params)


class GradArena:
    """One allocation holding a backward pass's gradients for the given parameters.

    Gradients created layer by layer in backward outlive the step; as hundreds of small blocks
    they land in the holes the recompute's temporaries leave and split them, and the heap grows
    by a few MB per layer. One block for all of them (above glibc's mmap threshold for any model
    worth checkpointing) avoids that. Parameters then hold views of it as ``.grad``.
    """

    def __init__(self, params: list[torch.Tensor]) -> None:
        self._offsets: dict[int, int] = {}
        total = 0
        for p in params:
            self._offsets[id(p)] = total
            total += p.numel()
        first = params[0] if params else torch.empty(0)
        self._buffer = torch.empty(total, dtype=first.dtype, device=first.device)

    def hold(self, param: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor | None:
        """``grad`` copied into this arena (as a tensor shaped like ``param``); others pass through."""
        start = self._offsets.get(id(param))
        if grad is None or start is None or grad.dtype != self._buffer.dtype or grad.device != self._buffer.device:
            return grad
        return self._buffer[start:start + grad.numel()].view_as(grad).copy_(grad)
