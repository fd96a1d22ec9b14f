"""kohya ``ss_*`` / modelspec metadata of a trained image LoRA (all values strings).

Hashes (``sshs_*``) are computed by the kohya writer from the bytes it writes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..config import TrainConfig, bucket_bounds

_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sd2-v": "sd_v2_v", "sdxl": "sdxl_base_v1-0", "flux": "flux1"}
_SPEC_ARCH = {
    "sd1": "stable-diffusion-v1/lora",
    "sd2": "stable-diffusion-v2-512/lora",
    "sd2-v": "stable-diffusion-v2-768-v/lora",
    "sdxl": "stable-diffusion-xl-v1-base/lora",
    "flux": "flux-1/lora",  # sd-scripts' name when dev/schnell is unknown; image/flux/metadata.py names it
}


def training_metadata(config: TrainConfig, base, data, *, step: int, epoch: int, started_at: float, total_steps: int,
                      world: int = 1, cache_latents: bool = False, num_epochs: int | None = None) -> dict[str, str]:
    """Every metadata key the WebUIs and LoRA browsers read, for the state of the run at ``step``.

    ``epoch`` is 0-based (``ss_epoch`` is 1-based, as kohya writes it); ``num_epochs`` is the number
    of epochs the run has (``max_train_steps`` may cut it short of ``config.epochs``).
    """
    name = str(config.output_name)
    rank, alpha = int(config.lora_rank), float(config.lora_alpha)
    conv_rank = int(config.conv_rank)
    conv_alpha = config.conv_alpha
    batch = int(config.batch_size)
    gas = int(config.gradient_accumulation_steps)
    resolution = int(config.resolution)
    te_lr = config.text_encoder_lr
    train_te = bool(config.train_text_encoder)
    network_args = {}
    if conv_rank:
        network_args = {"conv_dim": str(conv_rank), "conv_alpha": str(conv_alpha if conv_alpha is not None
                                                                      else conv_rank)}
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": _num(alpha),
        "ss_network_args": json.dumps(network_args) if network_args else "null",
        "ss_network_dropout": _num(float(config.lora_dropout)),
        "ss_output_name": name,
        "ss_v2": str(base.arch in ("sd2", "sd2-v")),
        "ss_base_model_version": _VERSION[base.arch],
        "ss_sd_model_name": Path(str(config.base_model)).name,
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_clip_skip": str(int(config.clip_skip)),
        "ss_learning_rate": _num(float(config.learning_rate)),
        "ss_unet_lr": _num(float(config.learning_rate)),
        "ss_text_encoder_lr": _num(float(te_lr if te_lr is not None else config.learning_rate)) if train_te else "0",
        "ss_network_train_unet_only": str(not train_te),
        "ss_batch_size_per_device": str(batch),
        "ss_total_batch_size": str(batch * gas * world),
        "ss_gradient_accumulation_steps": str(gas),
        "ss_gradient_checkpointing": str(config.gradient_checkpointing is True),
        "ss_max_train_steps": str(total_steps),
        "ss_num_epochs": str(num_epochs if num_epochs is not None else int(config.epochs)),
        "ss_epoch": str(epoch + 1),
        "ss_steps": str(step),
        "ss_seed": str(int(config.seed)),
        "ss_mixed_precision": str(config.mixed_precision),
        "ss_full_fp16": "False",
        "ss_save_precision": str(config.save_precision),
        "ss_optimizer": str(config.optimizer),
        "ss_lr_scheduler": str(config.lr_scheduler),
        "ss_lr_warmup_steps": str(config.lr_warmup_steps),
        "ss_max_grad_norm": _num(float(config.max_grad_norm)),
        "ss_noise_offset": _num(float(config.noise_offset)),
        "ss_min_snr_gamma": _num(float(config.min_snr_gamma or 0)),
        "ss_prediction_type": base.prediction_type,
        "ss_v_parameterization": str(base.prediction_type == "v_prediction"),
        "ss_cache_latents": str(bool(cache_latents)),
        "ss_shuffle_caption": str(bool(config.shuffle_caption)),
        "ss_keep_tokens": str(int(config.keep_tokens)),
        "ss_caption_dropout_rate": _num(float(config.caption_dropout_rate)),
        "ss_caption_tag_dropout_rate": _num(float(config.tag_dropout_rate)),
        "ss_flip_aug": str(bool(config.flip_aug)),
        "ss_enable_bucket": str(bool(config.enable_bucket)),
        "ss_min_bucket_reso": str(bucket_bounds(config)[0]),
        "ss_max_bucket_reso": str(bucket_bounds(config)[1]),
        "ss_training_started_at": repr(float(started_at)),
        "ss_training_finished_at": repr(float(time.time())),
        "ss_training_comment": "trained with lora-bridge",
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": _SPEC_ARCH[base.arch],
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models"
        if base.arch == "sdxl" else "diffusers",
        "modelspec.title": name,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started_at)),
        "modelspec.prediction_type": "v" if base.prediction_type == "v_prediction" else "epsilon",
    }
    meta.update({k: str(v) for k, v in data.metadata().items()})
    if config.init_lora:
        # Ranks and alphas came from the init file, not from lora_rank/lora_alpha: the kohya writer
        # states them from the modules themselves.
        for key in ("ss_network_dim", "ss_network_alpha", "ss_network_args"):
            meta.pop(key)
    return meta


def _num(value: float) -> str:
    """Numbers as kohya writes them: ``0.0001``, ``8.0``."""
    return repr(float(value))
