"""Captions -> Flux.1's conditioning: T5-XXL token states and CLIP-L's pooled embedding (cached like SD's)."""

from __future__ import annotations

from typing import Any

import torch

from ...cancel import cancel_point
from .. import memory
from ..conditioning import Conditioner, LatentCache


class FluxConditioner(Conditioner):
    """(T5 hidden states, CLIP-L pooled output) per caption, as FluxPipeline encodes a prompt."""

    def __init__(self, base: Any, device: Any, cache: bool, t5_length: int) -> None:
        super().__init__(base, list(base.text_encoders), 1, device, cache, False)
        self.t5_length = int(t5_length)

    def has_pooled(self) -> bool:
        """Flux always takes CLIP-L's pooled embedding."""
        return True

    def _encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        clip_tokenizer, t5_tokenizer = self.base.tokenizers
        clip, t5 = self.callables
        ids = clip_tokenizer(captions, padding="max_length", max_length=int(clip_tokenizer.model_max_length),
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        pooled = clip(ids, output_hidden_states=False).pooler_output
        ids = t5_tokenizer(captions, padding="max_length", max_length=self.t5_length, truncation=True,
                           return_tensors="pt").input_ids.to(self.device)
        return t5(ids)[0], pooled


def t5_length(config: Any, base: Any) -> int:
    """T5 tokens per caption: ``t5xxl_max_token_length`` or the variant's default (512 dev, 256 schnell)."""
    given = config.t5xxl_max_token_length
    return int(given) if given else int(base.shipped["t5xxl"]["max_length"])


def encoders_to(base: Any, device: Any) -> None:
    """The VAE and text encoders frozen on ``device`` (float32)."""
    [module.requires_grad_(False).to(device) for module in (base.vae, *base.text_encoders)]


def cache_then_release(base: Any, data: Any, config: Any, seed: int, device: Any, rank: int,
                       world: int) -> tuple[FluxConditioner, LatentCache]:
    """Fill both caches for the whole run with only the encoders loaded, then free them (``memory.release``)."""
    cancel_point()
    encoders_to(base, device)
    encoder = FluxConditioner(base, device, True, t5_length(config, base))
    latents_of = LatentCache(base.vae, seed, device, True)
    memory.fill_caches(data, encoder, latents_of, memory.planned_epochs(config, data, rank, world), rank, world)
    memory.release(base, encoder, latents_of)
    return encoder, latents_of
