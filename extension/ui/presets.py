"""Starting points for the Settings form, in the shared config schema."""

from __future__ import annotations

from typing import Any

FLUX_PRESET = "Flux.1 LoRA"
PRESETS: dict[str, dict[str, Any]] = {
    "SD1.5": {
        "resolution": 512, "lora_rank": 16, "lora_alpha": 8, "learning_rate": 1e-4, "batch_size": 2,
        "epochs": 10, "optimizer": "adamw", "lr_scheduler": "cosine", "mixed_precision": "fp16",
        "gradient_checkpointing": False, "train_text_encoder": True, "text_encoder_lr": 5e-5,
    },
    "SDXL low-VRAM": {
        "resolution": 1024, "lora_rank": 8, "lora_alpha": 4, "learning_rate": 1e-4, "batch_size": 1,
        "epochs": 10, "optimizer": "adamw8bit", "lr_scheduler": "constant", "mixed_precision": "bf16",
        "gradient_checkpointing": True, "train_text_encoder": False, "cache_latents": True,
    },
    "SDXL quality": {
        "resolution": 1024, "lora_rank": 32, "lora_alpha": 16, "learning_rate": 1e-4, "batch_size": 2,
        "epochs": 15, "optimizer": "adamw", "lr_scheduler": "cosine", "mixed_precision": "bf16",
        "gradient_checkpointing": True, "train_text_encoder": True, "text_encoder_lr": 1e-5,
        "gradient_accumulation_steps": 2,
    },
    # #14: the frozen UNet kept in fp16 and computed in fp32, the VAE and text encoders freed once their
    # outputs are cached, activations recomputed. 8-bit optimizer state is left out: a rank-8 LoRA's AdamW
    # state is tens of MB, and bitsandbytes is often missing on CPU.
    "Low memory": {
        "resolution": 512, "lora_rank": 8, "lora_alpha": 4, "learning_rate": 1e-4, "batch_size": 1,
        "epochs": 10, "optimizer": "adamw", "lr_scheduler": "constant", "mixed_precision": "no",
        "gradient_checkpointing": True, "train_text_encoder": False, "cache_latents": True,
        "cache_text_encoder_outputs": True, "frozen_weight_dtype": "fp16", "release_encoders": True,
    },
    # #21: sd-scripts' Flux.1 LoRA recipe (flux_train_network.py README: fp8 base, cached latents and T5/CLIP
    # outputs, guidance 1.0, shift sampling with discrete_flow_shift 3.1582, raw prediction), at rank 16;
    # the text encoders are not trained. The host's CLIP-L/T5-XXL/ae picks are added by the tab.
    FLUX_PRESET: {
        "resolution": 512, "lora_rank": 16, "lora_alpha": 16, "learning_rate": 1e-4, "batch_size": 1,
        "epochs": 10, "optimizer": "adamw", "lr_scheduler": "constant", "mixed_precision": "bf16",
        "gradient_checkpointing": True, "train_text_encoder": False, "cache_latents": True,
        "cache_text_encoder_outputs": True, "release_encoders": True, "fp8_base": True, "guidance_scale": 1.0,
        "timestep_sampling": "shift", "discrete_flow_shift": 3.1582, "model_prediction_type": "raw",
    },
}
"""Preset name -> schema values it sets (everything else stays at the schema default)."""


def preset_values(name: str, known: set[str]) -> dict[str, Any]:
    """The preset's values restricted to keys the schema has (renamed keys must not break the tab)."""
    return {k: v for k, v in PRESETS.get(name, {}).items() if k in known}
