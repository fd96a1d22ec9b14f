"""``train_text_encoder`` on Flux.1 = a CLIP-L LoRA beside the transformer's (sd-scripts' ``lora_te1_`` modules,
``--network_train_unet_only`` absent; T5 stays frozen). The file's CLIP-L part loads in diffusers' Flux loader and
in ComfyUI's (= Forge's) mapping with the delta the run trained."""

from __future__ import annotations

import numpy as np
from flux_consumer import module_deltas
from flux_training_setup import diffusers_state, flux_config, state_deltas
from safetensors.numpy import load_file

from converters.safetensors_io import read_header
from extension.runner import run_training
from extension.tiny.flux import build_tiny_flux


def _worst(got: dict, want: dict) -> float:
    assert set(got) == set(want) and all(np.any(w) for w in want.values())
    return max(float(np.linalg.norm(got[n] - w) / np.linalg.norm(w)) for n, w in want.items())


def test_clip_l_lora_trains_and_loads_in_diffusers_and_comfyui(flux_files, flux_data, tmp_path):
    from comfy_flux import key_map, load_and_apply
    from diffusers.loaders import FluxLoraLoaderMixin
    from flux_consumer import bfl_checkpoint

    config = flux_config(flux_files, flux_data, tmp_path / "out", max_train_steps=2, sample_every_n_steps=2,
                         train_text_encoder=True, text_encoder_lr=1e-2)
    result = run_training(config)
    assert result.status == "done", result.message
    path = tmp_path / "out" / "flux_t.safetensors"
    header = read_header(path)[0]
    assert header["__metadata__"]["ss_network_train_unet_only"] == "False"
    clip_modules = {k.split(".")[0] for k in header if k.startswith("lora_te1_")}
    parts = build_tiny_flux()
    clip = parts["clip_l"]
    layers = clip.config.num_hidden_layers
    leaves = ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj", "mlp_fc1", "mlp_fc2")
    assert clip_modules == {f"lora_te1_text_model_encoder_layers_{i}_{leaf}" for i in range(layers) for leaf in leaves}
    assert not any(k.startswith(("lora_te2_", "lora_te3_")) for k in header)  # T5 stays frozen
    want = state_deltas(tmp_path / "out" / "state", alpha=4.0, component="text_encoder")
    want = {n.replace("text_encoder.", "text_encoder.text_model.", 1) if ".text_model." not in n else n: w
            for n, w in want.items()}

    state, alphas = diffusers_state(path)
    FluxLoraLoaderMixin.load_lora_into_text_encoder(state, network_alphas=alphas, text_encoder=clip,
                                                    prefix="text_encoder", adapter_name="t")
    got = module_deltas(clip, "t", prefix="text_encoder.")
    got = {n.replace("text_encoder.", "text_encoder.text_model.", 1) if ".text_model." not in n else n: d
           for n, d in got.items()}
    assert _worst(got, want) <= 1e-4

    fresh = build_tiny_flux()
    weights = {"diffusion_model." + k: v.detach().numpy() for k, v in bfl_checkpoint(fresh["transformer"]).items()}
    for key, value in fresh["clip_l"].state_dict().items():
        if key.endswith(".weight"):
            weights["clip_l.transformer." + ("" if key.startswith("text_model.") else "text_model.") + key] = \
                value.detach().numpy()
    hidden = fresh["transformer"].config.num_attention_heads * fresh["transformer"].config.attention_head_dim
    patched, not_loaded = load_and_apply(load_file(str(path)), key_map(weights, 1, 1, hidden), weights)
    assert not_loaded == []  # every key of the file, the CLIP-L part included, loads in ComfyUI/Forge
    comfy = {"text_encoder." + k[len("clip_l.transformer."):-len(".weight")]: patched[k] - weights[k]
             for k in weights if k.startswith("clip_l.") and not np.array_equal(patched[k], weights[k])}
    assert _worst(comfy, want) <= 1e-4

    again = run_training(flux_config(flux_files, flux_data, tmp_path / "again", max_train_steps=1,
                                     sample_every_n_steps=0, train_text_encoder=True, learning_rate=0.0,
                                     init_lora=str(path)))  # continuing it, CLIP-L part included
    assert again.status == "done", again.message
    first, second = load_file(str(path)), load_file(str(tmp_path / "again" / "flux_t.safetensors"))
    assert set(first) == set(second) and all(np.array_equal(first[k], second[k]) for k in first)
