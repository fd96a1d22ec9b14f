"""Flux.1 base files as Forge users hold them, made from the tiny diffusers transformer: the BFL
single file, an all-in-one checkpoint (``model.diffusion_model.`` + ``text_encoders.*``) and a city96 GGUF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flux_consumer import bfl_checkpoint

from converters.safetensors_io import write_safetensors

# The text-encoder weights flux_cases.flux_adapter(clip=True) adapts, as an all-in-one holds them.
TEXT_ENCODERS = {
    "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight": (8, 8),
    "text_encoders.clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight": (8, 8),
    "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight": (8, 8),
}


def bfl_state(model, schnell: bool = False) -> dict[str, np.ndarray]:
    """{BFL name: float32 array}; ``schnell`` drops the guidance embedder as schnell's file has none."""
    return {k: v.detach().float().numpy() for k, v in bfl_checkpoint(model).items()
            if not (schnell and k.startswith("guidance_in."))}


def write_bfl(model, path: Path, prefix: str = "", text_encoders: bool = False, schnell: bool = False) -> Path:
    """The BFL single-file transformer (``prefix`` ``model.diffusion_model.`` for an all-in-one)."""
    tensors = [(prefix + k, v) for k, v in bfl_state(model, schnell).items()]
    if text_encoders:
        tensors += [(k, np.zeros(shape, np.float32)) for k, shape in TEXT_ENCODERS.items()]
    return write_safetensors(path, tensors)


def write_city96_gguf(model, path: Path, qtype: str = "Q4_0") -> Path:
    """A GGUF as city96's convert.py writes Flux (``extension.tiny.flux.save_city96_gguf``, the training tests' too)."""
    from extension.tiny.flux import save_city96_gguf

    return save_city96_gguf(bfl_checkpoint(model), path, qtype)
