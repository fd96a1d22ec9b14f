"""sd-scripts' Flux.1 metadata on top of the image engine's ``ss_*`` keys (what flux_train_network.py writes)."""

from __future__ import annotations

from typing import Any

from ..._converters import converters

IMPLEMENTATION = "https://github.com/black-forest-labs/flux"


def flux_metadata(meta: dict[str, str], config: Any, base: Any, t5_tokens: int) -> dict[str, str]:
    """``meta`` with the Flux.1 keys: modelspec architecture per variant, no prediction type, the flow settings."""
    out = {k: v for k, v in meta.items() if k not in ("modelspec.prediction_type", "ss_prediction_type")}
    out.update({
        "ss_base_model_version": "flux1",
        "ss_v2": "False",
        "ss_v_parameterization": "False",
        "modelspec.architecture": converters.kohya_metadata.FLUX_SPEC[base.variant],
        "modelspec.implementation": IMPLEMENTATION,
        "ss_guidance_scale": repr(float(config.guidance_scale)),
        "ss_timestep_sampling": str(config.timestep_sampling),
        "ss_sigmoid_scale": repr(float(config.sigmoid_scale)),
        "ss_model_prediction_type": str(config.model_prediction_type),
        "ss_discrete_flow_shift": repr(float(config.discrete_flow_shift)),
        "ss_weighting_scheme": "uniform",
        "ss_apply_t5_attn_mask": "False",
        "ss_t5xxl_max_token_length": str(int(t5_tokens)),
        "ss_fp8_base": str(bool(config.fp8_base)),
    })
    return out
