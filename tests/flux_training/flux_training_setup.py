"""Helpers of the Flux.1 training tests (a module of its own name: every test folder has a ``conftest``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

STEPS = 8


def flux_config(files: dict, data: Path, out: Path, **overrides) -> dict:
    """A small, fast Flux.1 config (64 px, rank 4, 16 T5 tokens, a 2-step sample at the end)."""
    values = dict(base_model=str(files["base_model"]), train_data_dir=str(data), output_dir=str(out),
                  output_name="flux_t", resolution=64, min_bucket_reso=64, max_bucket_reso=64, lora_rank=4,
                  lora_alpha=4, learning_rate=1e-2, batch_size=4, max_train_steps=STEPS, seed=3,
                  t5xxl_max_token_length=16, save_precision="fp32", sample_every_n_steps=STEPS,
                  sample_prompts=["a red circle"], sample_steps=2)
    values.update({k: str(files[k]) for k in ("clip_l", "t5xxl", "ae") if k in files})
    values.update(overrides)
    return values


def write_yaml(values: dict, path: Path) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def diffusers_state(path: Path, inner: int | None = None) -> tuple[dict, dict]:
    """(state dict, alphas) of the kohya Flux LoRA ``path`` as diffusers' ``FluxLoraLoaderMixin.lora_state_dict``
    reads it (sd-scripts' conversion run at the tiny width ``inner``, the tiny Flux's own by default; the MLP is
    4x as wide)."""
    from diffusers.loaders import FluxLoraLoaderMixin, lora_conversion_utils, lora_pipeline
    from flux_consumer import INNER, at_tiny_width

    inner = inner or INNER
    original = lora_pipeline._convert_kohya_flux_lora_to_diffusers
    lora_pipeline._convert_kohya_flux_lora_to_diffusers = at_tiny_width(
        lora_conversion_utils._convert_kohya_flux_lora_to_diffusers, "dims=[3072, 3072, 3072, 12288]",
        f"dims=[{inner}, {inner}, {inner}, {4 * inner}]")
    try:
        return FluxLoraLoaderMixin.lora_state_dict(str(path.parent), weight_name=path.name, return_alphas=True)
    finally:
        lora_pipeline._convert_kohya_flux_lora_to_diffusers = original


def diffusers_lora(path: Path, transformer, inner: int | None = None) -> None:
    """Load the kohya Flux LoRA ``path`` into ``transformer`` with diffusers' ``FluxLoraLoaderMixin``."""
    from diffusers.loaders import FluxLoraLoaderMixin

    state, alphas = diffusers_state(path, inner)
    FluxLoraLoaderMixin.load_lora_into_transformer(state, network_alphas=alphas, transformer=transformer,
                                                   adapter_name="t")


def state_deltas(state_dir: Path, alpha: float, component: str = "transformer") -> dict[str, np.ndarray]:
    """{``<component>.<module>``: B @ A * alpha / r} of the trained PEFT layers of ``component`` (``transformer``,
    ``text_encoder`` for CLIP-L), from the run's training state."""
    from extension.training.checkpoint import load_training_state

    lora = load_training_state(state_dir).lora
    out = {}
    for key, down in lora.items():
        owner, _, name = key.partition("/")
        if owner != component or not key.endswith("lora_A.default.weight"):
            continue
        module = name.removesuffix(".lora_A.default.weight")
        up = lora[key.replace("lora_A", "lora_B")]
        out[f"{component}.{module}"] = (up.double() @ down.double() * (alpha / down.shape[0])).float().numpy()
    return out


def fixed_flow_loss(parts: dict, tokenizers: list, data: Path) -> float:
    """Flow loss of ``parts["transformer"]`` on the dataset at fixed noise and σ, packed with diffusers' own
    FluxPipeline helpers and encoded as FluxPipeline encodes prompts (an oracle independent of the engine)."""
    from diffusers import FluxPipeline
    from PIL import Image

    images = sorted(data.glob("*.png"))
    captions = [p.with_suffix(".txt").read_text() for p in images]
    pixels = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32)
                                           .transpose(2, 0, 1) / 127.5 - 1) for p in images])
    vae, transformer = parts["vae"], parts["transformer"]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        latents = (vae.encode(pixels).latent_dist.mean - vae.config.shift_factor) * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=gen)
        sigma = torch.linspace(0.2, 0.8, len(images))
        noisy = (1 - sigma.view(-1, 1, 1, 1)) * latents + sigma.view(-1, 1, 1, 1) * noise
        b, c, h, w = latents.shape
        clip_ids = tokenizers[0](captions, padding="max_length", max_length=77, truncation=True,
                                 return_tensors="pt").input_ids
        t5_ids = tokenizers[1](captions, padding="max_length", max_length=16, truncation=True,
                               return_tensors="pt").input_ids
        pooled = parts["clip_l"](clip_ids).pooler_output
        hidden = parts["t5xxl"](t5_ids)[0]
        pred = transformer(hidden_states=FluxPipeline._pack_latents(noisy, b, c, h, w), encoder_hidden_states=hidden,
                           pooled_projections=pooled, timestep=sigma, guidance=torch.ones(b),
                           img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32),
                           txt_ids=torch.zeros(hidden.shape[1], 3), return_dict=False)[0]
        target = FluxPipeline._pack_latents(noise - latents, b, c, h, w)
    return float(torch.nn.functional.mse_loss(pred, target))
