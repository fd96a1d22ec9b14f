"""Packed weights dequantize exactly like gguf-py; the GGUF/GGML loaders reproduce the HF model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize, quantize

from extension.errors import UserError
from extension.text.gguf_model import load_text_model
from extension.text.quant import PackedLinear, PackedWeight, dequantize_rows

Q = GGMLQuantizationType
IDS = torch.tensor([[1, 5, 100, 270, 280, 3, 9, 300, 2]])


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q6_K, Q.Q5_K, Q.Q3_K, Q.Q2_K,
                                   Q.F16, Q.BF16])
@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
def test_dequantize_matches_gguf_py(qtype, native):
    rng = np.random.default_rng(int(qtype))
    block, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(3, 512 // block * size), dtype=np.uint8)
    if qtype not in (Q.F16, Q.BF16):
        # finite scales: rewrite every f16 scale field with a small value, keep random quants
        raw = _sane_scales(raw, qtype, rng)
    want = dequantize(raw, qtype)
    got = dequantize_rows(torch.from_numpy(raw.copy()), qtype, 512, native=native).numpy()
    finite = np.isfinite(want)
    assert (np.isfinite(got) == finite).all()
    np.testing.assert_array_equal(got[finite], want[finite])


def _sane_scales(raw, qtype, rng):
    block, size = GGML_QUANT_SIZES[qtype]
    blocks = raw.reshape(-1, size)
    offsets = {Q.Q6_K: [size - 2], Q.Q2_K: [size - 4, size - 2], Q.Q3_K: [size - 2]}.get(qtype, [0, 2])
    if qtype in (Q.Q8_0, Q.Q4_0, Q.Q5_0):
        offsets = [0]
    for off in offsets:
        blocks[:, off:off + 2] = rng.uniform(-0.1, 0.1, (blocks.shape[0], 1)).astype(np.float16).view(np.uint8)
    return raw


def test_packed_linear_gradient_matches_float():
    torch.manual_seed(0)
    w = torch.randn(64, 96)
    data = quantize(w.numpy(), Q.Q8_0)
    packed = PackedWeight.from_numpy(data, Q.Q8_0, (64, 96))
    dense = packed.dequantize()
    x = torch.randn(3, 96, requires_grad=True)
    (PackedLinear(packed)(x) ** 2).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    ((x2 @ dense.t()) ** 2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


def _hf_logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


def test_gguf_f32_matches_hf(tiny):
    ours = load_text_model(tiny["F32"]).eval()
    with torch.no_grad():
        out = ours(IDS)
    assert (out - _hf_logits(tiny["model"])).abs().max().item() < 1e-4


def test_qwen2_gguf_matches_hf(tiny_qwen2):
    ours = load_text_model(tiny_qwen2["F32"]).eval()
    with torch.no_grad():
        out = ours(IDS)
    assert ours.config.arch == "qwen2" and ours.config.attn_bias
    assert (out - _hf_logits(tiny_qwen2["model"])).abs().max().item() < 1e-4


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_quantized_gguf_matches_transformers_dequantized(tiny, qtype):
    """transformers' own GGUF loader (dequantizes to float) is the independent reference."""
    import transformers

    folder = tiny[qtype].parent
    try:
        ref = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=tiny[qtype].name).eval()
    except Exception as exc:  # transformers without GGUF support (4.30)
        pytest.skip(f"transformers cannot load GGUF here: {exc}")
    ours = load_text_model(tiny[qtype]).eval()
    with torch.no_grad():
        out = ours(IDS)
    assert (out - _hf_logits(ref)).abs().max().item() < 1e-4
    packed = ours.model.layers[0].self_attn.q_proj.weight
    assert packed.qtype.name == qtype and packed.raw.dtype == torch.uint8  # stays packed


@pytest.mark.parametrize("qtype", ["F32", "Q4_0"])
def test_ggml_v3_loads_like_gguf(tiny, qtype):
    from_gguf = load_text_model(tiny[qtype]).eval()
    from_ggml = load_text_model(tiny[f"ggml-{qtype}"], {"n_kv_heads": 2, "rms_eps": 1e-5}).eval()
    with torch.no_grad():
        assert torch.equal(from_gguf(IDS), from_ggml(IDS))


def test_truncated_gguf_is_a_user_error(tiny, tmp_path):
    data = tiny["Q4_0"].read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(UserError, match="cut.gguf"):
        load_text_model(cut)


def test_unsupported_architecture_lists_supported(tmp_path):
    import gguf

    path = tmp_path / "phi2.gguf"
    writer = gguf.GGUFWriter(str(path), "phi2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    from extension.text.families import SUPPORTED_ARCHES

    with pytest.raises(UserError, match=r"'phi2' is not supported.*" + ", ".join(SUPPORTED_ARCHES)):
        load_text_model(path)
