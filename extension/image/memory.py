"""The engine's memory plan: which parts load when, and the VAE/text encoders released once cached.

With ``release_encoders`` (and both caches usable), the run loads only the VAE and the text
encoders first, encodes every latent and caption the whole run will ask for, frees them, and only
then loads the UNet: the frozen encoders never sit in memory next to the UNet. Sample images load
them again for the duration of the render.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

import torch

from ..cancel import cancel_point
from ..models.sd_loader import ALL_PARTS
from ..training.heap import release_free_heap
from .conditioning import Conditioner, LatentCache

ENCODERS = ("vae", "text_encoders")


@dataclass
class MemoryPlan:
    """Decided before the base loads: what to load first, whether to pre-cache and release."""

    release: bool
    unet_storage: str  # fp32 | fp16 | bf16 | auto | bf16-compute, see frozen_weights.storage_dtype

    @property
    def first_parts(self) -> tuple[str, ...]:
        """Parts ``load_sd_base`` builds at once; with release, the UNet waits until the caches are full."""
        return ENCODERS if self.release else ALL_PARTS


def memory_plan(config: Any, data: Any, weight_dtype: torch.dtype) -> MemoryPlan:
    """The plan for ``config`` on ``data`` (an ``ImageData``) when frozen weights compute in ``weight_dtype``."""
    train_te = bool(config.train_text_encoder)
    cache_te = data.text_is_static and not train_te and config.cache_text_encoder_outputs
    cache_latents = data.pixels_are_static and config.cache_latents
    base = str(config.base_model or "")
    single_file = base.lower().endswith(".safetensors")
    release = bool(config.release_encoders) and bool(cache_te) and bool(cache_latents) \
        and single_file
    storage = str(config.frozen_weight_dtype) if weight_dtype == torch.float32 else "fp32"
    if weight_dtype == torch.float32 and config.frozen_compute_dtype == "bf16":
        storage = "bf16-compute"
    return MemoryPlan(release, storage)


def fill_caches(data: Any, encoder: Any, latents_of: Any, epochs: int, rank: int, world: int) -> int:
    """Encode every (image, flip, bucket) latent and every caption of epochs ``0..epochs-1``; returns items seen."""
    seen = 0
    for epoch in range(epochs):
        for batch in data.batches_for_process(epoch, rank, world):
            cancel_point()
            items = [data.item(i, epoch) for i in batch]
            latents_of(items)
            encoder([it.caption for it in items])
            seen += len(items)
    return seen


def release(base: Any, *holders: Any) -> None:
    """Free the VAE and text encoders of ``base`` (and the references ``holders`` keep) and return the memory."""
    base.release_parts(ENCODERS)
    for holder in holders:
        for name in ("vae", "callables"):
            if hasattr(holder, name):
                setattr(holder, name, None if name == "vae" else [])
    trim()


def load_encoders(base: Any) -> None:
    """Bring the released VAE and text encoders back (for sample images), on the UNet's device."""
    base.load_parts(ENCODERS)
    device = next(base.unet.parameters()).device
    [module.requires_grad_(False).to(device) for module in (base.vae, *base.text_encoders)]


def trim() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc keeps them otherwise).

    The encoders were loaded into host memory, so the host heap is trimmed whatever the run's device.
    """
    gc.collect()
    release_free_heap("cpu")


def planned_epochs(config: Any, data: Any, rank: int, world: int) -> int:
    """Epochs the run will touch (as the engine counts them)."""
    import math

    gas = int(config.gradient_accumulation_steps)
    steps_per_epoch = max(1, math.ceil(len(data.batches_for_process(0, rank, world)) / gas))
    max_steps = config.max_train_steps
    total = int(max_steps) if max_steps else steps_per_epoch * int(config.epochs)
    return math.ceil(total / steps_per_epoch)


def cache_then_release(base: Any, data: Any, config: Any, seed: int, device: Any, rank: int,
                       world: int) -> tuple[Conditioner, LatentCache]:
    """Fill both caches for the whole run with the encoders alone in memory, free them, then load the UNet."""
    # No loop variable here: it would keep the last encoder alive while the UNet loads.
    [module.requires_grad_(False).to(device) for module in (base.vae, *base.text_encoders)]
    encoder = Conditioner(base, list(base.text_encoders), int(config.clip_skip), device, True, False)
    latents_of = LatentCache(base.vae, seed, device, True)
    fill_caches(data, encoder, latents_of, planned_epochs(config, data, rank, world), rank, world)
    release(base, encoder, latents_of)
    base.load_parts(("unet",))
    return encoder, latents_of
