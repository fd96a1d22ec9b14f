"""Load a Flux.1 base for training, offline, from the files Forge users hold.

- the BFL single-file transformer (``flux1-dev.safetensors``; bf16, fp16 or float8_e4m3fn weights) with the
  separate ``clip_l``, ``t5xxl`` and ``ae`` files (Forge's ``models/text_encoder`` and ``models/VAE``);
- all-in-one checkpoints as ComfyUI/Forge save them: ``model.diffusion_model.*``,
  ``text_encoders.clip_l.transformer.*``, ``text_encoders.t5xxl.transformer.*``, ``vae.*``.

Every config comes from the weights' shapes; what shapes cannot tell (rope axes, the VAE's latent
scale and shift, T5's gated-GELU) from the small configs shipped in ``configs/flux-*.json``.
dev or schnell is read from the transformer: schnell has no guidance embedding. The frozen
transformer's linear weights are stored in the dtype the memory plan asks for and upcast layer by
layer (``image/frozen_weights.py``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..cancel import cancel_point
from ..errors import UserError
from .flux_weights import bfl_to_diffusers, transformer_config
from .tokenizers import load_clip_tokenizer, load_t5_tokenizer, tokenizer_subfolder

CONFIG_DIR = Path(__file__).with_name("configs")
TRANSFORMER_PREFIX = "model.diffusion_model."
CLIP_PREFIX = "text_encoders.clip_l.transformer."
T5_PREFIX = "text_encoders.t5xxl.transformer."
VAE_PREFIX = "vae."
PARTS = ("transformer", "vae", "text_encoders")


def shipped_flux_config(variant: str) -> dict:
    """The shipped config of Flux.1 ``dev`` or ``schnell``."""
    return json.loads((CONFIG_DIR / f"flux-{variant}.json").read_text())


def _open(path: Path, what: str):
    from .._converters import converters
    from ..image.lazy_checkpoint import LazyCheckpoint

    if not path.is_file():
        raise UserError(f"{path}: {what} not found; check the path")
    if what == "base model" and path.suffix.lower() == ".gguf":
        from .flux_gguf import GGUFTensors

        return GGUFTensors(path)
    if path.suffix.lower() not in converters.safetensors_io.SAFETENSORS_SUFFIXES:
        raise UserError(f"{path}: the Flux.1 {what} must be a .safetensors (or .sft) file"
                        + (" (or a city96 GGUF)" if what == "base model" else ""))
    return LazyCheckpoint(path)


def flux_base_file(path: str | Path | None):
    """``converters.flux_base.FluxBaseFile`` of ``path`` (prefix, names, variant, parts inside), None when it is no
    Flux.1 base or unreadable."""
    from .._converters import converters

    path = Path(str(path or "")).expanduser()
    if not path.is_file():
        return None
    try:
        return converters.flux_base.read_flux_base(path)
    except converters.AdapterError:
        return None


def is_flux_base(path: str | Path | None) -> bool:
    """True when ``path`` is a Flux.1 transformer or all-in-one checkpoint."""
    return flux_base_file(path) is not None


@dataclass
class FluxFiles:
    """Where each part comes from: (file, key prefix), and the variant the transformer's tensors tell."""

    transformer: tuple[Path, str]
    clip: tuple[Path, str]
    t5: tuple[Path, str]
    vae: tuple[Path, str]
    variant: str = "dev"


PART_KEYS = {"clip_l": "CLIP-L text encoder", "t5xxl": "T5-XXL text encoder", "ae": "VAE"}
PART_WORDS = {"clip_l": "the CLIP-L text encoder", "t5xxl": "the T5-XXL text encoder", "ae": "the Flux VAE (ae)"}


def find_files(config: Any) -> FluxFiles:
    """The part files of ``config`` (``base_model`` plus ``clip_l``/``t5xxl``/``ae``, or one all-in-one file).

    One line for a base that is no trainable Flux.1 transformer, a part neither given nor inside the base,
    and a part file of the wrong kind (the VAE given as clip_l)."""
    from .._converters import converters

    base = Path(str(config.base_model)).expanduser()
    info = flux_base_file(base)
    if info is None:
        raise UserError(f"{base}: not a Flux.1 transformer (no double_blocks.*/single_blocks.* tensors); set "
                        "base_model to flux1-dev/schnell .safetensors or leave model_arch on auto")
    if not info.bfl or info.variant == "chroma":
        what = "Chroma" if info.variant == "chroma" else "a diffusers-named Flux.1 transformer"
        raise UserError(f"{base.name}: {what} is not trained here; give the BFL single file (flux1-dev/schnell "
                        ".safetensors), an all-in-one checkpoint or a city96 GGUF")

    def part(key: str) -> tuple[Path, str]:
        given = getattr(config, key)
        if not given:
            if key in info.parts:
                return base, info.parts[key]
            raise UserError(f"{base.name}: a Flux.1 transformer without {PART_WORDS[key]}; choose its file in {key} "
                            f"(Forge keeps it in models/{'VAE' if key == 'ae' else 'text_encoder'})")
        path = Path(str(given)).expanduser()
        _open(path, PART_KEYS[key])  # found, a .safetensors file, a readable header
        kind = converters.flux_base.flux_part_kind(path)
        if kind != key:
            found = PART_WORDS[kind] if kind else "no Flux text encoder or VAE"
            raise UserError(f"{path}: given as {key} but holds {found}; choose {PART_WORDS[key]} file")
        return path, ""

    return FluxFiles((base, info.prefix), part("clip_l"), part("t5xxl"), part("ae"), info.variant)


@dataclass
class FluxBase:
    """A loaded Flux.1 base: diffusers/transformers components and what training needs to know about them."""

    variant: str  # dev | schnell
    files: FluxFiles
    shipped: dict
    tokenizers: list
    transformer: Any = None
    vae: Any = None
    text_encoders: list = field(default_factory=list)  # [CLIP-L, T5], empty while released
    transformer_dtype: Any = None  # storage dtype of the frozen linear weights (None: float32)
    build: Any = field(default=None, repr=False)
    arch: str = "flux"
    prediction_type: str = "flow"  # rectified flow: the transformer predicts the velocity noise - latents

    @property
    def source(self) -> Path:
        """The transformer file."""
        return self.files.transformer[0]

    @property
    def has_guidance(self) -> bool:
        """dev's guidance embedding (schnell has none)."""
        return self.variant == "dev"

    def load_parts(self, parts: tuple[str, ...]) -> None:
        """(Re)build released ``parts`` ("transformer", "vae", "text_encoders") from their files."""
        missing = tuple(p for p in parts if not getattr(self, p))
        if missing:
            self.build(self, missing)

    def release_parts(self, parts: tuple[str, ...]) -> None:
        """Drop ``parts`` so their memory is freed (``load_parts`` brings them back)."""
        for part in parts:
            setattr(self, part, [] if part == "text_encoders" else None)


def transformer_storage(config: Any, file_dtype: torch.dtype | None,
                        weight_dtype: torch.dtype) -> tuple[torch.dtype, str]:
    """(storage dtype, compute) of the frozen transformer's linear weights: fp8 with ``fp8_base``, else the
    SD engine's rule (``frozen_weight_dtype``/``frozen_compute_dtype``, the run's half dtype on a GPU)."""
    from ..image.frozen_weights import storage_dtype

    if config.fp8_base:
        return torch.float8_e4m3fn, "fp32"
    if weight_dtype == torch.float32 and config.frozen_compute_dtype == "bf16":
        return torch.bfloat16, "bf16"
    return storage_dtype(str(config.frozen_weight_dtype), file_dtype, weight_dtype), "fp32"


def load_flux_base(config: Any, parts: tuple[str, ...] = PARTS, weight_dtype: torch.dtype = torch.float32) -> FluxBase:
    """Load the parts ``parts`` of ``config``'s Flux.1 base on the CPU in float32; the frozen transformer's
    linear weights are stored as ``transformer_storage`` says for a run computing in ``weight_dtype``."""
    files = find_files(config)
    path, prefix = files.transformer
    checkpoint = _open(path, "base model")
    storage = transformer_storage(config, checkpoint.dtype_of(prefix), weight_dtype)
    if path.suffix.lower() == ".gguf":
        storage = (torch.float32, "fp32")  # quantized matrices stay packed; the few float ones are float32
    shipped = shipped_flux_config(files.variant)
    tokenizers = _tokenizers(config, files, shipped)

    def build(base: FluxBase, wanted: tuple[str, ...]) -> None:
        cancel_point()
        if "text_encoders" in wanted:
            base.text_encoders = [_build_clip_l(files.clip, shipped, tokenizers[0]), _build_t5(files.t5, shipped)]
        cancel_point()
        if "vae" in wanted:
            base.vae = _build_vae(files.vae, shipped)
        cancel_point()
        if "transformer" in wanted:
            base.transformer = _build_transformer(files.transformer, shipped, *storage)
            base.transformer_dtype = None if storage[0] == torch.float32 else storage[0]

    base = FluxBase(files.variant, files, shipped, tokenizers, build=build)
    build(base, tuple(p for p in PARTS if p in parts))
    return base


def check_flux_inputs(config: Any, host_root: Path | None = None) -> Any:
    """Before a start: every part file is found, readable and of its kind, and both tokenizers are there (nothing
    loads).

    Returns ``config``, with ``tokenizer_path`` set to ``host_root`` (the WebUI's own Flux tokenizer
    folders) when that is where the tokenizers come from.
    """
    import dataclasses

    from .tokenizers import find_clip_tokenizer, find_t5_tokenizer, host_tokenizer_dir

    files = find_files(config)
    root = Path(str(config.tokenizer_path)).expanduser() if config.tokenizer_path else None
    shipped = shipped_flux_config("dev")
    if root is None and host_root is not None and host_tokenizer_dir(host_root, 0) and \
            (host_root / "tokenizer_2").is_dir():
        root = host_root
        config = dataclasses.replace(config, tokenizer_path=str(host_root))
    find_clip_tokenizer(tokenizer_subfolder(root, 0) if root else None, files.clip[0], 0,
                        shipped["clip_l"]["tokenizer_cache"])
    find_t5_tokenizer(tokenizer_subfolder(root, 1) if root else None, [files.transformer[0], files.t5[0]],
                      shipped["t5xxl"]["tokenizer_cache"])
    return config


def _tokenizers(config: Any, files: FluxFiles, shipped: dict) -> list:
    root = Path(str(config.tokenizer_path)).expanduser() if config.tokenizer_path else None
    clip = load_clip_tokenizer(tokenizer_subfolder(root, 0) if root else None, files.clip[0],
                               pad_token=shipped["clip_l"]["pad_token"], cache_id=shipped["clip_l"]["tokenizer_cache"])
    clip.model_max_length = int(shipped["clip_l"]["max_length"])
    t5 = load_t5_tokenizer(tokenizer_subfolder(root, 1) if root else None, [files.transformer[0], files.t5[0]],
                           shipped["t5xxl"]["tokenizer_cache"])
    return [clip, t5]


class _Loaders(dict):
    """{name: loader}; ``pop`` returns the loaded tensor, so ``assign_weights`` reads one tensor at a time."""

    def pop(self, name, *default):  # noqa: ANN001, ANN202 - dict's signature
        return super().pop(name)()


def _build_transformer(where: tuple[Path, str], shipped: dict, storage: torch.dtype, compute: str):
    from diffusers import FluxTransformer2DModel

    from ..image.frozen_weights import frozen_weight_names, store_frozen_weights
    from ..image.lazy_checkpoint import PrefixView, assign_weights, empty_model

    path, prefix = where
    checkpoint = _open(path, "base model")
    shapes = checkpoint.shapes(prefix)
    kwargs = transformer_config(shapes, shipped, path)
    pairs = bfl_to_diffusers(PrefixView(checkpoint, prefix), int(shapes["img_in.weight"][0]), path)
    model = empty_model(lambda: FluxTransformer2DModel(**kwargs))
    if path.suffix.lower() == ".gguf":
        from .flux_gguf import pack_linears

        loaders, storage, compute = pack_linears(model, checkpoint, pairs), torch.float32, "fp32"
    else:
        loaders = {name: load for name, (_, load) in pairs.items()}
    half = {n for n in frozen_weight_names(model) if storage.itemsize > 1 or n.endswith(".weight")} \
        if storage != torch.float32 else set()
    missing = assign_weights(model, _Loaders(loaders), lambda n: storage if n in half else torch.float32)
    if missing:
        raise UserError(f"{path}: the Flux.1 transformer lacks {missing[0]} ({len(missing)} missing); is the file "
                        "complete?")
    model.requires_grad_(False)
    store_frozen_weights(model, storage, compute)
    return model


def _build_vae(where: tuple[Path, str], shipped: dict):
    """The 16-channel Flux VAE; block widths and depth from the weights, scale/shift from the shipped config."""
    from diffusers import AutoencoderKL
    from diffusers.loaders import single_file_utils as sfu

    from ..image.lazy_checkpoint import PrefixView, assign_weights, empty_model

    path, prefix = where
    checkpoint = _open(path, "VAE")
    shapes = checkpoint.shapes(prefix)
    blocks = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.down\.(\d+)\.block\.0\.", k))})
    if not blocks or "encoder.conv_out.weight" not in shapes:
        raise UserError(f"{path}: not a Flux VAE (no encoder.down.*/encoder.conv_out); set ae to ae.safetensors")
    widths = [int(shapes[f"encoder.down.{i}.block.{len(_blocks_in(shapes, i)) - 1}.conv2.weight"][0]) for i in blocks]
    latent = int(shapes["encoder.conv_out.weight"][0]) // 2  # mean and log-variance
    cfg = dict(shipped["vae"], block_out_channels=widths, latent_channels=latent,
               layers_per_block=len(_blocks_in(shapes, 0)), down_block_types=["DownEncoderBlock2D"] * len(widths),
               up_block_types=["UpDecoderBlock2D"] * len(widths))
    cfg["norm_num_groups"] = min(int(cfg["norm_num_groups"]), min(widths))
    model = empty_model(lambda: AutoencoderKL(**cfg))
    state = sfu.convert_ldm_vae_checkpoint(PrefixView(checkpoint, prefix), cfg)
    missing = assign_weights(model, state, lambda _: torch.float32)
    if missing:
        raise UserError(f"{path}: the VAE lacks {missing[0]}; set ae to the Flux.1 ae.safetensors")
    return model.requires_grad_(False)


def _blocks_in(shapes: dict, level: int) -> set[int]:
    return {int(m.group(1)) for k in shapes if (m := re.match(rf"encoder\.down\.{level}\.block\.(\d+)\.", k))}


def _build_clip_l(where: tuple[Path, str], shipped: dict, tokenizer):
    from ..image.lazy_checkpoint import PrefixView
    from .sd_loader import _build_clip

    path, prefix = where
    view = PrefixView(_open(path, "CLIP-L text encoder"), prefix)
    state = {k: view[k] for k in view if "position_ids" not in k}
    if not any(k.endswith("embeddings.token_embedding.weight") for k in state):
        raise UserError(f"{path}: not a CLIP-L text encoder (no token embedding); set clip_l to clip_l.safetensors")
    return _build_clip(state, shipped["clip_l"], tokenizer, projection=False, path=path).requires_grad_(False)


def _build_t5(where: tuple[Path, str], shipped: dict):
    """The T5 encoder (v1.1: gated GELU) sized from its weights, frozen; computed in float32.

    Its linear weights stay in the file's fp16/bf16/fp8 and are upcast one layer at a time
    (``frozen_weights``): an fp8 T5-XXL upcast whole is 19 GB of float32, more than Forge's 24 GB hosts hold
    next to the host itself. ``wo`` stays float32 since transformers casts its input to ``wo``'s dtype
    (``_keep_in_fp32_modules``)."""
    from transformers import T5Config, T5EncoderModel

    from ..image.frozen_weights import store_frozen_weights
    from ..image.lazy_checkpoint import PrefixView, assign_weights, empty_model

    path, prefix = where
    view = PrefixView(_open(path, "T5-XXL text encoder"), prefix)
    shapes = {k: tuple(v) for k, v in view.checkpoint.shapes(prefix).items()}
    bias = shapes.get("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    if "shared.weight" not in shapes or bias is None:
        raise UserError(f"{path}: not a T5 encoder (no shared/relative_attention_bias); set t5xxl to "
                        "t5xxl_fp16.safetensors")
    heads = int(bias[1])
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in shapes
    ff = shapes["encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight"]
    spec = shipped["t5xxl"]
    layers = len({k.split(".")[2] for k in shapes if k.startswith("encoder.block.")})
    config = T5Config(vocab_size=int(shapes["shared.weight"][0]), d_model=int(shapes["shared.weight"][1]),
                      d_kv=int(shapes["encoder.block.0.layer.0.SelfAttention.q.weight"][0]) // heads,
                      d_ff=int(ff[0]), num_layers=layers,
                      num_heads=heads, relative_attention_num_buckets=int(bias[0]),
                      relative_attention_max_distance=int(spec["relative_attention_max_distance"]),
                      feed_forward_proj=spec["feed_forward_proj"] if gated else "relu",
                      layer_norm_epsilon=float(spec["layer_norm_epsilon"]), is_encoder_decoder=False, use_cache=False)
    model = empty_model(lambda: T5EncoderModel(config))
    stored = view.checkpoint.dtype_of(prefix + "encoder.block.0.layer.0.SelfAttention.q.weight")
    stored = stored if stored is not None and stored.itemsize < 4 else torch.float32
    half = {name: module for name, module in model.named_modules()
            if type(module) is torch.nn.Linear and not name.endswith(".wo")} if stored != torch.float32 else {}
    missing = assign_weights(model, _Loaders({k: (lambda k=k: view[k]) for k in view}),
                             lambda n: stored if n.removesuffix(".weight") in half else torch.float32)
    if missing == ["encoder.embed_tokens.weight"]:  # tied to shared.weight in the files; untied in the model
        model.encoder.embed_tokens.weight = model.shared.weight
        missing = []
    if missing:
        raise UserError(f"{path}: the T5 encoder lacks {missing[0]}; is the file complete?")
    model.eval().requires_grad_(False)
    for module in half.values():
        store_frozen_weights(module, stored)
    return model


def is_flux_run(config: Any) -> bool:
    """True when ``config`` trains on a Flux.1 base (``model_arch: flux``, or ``auto`` and a Flux.1 file).

    An SD ``model_arch`` on a Flux.1 file is refused: an all-in-one Flux checkpoint would otherwise
    pass for an SD one (both hold ``model.diffusion_model.*``).
    """
    wanted = str(config.model_arch)
    if wanted == "flux":
        return True
    if is_flux_base(config.base_model):
        if wanted != "auto":
            raise UserError(f"{config.base_model}: is a Flux.1 model but model_arch is {wanted!r}; set model_arch: "
                            "flux (or auto)")
        return True
    return False
