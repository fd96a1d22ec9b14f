"""A from-scratch model of how A1111 1.10's built-in Lora extension applies a kohya file.

Written after reading extensions-builtin/Lora/networks.py, lora_convert and network_lora.py
(no code copied). The WebUI names every module of the LDM model by its path with ``.`` -> ``_``
(``diffusion_model_...`` for the UNet; the text encoder's ``wrapped`` modules, prefixed with
the embedder index for SDXL), converts diffusers-style kohya names to those, falls back to
``lora_unet`` -> ``diffusion_model`` and ``lora_te1_text_model`` -> ``0_transformer_text_model``,
maps ``*_q/k/v_proj`` of OpenCLIP onto the fused MultiheadAttention (only when q, k, v and out
are all present), and adds ``up @ down * alpha / rank * multiplier`` to the weight.
"""

from __future__ import annotations

import re

import numpy as np

_RESNET = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1",
           "conv_shortcut": "skip_connection"}


def _suffix(kind: str, rest: str) -> str:
    if kind != "resnets":
        return rest
    for diff, ldm in _RESNET.items():
        if rest == diff or rest.startswith(diff + "_"):
            return ldm + rest[len(diff):]
    return rest


def _openclip(rest: str) -> str:
    return rest.replace("mlp_fc1", "mlp_c_fc").replace("mlp_fc2", "mlp_c_proj").replace("self_attn", "attn")


def convert_name(key: str, is_sd2: bool) -> str:
    """The WebUI's diffusers-name -> compvis-name rewrite (returns ``key`` unchanged if no rule applies)."""
    if m := re.fullmatch(r"lora_unet_conv_in(.*)", key):
        return "diffusion_model_input_blocks_0_0" + m[1]
    if m := re.fullmatch(r"lora_unet_conv_out(.*)", key):
        return "diffusion_model_out_2" + m[1]
    if m := re.fullmatch(r"lora_unet_time_embedding_linear_(\d+)(.*)", key):
        return f"diffusion_model_time_embed_{int(m[1]) * 2 - 2}{m[2]}"
    if m := re.fullmatch(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
        i, j = int(m[1]), int(m[3])
        return f"diffusion_model_input_blocks_{1 + 3 * i + j}_{1 if m[2] == 'attentions' else 0}_{_suffix(m[2], m[4])}"
    if m := re.fullmatch(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", key):
        slot = 1 if m[1] == "attentions" else 2 * int(m[2])
        return f"diffusion_model_middle_block_{slot}_{_suffix(m[1], m[3])}"
    if m := re.fullmatch(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
        i, j = int(m[1]), int(m[3])
        return f"diffusion_model_output_blocks_{3 * i + j}_{1 if m[2] == 'attentions' else 0}_{_suffix(m[2], m[4])}"
    if m := re.fullmatch(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", key):
        return f"diffusion_model_input_blocks_{3 + 3 * int(m[1])}_0_op"
    if m := re.fullmatch(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv", key):
        i = int(m[1])
        return f"diffusion_model_output_blocks_{2 + 3 * i}_{2 if i > 0 else 1}_conv"
    if m := re.fullmatch(r"lora_te_text_model_encoder_layers_(\d+)_(.+)", key):
        if is_sd2:
            return f"model_transformer_resblocks_{m[1]}_{_openclip(m[2])}"
        return f"transformer_text_model_encoder_layers_{m[1]}_{m[2]}"
    if m := re.fullmatch(r"lora_te2_text_model_encoder_layers_(\d+)_(.+)", key):
        return f"1_model_transformer_resblocks_{m[1]}_{_openclip(m[2])}"
    return key


def layer_table(ldm_keys: list[str], kind: str) -> dict[str, tuple[str, str]]:
    """WebUI layer name -> (LDM weight key, layer type) from the keys of a single-file checkpoint.

    Types: ``plain`` (Linear/Conv2d), ``mha`` (OpenCLIP MultiheadAttention: in_proj_weight),
    ``mha_out`` (its out_proj, only updated through the MHA).
    """
    table: dict[str, tuple[str, str]] = {}
    te_roots = {"sdxl": {"conditioner.embedders.0.": "0_", "conditioner.embedders.1.": "1_"}}.get(
        kind, {"cond_stage_model.": ""})
    for key in ldm_keys:
        if key.startswith("model.diffusion_model.") and key.endswith(".weight"):
            table[key[len("model."):-len(".weight")].replace(".", "_")] = (key, "plain")
            continue
        for root, tag in te_roots.items():
            if not key.startswith(root):
                continue
            path = key[len(root):]
            if path.endswith(".attn.in_proj_weight"):
                table[tag + path[: -len(".in_proj_weight")].replace(".", "_")] = (key, "mha")
            elif path.endswith(".attn.out_proj.weight"):
                table[tag + path[: -len(".weight")].replace(".", "_")] = (key, "mha_out")
            elif path.endswith(".weight"):
                table[tag + path[: -len(".weight")].replace(".", "_")] = (key, "plain")
    return table


def _updown(w: dict[str, np.ndarray], multiplier: float) -> np.ndarray:
    down = w["lora_down.weight"].astype(np.float32)
    up = w["lora_up.weight"].astype(np.float32)
    rank = down.shape[0]
    alpha = float(w["alpha"]) if "alpha" in w else None
    scale = alpha / rank if alpha is not None else 1.0
    product = up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)
    return (product.reshape((up.shape[0],) + down.shape[1:]) * scale * multiplier).astype(np.float32)


def apply_kohya(tensors: dict[str, np.ndarray], ldm_keys: list[str], kind: str, multiplier: float):
    """(deltas by LDM weight key, names the WebUI could not match) for a kohya state dict."""
    table = layer_table(ldm_keys, kind)
    is_sd2 = any(name.startswith("model_transformer_resblocks") for name in table)
    networks: dict[str, dict[str, np.ndarray]] = {}
    unmatched = []
    for full_key, value in tensors.items():
        name, part = full_key.split(".", 1)
        key = convert_name(name, is_sd2)
        found = key in table
        if not found and (m := re.fullmatch(r"(.*)_([qkv]_proj)", key)):
            found = m[1] in table
        if not found and "lora_unet" in name:
            key = name.replace("lora_unet", "diffusion_model")
            found = key in table
        elif not found and "lora_te1_text_model" in name:
            key = name.replace("lora_te1_text_model", "0_transformer_text_model")
            found = key in table
            if not found:
                key = name.replace("lora_te1_text_model", "transformer_text_model")
                found = key in table
        if not found:
            unmatched.append(full_key)
            continue
        networks.setdefault(key, {})[part] = value
    deltas: dict[str, np.ndarray] = {}
    for layer, (ldm_key, kind_) in table.items():
        if kind_ == "plain" and layer in networks:
            deltas[ldm_key] = _updown(networks[layer], multiplier)
        elif kind_ == "mha":
            parts = [networks.get(f"{layer}_{p}") for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
            if all(p is not None for p in parts):
                deltas[ldm_key] = np.concatenate([_updown(p, multiplier) for p in parts[:3]], axis=0)
                deltas[table[layer + "_out_proj"][0]] = _updown(parts[3], multiplier)
    return deltas, unmatched
