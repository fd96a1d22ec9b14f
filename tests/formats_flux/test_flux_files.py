"""Flux.1 files through the public API: the wrong refusals of issue 21 (an sd-scripts Flux LoRA was
"not a module of an sd1 model", a diffusers Flux LoRA "an LLM adapter"), sd-scripts layouts, ComfyUI spellings."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flux_cases import flux_adapter, worst_error
from flux_consumer import diffusers_deltas, module_deltas, tiny_transformer

from converters import AdapterError, convert, inspect_adapter, load_adapter
from converters.safetensors_io import SafetensorsFile, write_safetensors


def _sd_scripts_file(path, rank=4):
    """A Flux LoRA as sd-scripts' lora_flux writes it: fused qkv / linear1 with one dense down, alphas, ss_*."""
    rng = np.random.default_rng(1)
    tensors = []
    shapes = {"double_blocks_0_img_attn_qkv": (48, 16), "double_blocks_0_img_attn_proj": (16, 16),
              "double_blocks_0_txt_mlp_0": (64, 16), "single_blocks_0_linear1": (112, 16),
              "single_blocks_0_linear2": (16, 80), "single_blocks_0_modulation_lin": (48, 16)}
    for name, (out, inp) in shapes.items():
        tensors += [(f"lora_unet_{name}.lora_down.weight", rng.standard_normal((rank, inp)).astype(np.float32)),
                    (f"lora_unet_{name}.lora_up.weight", rng.standard_normal((out, rank)).astype(np.float32)),
                    (f"lora_unet_{name}.alpha", np.asarray(2.0, np.float32))]
    write_safetensors(path, tensors, metadata={"ss_network_module": "networks.lora_flux",
                                               "ss_base_model_version": "flux1"})
    return path


def test_inspect_names_flux_and_the_fused_modules(tmp_path):
    report = inspect_adapter(_sd_scripts_file(tmp_path / "sds.safetensors"))
    assert report["arch"] == "flux" and report["format"] == "kohya"
    assert report["components"] == {"transformer": 11}  # qkv -> 3, linear1 -> 4, four unfused
    assert "to_q" in report["targets"] and "proj_mlp" in report["targets"]
    assert report["fused"]["double_blocks.0.img_attn.qkv"] == "to_q/to_k/to_v (shared down, ranks 4+4+4; split exactly)"
    assert set(report["fused"]) == {"double_blocks.0.img_attn.qkv", "single_blocks.0.linear1"}


def test_sd_scripts_file_round_trips_to_the_same_tensors(tmp_path):
    src = _sd_scripts_file(tmp_path / "sds.safetensors")
    mid = convert(src, tmp_path / "peft", to="peft", dtype="f32")  # keeps alphas; diffusers files fold them
    back = convert(mid, tmp_path / "back.safetensors", to="kohya", dtype="f32")
    want, got = SafetensorsFile(src), SafetensorsFile(back)
    names = want.keys()
    assert set(got.keys()) == set(names)
    for key in names:
        np.testing.assert_allclose(got.get(key), want.get(key), rtol=1e-6, atol=1e-6, err_msg=key)


def _diffusers_made_lora(tmp_path):
    """A Flux LoRA made by diffusers+peft themselves (as ai-toolkit/SimpleTuner save theirs), and its deltas."""
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    model = tiny_transformer(seed=2)
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=[
        "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
        "ff.net.0.proj", "ff.net.2", "proj_mlp", "proj_out", "norm.linear", "x_embedder"]))
    FluxPipeline.save_lora_weights(tmp_path, transformer_lora_layers=get_peft_model_state_dict(model),
                                   weight_name="ai_toolkit.safetensors")
    return tmp_path / "ai_toolkit.safetensors", module_deltas(model, "default")


def test_convert_of_a_diffusers_flux_file_to_kohya_is_exact(tmp_path):
    """Today's wrong refusal: 'kohya files are for Stable Diffusion; this is an LLM adapter'."""
    src, want = _diffusers_made_lora(tmp_path)
    out = convert(src, tmp_path / "kohya.safetensors", to="kohya", dtype="f32")
    adapter = load_adapter(src)
    assert adapter.arch == "flux"
    assert worst_error({n: m.delta() for n, m in adapter.modules.items()}, want) < 1e-6
    meta = SafetensorsFile(out).metadata
    # neither the file nor a base tells dev/schnell: sd-scripts' name for an unknown Flux.1 variant
    assert meta["ss_base_model_version"] == "flux1" and meta["modelspec.architecture"] == "flux-1/lora"
    assert meta["ss_network_module"] == "networks.lora_flux" and "modelspec.prediction_type" not in meta
    names = SafetensorsFile(out).keys()
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in names
    assert "lora_unet_single_blocks_0_linear1.lora_down.weight" in names
    assert worst_error(diffusers_deltas(out), {n: d for n, d in want.items() if "blocks." in n}) <= 1e-4


def test_unknown_tensor_in_a_bfl_file_stops_the_read(tmp_path):
    path = tmp_path / "control.safetensors"
    head = "diffusion_model.double_blocks.0.img_attn."
    write_safetensors(path, [(head + "proj.lora_A.weight", np.ones((2, 16), np.float32)),
                             (head + "proj.lora_B.weight", np.ones((16, 2), np.float32)),
                             (head + "norm.query_norm.scale", np.ones(8, np.float32))])
    with pytest.raises(AdapterError, match="query_norm.scale is not part of a LoRA module"):
        load_adapter(path)


def test_bfl_file_with_lora_a_spelling_reads_as_flux(tmp_path):
    path = tmp_path / "comfy.safetensors"
    rng = np.random.default_rng(5)
    down, up = rng.standard_normal((2, 16)).astype(np.float32), rng.standard_normal((48, 2)).astype(np.float32)
    write_safetensors(path, [("diffusion_model.double_blocks.0.txt_attn.qkv.lora_A.weight", down),
                             ("diffusion_model.double_blocks.0.txt_attn.qkv.lora_B.weight", up)])
    adapter = load_adapter(path)
    assert adapter.source_format == "bfl" and adapter.arch == "flux"
    assert sorted(adapter.modules) == [f"transformer.transformer_blocks.0.attn.add_{p}_proj" for p in "kqv"]
    np.testing.assert_allclose(adapter.modules["transformer.transformer_blocks.0.attn.add_v_proj"].delta(),
                               up[32:] @ down, rtol=1e-6)
    assert json.dumps(inspect_adapter(path)["fused"])


def test_cli_inspect_and_convert_of_an_sd_scripts_flux_file(tmp_path, capsys):
    from extension.cli import main

    src = _sd_scripts_file(tmp_path / "sds.safetensors")
    assert main(["inspect", str(src)]) == 0
    out = capsys.readouterr().out
    assert "arch: flux" in out
    assert "fused: single_blocks.0.linear1 = to_q/to_k/to_v/proj_mlp (shared down, ranks 4+4+4+4" in out
    assert main(["convert", str(src), str(tmp_path / "comfy.safetensors"), "--to", "bfl"]) == 0
    assert load_adapter(tmp_path / "comfy.safetensors").source_format == "bfl"
    assert main(["convert", str(src), str(tmp_path / "x.gguf")]) == 2
    assert "a Flux.1 adapter cannot be a llama.cpp GGUF" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists()


def test_onetrainer_flux_file_reads_like_diffusers_reads_it(flux_model, tmp_path):
    """OneTrainer's ``lora_transformer_<diffusers path>`` names (read only), attention layers with alphas:
    diffusers' own converter for them gives the same deltas."""
    from converters.flux_names import ONETRAINER

    adapter = flux_adapter(flux_model, seed=3)
    attention = {n: m for n, m in adapter.modules.items() if ".attn.to_" in n or ".attn.add_" in n}
    tensors = []
    for name, module in attention.items():
        key = ONETRAINER + name[len("transformer."):].replace(".", "_")
        tensors += [(key + ".lora_down.weight", module.down), (key + ".lora_up.weight", module.up),
                    (key + ".alpha", np.asarray(module.alpha, np.float32))]
    path = tmp_path / "onetrainer.safetensors"
    write_safetensors(path, tensors)
    ours = load_adapter(path)
    assert ours.arch == "flux" and set(ours.modules) == set(attention)
    want = {n: m.delta() for n, m in attention.items()}
    assert worst_error({n: m.delta() for n, m in ours.modules.items()}, want) < 1e-6
    assert worst_error(diffusers_deltas(path), want) <= 1e-4
