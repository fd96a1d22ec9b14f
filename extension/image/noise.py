"""The diffusion loss pieces: noise with offset, timesteps, epsilon/v targets and min-SNR weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def step_generator(seed: int, micro_step: int, rank: int = 0, world: int = 1) -> torch.Generator:
    """A CPU generator for one micro-batch, derived from (seed, step, process).

    Deriving instead of carrying one generator along makes a resumed run draw exactly the same
    noise as an uninterrupted one without saving generator state.
    """
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + micro_step * world + rank) % (2**63 - 1))


def sample_noise(latents: torch.Tensor, generator: torch.Generator, noise_offset: float = 0.0) -> torch.Tensor:
    """Gaussian noise like ``latents``, plus kohya's per-channel offset when ``noise_offset`` > 0."""
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    if noise_offset > 0:
        noise = noise + noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator)
    return noise.to(latents.device, latents.dtype)


def sample_timesteps(batch: int, num_train_timesteps: int, generator: torch.Generator, device) -> torch.Tensor:
    """Uniform training timesteps."""
    return torch.randint(0, num_train_timesteps, (batch,), generator=generator).long().to(device)


def target_for(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet should predict: the noise (epsilon) or the velocity (v-prediction)."""
    prediction = scheduler.config.prediction_type
    if prediction == "epsilon":
        return noise
    if prediction == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction type {prediction!r}")


def snr(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at ``timesteps``."""
    alphas_cumprod = scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)
    a = alphas_cumprod[timesteps]
    return a / (1.0 - a)


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023); v-prediction divides by snr + 1."""
    s = snr(scheduler, timesteps)
    clipped = torch.clamp(s, max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (s + 1.0)
    return clipped / s


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, scheduler, timesteps: torch.Tensor,
                   min_snr_gamma: float | None = None) -> torch.Tensor:
    """Mean squared error in float32, per-sample weighted by min-SNR when ``min_snr_gamma`` is set."""
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=list(range(1, pred.ndim)))
    if min_snr_gamma:
        loss = loss * min_snr_weights(scheduler, timesteps, float(min_snr_gamma))
    return loss.mean()
