"""diffusers' own loader reads our kohya files and reproduces PEFT's per-layer deltas (uniform alpha)."""

from __future__ import annotations

import numpy as np
import pytest
from sd_cases import peft_deltas

from converters import convert


def _loaded_deltas(pipe, kind: str) -> dict[str, np.ndarray]:
    out = {}
    components = ["unet", "text_encoder"] + (["text_encoder_2"] if kind == "sdxl" else [])
    for component in components:
        model = getattr(pipe, component)
        adapters = {n for _, m in model.named_modules() for n in getattr(m, "lora_A", {})}
        assert len(adapters) == 1, (component, adapters)
        adapter = adapters.pop()
        for name, module in model.named_modules():
            if hasattr(module, "get_delta_weight") and adapter in getattr(module, "lora_A", {}):
                from converters.sd_names import normalize_te_path

                path = normalize_te_path(name) if component != "unet" else name
                out[f"{component}.{path}"] = module.get_delta_weight(adapter).detach().float().numpy()
    return out


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_diffusers_load_lora_weights_reproduces_peft(sd_uniform_cases, tmp_path, kind):
    from extension.tiny.sd import build_pipeline

    case = sd_uniform_cases[kind]
    out = convert(case.peft_dir, tmp_path / "lora.safetensors", to="kohya", dtype="f32", arch=kind)
    pipe = build_pipeline(kind)
    pipe.load_lora_weights(str(out))
    got = _loaded_deltas(pipe, kind)
    assert set(case.deltas) <= set(got), sorted(set(case.deltas) - set(got))[:5]
    # The only extras are the zero q/k/v/out completions of OpenCLIP attention.
    assert all(np.all(got[n] == 0) for n in set(got) - set(case.deltas))
    for name, want in case.deltas.items():
        assert np.allclose(got[name].reshape(want.shape), want, rtol=1e-5, atol=1e-6), name


def test_diffusers_file_loads_in_diffusers_with_exact_alphas(sd_cases, tmp_path):
    """Our diffusers-format file (non-uniform alphas in lora_adapter_metadata) loads exactly."""
    from extension.tiny.sd import build_pipeline

    case = sd_cases["sdxl"]
    out = convert(case.peft_dir, tmp_path / "pytorch_lora_weights.safetensors", to="diffusers", arch="sdxl")
    pipe = build_pipeline("sdxl")
    pipe.load_lora_weights(str(out))
    got = _loaded_deltas(pipe, "sdxl")
    assert set(got) == set(case.deltas)
    for name, want in case.deltas.items():
        assert np.allclose(got[name].reshape(want.shape), want, rtol=1e-5, atol=1e-6), name


def test_peft_folder_we_write_loads_in_peft(sd_cases, tmp_path):
    """PeftModel.from_pretrained on each component folder we write reproduces the deltas."""
    from sd_cases import load_peft_component

    from converters import load_adapter, save_adapter
    from extension.tiny.sd import build_tiny_sd

    case = sd_cases["sdxl"]
    adapter = load_adapter(case.peft_dir)
    out = save_adapter(adapter, tmp_path / "peft_out", to="peft")
    parts = build_tiny_sd("sdxl")
    got = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        model = load_peft_component(parts[component], out / component)
        got.update(peft_deltas(component, model))
    assert set(got) == set(case.deltas)
    for name, want in case.deltas.items():
        assert np.allclose(got[name], want, rtol=1e-6, atol=1e-7), name
