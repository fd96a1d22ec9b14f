"""Round trips through the canonical form keep every module's effective delta."""

from __future__ import annotations

import numpy as np
import pytest

from converters import convert, load_adapter


def _effective(adapter) -> dict[str, np.ndarray]:
    return {n: m.delta() for n, m in adapter.modules.items()}


def _assert_same(a: dict, b: dict, rtol: float = 1e-6, allow_zero_extras: bool = False) -> None:
    if allow_zero_extras:
        assert set(a) <= set(b)
        assert all(np.all(b[n] == 0) for n in set(b) - set(a))
    else:
        assert set(a) == set(b), (sorted(set(a) ^ set(b))[:5])
    for name, want in a.items():
        scale = float(np.abs(want).max()) or 1.0
        assert np.abs(b[name].reshape(want.shape) - want).max() <= rtol * scale, name


def test_reader_matches_peft_deltas(sd_cases):
    """Our PEFT reader folds rsLoRA, rank_pattern and alpha_pattern exactly as PEFT does."""
    for case in sd_cases.values():
        adapter = load_adapter(case.peft_dir, arch=case.kind)
        _assert_same(case.deltas, _effective(adapter))
        assert len(adapter.ranks()) > 1 and len(adapter.alphas()) > 2


@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
def test_peft_kohya_peft(sd_cases, tmp_path, kind):
    case = sd_cases[kind]
    kohya = convert(case.peft_dir, tmp_path / "k.safetensors", to="kohya", dtype="f32", arch=kind)
    back = convert(kohya, tmp_path / "p", to="peft")
    adapter = load_adapter(back)
    assert adapter.arch == kind
    _assert_same(case.deltas, _effective(adapter), allow_zero_extras=kind != "sd1")


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_peft_diffusers_peft(sd_cases, tmp_path, kind):
    case = sd_cases[kind]
    file = convert(case.peft_dir, tmp_path / "d.safetensors", to="diffusers", arch=kind)
    assert load_adapter(file).source_format == "diffusers"
    back = convert(file, tmp_path / "p", to="peft")
    _assert_same(case.deltas, _effective(load_adapter(back)))


def test_kohya_diffusers_kohya_fp16(sd_cases, tmp_path):
    """The diffusers file carries alpha/rank inside lora_B, so fp16 -> fp16 costs one fp16 rounding."""
    case = sd_cases["sdxl"]
    first = convert(case.peft_dir, tmp_path / "a.safetensors", to="kohya", arch="sdxl")
    via = convert(first, tmp_path / "b.safetensors", to="diffusers")
    again = convert(via, tmp_path / "c.safetensors", to="kohya")
    _assert_same(_effective(load_adapter(first)), _effective(load_adapter(again)), rtol=2.0 ** -10)
    assert load_adapter(first).ranks() == load_adapter(again).ranks()  # the rank padding is undone on read


def test_other_input_spellings(tmp_path):
    """Old diffusers spellings (lora.down/up, lora_linear_layer, processor, adapter infix, .alpha) read alike."""
    from converters.safetensors_io import write_safetensors

    rng = np.random.default_rng(0)
    down, up = rng.standard_normal((2, 8)).astype(np.float32), rng.standard_normal((8, 2)).astype(np.float32)
    base = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    variants = {
        "lora_A": {f"{base}.to_q.lora_A.weight": down, f"{base}.to_q.lora_B.weight": up},
        "infix": {f"{base}.to_q.lora_A.default.weight": down, f"{base}.to_q.lora_B.default.weight": up},
        "lora.down": {f"{base}.to_q.lora.down.weight": down, f"{base}.to_q.lora.up.weight": up},
        "linear_layer": {f"{base}.to_q.lora_linear_layer.down.weight": down,
                         f"{base}.to_q.lora_linear_layer.up.weight": up},
        "processor": {f"{base}.processor.to_q_lora.down.weight": down, f"{base}.processor.to_q_lora.up.weight": up},
    }
    for label, tensors in variants.items():
        path = write_safetensors(tmp_path / f"{label}.safetensors", tensors)
        adapter = load_adapter(path)
        module = adapter.modules[f"{base}.to_q"]
        assert module.alpha == 2.0, label  # no config: alpha = rank
        np.testing.assert_array_equal(module.delta(), up @ down)
    with_alpha = dict(variants["lora.down"], **{f"{base}.to_q.alpha": np.array(1.0, np.float32)})
    path = write_safetensors(tmp_path / "alpha.safetensors", with_alpha)
    assert load_adapter(path).modules[f"{base}.to_q"].alpha == 1.0


def test_reads_diffusers_convert_state_dict_to_kohya_output(sd_uniform_cases, tmp_path):
    """diffusers' own kohya export (diffusers-style SDXL UNet names, alpha = rank) maps to the right modules."""
    import torch
    from diffusers.utils import convert_state_dict_to_kohya
    from safetensors.torch import load_file, save_file

    case = sd_uniform_cases["sdxl"]
    state = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        for key, value in load_file(str(case.peft_dir / component / "adapter_model.safetensors")).items():
            state[f"{component}.{key.removeprefix('base_model.model.')}"] = value
    kohya = {k: v.to(torch.float32).contiguous() for k, v in convert_state_dict_to_kohya(state).items()}
    save_file(kohya, str(tmp_path / "theirs.safetensors"))
    adapter = load_adapter(tmp_path / "theirs.safetensors")
    assert adapter.arch == "sdxl"
    assert set(adapter.modules) == set(case.deltas)
    for name, want in case.deltas.items():  # they wrote alpha = rank (4) where PEFT had lora_alpha 2
        np.testing.assert_allclose(adapter.modules[name].delta().reshape(want.shape), 2 * want, rtol=1e-5, atol=1e-7)


def test_unknown_tensor_in_a_diffusers_file_stops_the_read(tmp_path):
    """Neither a LoRA part nor a full weight: one line naming it, instead of a silently different adapter."""
    from converters import AdapterError
    from converters.safetensors_io import write_safetensors

    rng = np.random.default_rng(0)
    base = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    tensors = {f"{base}.lora_A.weight": rng.standard_normal((2, 8)).astype(np.float32),
               f"{base}.lora_B.weight": rng.standard_normal((8, 2)).astype(np.float32),
               f"{base}.lora_scale_vector": np.ones(8, np.float32)}
    path = write_safetensors(tmp_path / "odd.safetensors", tensors)
    with pytest.raises(AdapterError, match="lora_scale_vector is not a LoRA part"):
        load_adapter(path)
