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


# The text-encoder weights flux_adapter(clip=True) adapts, as ComfyUI's Flux CLIP names them: {key: module}.
COMFY_TE_WEIGHTS = {
    "clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight":
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
    "clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight": "text_encoder.text_model.encoder.layers.0.mlp.fc1",
    "t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight":
        "text_encoder_2.encoder.block.0.layer.0.SelfAttention.q"}


def with_deltas(model, module_deltas: dict[str, np.ndarray]):
    """A copy of the diffusers Flux ``model`` with the ``transformer.*`` deltas added to its weights."""
    import copy

    import torch

    changed = copy.deepcopy(model)
    state = changed.state_dict()
    for name, delta in module_deltas.items():
        if name.startswith("transformer."):
            state[name[len("transformer."):] + ".weight"] += torch.from_numpy(delta)
    changed.load_state_dict(state)
    return changed


def comfy_deltas(model, module_deltas: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{ComfyUI weight key: delta} of canonical ``module_deltas`` on the diffusers Flux ``model``: added to the
    diffusers weights, then taken to BFL naming by the table diffusers' single-file converter confirms
    (test_bfl_names_match_diffusers_single_file_loader); text encoders by ``COMFY_TE_WEIGHTS`` (zero if absent)."""
    from flux_consumer import bfl_checkpoint

    before, after = bfl_checkpoint(model), bfl_checkpoint(with_deltas(model, module_deltas))
    out = {"diffusion_model." + k: (after[k] - before[k]).numpy() for k in before}
    for key, name in COMFY_TE_WEIGHTS.items():
        out[key] = module_deltas[name] if name in module_deltas else np.zeros((8, 8), np.float32)
    return out
