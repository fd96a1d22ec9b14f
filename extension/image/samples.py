"""Sample images during training, rendered by diffusers with the LoRA at a given weight.

Prompts accept the WebUI's ``<lora:name:w>`` syntax: the weight is used and the tag removed.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from pathlib import Path

import torch

from .._converters import converters
from ..cancel import cancel_point
from .lora import restore_lora_scales, set_lora_multiplier

_LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>", re.IGNORECASE)


def parse_prompt(prompt: str, default_weight: float = 1.0) -> tuple[str, float]:
    """(prompt without ``<lora:...>`` tags, LoRA weight from the first tag or ``default_weight``)."""
    weight = default_weight
    match = _LORA_TAG.search(prompt)
    if match and match.group(2):
        with contextlib.suppress(ValueError):
            weight = float(match.group(2))
    text = _LORA_TAG.sub("", prompt)
    return re.sub(r"\s+", " ", text).strip(" ,"), weight


def build_pipeline(base, scheduler_name: str = "euler"):
    """A diffusers pipeline around the (LoRA-injected) training components, without safety checker."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    scheduler = EulerDiscreteScheduler.from_config(dict(base.scheduler_config), prediction_type=base.prediction_type)
    if base.is_sdxl:
        return StableDiffusionXLPipeline(
            vae=base.vae, text_encoder=base.text_encoders[0], text_encoder_2=base.text_encoders[1],
            tokenizer=base.tokenizers[0], tokenizer_2=base.tokenizers[1], unet=base.unet, scheduler=scheduler,
        )
    return StableDiffusionPipeline(
        vae=base.vae, text_encoder=base.text_encoders[0], tokenizer=base.tokenizers[0], unet=base.unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


@torch.no_grad()
def _cancel_between_steps(pipe, step, timestep, callback_kwargs):
    """diffusers' step-end callback: a cancelled run stops sampling after the current denoising step."""
    cancel_point()
    return callback_kwargs


def render_samples(base, prompts: list[str], out_dir: str | Path, tag: str, *, size: int, steps: int = 20,
                   guidance: float = 7.0, seed: int = 0, negative: str = "", clip_skip: int = 1,
                   weight: float | None = None) -> list[str]:
    """Render one PNG per prompt as ``<out_dir>/<tag>-<i>.png``; returns the paths.

    ``weight`` overrides the prompt's ``<lora:...>`` weight (0 renders the base model).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = build_pipeline(base)
    pipe.set_progress_bar_config(disable=True)
    models = [base.unet, *base.text_encoders]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    device = next(base.unet.parameters()).device
    paths = []
    try:
        for i, raw in enumerate(prompts):
            cancel_point()
            prompt, tag_weight = parse_prompt(raw)
            previous = set_lora_multiplier(models, tag_weight if weight is None else weight)
            try:
                generator = torch.Generator(device="cpu").manual_seed(int(seed) + i)
                kwargs = dict(prompt=prompt, negative_prompt=negative or None, num_inference_steps=steps,
                              guidance_scale=guidance, height=size, width=size, generator=generator)
                if clip_skip > 1:
                    kwargs["clip_skip"] = clip_skip - 1
                if "callback_on_step_end" in inspect.signature(pipe.__call__).parameters:
                    kwargs["callback_on_step_end"] = _cancel_between_steps
                with torch.autocast(device.type, enabled=False):
                    image = pipe(**kwargs).images[0]
            finally:
                restore_lora_scales(models, previous)
            path = out_dir / f"{tag}-{i}.png"
            with converters.atomic.atomic_file(path) as tmp:
                image.save(tmp, format="PNG")
            paths.append(str(path))
    finally:
        for m, mode in zip(models, modes, strict=False):
            m.train(mode)
    return paths
