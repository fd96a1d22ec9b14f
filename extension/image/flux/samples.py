"""Flux.1 sample images during training: a few flow-matching Euler steps, the LoRA at the prompt's weight."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..._converters import converters
from ...cancel import cancel_point
from ..lora import restore_lora_scales, set_lora_multiplier
from ..samples import parse_prompt
from .flow import image_ids, pack, sampling_sigmas, text_ids, unpack


def velocity(base: Any, model: Any, tokens: torch.Tensor, sigma: float, hidden: torch.Tensor, pooled: torch.Tensor,
             hw: tuple[int, int], guidance: float) -> torch.Tensor:
    """The transformer's velocity for packed ``tokens`` at ``sigma`` (dev: with its guidance embedding)."""
    device, batch = tokens.device, tokens.shape[0]
    return model(hidden_states=tokens, encoder_hidden_states=hidden, pooled_projections=pooled,
                 timestep=torch.full((batch,), float(sigma), device=device),
                 img_ids=image_ids(*hw, device=device), txt_ids=text_ids(hidden.shape[1], device=device),
                 guidance=torch.full((batch,), float(guidance), device=device) if base.has_guidance else None,
                 return_dict=False)[0]


@torch.no_grad()
def denoise(base: Any, encoder: Any, prompt: str, size: int, steps: int, guidance: float, seed: int) -> torch.Tensor:
    """One image (3, H, W) in [-1, 1] from ``steps`` Euler steps of the flow from noise (σ = 1) to σ = 0."""
    vae, model = base.vae, base.transformer
    device = next(model.parameters()).device
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    h = w = max(2, size // factor // 2 * 2)
    hidden, pooled = encoder([prompt])
    hidden, pooled = hidden.to(device), pooled.to(device)
    generator = torch.Generator().manual_seed(int(seed))
    tokens = pack(torch.randn((1, vae.config.latent_channels, h, w), generator=generator)).to(device)
    sigmas = sampling_sigmas(steps, tokens.shape[1], base.has_guidance, base.shipped["sampling"])
    for sigma, following in zip(sigmas[:-1], sigmas[1:], strict=True):
        cancel_point()
        tokens = tokens + (following - sigma) * velocity(base, model, tokens, sigma, hidden, pooled, (h, w), guidance)
    latents = unpack(tokens, h, w) / vae.config.scaling_factor + vae.config.shift_factor
    return vae.decode(latents.to(next(vae.parameters()).dtype)).sample[0].float().clamp(-1, 1)


def render_flux_samples(base: Any, encoder: Any, prompts: list[str], out_dir: str | Path, tag: str, *, size: int,
                        steps: int, guidance: float, seed: int) -> list[str]:
    """One PNG per prompt as ``<out_dir>/<tag>-<i>.png`` (``<lora:name:w>`` sets the LoRA weight); the paths."""
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, paths = base.transformer, []
    mode = model.training
    model.eval()
    try:
        for i, raw in enumerate(prompts):
            prompt, weight = parse_prompt(raw)
            with_lora = [model, *base.text_encoders]  # a trained CLIP-L's LoRA takes the prompt's weight too
            previous = set_lora_multiplier(with_lora, weight)
            try:
                image = denoise(base, encoder, prompt, size, steps, guidance, int(seed) + i)
            finally:
                restore_lora_scales(with_lora, previous)
            pixels = ((image.permute(1, 2, 0).cpu().numpy() + 1) * 127.5).round().astype("uint8")
            path = out_dir / f"{tag}-{i}.png"
            with converters.atomic.atomic_file(path) as tmp:
                Image.fromarray(pixels).save(tmp, format="PNG")
            paths.append(str(path))
    finally:
        model.train(mode)
    return paths
