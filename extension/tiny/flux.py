"""A tiny Flux.1 built in code and saved as the files Forge users hold.

``save_tiny_flux(folder)`` writes a BFL single-file transformer (``flux1-tiny-dev.safetensors``, names
as in ``flux1-dev.safetensors``), ``clip_l.safetensors`` and ``t5xxl.safetensors`` (transformers names,
as comfyanonymous/flux_text_encoders ships them), ``ae.safetensors`` (BFL/LDM VAE names, no
quant convs) and the two tokenizers beside them (``tokenizer/`` CLIP BPE, ``tokenizer_2/`` a unigram
T5 tokenizer). ``all_in_one=True`` writes one ComfyUI/Forge-style checkpoint instead. The shapes
are Flux's own layout at width 16: 64 packed latent channels from a 16-channel VAE, guidance
embedding for dev, none for schnell.
"""

from __future__ import annotations

import string
from pathlib import Path

from .._converters import converters
from ..models.flux_loader import CLIP_PREFIX, T5_PREFIX, TRANSFORMER_PREFIX, VAE_PREFIX
from ..models.flux_weights import diffusers_to_bfl, rope_axes
from .sd import text_encoder_config, write_tokenizer_files
from .sd_checkpoint import vae_ldm

TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=8,
                   num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=32,
                   axes_dims_rope=[2, 2, 4])
VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(16, 16, 16, 16),
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
           layers_per_block=1, norm_num_groups=16, scaling_factor=0.3611, shift_factor=0.1159,
           use_quant_conv=False, use_post_quant_conv=False)


def t5_tokenizer():
    """A tiny T5 tokenizer (unigram over letters, ``</s>`` appended, ``<pad>`` = 0) like T5-XXL's in layout."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + c, -1.0) for c in string.ascii_lowercase]
    pieces += [(c, -2.0) for c in string.ascii_lowercase + string.digits + ",.!-"]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0)


def transformer_kwargs(variant: str = "dev", head_dim: int = 8, widths: tuple[int, int] = (32, 16)) -> dict:
    """The tiny transformer's arguments; ``head_dim`` 16 makes it 32 wide (rows long enough for Q8_0/Q4_0 blocks)."""
    return dict(TRANSFORMER, attention_head_dim=head_dim, axes_dims_rope=rope_axes(head_dim),
                guidance_embeds=variant == "dev", pooled_projection_dim=widths[0], joint_attention_dim=widths[1])


def build_tiny_flux(variant: str = "dev", seed: int = 0, head_dim: int = 8, widths: tuple[int, int] = (32, 16),
                    transformer: bool = True) -> dict:
    """Seeded tiny components: transformer, vae, clip_l, t5xxl, t5 tokenizer.

    ``widths`` = (CLIP-L, T5) hidden sizes, (768, 4096) for encoders that feed a full-size Flux.1 transformer;
    ``transformer=False`` leaves the transformer out (a full-size one is built elsewhere)."""
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    tokenizer = t5_tokenizer()
    torch.manual_seed(seed)
    parts = {"transformer": FluxTransformer2DModel(**transformer_kwargs(variant, head_dim, widths)).eval()} \
        if transformer else {}
    torch.manual_seed(seed + 1)
    parts["vae"] = AutoencoderKL(**VAE).eval()
    torch.manual_seed(seed + 2)
    clip_config = text_encoder_config("sd1")
    if widths[0] != clip_config.hidden_size:
        clip_config.update({"hidden_size": widths[0], "intermediate_size": 2 * widths[0], "num_attention_heads":
                            widths[0] // 64, "num_hidden_layers": 1, "projection_dim": widths[0]})
    parts["clip_l"] = CLIPTextModel(clip_config).eval()
    torch.manual_seed(seed + 3)
    heads = 4 if widths[1] <= 64 else widths[1] // 64
    parts["t5xxl"] = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=widths[1], d_kv=widths[1] // heads, d_ff=32, num_heads=heads,
        num_layers=2 if widths[1] <= 64 else 1, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
        use_cache=False)).eval()
    parts["t5_tokenizer"] = tokenizer
    return parts


def save_safetensors(tensors: dict, path: Path, dtype=None) -> Path:
    """Write ``tensors`` to ``path`` atomically (matrices cast to ``dtype`` when given)."""
    from safetensors.torch import save_file

    out = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() and v.ndim > 1 else v).contiguous()
           for k, v in tensors.items()}
    with converters.atomic.atomic_file(path) as tmp:
        save_file(out, str(tmp))
    return path


def part_states(parts: dict) -> dict[str, dict]:
    """Each part's state dict with the names its file uses (BFL transformer, LDM VAE, transformers encoders)."""
    import torch

    return {
        **({"transformer": diffusers_to_bfl(parts["transformer"].state_dict())} if "transformer" in parts else {}),
        "vae": {k.removeprefix("first_stage_model."): torch.from_numpy(v) for k, v in vae_ldm(parts["vae"]).items()},
        # transformers 5 names CLIP keys without ``text_model.``; the released clip_l.safetensors (and ComfyUI's
        # detection of CLIP-L by ``text_model.encoder.layers.1.mlp.fc1.weight``) has it
        "clip_l": {k if k.startswith("text_model.") else f"text_model.{k}": v
                   for k, v in parts["clip_l"].state_dict().items() if "position_ids" not in k},
        "t5xxl": {k: v for k, v in parts["t5xxl"].state_dict().items() if k != "encoder.embed_tokens.weight"},
    }


def save_city96_gguf(bfl: dict, path: Path, qtype: str) -> Path:
    """A Flux GGUF written the way city96's ``tools/convert.py`` writes one (arch ``flux``, BFL names, 1-D and
    <= 1024-element tensors F32, matrices F16 or, as llama.cpp's quantizer then makes them, ``qtype``; a matrix
    whose rows do not split into ``qtype``'s blocks falls back to F16 as convert.py's QuantError branch does)."""
    gguf = converters.gguf_py.installed_gguf()

    writer = gguf.GGUFWriter(path=None, arch="flux")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if qtype == "F16" else getattr(gguf.LlamaFileType,
                                                                                       f"MOSTLY_{qtype}"))
    for key, tensor in bfl.items():
        data = tensor.detach().float().numpy()
        kind = gguf.GGMLQuantizationType.F32 if data.ndim == 1 or data.size <= 1024 else \
            gguf.GGMLQuantizationType[qtype]
        try:
            packed = gguf.quants.quantize(data, kind)
        except gguf.QuantError:
            kind = gguf.GGMLQuantizationType.F16
            packed = gguf.quants.quantize(data, kind)
        writer.add_tensor(key, packed, raw_dtype=kind)
    with converters.atomic.atomic_file(path) as tmp:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def save_tiny_flux(folder: str | Path, variant: str = "dev", seed: int = 0, all_in_one: bool = False,
                   transformer_dtype=None, gguf_qtype: str | None = None, head_dim: int = 8) -> dict[str, Path]:
    """Write the tiny Flux's files into ``folder``; returns {"base_model", "clip_l", "t5xxl", "ae": path}
    (only ``base_model`` for ``all_in_one``). ``transformer_dtype`` (e.g. ``torch.float8_e4m3fn``) stores
    the transformer's matrices in that dtype, as the fp8/bf16 releases do; ``gguf_qtype`` (Q8_0, Q4_0, F16)
    writes the transformer as a city96 GGUF instead."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parts = build_tiny_flux(variant, seed, head_dim)
    states = part_states(parts)
    write_tokenizer_files(folder / "tokenizer")
    parts["t5_tokenizer"].save_pretrained(str(folder / "tokenizer_2"))
    name = f"flux1-tiny-{variant}"
    if all_in_one:
        merged = {TRANSFORMER_PREFIX + k: v for k, v in states["transformer"].items()}
        for prefix, key in ((CLIP_PREFIX, "clip_l"), (T5_PREFIX, "t5xxl"), (VAE_PREFIX, "vae")):
            merged.update({prefix + k: v for k, v in states[key].items()})
        return {"base_model": save_safetensors(merged, folder / f"{name}-aio.safetensors", transformer_dtype)}
    base = save_city96_gguf(states["transformer"], folder / f"{name}-{gguf_qtype}.gguf", gguf_qtype) if gguf_qtype \
        else save_safetensors(states["transformer"], folder / f"{name}.safetensors", transformer_dtype)
    return {"base_model": base,
            "clip_l": save_safetensors(states["clip_l"], folder / "clip_l.safetensors"),
            "t5xxl": save_safetensors(states["t5xxl"], folder / "t5xxl.safetensors"),
            "ae": save_safetensors(states["vae"], folder / "ae.safetensors")}
