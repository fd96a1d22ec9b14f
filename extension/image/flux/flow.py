"""Flux.1's rectified-flow objective, as kohya sd-scripts' ``flux_train_network.py`` trains it.

noisy = (1 - σ) x + σ ε, the transformer predicts the velocity ε - x. σ is drawn per sample by
``timestep_sampling`` (sd-scripts' meanings): ``sigma`` picks one of the 1000 sigmas of the shifted
flow-matching schedule (``discrete_flow_shift``), ``uniform`` σ ~ U(0, 1), ``sigmoid`` σ = sigmoid(s·n),
``shift`` that sigmoid draw shifted by ``discrete_flow_shift``, ``flux_shift`` by Flux.1 dev's
resolution-dependent shift. Latents enter the transformer as 2x2 patches (``pack``) with
(0, row, column) position ids; text tokens get zero ids.
"""

from __future__ import annotations

import math

import torch

TRAIN_STEPS = 1000


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents -> (B, H/2 * W/2, 4C) tokens of 2x2 patches (Flux's packing)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of ``pack`` for latents of ``height`` x ``width``."""
    b, _, d = tokens.shape
    x = tokens.view(b, height // 2, width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, height, width)


def image_ids(height: int, width: int, device=None) -> torch.Tensor:
    """(H/2 * W/2, 3) position ids of the packed latent tokens: (0, row, column)."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] = torch.arange(height // 2)[:, None]
    ids[..., 2] = torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device)


def text_ids(tokens: int, device=None) -> torch.Tensor:
    """(tokens, 3) zero position ids of the T5 tokens."""
    return torch.zeros(tokens, 3, device=device)


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """The flow-matching shift: shift·σ / (1 + (shift - 1)·σ)."""
    return sigma * shift / (1 + (shift - 1) * sigma)


def dev_mu(tokens: int, base_shift: float = 0.5, max_shift: float = 1.15, base_len: int = 256,
           max_len: int = 4096) -> float:
    """Flux.1 dev's resolution-dependent shift exponent for ``tokens`` packed image tokens."""
    slope = (max_shift - base_shift) / (max_len - base_len)
    return tokens * slope + base_shift - slope * base_len


def time_shift(mu: float, sigma: torch.Tensor) -> torch.Tensor:
    """e^mu / (e^mu + (1/σ - 1)), BFL's ``time_shift`` with exponent 1."""
    return math.exp(mu) / (math.exp(mu) + (1 / sigma - 1))


def sample_sigmas(config, batch: int, generator: torch.Generator, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Per-sample σ in (0, 1] for ``config.timestep_sampling`` (float32, CPU, drawn from ``generator``)."""
    mode = config.timestep_sampling
    scale, shift = float(config.sigmoid_scale), float(config.discrete_flow_shift)
    if mode == "uniform":
        return torch.rand(batch, generator=generator)
    if mode == "sigma":
        index = (torch.rand(batch, generator=generator) * TRAIN_STEPS).long()
        return shift_sigma((TRAIN_STEPS - index).float() / TRAIN_STEPS, shift)
    sigma = torch.sigmoid(scale * torch.randn(batch, generator=generator))
    if mode == "shift":
        return shift_sigma(sigma, shift)
    if mode == "flux_shift":
        h, w = latent_hw
        return time_shift(dev_mu((h // 2) * (w // 2)), sigma)
    return sigma  # sigmoid


def noisy_input(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """(1 - σ) x + σ ε."""
    s = sigmas.view(-1, *([1] * (latents.ndim - 1))).to(latents)
    return (1 - s) * latents + s * noise


def read_prediction(pred: torch.Tensor, noisy: torch.Tensor, sigmas: torch.Tensor, kind: str) -> torch.Tensor:
    """The transformer's output as sd-scripts' ``model_prediction_type`` reads it (raw, additive, sigma_scaled)."""
    if kind == "additive":
        return pred + noisy
    if kind == "sigma_scaled":
        return pred * -sigmas.view(-1, *([1] * (pred.ndim - 1))).to(pred) + noisy
    return pred


def flow_target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity ε - x the transformer learns."""
    return noise - latents


def sampling_sigmas(steps: int, tokens: int, shifted: bool, sampling: dict) -> list[float]:
    """σ from 1 to 0 over ``steps`` Euler steps; Flux.1 dev shifts them by its resolution rule (schnell does not)."""
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    if shifted:
        mu = dev_mu(tokens, sampling["base_shift"], sampling["max_shift"], sampling["base_seq_len"],
                    sampling["max_seq_len"])
        sigmas[:-1] = time_shift(mu, sigmas[:-1])
    return [float(s) for s in sigmas]
