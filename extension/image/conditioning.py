"""What the UNet is conditioned on: captions -> text-encoder states (cached when static), images -> VAE latents.

Each cached value is computed exactly as the uncached one (one caption or one image at a time, the
VAE sample from its own seeded generator), so caching never changes a run.
"""

from __future__ import annotations

import torch


def time_ids(items, device, dtype) -> torch.Tensor:
    """SDXL's micro-conditioning: original size, crop top-left, target size (h, w order)."""
    rows = [list(it.original_size) + list(it.crop_top_left) + list(it.target_size) for it in items]
    return torch.tensor(rows, dtype=dtype, device=device)


def _text_model(encoder):
    return getattr(encoder, "text_model", encoder)


class Conditioner:
    """Captions -> (hidden states, pooled) the way A1111/diffusers condition each architecture."""

    def __init__(self, base, callables: list, clip_skip: int, device, cache: bool, trainable: bool) -> None:
        self.base = base
        self.trainable = trainable
        self.callables = callables  # the encoders, DDP-wrapped when they train
        self.clip_skip = max(1, clip_skip)
        self.device = device
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] | None = {} if cache else None

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.cache is None:
            with torch.set_grad_enabled(self.trainable):
                return self._encode(captions)
        for caption in dict.fromkeys(captions):
            if caption not in self.cache:
                # One caption at a time: the cached value must not depend on which batch filled it.
                with torch.no_grad():
                    self.cache[caption] = self._encode([caption])
        hidden = torch.cat([self.cache[c][0] for c in captions])
        pooled = torch.cat([self.cache[c][1] for c in captions]) if self.has_pooled() else None
        return hidden, pooled

    def has_pooled(self) -> bool:
        """True when the model is also conditioned on a pooled text embedding (SDXL)."""
        return self.base.is_sdxl

    def _encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        outputs, pooled = [], None
        for tokenizer, encoder, call in zip(self.base.tokenizers, self.base.text_encoders, self.callables,
                                            strict=True):
            length = min(int(tokenizer.model_max_length), int(encoder.config.max_position_embeddings))
            ids = tokenizer(captions, padding="max_length", max_length=length, truncation=True,
                            return_tensors="pt").input_ids.to(self.device)
            out = call(ids, output_hidden_states=True)
            if self.base.is_sdxl:
                outputs.append(out.hidden_states[-(self.clip_skip + 1)])
                if hasattr(out, "text_embeds"):
                    pooled = out.text_embeds
            elif self.clip_skip == 1:
                outputs.append(out.last_hidden_state)
            else:
                outputs.append(_text_model(encoder).final_layer_norm(out.hidden_states[-self.clip_skip]))
        return torch.cat(outputs, dim=-1), pooled


class LatentCache:
    """VAE latents per (item, flip, size); each drawn with its own seeded generator, so cached or not is identical."""

    def __init__(self, vae, seed: int, device, cache: bool) -> None:
        self.vae = vae
        self.seed = seed
        self.device = device
        self.cache: dict | None = {} if cache else None

    def __call__(self, items) -> torch.Tensor:
        out = []
        for it in items:
            key = (it.index, it.flipped, it.bucket)
            latent = self.cache.get(key) if self.cache is not None else None
            if latent is None:
                latent = self._encode(it)
                if self.cache is not None:
                    self.cache[key] = latent
            out.append(latent)
        return torch.cat(out)

    @torch.no_grad()
    def _encode(self, item) -> torch.Tensor:
        pixels = item.pixels.unsqueeze(0).to(self.device, next(self.vae.parameters()).dtype)
        dist = self.vae.encode(pixels).latent_dist
        gen = torch.Generator().manual_seed(self.seed * 7919 + item.index * 2 + int(item.flipped))
        noise = torch.randn(dist.mean.shape, generator=gen).to(dist.mean.device, dist.mean.dtype)
        latent = dist.mean + dist.std * noise
        shift = getattr(self.vae.config, "shift_factor", None)  # Flux's VAE; SD configs have none
        latent = (latent - shift if shift else latent) * self.vae.config.scaling_factor
        return latent.float().cpu()
