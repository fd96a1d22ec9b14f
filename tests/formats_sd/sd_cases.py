"""Tiny SD1/SD2/SDXL models with PEFT adapters and their deltas, for the SD format tests.

A module of its own (not ``conftest``): every test folder has a ``conftest``, and a bare
``from conftest import`` gets whichever was imported first."""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2", "conv_shortcut", "time_emb_proj", "conv", "conv_in", "conv_out",
                "linear_1", "linear_2"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
# OpenCLIP-style encoders: leave k_proj out so the kohya writer must complete q/k/v/out.
OPENCLIP_TE_TARGETS = ["q_proj", "v_proj", "out_proj", "fc1", "fc2"]


@dataclass
class SDCase:
    """A tiny model of one kind with a PEFT adapter saved by PEFT itself, and its deltas."""

    kind: str
    peft_dir: Path
    deltas: dict[str, np.ndarray]  # canonical name -> PEFT's delta at scale 1 (torch weight layout)
    base_ldm: dict[str, np.ndarray]
    folder: Path  # diffusers pipeline folder of the base
    checkpoint: Path  # single-file LDM checkpoint of the base
    extras: dict = field(default_factory=dict)


def lora_config(component: str, kind: str, uniform: bool = False):
    """Non-uniform PEFT configs: rank_pattern, alpha_pattern and (UNet) rsLoRA; or one uniform alpha."""
    from peft import LoraConfig

    openclip = component == "text_encoder_2" or (component == "text_encoder" and kind.startswith("sd2"))
    targets = UNET_TARGETS if component == "unet" else OPENCLIP_TE_TARGETS if openclip else TE_TARGETS
    if uniform:
        return LoraConfig(r=4, lora_alpha=2, target_modules=targets, init_lora_weights=False)
    if component == "unet":
        return LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, use_rslora=True,
                          rank_pattern={"attn2.to_k": 2, "conv1": 3, "proj_out": 6},
                          alpha_pattern={"to_v": 5, "conv2": 1.5, "time_emb_proj": 12})
    return LoraConfig(r=4, lora_alpha=3, target_modules=targets, init_lora_weights=False,
                      rank_pattern={"fc1": 2}, alpha_pattern={"layers.1.self_attn.q_proj": 7, "out_proj": 0.5})


def peft_deltas(component: str, model) -> dict[str, np.ndarray]:
    """PEFT's own delta (``get_delta_weight``) of every LoRA layer, under canonical names."""
    from converters.sd_names import normalize_te_path

    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            path = name.removeprefix("base_model.model.")
            path = normalize_te_path(path) if component != "unet" else path
            out[f"{component}.{path}"] = module.get_delta_weight("default").detach().float().numpy().copy()
    return out


def load_peft_component(model, folder):
    """PeftModel.from_pretrained on one component folder we wrote, as a user does on this transformers.

    Our CLIP keys keep ``text_model.``; transformers 5 flattens CLIPTextModel, and PEFT's own
    ``key_mapping`` (the documented way, peft >= 0.16) maps the prefix away there.
    """
    from peft import PeftModel

    if hasattr(model, "encoder") and not hasattr(model, "text_model") and hasattr(model, "embeddings"):
        return PeftModel.from_pretrained(model, str(folder), key_mapping={r"^text_model\.": ""})
    return PeftModel.from_pretrained(model, str(folder))


def build_case(kind: str, root: Path, uniform: bool = False, seed: int = 0) -> SDCase:
    import torch
    from peft import get_peft_model

    from extension.tiny.sd import build_tiny_sd, save_tiny_sd_pipeline
    from extension.tiny.sd_checkpoint import ldm_state_dict, save_tiny_sd_checkpoint

    root.mkdir(parents=True, exist_ok=True)
    parts = build_tiny_sd(kind, seed)
    base_ldm = ldm_state_dict(kind, parts)
    folder = save_tiny_sd_pipeline(kind, root / "base", seed)
    checkpoint = save_tiny_sd_checkpoint(kind, root / "base.safetensors", seed)
    peft_dir = root / "peft"
    deltas: dict[str, np.ndarray] = {}
    components = ["unet", "text_encoder"] + (["text_encoder_2"] if kind == "sdxl" else [])
    for i, component in enumerate(components):
        torch.manual_seed(100 + i)
        model = get_peft_model(copy.deepcopy(parts[component]), lora_config(component, kind, uniform))
        model.save_pretrained(str(peft_dir / component))
        deltas.update(peft_deltas(component, model))
    return SDCase(kind, peft_dir, deltas, base_ldm, folder, checkpoint)


def merged_ldm(case: SDCase, multiplier: float) -> dict[str, np.ndarray]:
    """LDM checkpoint tensors of the base with PEFT's deltas merged at ``multiplier`` (expected result)."""
    import torch

    from extension.tiny.sd import build_tiny_sd
    from extension.tiny.sd_checkpoint import ldm_state_dict

    parts = build_tiny_sd(case.kind, 0)
    with torch.no_grad():
        for name, delta in case.deltas.items():
            component, _, path = name.partition(".")
            model = parts[component]
            try:
                module = model.get_submodule(path)
            except AttributeError:
                module = model.get_submodule(path.removeprefix("text_model."))
            module.weight += multiplier * torch.from_numpy(delta).reshape(module.weight.shape)
    return ldm_state_dict(case.kind, parts)
