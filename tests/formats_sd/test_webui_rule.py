"""kohya output as A1111 applies it equals PEFT's delta, for every LoRA target of the real layouts."""

from __future__ import annotations

import numpy as np
import pytest
from a1111_lora import apply_kohya
from sd_cases import merged_ldm

from converters import convert, load_adapter
from converters.safetensors_io import SafetensorsFile

MULTIPLIER = 0.7


def _expected(case) -> dict[str, np.ndarray]:
    merged = merged_ldm(case, MULTIPLIER)
    out = {}
    for key, value in merged.items():
        diff = value - case.base_ldm[key]
        if np.any(diff != 0):
            out[key] = diff
    return out


@pytest.fixture(scope="module")
def expected(sd_cases):
    return {kind: _expected(case) for kind, case in sd_cases.items()}


@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_webui_delta_equals_peft_delta(sd_cases, expected, tmp_path, kind, dtype):
    case = sd_cases[kind]
    out = convert(case.peft_dir, tmp_path / "lora.safetensors", to="kohya", dtype=dtype, arch=kind)
    st = SafetensorsFile(out)
    tensors = dict(st.items())
    assert all(st.dtype_name(k) == "F32" for k in tensors if k.endswith(".alpha"))
    assert all(st.shape(k) == () for k in tensors if k.endswith(".alpha"))
    deltas, unmatched = apply_kohya(tensors, list(case.base_ldm), kind, MULTIPLIER)
    assert unmatched == []
    want = expected[kind]
    assert set(deltas) == set(want), (sorted(set(want) - set(deltas))[:5], sorted(set(deltas) - set(want))[:5])
    for key, value in want.items():
        scale = float(np.abs(value).max())
        err = float(np.abs(deltas[key] - value).max())
        tol = 1e-5 * scale + 1e-7 if dtype == "f32" else 2e-3 * scale + 1e-6
        assert err <= tol, (key, err, scale)


def test_every_real_layout_target_is_covered(sd_cases):
    """The adapters reach every kind of module a kohya LoCon targets: attention, ff, proj, resnet convs, samplers."""
    names = set(sd_cases["sdxl"].deltas) | set(sd_cases["sd1"].deltas)
    for fragment in ("attn1.to_q", "attn2.to_k", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out",
                     "resnets.0.conv1", "conv_shortcut", "time_emb_proj", "downsamplers.0.conv",
                     "upsamplers.0.conv", "unet.conv_in", "unet.conv_out", "add_embedding.linear_1",
                     "time_embedding.linear_2", "text_encoder.text_model.encoder.layers.1.mlp.fc2",
                     "text_encoder_2.text_model.encoder.layers.0.self_attn.v_proj"):
        assert any(fragment in n for n in names), fragment


def test_openclip_attention_is_completed(sd_cases, tmp_path):
    case = sd_cases["sd2"]
    assert not any("k_proj" in n for n in case.deltas if n.startswith("text_encoder."))
    out = convert(case.peft_dir, tmp_path / "lora.safetensors", to="kohya", arch="sd2")
    keys = SafetensorsFile(out).keys()
    for layer in (0, 1):
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            assert f"lora_te_text_model_encoder_layers_{layer}_self_attn_{proj}.lora_down.weight" in keys
    back = load_adapter(out)
    assert np.all(back.modules["text_encoder.text_model.encoder.layers.0.self_attn.k_proj"].delta() == 0)


def test_sdxl_names_are_ldm_and_prefixes_match_webui(sd_cases, tmp_path):
    out = convert(sd_cases["sdxl"].peft_dir, tmp_path / "x.safetensors", to="kohya")
    keys = SafetensorsFile(out).keys()
    unet = [k for k in keys if k.startswith("lora_unet_")]
    assert unet and not any("down_blocks" in k or "up_blocks" in k or "mid_block" in k for k in unet)
    assert any(k.startswith("lora_unet_label_emb_0_0") for k in keys)
    assert any(k.startswith("lora_unet_output_blocks_2_2_conv") for k in keys)  # up_blocks.0 upsampler
    assert any(k.startswith("lora_te1_text_model_") for k in keys)
    assert any(k.startswith("lora_te2_text_model_") for k in keys)
    sd1 = convert(sd_cases["sd1"].peft_dir, tmp_path / "s.safetensors", to="kohya")
    keys1 = SafetensorsFile(sd1).keys()
    assert any(k.startswith("lora_te_text_model_") for k in keys1)
    assert not any(k.startswith(("lora_te1_", "lora_te2_")) for k in keys1)
