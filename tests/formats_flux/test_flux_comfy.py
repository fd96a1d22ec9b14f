"""Our Flux files through ComfyUI's Flux LoRA key mapping and loader (reproduced in comfy_flux.py from
reading ComfyUI's sources): every key loads, and the weight change equals the adapter's delta."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from comfy_flux import key_map, load_and_apply
from flux_cases import flux_adapter
from flux_consumer import INNER, bfl_checkpoint

from converters import save_adapter
from converters.safetensors_io import SafetensorsFile

TE_WEIGHTS = {"clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight": "text_encoder.text_model."
              "encoder.layers.0.self_attn.q_proj",
              "clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight": "text_encoder.text_model.encoder."
              "layers.0.mlp.fc1",
              "t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight": "text_encoder_2.encoder.block.0."
              "layer.0.SelfAttention.q"}


def _comfy_state(model) -> dict[str, np.ndarray]:
    """The weights of ComfyUI's Flux model (``diffusion_model.`` + BFL) and its CLIP-L/T5 (tiny, random)."""
    state = {"diffusion_model." + k: v.detach().numpy() for k, v in bfl_checkpoint(model).items()}
    rng = np.random.default_rng(5)
    state.update({k: rng.standard_normal((8, 8)).astype(np.float32) for k in TE_WEIGHTS})
    return state


def _expected(model, adapter) -> dict[str, np.ndarray]:
    """ComfyUI-side deltas: the adapter's deltas added to the diffusers model, then taken to BFL naming by
    the table diffusers' single-file converter confirms (test_bfl_names_match_diffusers_single_file_loader)."""
    changed = copy.deepcopy(model)
    state = changed.state_dict()
    for name, module in adapter.modules.items():
        if name.startswith("transformer."):
            state[name[len("transformer."):] + ".weight"] += torch.from_numpy(module.delta())
    changed.load_state_dict(state)
    before, after = bfl_checkpoint(model), bfl_checkpoint(changed)
    out = {"diffusion_model." + k: (after[k] - before[k]).numpy() for k in before}
    for key, name in TE_WEIGHTS.items():
        out[key] = adapter.modules[name].delta() if name in adapter.modules else np.zeros((8, 8), np.float32)
    return out


@pytest.mark.parametrize("to", ["kohya", "bfl", "diffusers"])
def test_comfyui_loads_every_key_of_our_flux_files_with_the_same_delta(flux_model, tmp_path, to):
    adapter = flux_adapter(flux_model, clip=to != "diffusers")
    path = save_adapter(adapter, tmp_path / f"{to}.safetensors", to=to, dtype="f32")
    st = SafetensorsFile(path)
    names = st.keys()
    lora = {k: st.get(k) for k in names}
    base = _comfy_state(flux_model)
    patched, not_loaded = load_and_apply(lora, key_map(base, depth=1, depth_single=1, hidden=INNER), base)
    assert not_loaded == []
    want = _expected(flux_model, adapter)
    worst = 0.0
    for key, delta in want.items():
        got = patched[key] - base[key]
        if not np.any(delta):
            assert not np.any(got), key
            continue
        worst = max(worst, float(np.linalg.norm(got - delta) / np.linalg.norm(delta)))
    assert worst <= 1e-4
    assert sum(1 for d in want.values() if np.any(d)) >= 20  # every layer of the tiny Flux, both encoders
