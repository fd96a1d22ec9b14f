"""Tiny Stable Diffusion-shaped models built in code: SD1, SD2 (OpenCLIP-style, v-prediction) and SDXL.

Everything is seeded and offline. The shapes are tiny but the layouts are the real ones (two
resnets per down block, SDXL's attention-free first block, ``text_time`` embedding, two text
encoders), so LDM/kohya naming is exercised exactly as on full-size models.

- ``build_tiny_sd(kind)``: the diffusers/transformers components in a dict.
- ``save_tiny_sd_pipeline(kind, folder)``: a diffusers folder (``from_pretrained`` offline).
- ``sd_checkpoint.save_tiny_sd_checkpoint(kind, path)``: an A1111-style single-file ``.safetensors``
  with LDM keys and a sidecar ``<stem>.yaml`` LDM config describing the tiny dims.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

KINDS = ("sd1", "sd2", "sd2-v", "sdxl")

# Tiny dims shared by the builders and the LDM yaml.
UNET_CHANNELS = (32, 64)
LAYERS_PER_BLOCK = 2
HEADS = 4
VAE_CHANNELS = (8, 16)
TE_HIDDEN = 32
TE2_HIDDEN = 48  # SDXL's second (OpenCLIP bigG-style) encoder; differs from TE1 like the real one
TIME_EMBED_DIM = 8  # SDXL addition_time_embed_dim


def _letters() -> list[str]:
    return [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]


def tiny_vocab() -> tuple[dict[str, int], list[str]]:
    """A small byte-level BPE vocabulary and merge list in CLIP's format."""
    tokens = ["!", '"', ",", ".", "-"]
    tokens += _letters()
    tokens += [t + "</w>" for t in _letters()] + [p + "</w>" for p in ("!", ",", ".")]
    merges = [("t", "h"), ("th", "e</w>"), ("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>")]
    tokens += ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, [f"{a} {b}" for a, b in merges]


def write_tokenizer_files(folder: Path) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` for a tiny CLIPTokenizer into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = tiny_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


def build_tokenizer():
    """A tiny CLIPTokenizer (pad token = end of text, as in SD1)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_tokenizer_files(Path(tmp))
        return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>",
                             model_max_length=77)


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown tiny SD kind {kind!r}; use one of {', '.join(KINDS)}")
    return kind


def text_encoder_config(kind: str, second: bool = False):
    """CLIPTextConfig of the (first or SDXL second) text encoder."""
    from transformers import CLIPTextConfig

    vocab, _ = tiny_vocab()
    hidden = TE2_HIDDEN if second else TE_HIDDEN
    openclip = second or kind.startswith("sd2")
    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=hidden * 2 + 5 if not openclip else hidden * 4,
        num_attention_heads=HEADS,
        num_hidden_layers=2,
        max_position_embeddings=77,
        projection_dim=hidden,
        hidden_act="gelu" if openclip else "quick_gelu",
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )


def unet_kwargs(kind: str) -> dict:
    """UNet2DConditionModel keyword arguments for ``kind``."""
    common = dict(
        sample_size=8,
        block_out_channels=UNET_CHANNELS,
        layers_per_block=LAYERS_PER_BLOCK,
        norm_num_groups=8,
        in_channels=4,
        out_channels=4,
    )
    if kind == "sdxl":
        return dict(
            common,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2),
            attention_head_dim=(HEADS, HEADS),
            cross_attention_dim=TE_HIDDEN + TE2_HIDDEN,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + TE2_HIDDEN,
        )
    return dict(
        common,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=HEADS,
        cross_attention_dim=TE_HIDDEN,
        use_linear_projection=kind.startswith("sd2"),
    )


def vae_kwargs(kind: str = "sd1") -> dict:
    """AutoencoderKL keyword arguments (the same shapes for every kind; SDXL's latent scaling factor)."""
    return dict(
        scaling_factor=0.13025 if kind == "sdxl" else 0.18215,
        block_out_channels=VAE_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=16,
    )


def scheduler_for(kind: str):
    """The training noise scheduler: SD defaults, ``v_prediction`` for ``sd2-v``."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        prediction_type="v_prediction" if kind == "sd2-v" else "epsilon",
        clip_sample=False, steps_offset=1,
    )


def build_tiny_sd(kind: str = "sd1", seed: int = 0) -> dict:
    """Build seeded tiny components: unet, vae, text_encoder, tokenizer, scheduler (+ SDXL second encoder)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    _check_kind(kind)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_kwargs(kind))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**vae_kwargs(kind))
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(text_encoder_config(kind))
    parts = {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": build_tokenizer(),
        "scheduler": scheduler_for(kind),
    }
    if kind == "sdxl":
        torch.manual_seed(seed + 3)
        parts["text_encoder_2"] = CLIPTextModelWithProjection(text_encoder_config(kind, second=True))
        parts["tokenizer_2"] = build_tokenizer()
    for module in parts.values():
        if isinstance(module, torch.nn.Module):
            _randomize_norms(module, seed)
            module.eval()
    return parts


def _randomize_norms(module, seed: int) -> None:
    """Give norm layers non-trivial affine weights so checkpoint key mix-ups show up numerically."""
    import torch

    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and sub.weight is not None:
                sub.weight.add_(0.1 * torch.randn(sub.weight.shape, generator=gen))
                sub.bias.add_(0.1 * torch.randn(sub.bias.shape, generator=gen))


def build_pipeline(kind: str = "sd1", seed: int = 0):
    """A diffusers StableDiffusion(XL)Pipeline made of the tiny components."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    parts = build_tiny_sd(kind, seed)
    if kind == "sdxl":
        return StableDiffusionXLPipeline(**parts)
    return StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def save_tiny_sd_pipeline(kind: str, folder: str | Path, seed: int = 0) -> Path:
    """Save a tiny pipeline as a diffusers folder (safetensors) and return the folder."""
    folder = Path(folder)
    build_pipeline(kind, seed).save_pretrained(str(folder), safe_serialization=True)
    return folder

