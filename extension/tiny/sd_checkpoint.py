"""Single-file (A1111/LDM) checkpoints of the tiny SD models: diffusers -> LDM key mapping and the yaml.

Only the tiny models are converted here, but the mapping is the general LDM one (UNet blocks,
VAE ``encoder.down.i.block.j``, CLIP ``cond_stage_model.transformer.text_model.*``, OpenCLIP
``model.transformer.resblocks.N`` with fused ``in_proj``), so files match what A1111 and
diffusers' single-file loader read.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import yaml

from .._converters import converters
from . import sd as tiny

_sd_names = converters.sd_names


def _np(tensor) -> np.ndarray:
    return tensor.detach().cpu().float().numpy().copy()


def unet_ldm(unet) -> dict[str, np.ndarray]:
    """UNet state dict with LDM keys (``model.diffusion_model.*``)."""
    config = unet.config
    up_attn = frozenset(i for i, t in enumerate(config.up_block_types) if "CrossAttn" in t)
    out = {}
    for key, value in unet.state_dict().items():
        ldm = _sd_names.unet_to_ldm(key, config.layers_per_block, up_attn)
        out["model.diffusion_model." + ldm] = _np(value)
    return out


_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _vae_key(key: str, n_blocks: int) -> str:
    key = key.replace("conv_norm_out", "norm_out")
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
        return f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.up.{n_blocks - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{n_blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
    return key


def vae_ldm(vae) -> dict[str, np.ndarray]:
    """VAE state dict with LDM keys (``first_stage_model.*``); attention projections become 1x1 convs."""
    n_blocks = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        ldm = _vae_key(key, n_blocks)
        array = _np(value)
        if ".mid.attn_1." in ldm and ldm.endswith(".weight") and array.ndim == 2:
            array = array[:, :, None, None]
        out["first_stage_model." + ldm] = array
    return out


def clip_ldm(text_encoder, prefix: str) -> dict[str, np.ndarray]:
    """OpenAI-CLIP encoder as A1111 stores it: ``<prefix>text_model.*`` (transformers names)."""
    return {prefix + _sd_names.normalize_te_path(k): _np(v) for k, v in text_encoder.state_dict().items()
            if "position_ids" not in k}


def openclip_ldm(text_encoder, prefix: str) -> dict[str, np.ndarray]:
    """OpenCLIP-style encoder (SD2, SDXL TE2): ``<prefix>transformer.resblocks.N.*`` with fused q/k/v."""
    sd = {_sd_names.normalize_te_path(k): _np(v) for k, v in text_encoder.state_dict().items()}
    out = {
        prefix + "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        prefix + "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        prefix + "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        prefix + "ln_final.bias": sd["text_model.final_layer_norm.bias"],
    }
    hidden = out[prefix + "token_embedding.weight"].shape[1]
    if "text_projection.weight" in sd:
        out[prefix + "text_projection"] = np.ascontiguousarray(sd["text_projection.weight"].T)
    else:  # SD2 checkpoints carry a projection the diffusers encoder does not use
        out[prefix + "text_projection"] = np.eye(hidden, dtype=np.float32)
    out[prefix + "logit_scale"] = np.array(4.6052, dtype=np.float32)
    for n in range(text_encoder.config.num_hidden_layers):
        src, dst = f"text_model.encoder.layers.{n}.", f"{prefix}transformer.resblocks.{n}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = np.concatenate(
                [sd[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"], axis=0)
            out[dst + f"attn.out_proj.{kind}"] = sd[src + f"self_attn.out_proj.{kind}"]
            out[dst + f"ln_1.{kind}"] = sd[src + f"layer_norm1.{kind}"]
            out[dst + f"ln_2.{kind}"] = sd[src + f"layer_norm2.{kind}"]
            out[dst + f"mlp.c_fc.{kind}"] = sd[src + f"mlp.fc1.{kind}"]
            out[dst + f"mlp.c_proj.{kind}"] = sd[src + f"mlp.fc2.{kind}"]
    return out


def ldm_state_dict(kind: str, parts: dict) -> dict[str, np.ndarray]:
    """All tensors of a single-file checkpoint for ``kind`` from tiny components."""
    out = unet_ldm(parts["unet"])
    out.update(vae_ldm(parts["vae"]))
    if kind == "sdxl":
        out.update(clip_ldm(parts["text_encoder"], "conditioner.embedders.0.transformer."))
        out.update(openclip_ldm(parts["text_encoder_2"], "conditioner.embedders.1.model."))
    elif kind.startswith("sd2"):
        out.update(openclip_ldm(parts["text_encoder"], "cond_stage_model.model."))
    else:
        out.update(clip_ldm(parts["text_encoder"], "cond_stage_model.transformer."))
    return out


def _first_stage() -> dict:
    vae = tiny.vae_kwargs()
    return {
        "target": "ldm.models.autoencoder.AutoencoderKL",
        "params": {
            "embed_dim": vae["latent_channels"],
            "monitor": "val/rec_loss",
            "ddconfig": {
                "double_z": True, "z_channels": vae["latent_channels"], "resolution": vae["sample_size"],
                "in_channels": 3, "out_ch": 3, "ch": vae["block_out_channels"][0],
                "ch_mult": [c // vae["block_out_channels"][0] for c in vae["block_out_channels"]],
                "num_res_blocks": vae["layers_per_block"], "attn_resolutions": [], "dropout": 0.0,
                "norm_num_groups": vae["norm_num_groups"],  # not an LDM key: the tiny GroupNorm size
            },
            "lossconfig": {"target": "torch.nn.Identity"},
        },
    }


def _unet_params(kind: str) -> dict:
    unet = tiny.unet_kwargs(kind)
    channels = unet["block_out_channels"]
    attn_levels = [i for i, t in enumerate(unet["down_block_types"]) if "CrossAttn" in t]
    params = {
        "use_checkpoint": False, "in_channels": unet["in_channels"], "out_channels": unet["out_channels"],
        "model_channels": channels[0], "attention_resolutions": [2 ** i for i in attn_levels],
        "num_res_blocks": unet["layers_per_block"], "channel_mult": [c // channels[0] for c in channels],
        "num_heads": tiny.HEADS, "num_head_channels": -1, "use_spatial_transformer": True,
        "context_dim": unet["cross_attention_dim"], "legacy": False,
        "norm_num_groups": unet["norm_num_groups"],  # not an LDM key: tells loaders the tiny GroupNorm size
    }
    if kind == "sdxl":
        depth = unet["transformer_layers_per_block"]
        params.update(adm_in_channels=unet["projection_class_embeddings_input_dim"], num_classes="sequential",
                      transformer_depth=[d if i in attn_levels else 0 for i, d in enumerate(depth)],
                      use_linear_in_transformer=True, spatial_transformer_attn_type="softmax-xformers")
    else:
        params.update(image_size=unet["sample_size"], transformer_depth=1,
                      use_linear_in_transformer=unet["use_linear_projection"])
    return params


def ldm_yaml(kind: str) -> str:
    """The LDM/SGM inference config A1111 reads from ``<checkpoint stem>.yaml`` for the tiny dims."""
    if kind == "sdxl":
        config = {"model": {
            "target": "sgm.models.diffusion.DiffusionEngine",
            "params": {
                "scale_factor": 0.13025, "disable_first_stage_autocast": True,
                "denoiser_config": {"target": "sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser", "params": {
                    "num_idx": 1000,
                    "scaling_config": {"target": "sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling"},
                    "discretization_config": {
                        "target": "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"}}},
                "network_config": {"target": "sgm.modules.diffusionmodules.openaimodel.UNetModel",
                                   "params": _unet_params(kind)},
                "conditioner_config": {"target": "sgm.modules.GeneralConditioner", "params": {"emb_models": [
                    {"is_trainable": False, "input_key": "txt",
                     "target": "sgm.modules.encoders.modules.FrozenCLIPEmbedder",
                     "params": {"layer": "hidden", "layer_idx": 0}},
                    {"is_trainable": False, "input_key": "txt",
                     "target": "sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2",
                     "params": {"arch": "ViT-bigG-14", "version": "laion2b_s39b_b160k", "freeze": True,
                                "layer": "penultimate", "always_return_pooled": True, "legacy": False}},
                ] + [{"is_trainable": False, "input_key": key,
                      "target": "sgm.modules.encoders.modules.ConcatTimestepEmbedderND",
                      "params": {"outdim": tiny.TIME_EMBED_DIM}}
                     for key in ("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple")]}},
                "first_stage_config": _first_stage(),
            },
        }}
    else:
        params = {
            "linear_start": 0.00085, "linear_end": 0.012, "num_timesteps_cond": 1, "log_every_t": 200,
            "timesteps": 1000, "first_stage_key": "jpg", "cond_stage_key": "txt",
            "image_size": tiny.unet_kwargs(kind)["sample_size"], "channels": 4, "cond_stage_trainable": False,
            "conditioning_key": "crossattn", "monitor": "val/loss_simple_ema", "scale_factor": 0.18215,
            "use_ema": False,
            "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                            "params": _unet_params(kind)},
            "first_stage_config": _first_stage(),
        }
        if kind == "sd2-v":
            params["parameterization"] = "v"
        if kind.startswith("sd2"):
            params["cond_stage_config"] = {"target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
                                           "params": {"freeze": True, "layer": "penultimate"}}
        else:
            params["cond_stage_config"] = {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"}
        config = {"model": {"base_learning_rate": 1.0e-4, "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
                            "params": params}}
    # Not an LDM key (A1111 reads only model:): CLIP dims that the weights' shapes cannot tell.
    config["text_encoders"] = [{"num_attention_heads": tiny.HEADS} for _ in range(2 if kind == "sdxl" else 1)]
    return yaml.safe_dump(config, sort_keys=False)


def save_tiny_sd_checkpoint(kind: str, path: str | Path, seed: int = 0) -> Path:
    """Write an A1111-style single-file checkpoint with LDM keys plus a sidecar ``<stem>.yaml``."""
    st_io = converters.safetensors_io
    atomic = converters.atomic
    path = Path(path)
    tensors = ldm_state_dict(kind, tiny.build_tiny_sd(kind, seed))
    st_io.write_safetensors(path, tensors, metadata={"format": "pt"})
    with atomic.atomic_file(path.with_suffix(".yaml")) as tmp:
        tmp.write_text(ldm_yaml(kind), encoding="utf-8")
    return path
