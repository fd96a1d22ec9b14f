"""Full-size random SD1.5 / SDXL single-file checkpoints (LDM keys, fp16 as real ones ship), for benchmarks.

The models are built on the meta device (no memory), their LDM key -> shape table is derived with
the project's own diffusers -> LDM mapping, and each tensor is drawn and written one at a time, so
even SDXL (3.5 B parameters, 6.9 GB) is written with a few hundred MB of RAM.

    python benchmarks/sd_random_checkpoint.py sd1 /work/big/me/sd15-random.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extension._converters import converters  # noqa: E402
from extension.models.sd_loader import shipped_config  # noqa: E402
from extension.tiny.sd_checkpoint import _vae_key  # noqa: E402

_names = converters.sd_names
_CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
               num_hidden_layers=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
_CLIP_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
               num_hidden_layers=32, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)


def _meta_models(kind: str):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    original = shipped_config(kind)
    unet_cfg = sfu.create_unet_diffusers_config_from_ldm(original, {})
    if kind == "sdxl":
        unet_cfg.update(addition_embed_type="text_time", class_embed_type=None,
                        projection_class_embeddings_input_dim=2816, addition_time_embed_dim=256)
    vae_cfg = sfu.create_vae_diffusers_config_from_ldm(original, {})
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(**vae_cfg)
        encoders = [CLIPTextModel(CLIPTextConfig(**_CLIP_L))]
        if kind == "sdxl":
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(**_CLIP_G)))
    return unet, vae, encoders


def ldm_shapes(kind: str) -> dict[str, tuple[int, ...]]:
    """LDM key -> shape of a full-size ``kind`` (sd1 | sdxl) checkpoint."""
    unet, vae, encoders = _meta_models(kind)
    out: dict[str, tuple[int, ...]] = {}
    up_attn = frozenset(i for i, t in enumerate(unet.config.up_block_types) if "CrossAttn" in t)
    for key, value in unet.state_dict().items():
        out["model.diffusion_model." + _names.unet_to_ldm(key, unet.config.layers_per_block, up_attn)] = \
            tuple(value.shape)
    n_blocks = len(vae.config.block_out_channels)
    for key, value in vae.state_dict().items():
        ldm = _vae_key(key, n_blocks)
        shape = tuple(value.shape)
        if ".mid.attn_1." in ldm and ldm.endswith(".weight") and len(shape) == 2:
            shape = (*shape, 1, 1)
        out["first_stage_model." + ldm] = shape
    te1 = "conditioner.embedders.0.transformer." if kind == "sdxl" else "cond_stage_model.transformer."
    for key, value in encoders[0].state_dict().items():
        if "position_ids" not in key:
            out[te1 + _names.normalize_te_path(key)] = tuple(value.shape)
    if kind == "sdxl":
        out.update(_openclip_shapes(encoders[1].config, "conditioner.embedders.1.model."))
    return out


def _openclip_shapes(cfg, prefix: str) -> dict[str, tuple[int, ...]]:
    h, inter = cfg.hidden_size, cfg.intermediate_size
    out = {prefix + "token_embedding.weight": (cfg.vocab_size, h),
           prefix + "positional_embedding": (cfg.max_position_embeddings, h),
           prefix + "ln_final.weight": (h,), prefix + "ln_final.bias": (h,),
           prefix + "text_projection": (h, cfg.projection_dim), prefix + "logit_scale": ()}
    for n in range(cfg.num_hidden_layers):
        p = f"{prefix}transformer.resblocks.{n}."
        out.update({p + "attn.in_proj_weight": (3 * h, h), p + "attn.in_proj_bias": (3 * h,),
                    p + "attn.out_proj.weight": (h, h), p + "attn.out_proj.bias": (h,),
                    p + "ln_1.weight": (h,), p + "ln_1.bias": (h,), p + "ln_2.weight": (h,), p + "ln_2.bias": (h,),
                    p + "mlp.c_fc.weight": (inter, h), p + "mlp.c_fc.bias": (inter,),
                    p + "mlp.c_proj.weight": (h, inter), p + "mlp.c_proj.bias": (h,)})
    return out


def _draw(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Values with the statistics of PyTorch's default init (norm weights 1, biases 0, embeddings 0.02)."""
    leaf = name.rsplit(".", 1)[-1]
    if not shape:
        return torch.tensor(4.6052)
    norm = any(t in name for t in ("norm", "ln_", "ln_final", "layer_norm")) or ".in_layers.0." in name \
        or ".out_layers.0." in name or name.endswith(("out.0.weight", "out.0.bias")) and len(shape) == 1
    if leaf.endswith("bias") or (len(shape) == 1 and not norm):
        return torch.zeros(shape)
    if len(shape) == 1:
        return torch.ones(shape)
    if "embedding" in name:
        return torch.randn(shape, generator=gen) * 0.02
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=gen) * (1.0 / math.sqrt(3 * fan_in))


def write_random_checkpoint(kind: str, path: Path, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """Write a full-size random ``kind`` checkpoint to ``path`` (one tensor in memory at a time)."""
    shapes = ldm_shapes(kind)
    tag = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}[dtype]
    size = torch.empty((), dtype=dtype).element_size()
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * size
        header[name] = {"dtype": tag, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    gen = torch.Generator().manual_seed(seed)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as out:
        out.write(struct.pack("<Q", len(blob)))
        out.write(blob)
        for name, shape in shapes.items():
            out.write(_draw(name, shape, gen).to(dtype).reshape(-1).view(torch.uint8).numpy().tobytes())
    tmp.replace(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["sd1", "sdxl"])
    parser.add_argument("path", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_random_checkpoint(args.kind, args.path, args.seed)
    print(f"wrote {args.path} ({args.path.stat().st_size / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
