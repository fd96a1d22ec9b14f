"""Run inside another venv (the hosts' diffusers/peft/transformers pins): load adapters we wrote with
that venv's own loaders and save every LoRA layer's effective delta to an .npz.

Usage: python consumer_load.py KIND OUT.npz diffusers FILE | peft FOLDER
- ``diffusers``: ``pipe.load_lora_weights(FILE)`` on a tiny KIND pipeline.
- ``peft``: ``PeftModel.from_pretrained`` on each component folder (transformers 5: with PEFT's
  ``key_mapping`` for the flattened CLIPTextModel).
Names in the .npz are canonical (``text_encoder.text_model...``); deltas are PEFT's
``get_delta_weight`` (DoRA-free adapters) at scale 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

NO_LORA_LOADER = 3  # exit code: this diffusers has no LoRA loader with these pins


def _deltas(component: str, model) -> dict[str, np.ndarray]:
    out = {}
    for name, module in model.named_modules():
        adapters = list(getattr(module, "lora_A", {}) or {})
        if hasattr(module, "get_delta_weight") and adapters:
            path = name.removeprefix("base_model.model.")
            if component != "unet" and not path.startswith("text_model."):
                path = "text_model." + path
            out[f"{component}.{path}"] = module.get_delta_weight(adapters[0]).detach().float().numpy()
    return out


def main(kind: str, out: str, how: str, source: str) -> None:
    from extension.tiny.sd import build_pipeline, build_tiny_sd

    components = ["unet", "text_encoder"] + (["text_encoder_2"] if kind == "sdxl" else [])
    found: dict[str, np.ndarray] = {}
    if how == "diffusers":
        from diffusers.utils import USE_PEFT_BACKEND

        if not USE_PEFT_BACKEND:  # diffusers needs transformers >= 4.34 for any LoRA loading
            sys.exit(NO_LORA_LOADER)
        pipe = build_pipeline(kind)
        pipe.load_lora_weights(str(Path(source).parent), weight_name=Path(source).name)
        for component in components:
            found.update(_deltas(component, getattr(pipe, component)))
    else:
        from peft import PeftModel

        parts = build_tiny_sd(kind)
        for component in components:
            model, folder = parts[component], str(Path(source) / component)
            if component != "unet" and not hasattr(model, "text_model"):
                peft_model = PeftModel.from_pretrained(model, folder, key_mapping={r"^text_model\.": ""})
            else:
                peft_model = PeftModel.from_pretrained(model, folder)
            found.update(_deltas(component, peft_model))
    np.savez(out, **found)


if __name__ == "__main__":
    main(*sys.argv[1:5])
