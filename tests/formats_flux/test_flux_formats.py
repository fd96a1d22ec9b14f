"""Flux.1 LoRAs in every layout: BFL naming proven by diffusers' single-file loader, files we write
loaded by diffusers' own Flux LoRA loader with the same deltas, exact fusing/splitting, clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flux_cases import block_deltas, deltas, flux_adapter, worst_error
from flux_consumer import INNER, at_tiny_width, bfl_checkpoint, diffusers_deltas, module_deltas

from converters import AdapterError, LoraAdapter, LoraModule, load_adapter, save_adapter
from converters.flux_layout import bfl_from_canonical, canonical_from_bfl
from converters.flux_names import bfl_modules, part_sizes


def test_bfl_names_match_diffusers_single_file_loader(flux_model):
    from diffusers.loaders import single_file_utils

    to_diffusers = at_tiny_width(single_file_utils.convert_flux_transformer_checkpoint_to_diffusers,
                                 "inner_dim = 3072", f"inner_dim = {INNER}")
    converted = to_diffusers({"model.diffusion_model." + k: v for k, v in bfl_checkpoint(flux_model).items()})
    state = flux_model.state_dict()
    assert set(converted) == set(state)
    for key, value in state.items():
        assert torch.equal(converted[key], value), key


@pytest.mark.parametrize("to", ["diffusers", "kohya", "bfl", "peft"])
def test_round_trip_is_exact(flux_model, tmp_path, to):
    adapter = flux_adapter(flux_model, clip=to != "diffusers")
    out = save_adapter(adapter, tmp_path / ("out" if to == "peft" else "out.safetensors"), to=to, dtype="f32")
    back = load_adapter(out)
    assert back.arch == "flux" and back.family == "flux"
    assert worst_error(deltas(back), deltas(adapter)) < 1e-6


@pytest.mark.parametrize("to", ["diffusers", "kohya", "bfl"])
def test_diffusers_flux_loader_applies_our_files(flux_model, tmp_path, to):
    adapter = flux_adapter(flux_model)
    out = save_adapter(adapter, tmp_path / f"{to}.safetensors", to=to, dtype="f32")
    want = deltas(adapter) if to == "diffusers" else block_deltas(adapter)
    assert worst_error(diffusers_deltas(out), want) <= 1e-4


def test_peft_folder_loads_in_peft_on_diffusers_transformer(flux_model, tmp_path):
    from flux_consumer import tiny_transformer
    from peft import PeftModel

    adapter = flux_adapter(flux_model)
    out = save_adapter(adapter, tmp_path / "peft", to="peft", dtype="f32")
    model = PeftModel.from_pretrained(tiny_transformer(), str(out / "transformer"), adapter_name="p")
    assert worst_error(module_deltas(model, "p"), deltas(adapter)) <= 1e-4


def test_fusing_parts_with_different_ranks_and_alphas_is_exact_and_splits_back():
    rng = np.random.default_rng(3)
    parts = {f"transformer.transformer_blocks.0.attn.{p}": LoraModule(
        down=rng.standard_normal((r, 16)).astype(np.float32), up=rng.standard_normal((16, r)).astype(np.float32),
        alpha=a) for p, r, a in (("to_q", 2, 1.0), ("to_k", 3, 6.0), ("to_v", 4, 4.0))}
    fused = bfl_from_canonical(parts, "test")["double_blocks.0.img_attn.qkv"]
    assert fused.rank == 9
    want = np.concatenate([parts[f"transformer.transformer_blocks.0.attn.to_{p}"].delta() for p in "qkv"])
    np.testing.assert_allclose(fused.delta(), want, rtol=1e-5, atol=1e-6)
    back, notes = canonical_from_bfl({"double_blocks.0.img_attn.qkv": fused}, "test")
    assert {n: m.rank for n, m in back.items()} == {n: m.rank for n, m in parts.items()}
    assert "block-diagonal" in notes["double_blocks.0.img_attn.qkv"]
    for name, module in parts.items():
        np.testing.assert_allclose(back[name].delta(), module.delta(), rtol=1e-5, atol=1e-6)


def test_single_block_with_only_attention_parts_needs_the_mlp_width(tmp_path):
    rng = np.random.default_rng(4)
    adapter = LoraAdapter(modules={"transformer.single_transformer_blocks.0.attn.to_q": LoraModule(
        down=rng.standard_normal((2, 16)).astype(np.float32), up=rng.standard_normal((16, 2)).astype(np.float32),
        alpha=2.0)}, arch="flux")
    with pytest.raises(AdapterError, match="proj_mlp is not adapted"):
        save_adapter(adapter, tmp_path / "x.safetensors", to="kohya")
    assert not (tmp_path / "x.safetensors").exists()
    assert part_sizes(bfl_modules()["single_blocks.0.linear1"], 112, 16) == [16, 16, 16, 64]


@pytest.mark.parametrize("to", ["diffusers", "kohya"])
def test_diffusers_flux_loader_applies_our_clip_l_part(tmp_path, to):
    """CLIP-L modules (``text_encoder.`` / ``lora_te1_``) reach FluxPipeline's text encoder unchanged."""
    from pathlib import Path

    from diffusers.loaders import FluxLoraLoaderMixin
    from transformers import CLIPTextConfig, CLIPTextModel

    rng = np.random.default_rng(6)
    modules = {}
    for n in range(2):
        for leaf, (out, inp) in (("self_attn.q_proj", (16, 16)), ("self_attn.k_proj", (16, 16)),
                                 ("self_attn.v_proj", (16, 16)), ("self_attn.out_proj", (16, 16)),
                                 ("mlp.fc1", (37, 16)), ("mlp.fc2", (16, 37))):
            modules[f"text_encoder.text_model.encoder.layers.{n}.{leaf}"] = LoraModule(
                down=rng.standard_normal((4, inp)).astype(np.float32),
                up=rng.standard_normal((out, 4)).astype(np.float32), alpha=float(1 + n))
    adapter = LoraAdapter(modules=modules, arch="flux")
    path = save_adapter(adapter, tmp_path / f"{to}.safetensors", to=to, dtype="f32")
    torch.manual_seed(0)
    encoder = CLIPTextModel(CLIPTextConfig(hidden_size=16, intermediate_size=37, num_hidden_layers=2,
                                           num_attention_heads=2, vocab_size=99, max_position_embeddings=16,
                                           eos_token_id=2))
    state, alphas = FluxLoraLoaderMixin.lora_state_dict(str(Path(path).parent), weight_name=Path(path).name,
                                                        return_alphas=True)
    FluxLoraLoaderMixin.load_lora_into_text_encoder(state, network_alphas=alphas, text_encoder=encoder,
                                                    prefix="text_encoder", adapter_name="t")
    got = {k if ".text_model." in k else k.replace("text_encoder.", "text_encoder.text_model.", 1): v
           for k, v in module_deltas(encoder, "t", prefix="text_encoder.").items()}
    assert worst_error(got, deltas(adapter)) <= 1e-4
