"""Captions -> Flux.1's conditioning: T5-XXL token states and CLIP-L's pooled embedding (cached like SD's)."""

from __future__ import annotations

from typing import Any

import torch

from ...cancel import cancel_point
from .. import memory
from ..conditioning import Conditioner, LatentCache


class FluxConditioner(Conditioner):
    """(T5 hidden states, CLIP-L pooled output) per caption, as FluxPipeline encodes a prompt.

    With ``trainable`` (CLIP-L carries a LoRA) only T5's states are cached; CLIP-L runs every step with
    gradients, as sd-scripts' partial cache does when ``--network_train_unet_only`` is absent.
    """

    def __init__(self, base: Any, device: Any, cache: bool, t5_length: int, callables: list | None = None,
                 trainable: bool = False) -> None:
        super().__init__(base, list(callables or base.text_encoders), 1, device, cache, trainable)
        self.t5_length = int(t5_length)

    def has_pooled(self) -> bool:
        """Flux always takes CLIP-L's pooled embedding."""
        return True

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.trainable:
            return super().__call__(captions)
        if self.cache is None:
            with torch.no_grad():
                hidden = self._t5(captions)
        else:
            for caption in dict.fromkeys(captions):
                if caption not in self.cache:
                    with torch.no_grad():
                        self.cache[caption] = (self._t5([caption]), None)
            hidden = torch.cat([self.cache[c][0] for c in captions])
        with torch.enable_grad():
            return hidden, self._clip(captions)

    def _encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._t5(captions), self._clip(captions)

    def _clip(self, captions: list[str]) -> torch.Tensor:
        tokenizer = self.base.tokenizers[0]
        ids = tokenizer(captions, padding="max_length", max_length=int(tokenizer.model_max_length),
                        truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self.callables[0](ids, output_hidden_states=False).pooler_output

    def _t5(self, captions: list[str]) -> torch.Tensor:
        ids = self.base.tokenizers[1](captions, padding="max_length", max_length=self.t5_length, truncation=True,
                                      return_tensors="pt").input_ids.to(self.device)
        return self.callables[1](ids)[0]


def t5_length(config: Any, base: Any) -> int:
    """T5 tokens per caption: ``t5xxl_max_token_length`` or the variant's default (512 dev, 256 schnell)."""
    given = config.t5xxl_max_token_length
    return int(given) if given else int(base.shipped["t5xxl"]["max_length"])


def encoders_to(base: Any, device: Any) -> None:
    """The VAE and text encoders on ``device`` (float32), frozen but for LoRA layers (a trained CLIP-L's)."""
    for module in (base.vae, *base.text_encoders):
        for name, param in module.named_parameters():
            param.requires_grad_("lora_" in name)
        module.to(device)


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
