"""Module shapes and variant of a Flux.1 base file, as Forge and ComfyUI users hold them.

Read from headers only (safetensors JSON header, GGUF tensor infos), so a 23 GB or a quantized
file is checked in milliseconds:
- BFL single-file transformer (``flux1-dev.safetensors``: ``double_blocks.0.img_attn.qkv.weight``),
  also under ``model.diffusion_model.`` (all-in-one checkpoints, which add
  ``text_encoders.clip_l.transformer.`` / ``text_encoders.t5xxl.transformer.``) or ``diffusion_model.``;
- city96's GGUF transformer (``general.architecture = flux``, BFL names; shapes are the logical
  ones whatever the quantization);
- a diffusers-named transformer file (``single_transformer_blocks.0.attn.to_q.weight``).
Fused BFL weights are split into the canonical (diffusers) modules by ``flux_names.part_sizes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import AdapterError
from .flux_names import COMFY_CLIP, COMFY_T5, bfl_modules, bfl_of_canonical, part_sizes
from .safetensors_io import SAFETENSORS_SUFFIXES, read_header
from .sd_names import normalize_te_path

_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "")
# SD3 has transformer_blocks.N.attn.to_q too: a diffusers-named Flux is told by its single blocks.
_MARKERS = ("double_blocks.0.img_attn.qkv.weight", "single_transformer_blocks.0.attn.to_q.weight")
VARIANTS = ("dev", "schnell", "chroma")


def flux_prefix(names) -> str | None:
    """The prefix under which ``names`` hold a Flux.1 transformer, or None when they hold none."""
    names = set(names)
    for prefix in _PREFIXES:
        if any(prefix + marker in names for marker in _MARKERS):
            return prefix
    return None


def variant_of_names(names, prefix: str = "") -> str | None:
    """dev/schnell/chroma from a transformer's tensor names: only dev has a guidance embedder, only
    Chroma a distilled guidance layer (and no modulation layers)."""
    names = set(names)
    if any(n.startswith(prefix + "distilled_guidance_layer.") for n in names):
        return "chroma"
    guidance = (prefix + "guidance_in.in_layer.weight", prefix + "time_text_embed.guidance_embedder.linear_1.weight")
    if any(g in names for g in guidance):
        return "dev"
    return "schnell"


def canonical_shapes(shapes: dict[str, tuple[int, ...]], prefix: str) -> dict[str, tuple[int, ...]]:
    """{canonical module: weight shape} of a Flux.1 transformer (and text encoders) from tensor shapes."""
    out: dict[str, tuple[int, ...]] = {}
    table, diffusers = bfl_modules(), bfl_of_canonical()
    for key, shape in shapes.items():
        if not key.endswith(".weight"):
            continue
        if key.startswith(COMFY_CLIP):
            out["text_encoder." + normalize_te_path(key[len(COMFY_CLIP):-len(".weight")])] = shape
            continue
        if key.startswith(COMFY_T5):
            out["text_encoder_2." + key[len(COMFY_T5):-len(".weight")]] = shape
            continue
        if not key.startswith(prefix):
            continue
        path = key[len(prefix):-len(".weight")]
        if path in table and len(shape) == 2:
            module = table[path]
            for part, rows in zip(module.parts, part_sizes(module, shape[0], shape[1]), strict=True):
                out[part] = (rows, shape[1])
        elif "transformer." + path in diffusers:
            out["transformer." + path] = shape
    return out


def read_flux_safetensors_shapes(path: Path, shapes: dict[str, tuple[int, ...]]) -> tuple[str, dict]:
    """("flux", canonical shapes) of a safetensors Flux base whose tensor ``shapes`` were read."""
    prefix = flux_prefix(shapes)
    if prefix is None:
        raise AdapterError(f"{path}: not a Flux.1 transformer (no double_blocks.0.img_attn.qkv weight)")
    return "flux", canonical_shapes(shapes, prefix)


def gguf_tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: logical shape (torch order)} of a GGUF file."""
    from .llm_base import open_gguf

    return _gguf_shapes(open_gguf(path))


def _gguf_shapes(reader) -> dict[str, tuple[int, ...]]:
    return {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}


def is_flux_gguf(path: Path) -> bool:
    """True for a GGUF whose ``general.architecture`` is ``flux`` (city96's layout, what Forge loads)."""
    from .llm_base import gguf_field, open_gguf

    return gguf_field(open_gguf(path), "general.architecture") == "flux"


@dataclass(frozen=True)
class FluxBaseFile:
    """What a Flux.1 base file's header tells: where its transformer is, its names, variant and the parts inside."""

    prefix: str  # the transformer's key prefix ("" for the BFL single file and city96's GGUF)
    bfl: bool  # BFL names (False: a diffusers-named transformer)
    variant: str  # dev | schnell | chroma
    parts: dict[str, str]  # {clip_l/t5xxl/ae held beside the transformer (all-in-one): their key prefix}


def header_shapes(path: Path) -> dict[str, tuple[int, ...]] | None:
    """{tensor name: shape} of a safetensors file or a Flux GGUF (headers only); None for other files."""
    path = Path(path)
    if path.suffix.lower() == ".gguf":
        from .llm_base import gguf_field, open_gguf

        reader = open_gguf(path)
        return _gguf_shapes(reader) if gguf_field(reader, "general.architecture") == "flux" else None
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        return None
    header, _ = read_header(path)
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def read_flux_base(path: Path) -> FluxBaseFile | None:
    """The Flux.1 facts of a base file (safetensors or city96 GGUF), None when it holds no Flux.1 transformer.
    The one reader of them: ``inspect``, the tab's model line, preflight and the training loader use it."""
    shapes = header_shapes(path)
    prefix = None if shapes is None else flux_prefix(shapes)
    if prefix is None:
        return None
    return FluxBaseFile(prefix, prefix + _MARKERS[0] in shapes, variant_of_names(shapes, prefix),
                        _parts_of_names(shapes, _INSIDE))


def base_variant(path: Path) -> str | None:
    """dev/schnell/chroma of a Flux base file (safetensors or GGUF), None when it is not one."""
    info = read_flux_base(path)
    return None if info is None else info.variant


def read_flux_base_shapes(path: Path) -> tuple[str, dict[str, tuple[int, ...]]]:
    """("flux", {canonical module: weight shape}) of a Flux.1 base file (safetensors or city96 GGUF)."""
    shapes = header_shapes(path)
    if shapes is None:
        raise AdapterError(f"{path}: not a Flux.1 transformer (a .safetensors or city96 GGUF file holds one)")
    return read_flux_safetensors_shapes(Path(path), shapes)


def adapter_variant(adapter, base: Path | None = None) -> tuple[str | None, str]:
    """(dev/schnell/chroma or None, what told) of a Flux adapter: its base file, sd-scripts' modelspec
    metadata (``flux-1-dev/lora``), or a LoRA on the guidance embedder (dev's only)."""
    if base is not None:
        variant = base_variant(Path(base))
        if variant:
            return variant, "the base file"
    spec = str(adapter.metadata.get("modelspec.architecture", "")).split("/")[0].lower()
    named = {"flux-1-dev": "dev", "flux-1-schnell": "schnell", "chroma": "chroma"}.get(spec)
    if named:
        return named, "modelspec.architecture metadata"
    if any(".guidance_embedder." in name for name in adapter.modules):
        return "dev", "a LoRA on the guidance embedder (only dev has one)"
    return None, "neither metadata nor shapes tell"


# ------------------------------------------------------------------ Forge's "VAE / Text Encoder" files
FLUX_PARTS = ("clip_l", "t5xxl", "ae")
_CLIP_Q = "text_model.encoder.layers.0.self_attn.q_proj.weight"
_T5_Q = "encoder.block.0.layer.0.SelfAttention.q.weight"
_AE_IN = "decoder.conv_in.weight"
_CLIP_G_WIDTH = 1280
_INSIDE = ("text_encoders.clip_l.", "text_encoders.t5xxl.", "vae.", "first_stage_model.")


def _parts_of_names(shapes: dict[str, tuple[int, ...]], prefixes: tuple[str, ...] = ("",)) -> dict[str, str]:
    """{Flux part: key prefix} of what tensors with these names hold: CLIP-L (any width but CLIP-G's 1280, the
    other CLIP a text_encoder folder holds; with or without ``text_model.``, which transformers >= 5 drops),
    T5 and the 16-channel Flux VAE (SD's has 4 latent channels)."""
    found = {}
    for prefix in prefixes:
        for inner in (prefix, prefix + "transformer."):
            clip = shapes.get(inner + _CLIP_Q) or shapes.get(inner + _CLIP_Q.removeprefix("text_model."))
            if clip and clip[-1] != _CLIP_G_WIDTH:
                found["clip_l"] = inner
            if inner + _T5_Q in shapes:
                found["t5xxl"] = inner
        conv = shapes.get(prefix + _AE_IN)
        if conv and len(conv) == 4 and conv[1] == 16:
            found["ae"] = prefix
    return found


def flux_part_kind(path: Path) -> str | None:
    """``clip_l``, ``t5xxl`` or ``ae`` for a text-encoder/VAE file a Flux run can use, None for others
    (an SD VAE, CLIP-G, anything unreadable). GGUF T5 encoders (city96's) count by their architecture."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".gguf":
            from .llm_base import gguf_field, open_gguf

            return "t5xxl" if gguf_field(open_gguf(path), "general.architecture") in ("t5", "t5encoder") else None
        shapes = header_shapes(path)
    except AdapterError:
        return None
    found = _parts_of_names(shapes) if shapes else {}
    return next(iter(found)) if len(found) == 1 else None


def parts_inside(path: Path) -> set[str]:
    """The Flux parts an all-in-one checkpoint holds beside its transformer (ComfyUI/Forge key prefixes)."""
    info = read_flux_base(path)
    return set() if info is None else set(info.parts)
