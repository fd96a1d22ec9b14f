"""Flux.1 LoRA training on a tiny Flux saved as Forge users hold it: the CLI run, its file in diffusers' own
Flux LoRA loader (same delta as our model, loss falls on the training images), sd-scripts' metadata."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flux_consumer import module_deltas
from flux_training_setup import STEPS, diffusers_lora, fixed_flow_loss, state_deltas

from extension._converters import converters


def test_cli_run_writes_a_kohya_flux_lora_with_sd_scripts_metadata(trained):
    final = trained / "flux_t.safetensors"
    report = converters.inspect_adapter(final)
    assert report["format"] == "kohya" and report["arch"] == "flux"
    names = set(converters.safetensors_io.read_header(final)[0]) - {"__metadata__"}
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in names
    assert "lora_unet_single_blocks_0_linear1.alpha" in names
    meta = report["metadata"]
    assert meta["ss_base_model_version"] == "flux1" and meta["modelspec.architecture"] == "flux-1-dev/lora"
    assert meta["modelspec.implementation"] == "https://github.com/black-forest-labs/flux"
    assert meta["ss_timestep_sampling"] == "sigma" and meta["ss_guidance_scale"] == "1.0"
    assert meta["ss_steps"] == str(STEPS) and "modelspec.prediction_type" not in meta
    assert (trained / "samples" / f"step{STEPS:06d}-0.png").is_file()


def test_diffusers_loader_applies_the_delta_our_model_trained(trained):
    from extension.tiny.flux import build_tiny_flux

    transformer = build_tiny_flux()["transformer"]
    diffusers_lora(trained / "flux_t.safetensors", transformer)
    got = module_deltas(transformer, "t")
    want = state_deltas(trained / "state", alpha=4.0)
    assert set(got) == set(want) and len(want) == 20  # every linear of the double and the single block
    worst = max(float(np.linalg.norm(got[n] - w) / np.linalg.norm(w)) for n, w in want.items())
    assert worst <= 1e-4, worst


def test_loss_falls_on_the_training_images(trained, flux_files, flux_data):
    from transformers import AutoTokenizer, CLIPTokenizer

    from extension.tiny.flux import build_tiny_flux

    folder = flux_files["base_model"].parent
    tokenizers = [CLIPTokenizer.from_pretrained(str(folder / "tokenizer"), pad_token="<|endoftext|>"),
                  AutoTokenizer.from_pretrained(str(folder / "tokenizer_2"))]
    parts = build_tiny_flux()
    before = fixed_flow_loss(parts, tokenizers, flux_data)
    diffusers_lora(trained / "flux_t.safetensors", parts["transformer"])
    after = fixed_flow_loss(parts, tokenizers, flux_data)
    print(f"flux: fixed-batch flow loss {before:.4f} -> {after:.4f}")
    assert after < before * 0.97, (before, after)


def test_sd_model_arch_on_a_flux_file_and_unsupported_keys_are_one_line(flux_files, flux_data, tmp_path):
    from flux_training_setup import flux_config

    from extension.errors import UserError
    from extension.runner import run_training

    cases = [({"model_arch": "sdxl"}, "is a Flux.1 model but model_arch is 'sdxl'"),
             ({"clip_l": None}, "without the CLIP-L text encoder; choose its file in clip_l"),
             ({"conv_rank": 4}, r"conv_rank does not apply to Flux.1 bases \(Flux.1 has no convolutions"),
             ({"min_snr_gamma": 5.0}, "min_snr_gamma does not apply to Flux.1 bases .*flux_train_network.py does not")]
    for overrides, words in cases:
        config = flux_config(flux_files, flux_data, tmp_path / "out", **overrides)
        with pytest.raises(UserError, match=words):
            run_training(config)
        assert not (tmp_path / "out" / "flux_t.safetensors").exists()


@pytest.mark.slow
def test_runs_are_deterministic_and_schnell_trains_without_guidance(flux_data, tmp_path):
    from flux_training_setup import flux_config

    from extension.runner import run_training
    from extension.tiny.flux import save_tiny_flux

    files = save_tiny_flux(tmp_path / "schnell", variant="schnell", all_in_one=True)
    tensors = []
    for name in ("a", "b"):
        result = run_training(flux_config(files, flux_data, tmp_path / name, max_train_steps=2,
                                          sample_every_n_steps=0, timestep_sampling="shift"))
        assert result.status == "done", result.message
        tensors.append(converters.load_adapter(tmp_path / name / "flux_t.safetensors"))
    assert tensors[0].metadata["modelspec.architecture"] == "flux-1-schnell/lora"
    for name, module in tensors[0].modules.items():
        assert np.array_equal(module.up, tensors[1].modules[name].up), name
    assert any(np.any(m.up) for m in tensors[0].modules.values())


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
