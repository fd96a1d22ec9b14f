"""diffusers' own Flux LoRA loader as a test oracle, on a tiny random ``FluxTransformer2DModel``.

Usable in-process and as a script in another venv (Forge's diffusers 0.31):
``python flux_consumer.py OUT_DIR LORA_FILE...`` writes ``OUT_DIR/<file stem>.npz`` = {canonical module:
delta weight} for each file, or exits with ``NO_LORA_LOADER`` when that diffusers cannot load LoRAs.

diffusers' sd-scripts/ComfyUI converter splits a single block's ``linear1`` with full-size Flux
widths written into it (``dims=[3072, 3072, 3072, 12288]``); ``at_tiny_width`` re-creates that one
function from its own source with the tiny widths, so everything else runs as released.
"""

from __future__ import annotations

import inspect
import sys
import textwrap
from pathlib import Path

import numpy as np

TINY = dict(patch_size=1, in_channels=8, num_layers=1, num_single_layers=1, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=12, guidance_embeds=True,
            axes_dims_rope=[2, 2, 4])
INNER, MLP = 16, 64
NO_LORA_LOADER = 3  # exit code: this diffusers has no LoRA loader with its venv's pins (transformers < 4.34)


def tiny_transformer(seed: int = 0):
    """The tiny random Flux transformer every Flux format test uses."""
    import torch
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(**TINY).eval()


def at_tiny_width(func, old: str, new: str):
    """``func`` rebuilt from its source with ``old`` replaced by ``new`` (which must occur)."""
    source = textwrap.dedent(inspect.getsource(func))
    assert old in source, f"{func.__name__} no longer contains {old!r}"
    namespace = dict(func.__globals__)
    exec(compile(source.replace(old, new), inspect.getsourcefile(func), "exec"), namespace)  # noqa: S102
    return namespace[func.__name__]


def diffusers_deltas(path: str) -> dict[str, np.ndarray]:
    """Load ``path`` with ``FluxLoraLoaderMixin`` into a tiny transformer; {``transformer.<module>``: delta}."""
    from diffusers.loaders import FluxLoraLoaderMixin, lora_conversion_utils, lora_pipeline

    original = lora_pipeline._convert_kohya_flux_lora_to_diffusers
    lora_pipeline._convert_kohya_flux_lora_to_diffusers = at_tiny_width(
        lora_conversion_utils._convert_kohya_flux_lora_to_diffusers, "dims=[3072, 3072, 3072, 12288]",
        f"dims=[{INNER}, {INNER}, {INNER}, {MLP}]")
    try:
        state, alphas = FluxLoraLoaderMixin.lora_state_dict(str(Path(path).parent), weight_name=Path(path).name,
                                                            return_alphas=True)
    finally:
        lora_pipeline._convert_kohya_flux_lora_to_diffusers = original
    transformer = tiny_transformer()
    FluxLoraLoaderMixin.load_lora_into_transformer(state, network_alphas=alphas, transformer=transformer,
                                                   adapter_name="t")
    return module_deltas(transformer, "t")


def module_deltas(model, adapter: str, prefix: str = "transformer.") -> dict[str, np.ndarray]:
    """{prefix + module path: PEFT delta weight} of every layer carrying ``adapter``."""
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "get_delta_weight") and adapter in getattr(module, "lora_A", {}):
            out[prefix + name.replace("base_model.model.", "")] = \
                module.get_delta_weight(adapter).detach().float().numpy()
    return out


def bfl_checkpoint(model) -> dict:
    """The BFL single-file state dict of ``model`` (``converters.flux_names.bfl_state_dict``)."""
    import torch

    from converters.flux_names import bfl_state_dict

    return bfl_state_dict(model.state_dict(), torch.cat)


if __name__ == "__main__":
    from diffusers.utils import USE_PEFT_BACKEND

    if not USE_PEFT_BACKEND:
        sys.exit(NO_LORA_LOADER)
    for lora in sys.argv[2:]:
        np.savez(Path(sys.argv[1]) / (Path(lora).stem + ".npz"), **diffusers_deltas(lora))
