"""Canonical Flux.1 adapters built on a tiny diffusers Flux transformer, and delta comparisons."""

from __future__ import annotations

import numpy as np

from converters import LoraAdapter, LoraModule


def flux_adapter(model, seed: int = 0, clip: bool = False, blocks_only: bool = False,
                 rank: int | None = None) -> LoraAdapter:
    """A LoRA on every ``nn.Linear`` of ``model`` with varied ranks and alphas (canonical names).

    ``blocks_only``: only layers inside double/single blocks, sd-scripts' default targets (diffusers 0.31
    refuses sd-scripts/ComfyUI files with the others; later versions drop them, see ``block_deltas``).
    ``clip``: also CLIP-L and T5 modules. ``rank``: one rank everywhere (diffusers 0.31 gives every
    module of an sd-scripts file the most common rank's scale).
    """
    import torch

    rng = np.random.default_rng(seed)
    modules = {}
    for i, (name, layer) in enumerate(model.named_modules()):
        if not isinstance(layer, torch.nn.Linear) or (blocks_only and "blocks." not in name):
            continue
        out, inp = layer.weight.shape
        r = rank or 2 + i % 4
        modules["transformer." + name] = LoraModule(
            down=rng.standard_normal((r, inp)).astype(np.float32),
            up=rng.standard_normal((out, r)).astype(np.float32),
            alpha=float(1 + i % 5))
    if clip:
        for leaf in ("self_attn.q_proj", "mlp.fc1"):
            modules[f"text_encoder.text_model.encoder.layers.0.{leaf}"] = LoraModule(
                down=rng.standard_normal((3, 8)).astype(np.float32),
                up=rng.standard_normal((8, 3)).astype(np.float32), alpha=2.0)
        modules["text_encoder_2.encoder.block.0.layer.0.SelfAttention.q"] = LoraModule(
            down=rng.standard_normal((2, 8)).astype(np.float32),
            up=rng.standard_normal((8, 2)).astype(np.float32), alpha=1.0)
    return LoraAdapter(modules=modules, arch="flux")


def deltas(adapter: LoraAdapter) -> dict[str, np.ndarray]:
    """{module: float32 delta} of a canonical adapter."""
    return {name: m.delta() for name, m in adapter.modules.items()}


def worst_error(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    """Worst relative error over ``want``'s modules; every one must be in ``got``, and nothing else non-zero."""
    assert set(want) <= set(got), sorted(set(want) - set(got))[:5]
    extra = [n for n in set(got) - set(want) if np.any(got[n])]
    assert not extra, extra[:5]
    return max(float(np.linalg.norm(got[n].reshape(w.shape) - w) / np.linalg.norm(w)) for n, w in want.items())


def block_deltas(adapter: LoraAdapter) -> dict[str, np.ndarray]:
    """Deltas of the modules inside double/single blocks only."""
    # diffusers (0.31 to 0.42) names the non-block modules of sd-scripts/ComfyUI Flux files without
    # ``transformer.`` (x_embedder, time_text_embed.*, norm_out, proj_out), so its loader drops them.
    return {n: d for n, d in deltas(adapter).items() if "blocks." in n}
