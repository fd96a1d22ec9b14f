"""kohya files: metadata the WebUIs read, kohya-style hashes, name/arch handling of foreign files."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest

from converters import AdapterError, LoraAdapter, LoraModule, load_adapter, save_adapter
from converters.safetensors_io import SafetensorsFile, write_safetensors
from converters.sd_names import canonical_from_kohya, kohya_name

Q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
XL_Q = "unet.down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k"


def _module(rng, rank: int, n_in: int, n_out: int, alpha: float) -> LoraModule:
    return LoraModule(down=rng.standard_normal((rank, n_in)).astype(np.float32),
                      up=rng.standard_normal((n_out, rank)).astype(np.float32), alpha=alpha)


def test_metadata_and_hashes_match_kohya_method(tmp_path):
    """Hashes as kohya computes them: the data section equals the safetensors library's own layout."""
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(0)
    names = [f"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.{p}" for p in ("to_q", "to_k", "to_v")]
    modules = {n: _module(rng, 64, 1280, 1280, 16.0 + i) for i, n in enumerate(names)}  # > 1 MiB: legacy hash used
    adapter = LoraAdapter(modules=modules, arch="sd1", metadata={"ss_tag_frequency": "{}", "other": "dropped"})
    path = save_adapter(adapter, tmp_path / "my_lora.safetensors", to="kohya", metadata={"ss_resolution": "(512, 512)"})
    st = SafetensorsFile(path)
    meta = st.metadata
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_network_dim"] == "64" and meta["ss_network_alpha"] == "Dynamic"
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_v2"] == "False"
    assert meta["ss_output_name"] == "my_lora" and meta["modelspec.title"] == "my_lora"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["ss_resolution"] == "(512, 512)" and meta["ss_tag_frequency"] == "{}"
    assert "other" not in meta
    assert all(st.dtype_name(k) == "F16" for k in st.header if not k.endswith(".alpha"))
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    assert meta["sshs_model_hash"] == hashlib.sha256(data[8 + header_len:]).hexdigest()
    tensors = {k: np.asarray(v) for k, v in st.items()}
    reference = safetensors_numpy.save(tensors, metadata={k: v for k, v in meta.items() if k.startswith("ss_")})
    (ref_len,) = struct.unpack("<Q", reference[:8])
    assert reference[8 + ref_len:] == data[8 + header_len:]  # same tensor order and bytes as the library
    assert meta["sshs_legacy_hash"] == hashlib.sha256(reference[0x100000:0x110000]).hexdigest()[:8]
    back = load_adapter(path)
    assert back.arch == "sd1" and {m.alpha for m in back.modules.values()} == {16.0, 17.0, 18.0}


@pytest.mark.parametrize("arch,version,spec", [
    ("sd2", "sd_v2", "stable-diffusion-v2-512/lora"),
    ("sd2-v", "sd_v2_v", "stable-diffusion-v2-768-v/lora"),
    ("sdxl", "sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora"),
])
def test_arch_metadata_round_trips(tmp_path, arch, version, spec):
    rng = np.random.default_rng(1)
    name = XL_Q if arch == "sdxl" else Q
    adapter = LoraAdapter(modules={name: _module(rng, 4, 32, 32, 4.0)}, arch=arch)
    path = save_adapter(adapter, tmp_path / "a.safetensors", to="kohya")
    meta = SafetensorsFile(path).metadata
    assert meta["ss_base_model_version"] == version and meta["modelspec.architecture"] == spec
    assert meta["ss_v2"] == ("True" if arch.startswith("sd2") else "False")
    assert load_adapter(path).arch == arch


def test_arch_detected_without_metadata(tmp_path):
    rng = np.random.default_rng(2)
    down, up = rng.standard_normal((4, 32)).astype(np.float32), rng.standard_normal((32, 4)).astype(np.float32)
    xl = {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight": down,
          "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight": up}
    adapter = load_adapter(write_safetensors(tmp_path / "xl.safetensors", xl))
    assert adapter.arch == "sdxl"
    assert "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q" in adapter.modules
    # diffusers' convert_state_dict_to_kohya writes lora_te1_ for SD1: read as the SD1 text encoder.
    te1 = {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": down,
           "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": up,
           "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": down,
           "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": up}
    adapter = load_adapter(write_safetensors(tmp_path / "te1.safetensors", te1))
    assert adapter.arch == "sd1"
    assert set(adapter.modules) == {"text_encoder.text_model.encoder.layers.0.mlp.fc1",
                                    "unet.down_blocks.0.attentions.0.proj_in"}
    assert all(m.alpha == 4.0 for m in adapter.modules.values())  # no alpha tensor: alpha = rank


def test_flattened_transformers5_names_are_accepted():
    assert canonical_from_kohya("lora_te_encoder_layers_3_self_attn_q_proj", "sd1") == \
        "text_encoder.text_model.encoder.layers.3.self_attn.q_proj"
    assert kohya_name("text_encoder.encoder.layers.3.self_attn.q_proj", "sd1") == \
        "lora_te_text_model_encoder_layers_3_self_attn_q_proj"
    assert kohya_name("text_encoder_2.text_model.encoder.layers.0.mlp.fc2", "sdxl") == \
        "lora_te2_text_model_encoder_layers_0_mlp_fc2"


def test_kohya_names_round_trip_for_every_layout_module():
    from converters.sd_names import clip_module_names, unet_module_names

    for arch in ("sd1", "sd2", "sdxl"):
        for path in unet_module_names(max_blocks=3, max_transformer_layers=3):
            name = "unet." + path
            assert canonical_from_kohya(kohya_name(name, arch), arch) == name
        for path in clip_module_names(4):
            assert canonical_from_kohya(kohya_name("text_encoder." + path, arch), arch) == "text_encoder." + path
    assert kohya_name("unet.up_blocks.1.upsamplers.0.conv", "sdxl") == "lora_unet_output_blocks_5_2_conv"
    assert kohya_name("unet.mid_block.resnets.1.time_emb_proj", "sdxl") == "lora_unet_middle_block_2_emb_layers_1"


def test_refusals(tmp_path):
    rng = np.random.default_rng(3)
    module = _module(rng, 2, 8, 8, 2.0)
    with pytest.raises(AdapterError, match="second text encoder"):
        save_adapter(LoraAdapter(modules={"text_encoder_2.text_model.encoder.layers.0.mlp.fc1": module}, arch="sd1"),
                     tmp_path / "a.safetensors", to="kohya")
    with pytest.raises(AdapterError, match="modules_to_save"):
        save_adapter(LoraAdapter(modules={Q: module}, arch="sd1", full_weights={"unet.conv_in.weight": np.zeros(3)}),
                     tmp_path / "b.safetensors", to="kohya")
    with pytest.raises(AdapterError, match="LLM"):
        save_adapter(LoraAdapter(modules={"model.layers.0.self_attn.q_proj": module}, arch="llama"),
                     tmp_path / "c.safetensors", to="kohya")
    oft = {"lora_unet_conv_in.oft_blocks": np.zeros((2, 2), np.float32)}
    with pytest.raises(AdapterError, match="oft_blocks is not part of"):
        load_adapter(write_safetensors(tmp_path / "l.safetensors", oft))
    assert not list(tmp_path.glob("[abc].safetensors"))


@pytest.mark.parametrize("dtype,stored", [("f32", "F32"), ("bf16", "BF16")])
def test_model_hash_matches_file_for_every_dtype(tmp_path, dtype, stored):
    rng = np.random.default_rng(4)
    adapter = LoraAdapter(modules={Q: _module(rng, 4, 32, 32, 2.0)}, arch="sd1")
    path = save_adapter(adapter, tmp_path / "a.safetensors", to="kohya", dtype=dtype)
    st = SafetensorsFile(path)
    assert {st.dtype_name(k) for k in st.header if not k.endswith(".alpha")} == {stored}
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    assert st.metadata["sshs_model_hash"] == hashlib.sha256(data[8 + header_len:]).hexdigest()
    tol = 1e-6 if dtype == "f32" else 2e-2
    np.testing.assert_allclose(load_adapter(path).modules[Q].delta(), adapter.modules[Q].delta(), rtol=tol, atol=tol)
