"""Text generation in LoRA Bridge's own torch model of a GGUF: the sampler and the token loop.

The sampler follows llama-cpp-python's chain (``Llama._init_sampler``) so a setting means the same
in both backends: greedy at temperature 0; otherwise top-k, then top-p on the untempered
probabilities, then the temperature, then a seeded draw. The random streams differ, so only
greedy decoding gives the same tokens in both.

The loop recomputes the whole sequence for each new token (the model has no KV cache): slower
than llama.cpp, fine for trying an adapter on a short prompt. Packed layers round their inputs as
llama.cpp's CPU matmuls do (``ggml_activation_rounding``), so greedy tokens match llama.cpp's
where the llama.cpp check passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from ..training.init_lora import copy_into
from .lora import LoraLinear, inject_lora
from .quant import ggml_activation_rounding


@dataclass
class Sampling:
    """How the next token is chosen; ``temperature == 0`` is greedy decoding."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    seed: int = 0

    def check(self) -> Sampling:
        """Self, or UserError naming the setting out of range."""
        if not 1 <= int(self.max_new_tokens) <= 4096:
            raise UserError(f"max new tokens must be between 1 and 4096, not {self.max_new_tokens}")
        if not 0.0 <= float(self.temperature) <= 5.0:
            raise UserError(f"temperature must be between 0 (greedy) and 5, not {self.temperature}")
        if int(self.top_k) < 0:
            raise UserError(f"top-k must be 0 (off) or more, not {self.top_k}")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise UserError(f"top-p must be above 0 and at most 1, not {self.top_p}")
        if not 0 <= int(self.seed) < 2**32:
            raise UserError(f"seed must be between 0 and 4294967295, not {self.seed}")
        return self


def next_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """The next token id from one position's logits (vocab,)."""
    if sampling.temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits.double()
    if 0 < sampling.top_k < logits.numel():
        cut = torch.topk(logits, sampling.top_k).values[-1]
        logits = logits.masked_fill(logits < cut, float("-inf"))
    if sampling.top_p < 1.0:
        order = torch.argsort(logits, descending=True)
        probs = torch.softmax(logits[order], dim=0)
        before = torch.cumsum(probs, dim=0) - probs  # mass of the tokens ranked above each one
        drop = order[before >= sampling.top_p]
        logits[drop] = float("-inf")
    probs = torch.softmax(logits / sampling.temperature, dim=0)
    return int(torch.multinomial(probs, 1, generator=generator))


def generate_ids(model: torch.nn.Module, prompt: list[int], sampling: Sampling, stop_ids: set[int],
                 should_stop: Callable[[], bool] = lambda: False) -> tuple[list[int], bool]:
    """(new token ids, stopped by ``should_stop``) after ``prompt``; ends at a stop id or the token budget."""
    generator = torch.Generator().manual_seed(int(sampling.seed))
    limit = int(getattr(getattr(model, "config", None), "context_length", 0) or 0)
    device = next(iter(model.buffers()), torch.empty(0)).device  # where the packed weights live
    ids, new = list(prompt), []
    with torch.no_grad(), ggml_activation_rounding():
        while len(new) < sampling.max_new_tokens and not (limit and len(ids) >= limit):
            if should_stop():
                return new, True
            logits = model(torch.tensor([ids], device=device))[0, -1].float().cpu()
            token = next_token(logits, sampling, generator)
            if token in stop_ids:
                break
            new.append(token)
            ids.append(token)
    return new, False


def attach_adapter(model: torch.nn.Module, adapter, source: str) -> dict[str, LoraLinear]:
    """Wrap the layers ``adapter`` (canonical ``converters.LoraAdapter``) adapts and load its weights.

    Only what ``LoraLinear`` computes is accepted (plain LoRA on linear layers); anything else stops
    with one line naming ``source``. The weights are loaded at scale alpha / rank (``set_scale`` changes it).
    """
    from .._converters import converters

    linear = {n for n, m in model.named_modules() if hasattr(m, "in_features") and not n.endswith(".base")}
    for name, module in adapter.modules.items():
        if not isinstance(module, converters.LoraModule) or module.magnitude is not None or module.bias is not None:
            raise UserError(f"{source}: module {name} is not a plain LoRA (LoHa/LoKr/DoRA/lora_bias); the torch "
                            "backend runs plain LoRA only: try it with the llama.cpp backend or convert it")
        if module.is_embedding or name not in linear:
            raise UserError(f"{source}: module {name} is not a linear layer of this base; the torch backend adapts "
                            "linear layers only: use the llama.cpp backend")
    ranks = {name: (m.rank, float(m.alpha)) for name, m in adapter.modules.items()}
    with torch.random.fork_rng(devices=[]):  # LoraLinear's init draws from the global RNG: leave it as it was
        layers = inject_lora(model, list(ranks), 1, 1.0, module_ranks=ranks)
    for name, layer in layers.items():
        module = adapter.modules[name]
        copy_into(layer.lora_A, np.asarray(module.down), f"{name} lora_A")
        copy_into(layer.lora_B, np.asarray(module.up), f"{name} lora_B")
    return layers


def set_scale(layers: dict[str, LoraLinear], scale: float) -> None:
    """Every layer's update at ``scale`` times its alpha / rank (0: the base alone)."""
    for layer in layers.values():
        layer.scale = layer.alpha / layer.rank * float(scale)
