"""diffusers' convert_state_dict_to_kohya on a PEFT DoRA adapter names the magnitudes
``<module>.lora_magnitude_vector`` (UNet, with the module's last dot left in): read as DoRA."""

from __future__ import annotations

import json

import numpy as np
import pytest

from converters import AdapterError, convert, load_adapter


def test_diffusers_kohya_dora_keeps_every_magnitude(tmp_path):
    import torch
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file
    from sd_cases import load_peft_component

    from extension.tiny.sd import build_tiny_sd

    parts = build_tiny_sd("sd1")
    torch.manual_seed(0)
    models, state = {}, {}
    targets_of = {"unet": ["to_q", "to_v", "to_out.0", "conv1", "proj_in"], "text_encoder": ["q_proj", "fc1"]}
    for component, targets in targets_of.items():
        model = get_peft_model(parts[component], LoraConfig(r=4, lora_alpha=4, target_modules=targets, use_dora=True,
                                                            init_lora_weights=False))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_magnitude_vector" in name:
                    p.mul_(1.5)  # a trained magnitude, not the base weight's norm
        models[component] = model
        for key, value in get_peft_model_state_dict(model).items():
            state[f"{component}.{key.removeprefix('base_model.model.')}"] = value
    kohya = {k: v.contiguous() for k, v in convert_state_dict_to_kohya(state).items()}
    magnitudes = [k for k in kohya if k.endswith("lora_magnitude_vector")]
    assert magnitudes and any(".to_q.lora_magnitude_vector" in k for k in magnitudes)
    save_file(kohya, str(tmp_path / "dora.safetensors"))

    adapter = load_adapter(tmp_path / "dora.safetensors")
    assert sum(m.magnitude is not None for m in adapter.modules.values()) == len(magnitudes) == len(adapter.modules)
    with pytest.raises(AdapterError, match="DoRA"):
        convert(tmp_path / "dora.safetensors", tmp_path / "k.safetensors", to="kohya")
    folder = convert(tmp_path / "dora.safetensors", tmp_path / "peft", to="peft")
    assert json.loads((folder / "unet" / "adapter_config.json").read_text())["use_dora"] is True
    fresh = build_tiny_sd("sd1")
    with torch.no_grad():
        for component, model in models.items():
            loaded = load_peft_component(fresh[component], folder / component)
            theirs = dict(model.base_model.model.named_modules())
            for name, layer in loaded.base_model.model.named_modules():
                if not hasattr(layer, "lora_magnitude_vector") or "default" not in layer.lora_A:
                    continue
                source = theirs.get(name) or theirs["text_model." + name]
                base = layer.get_base_layer()
                conv = isinstance(base, torch.nn.Conv2d)
                x = torch.randn((1, base.in_channels, 6, 6)) if conv else torch.randn((3, base.in_features))
                want, got = source(x), layer(x)
                assert float((got - want).norm() / (want - source.get_base_layer()(x)).norm()) < 1e-4, name
    assert np.isfinite(next(iter(adapter.modules.values())).magnitude).all()
