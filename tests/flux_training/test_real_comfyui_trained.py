"""Real ComfyUI applies the LoRA our engine trained (optional: ``LORA_BRIDGE_COMFYUI=/path/to/ComfyUI``; see
tests/formats_flux/test_real_comfyui.py): ComfyUI's own Flux built from the tiny dev transformer file the run
trained on, the file applied as its LoraLoaderModelOnly node does, every key loaded and the weights changed by
the training state's delta."""

from __future__ import annotations

import json

import numpy as np
import pytest
from comfyui_run import COMFYUI, SKIP_REASON, run_comfyui
from flux_cases import comfy_deltas, worst_error
from flux_training_setup import state_deltas

pytestmark = pytest.mark.skipif(not COMFYUI, reason=SKIP_REASON)


def test_real_comfyui_applies_the_lora_our_engine_trained(trained, flux_files, tmp_path):
    from diffusers import FluxTransformer2DModel

    from extension.tiny.flux import transformer_kwargs

    kwargs = transformer_kwargs()
    run_comfyui(tmp_path, flux_files["base_model"], [trained / "flux_t.safetensors"], kwargs["axes_dims_rope"])
    report = json.loads((tmp_path / "flux_t.json").read_text())
    assert report["not_loaded"] == [] and report["not_patched"] == [] and report["restored"]
    want = {k: v for k, v in comfy_deltas(FluxTransformer2DModel(**kwargs), state_deltas(trained / "state", 4.0))
            .items() if np.any(v)}
    got = dict(np.load(tmp_path / "flux_t.npz"))
    worst = worst_error(got, want)
    print(f"trained: {report['lora_keys']} keys, 0 not loaded, {len(got)} weights changed, worst rel {worst:.2e}")
    assert len(want) == 13  # the 20 trained linears of both blocks, fused as BFL holds them (10 double + 3 single)
    assert worst <= 1e-4
