"""Our Flux files through ComfyUI's Flux LoRA key mapping and loader (reproduced in comfy_flux.py from
reading ComfyUI's sources): every key loads, and the weight change equals the adapter's delta."""

from __future__ import annotations

import numpy as np
import pytest
from comfy_flux import key_map, load_and_apply
from flux_cases import COMFY_TE_WEIGHTS, comfy_deltas, deltas, flux_adapter
from flux_consumer import INNER, bfl_checkpoint

from converters import save_adapter
from converters.safetensors_io import SafetensorsFile


def _comfy_state(model) -> dict[str, np.ndarray]:
    """The weights of ComfyUI's Flux model (``diffusion_model.`` + BFL) and its CLIP-L/T5 (tiny, random)."""
    state = {"diffusion_model." + k: v.detach().numpy() for k, v in bfl_checkpoint(model).items()}
    rng = np.random.default_rng(5)
    state.update({k: rng.standard_normal((8, 8)).astype(np.float32) for k in COMFY_TE_WEIGHTS})
    return state


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
    want = comfy_deltas(flux_model, deltas(adapter))
    worst = 0.0
    for key, delta in want.items():
        got = patched[key] - base[key]
        if not np.any(delta):
            assert not np.any(got), key
            continue
        worst = max(worst, float(np.linalg.norm(got - delta) / np.linalg.norm(delta)))
    assert worst <= 1e-4
    assert sum(1 for d in want.values() if np.any(d)) >= 20  # every layer of the tiny Flux, both encoders
