"""A full-size random-weight Flux.1 dev set as Forge users hold it, for checking real Forge/ComfyUI loaders.

- ``flux1-dev-random-Q4_0.gguf``: the transformer in city96's layout (``general.architecture = flux``, BFL
  names from ``converters.flux_names.bfl_state_dict``), 2-D weights as Q4_0 blocks drawn directly
  (a random fp16 scale per block of 32 and random 4-bit values: no float copy of a weight is ever made),
  biases and norm scales F32: 780 tensors, 11.9 B parameters, 6.71 GB (written with 12 s of CPU here;
  its header passes ``lora-bridge inspect LORA --base`` for a full-size kohya/BFL LoRA, variant dev).
- ``clip_l-random.safetensors`` (fp16, HF ``CLIPTextModel`` names), ``t5xxl-random_fp8_e4m3fn.safetensors``
  (T5-XXL encoder, 2-D weights float8 e4m3fn as the usual fp8 file, the rest fp16; NaN codes avoided) and
  ``ae-random.safetensors`` (the 16-channel Flux VAE, BFL/LDM names), as Forge's models/text_encoder and
  models/VAE hold them.

Shapes come from diffusers/transformers models on the meta device; each tensor is drawn and written one
at a time (a few hundred MB of RAM at most). Wrap in ``flock /work/.bigmem-lock`` on shared machines.

    python benchmarks/flux_random_checkpoint.py OUT_DIR [--parts transformer,clip_l,t5xxl,ae]
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extension._converters import converters  # noqa: E402
from extension.tiny.sd_checkpoint import _vae_key  # noqa: E402

_CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
               num_hidden_layers=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
_T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
               relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", is_encoder_decoder=False)
_FLUX_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=[128, 256, 512, 512],
                 down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                 layers_per_block=2, norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False)
Q4_0_BLOCK, Q4_0_BYTES = 32, 18


def transformer_shapes() -> dict[str, tuple[int, ...]]:
    """{BFL name: shape} of the full-size Flux.1 dev transformer (19 double, 38 single blocks, width 3072)."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(guidance_embeds=True)
    state = converters.flux_names.bfl_state_dict(model.state_dict(), torch.cat)
    return {k: tuple(v.shape) for k, v in state.items()}


def _q4_0(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random Q4_0 blocks for a (rows, cols) weight: scales so the values' std is about 1/sqrt(cols)."""
    rows, cols = shape
    blocks = rng.integers(0, 256, size=(rows, cols // Q4_0_BLOCK, Q4_0_BYTES), dtype=np.uint8)
    scale = np.float16(1.0 / (4.6 * np.sqrt(cols)))  # (q - 8) for q uniform in 0..15 has std 4.6
    blocks[..., :2] = np.frombuffer(scale.tobytes(), np.uint8)
    return blocks.reshape(rows, -1)


def write_transformer_gguf(path: Path, seed: int = 0) -> Path:
    """The city96-layout Q4_0 GGUF of a random full-size Flux.1 dev transformer."""
    import gguf

    rng = np.random.default_rng(seed)
    shapes = transformer_shapes()
    writer = gguf.GGUFWriter(str(path), arch="flux")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    quantized = {k for k, s in shapes.items() if len(s) == 2 and s[1] % Q4_0_BLOCK == 0}
    for name, shape in shapes.items():
        if name in quantized:
            nbytes = shape[0] * shape[1] // Q4_0_BLOCK * Q4_0_BYTES
            writer.add_tensor_info(name, (shape[0], nbytes // shape[0]), np.dtype(np.uint8), nbytes,
                                   raw_dtype=gguf.GGMLQuantizationType.Q4_0)
        else:
            writer.add_tensor_info(name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name, shape in shapes.items():
        if name in quantized:
            writer.write_tensor_data(_q4_0(shape, rng))
        elif name.endswith(".scale"):
            writer.write_tensor_data(np.ones(shape, np.float32))
        else:
            writer.write_tensor_data((rng.standard_normal(shape) * 0.02).astype(np.float32))
    writer.close()
    return path


def _fp8_e4m3(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random float8 e4m3fn bytes with |x| < 0.5 and no NaN code (sign, exponent <= 5, any mantissa)."""
    raw = rng.integers(0, 256, size=shape, dtype=np.uint8)
    return (raw & 0x87) | ((raw % 6).astype(np.uint8) << 3)


def write_streaming_safetensors(path: Path, shapes: dict[str, tuple[tuple[int, ...], str]], draw) -> Path:
    """A safetensors file whose tensors ``draw(name, shape, dtype)`` makes one at a time (bytes in file order)."""
    sizes = {"F16": 2, "F32": 4, "F8_E4M3": 1}
    header, offset = {}, 0
    for name, (shape, dtype) in shapes.items():
        size = int(np.prod(shape)) * sizes[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as handle:
        handle.write(struct.pack("<Q", len(blob)) + blob)
        for name, (shape, dtype) in shapes.items():
            handle.write(np.ascontiguousarray(draw(name, shape, dtype)).tobytes())
    tmp.replace(path)
    return path


def _meta_state(factory) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = factory()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def write_clip_l(path: Path, seed: int = 1) -> Path:
    from transformers import CLIPTextConfig, CLIPTextModel

    rng = np.random.default_rng(seed)
    shapes = _meta_state(lambda: CLIPTextModel(CLIPTextConfig(**_CLIP_L)))
    # the file spells HF's names with text_model. (some transformers releases drop it from the state dict)
    shapes = {("" if k.startswith("text_model.") else "text_model.") + k: (s, "F16") for k, s in shapes.items()
              if not k.endswith("position_ids")}
    return write_streaming_safetensors(path, shapes, lambda n, s, d: _normal_f16(n, s, rng))


def write_t5xxl_fp8(path: Path, seed: int = 2, layers: int = 24, fp8: bool = True) -> Path:
    """T5-XXL encoder weights; ``layers`` < 24 keeps the full width (4096) with fewer blocks, ``fp8=False``
    writes every tensor fp16 (as ``t5xxl_fp16.safetensors``)."""
    from transformers import T5Config, T5EncoderModel

    rng = np.random.default_rng(seed)
    shapes = _meta_state(lambda: T5EncoderModel(T5Config(**dict(_T5_XXL, num_layers=layers))))
    table = {k: (s, "F8_E4M3" if fp8 and len(s) == 2 and k.startswith("encoder.block.") and "relative" not in k
                 else "F16")
             for k, s in shapes.items() if k != "encoder.embed_tokens.weight"}  # tied to shared.weight
    return write_streaming_safetensors(
        path, table, lambda n, s, d: _fp8_e4m3(s, rng) if d == "F8_E4M3" else _normal_f16(n, s, rng))


def write_ae(path: Path, seed: int = 3) -> Path:
    from diffusers import AutoencoderKL

    rng = np.random.default_rng(seed)
    shapes = _meta_state(lambda: AutoencoderKL(**_FLUX_VAE))
    n_blocks = len(_FLUX_VAE["block_out_channels"])
    table = {}
    for key, shape in shapes.items():
        ldm = _vae_key(key, n_blocks)
        if ".mid.attn_1." in ldm and ldm.endswith(".weight") and len(shape) == 2:
            shape = shape + (1, 1)  # LDM's attention projections are 1x1 convolutions (as vae_ldm writes them)
        table[ldm] = (shape, "F32")
    return write_streaming_safetensors(path, table, lambda n, s, d: _normal_f16(n, s, rng).astype(np.float32))


def _normal_f16(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "layer_norm.weight", ".scale")) or \
            ("norm" in name and len(shape) == 1 and name.endswith("weight")):
        return np.ones(shape, np.float16)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(max(fan_in, 1))).astype(np.float16)


PARTS = {"transformer": ("flux1-dev-random-Q4_0.gguf", write_transformer_gguf),
         "clip_l": ("clip_l-random.safetensors", write_clip_l),
         "t5xxl": ("t5xxl-random_fp8_e4m3fn.safetensors", write_t5xxl_fp8),
         "ae": ("ae-random.safetensors", write_ae)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--parts", default=",".join(PARTS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for part in args.parts.split(","):
        name, write = PARTS[part]
        path = write(args.out / name)
        print(f"{part}: {path} ({path.stat().st_size / 1e9:.2f} GB)", flush=True)


if __name__ == "__main__":
    main()
