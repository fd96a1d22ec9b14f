"""Load a Stable Diffusion base for training, offline: WebUI single files or diffusers folders.

Single files (``.safetensors``, or ``.ckpt`` through ``torch.load(weights_only=True)``) carry LDM
keys; the architecture (SD1, SD2, SDXL) is read from the keys, the LDM config from a ``<stem>.yaml``
beside the file (A1111's convention) or from the small configs shipped in ``configs/``, and the
weights are renamed with diffusers' own single-file helpers (same signatures in 0.31 and 0.42).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..cancel import cancel_point
from ..errors import UserError, yaml_problem
from .tokenizers import load_clip_tokenizer, tokenizer_subfolder

CONFIG_DIR = Path(__file__).with_name("configs")
ARCH_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sd2-v": "SD2.x (v-prediction)", "sdxl": "SDXL"}
_SDXL_TE2 = "conditioner.embedders.1.model."
_SD2_TE = "cond_stage_model.model."
_UNET = "model.diffusion_model."


@dataclass
class SDBase:
    """A loaded base: diffusers components plus what training needs to know about them."""

    arch: str  # sd1 | sd2 | sd2-v | sdxl
    prediction_type: str  # epsilon | v_prediction
    unet: Any
    vae: Any
    text_encoders: list
    tokenizers: list
    source: Path
    scheduler_config: dict = field(default_factory=dict)
    # Rebuilds named parts ("unet", "vae", "text_encoders") from the source (single files only).
    reload: Any = field(default=None, repr=False)
    unet_dtype: Any = None  # storage dtype of the UNet's Linear/Conv2d weights (None: float32)

    def __post_init__(self) -> None:
        # Tokenizers from bare vocab files report an unbounded length; the encoder's is the real one.
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders, strict=False):
            limit = int(encoder.config.max_position_embeddings)
            if not tokenizer.model_max_length or tokenizer.model_max_length > limit:
                tokenizer.model_max_length = limit

    def load_parts(self, parts: tuple[str, ...]) -> None:
        """(Re)build released ``parts`` ("unet", "vae", "text_encoders") from the checkpoint file."""
        missing = [p for p in parts if not getattr(self, p)]
        if missing:
            if self.reload is None:
                raise UserError(f"{self.source}: {', '.join(missing)} released and cannot be reloaded")
            self.reload(self, tuple(missing))
            self.__post_init__()

    def release_parts(self, parts: tuple[str, ...]) -> None:
        """Drop ``parts`` ("vae", "text_encoders") so their memory is freed (``load_parts`` brings them back)."""
        for part in parts:
            setattr(self, part, [] if part == "text_encoders" else None)

    @property
    def is_sdxl(self) -> bool:
        """True for SDXL (two text encoders, pooled + time conditioning)."""
        return self.arch == "sdxl"

    def noise_scheduler(self):
        """The DDPM training scheduler with this base's prediction type."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(dict(self.scheduler_config), prediction_type=self.prediction_type)


def shipped_config(arch: str) -> dict:
    """The shipped LDM-style config for ``arch`` (full-size SD1/SD2/SD2-v/SDXL)."""
    return json.loads((CONFIG_DIR / f"{arch}.json").read_text())


def default_scheduler_config() -> dict:
    """The noise schedule every SD1/SD2/SDXL checkpoint was trained with."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "timestep_spacing": "leading",
    }


# ----------------------------------------------------------------------------------------------
# architecture detection


def detect_arch_from_keys(keys) -> str | None:
    """sd1 / sd2 / sdxl from LDM checkpoint keys, or None if it is no SD checkpoint."""
    keys = set(keys)
    if any(k.startswith(_SDXL_TE2) for k in keys) or "model.diffusion_model.label_emb.0.0.weight" in keys:
        return "sdxl"
    if any(k.startswith(_SD2_TE) for k in keys):
        return "sd2"
    if any(k.startswith(("cond_stage_model.transformer.", "model.diffusion_model.")) for k in keys):
        return "sd1"
    return None


def _check_arch(path: Path, found: str, wanted: str | None) -> None:
    """Refuse a base whose architecture contradicts ``model_arch``."""
    if not wanted or wanted == "auto":
        return
    group = {"sd2-v": "sd2"}
    if group.get(found, found) != group.get(wanted, wanted):
        raise UserError(
            f"{path}: is an {ARCH_NAMES.get(found, found)} model but model_arch is {wanted!r}; "
            f"set model_arch: {group.get(found, found)} (or auto)"
        )


def _prediction(param: str | None, requested: str | None) -> str:
    if requested and requested != "auto":
        return "v_prediction" if requested in ("v", "v_prediction", "v-prediction") else "epsilon"
    return "v_prediction" if param in ("v", "v_prediction") else "epsilon"


# ----------------------------------------------------------------------------------------------
# entry point


ALL_PARTS = ("unet", "vae", "text_encoders")


def load_sd_base(
    path: str | Path,
    model_arch: str | None = "auto",
    prediction_type: str | None = "auto",
    tokenizer_path: str | Path | None = None,
    parts: tuple[str, ...] = ALL_PARTS,
    unet_storage: str = "fp32",
) -> SDBase:
    """Load ``path`` (single file or diffusers folder) in float32 on the CPU.

    Only ``parts`` are built (the others stay None/[] until ``base.load_parts``; single files only).
    ``unet_storage`` (fp32/fp16/bf16/auto, or bf16-compute) is the dtype the UNet's Linear/Conv2d weights are kept in
    (``auto``: the checkpoint's own), see ``extension/image/frozen_weights.py``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path}: base model not found; set base_model to a .safetensors checkpoint or a "
                        "diffusers folder")
    if path.is_dir():
        if not (path / "unet").is_dir():
            raise UserError(f"{path}: not a diffusers folder (no unet/); point base_model at a checkpoint file or a "
                            "folder saved with save_pretrained")
        base = _load_folder(path, model_arch, prediction_type, tokenizer_path)
        _store_unet(base, unet_storage, _folder_unet_dtype(path))
        return base
    if path.suffix.lower() not in (".safetensors", ".ckpt", ".pt", ".pth"):
        raise UserError(f"{path}: unsupported base model file; use a .safetensors or .ckpt checkpoint")
    return _load_single_file(path, model_arch, prediction_type, tokenizer_path, tuple(parts), unet_storage)


def _folder_unet_dtype(path: Path) -> torch.dtype | None:
    from ..image.lazy_checkpoint import LazyCheckpoint

    weights = path / "unet" / "diffusion_pytorch_model.safetensors"
    return LazyCheckpoint(weights).dtype_of("") if weights.is_file() else None


def _store_unet(base: SDBase, choice: str, file_dtype: torch.dtype | None) -> None:
    from ..image.frozen_weights import storage_dtype, store_frozen_weights

    dtype = storage_dtype(choice, file_dtype, torch.float32)
    if base.unet is not None:
        base.unet.requires_grad_(False)  # the frozen base; LoRA layers added later train
        store_frozen_weights(base.unet, dtype, "bf16" if choice == "bf16-compute" else "fp32")
        if dtype != torch.float32:
            base.unet_dtype = dtype


def _load_folder(path: Path, model_arch, prediction_type, tokenizer_path) -> SDBase:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    sdxl = (path / "text_encoder_2").is_dir()
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True)
    cfg = unet.config
    arch = "sdxl" if sdxl else ("sd2" if cfg.cross_attention_dim == 1024 or cfg.use_linear_projection else "sd1")
    _check_arch(path, arch, model_arch)
    scheduler_config = default_scheduler_config()
    sched_file = path / "scheduler" / "scheduler_config.json"
    if sched_file.is_file():
        scheduler_config.update({k: v for k, v in json.loads(sched_file.read_text()).items() if not k.startswith("_")})
    prediction = _prediction(scheduler_config.get("prediction_type"), prediction_type)
    scheduler_config.pop("prediction_type", None)
    if arch == "sd2" and prediction == "v_prediction":
        arch = "sd2-v"
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True)
    encoders = [CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=True)]
    if sdxl:
        encoders.append(
            CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2", local_files_only=True)
        )
    tokenizers = []
    for i, sub in enumerate(["tokenizer", "tokenizer_2"][: len(encoders)]):
        folder = path / sub
        if tokenizer_path:
            folder = tokenizer_subfolder(Path(tokenizer_path), i)
        tokenizers.append(load_clip_tokenizer(folder if folder.is_dir() else None, path, pad_token=None))
    return SDBase(arch, prediction, unet, vae, encoders, tokenizers, path, scheduler_config)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a single-file checkpoint, on the CPU."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any read failure is the file's fault here
        raise UserError(f"{path}: cannot read the checkpoint ({exc.__class__.__name__}: {str(exc)[:120]}); "
                        "is the file complete? .ckpt files must load with weights_only=True") from None
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a checkpoint state dict")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def _load_yaml(path: Path) -> dict | None:
    """The ``<stem>.yaml`` LDM config beside a checkpoint, if there is one."""
    import yaml

    side = path.with_suffix(".yaml")
    if not side.is_file():
        return None
    try:
        data = yaml.safe_load(side.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{side}: not valid YAML ({yaml_problem(exc)}); fix or remove it") from None
    if not isinstance(data, dict) or "model" not in data:
        raise UserError(f"{side}: not an LDM config (no model: section); fix or remove it")
    return data


def _unet_params(config: dict) -> dict:
    params = config["model"]["params"]
    return (params.get("unet_config") or params.get("network_config"))["params"]


def _load_single_file(path: Path, model_arch, prediction_type, tokenizer_path, parts: tuple[str, ...] = ALL_PARTS,
                      unet_storage: str = "fp32") -> SDBase:
    from diffusers.loaders import single_file_utils as sfu

    lazy = path.suffix.lower() == ".safetensors"
    if lazy:
        from ..image.lazy_checkpoint import LazyCheckpoint

        checkpoint = LazyCheckpoint(path)
    else:
        checkpoint = read_checkpoint(path)
    arch = detect_arch_from_keys(checkpoint)
    if arch is None:
        raise UserError(f"{path}: not a Stable Diffusion checkpoint (no LDM keys such as model.diffusion_model.*)")
    _check_arch(path, arch, model_arch)
    side = _load_yaml(path)
    shipped = shipped_config(arch)
    original = side or shipped
    param = original["model"]["params"].get("parameterization", shipped.get("parameterization"))
    prediction = _prediction(param, prediction_type)
    if arch == "sd2" and prediction == "v_prediction":
        arch = "sd2-v"

    te_specs = _text_encoder_specs(original, shipped)
    tokenizers = []
    for i, spec in enumerate(te_specs):
        folder = tokenizer_subfolder(Path(tokenizer_path), i) if tokenizer_path else None
        tokenizers.append(load_clip_tokenizer(folder, path, pad_token=spec.get("pad_token"), index=i,
                                              cache_id=spec.get("tokenizer_cache")))
    file_dtype = checkpoint.dtype_of(_UNET) if lazy else next(
        (v.dtype for k, v in checkpoint.items() if k.startswith(_UNET) and v.ndim > 1), None)

    def build(base: SDBase, wanted: tuple[str, ...]) -> None:
        source = checkpoint
        cancel_point()
        if "unet" in wanted:
            base.unet = _build_unet(source, original, arch, path, unet_storage, file_dtype, lazy)
            _store_unet(base, unet_storage, file_dtype)
        cancel_point()
        if "vae" in wanted:
            vae_cfg = sfu.create_vae_diffusers_config_from_ldm(original, source)
            ddconfig = original["model"]["params"]["first_stage_config"]["params"]["ddconfig"]
            _apply_extra(vae_cfg, ddconfig, ("norm_num_groups",))
            base.vae = _make(lambda: _diffusers("AutoencoderKL")(**vae_cfg),
                             lambda _: sfu.convert_ldm_vae_checkpoint(source, vae_cfg), path, "VAE", lazy)
        cancel_point()
        if "text_encoders" in wanted:
            encoders = []
            if arch in ("sd1", "sdxl"):
                state = sfu.convert_ldm_clip_checkpoint(source)
                encoders.append(_build_clip(state, te_specs[0], tokenizers[0], projection=False, path=path))
            if arch in ("sd2", "sd2-v"):
                encoders.append(_build_open_clip(source, _SD2_TE, te_specs[0], tokenizers[0], False, path))
            if arch == "sdxl":
                encoders.append(_build_open_clip(source, _SDXL_TE2, te_specs[1], tokenizers[1], True, path))
            base.text_encoders = encoders

    base = SDBase(arch, prediction, None, None, [], tokenizers, path, default_scheduler_config(), reload=build)
    build(base, tuple(p for p in ALL_PARTS if p in parts))
    base.__post_init__()
    if not lazy:
        base.reload = None  # a .ckpt would be read whole again: keep what was loaded instead
    return base


def _diffusers(name: str):
    import diffusers

    return getattr(diffusers, name)


def _build_unet(checkpoint, original: dict, arch: str, path: Path, storage: str, file_dtype, lazy: bool):
    from diffusers.loaders import single_file_utils as sfu

    from ..image.frozen_weights import frozen_weight_names, storage_dtype

    unet_cfg = sfu.create_unet_diffusers_config_from_ldm(original, checkpoint)
    uparams = _unet_params(original)
    _apply_extra(unet_cfg, uparams, ("norm_num_groups", "attention_head_dim"))
    if arch == "sdxl":
        _fix_sdxl_unet_config(unet_cfg, checkpoint)
    dtype = storage_dtype(storage, file_dtype, torch.float32)
    return _make(lambda: _diffusers("UNet2DConditionModel")(**unet_cfg),
                 lambda _: sfu.convert_ldm_unet_checkpoint(checkpoint, unet_cfg), path, "UNet", lazy,
                 half=(frozen_weight_names, dtype))


def _make(factory, convert, path: Path, what: str, lazy: bool, half=None):
    """Build a model from converted weights: straight from the file (lazy) or by copying into a new model."""
    if not lazy:
        model = factory()
        _load_into(model, convert(model), path, what)
        return model
    from ..image.lazy_checkpoint import assign_weights, empty_model

    model = empty_model(factory)
    names = half[0](model) if half is not None and half[1] != torch.float32 else set()
    missing = assign_weights(model, convert(model), lambda n: half[1] if n in names else torch.float32)
    if missing:
        raise UserError(
            f"{path}: the {what} weights do not match its config ({len(missing)} missing, e.g. {missing[0]}); "
            f"put the checkpoint's LDM config beside it as {path.stem}.yaml"
        )
    return model


def _apply_extra(target: dict, source: dict, keys: tuple[str, ...]) -> None:
    """Copy settings real LDM configs never vary (group norm size) but a small model's yaml may state."""
    for key in keys:
        if key in source and source[key] is not None:
            target[key] = source[key]


def _fix_sdxl_unet_config(cfg: dict, checkpoint: dict) -> None:
    """diffusers recognises SDXL only by context_dim 2048/1280; read text_time from the weights instead."""
    adm = checkpoint.get("model.diffusion_model.label_emb.0.0.weight")
    proj = checkpoint.get(_SDXL_TE2 + "text_projection")
    if adm is None:
        return
    adm_in = int(adm.shape[1])
    pooled = int(proj.shape[1]) if proj is not None else 1280
    cfg["addition_embed_type"] = "text_time"
    cfg["class_embed_type"] = None
    cfg["projection_class_embeddings_input_dim"] = adm_in
    cfg["addition_time_embed_dim"] = (adm_in - pooled) // 6


def _load_into(model: torch.nn.Module, state: dict, path: Path, what: str) -> None:
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing:
        raise UserError(
            f"{path}: the {what} weights do not match its config ({len(missing)} missing, e.g. {missing[0]}); "
            f"put the checkpoint's LDM config beside it as {path.stem}.yaml"
        )


def _text_encoder_specs(original: dict, shipped: dict) -> list[dict]:
    """Per text encoder: hidden_act, heads, tokenizer hints (yaml ``text_encoders`` wins over shipped)."""
    specs = [dict(s) for s in shipped.get("text_encoders", [])]
    for i, extra in enumerate(original.get("text_encoders") or []):
        if i < len(specs):
            specs[i].update(extra)
    return specs


def _heads(hidden: int, spec: dict) -> int:
    if spec.get("num_attention_heads"):
        return int(spec["num_attention_heads"])
    # Every released CLIP text tower uses 64-wide heads; tiny test models use 8-wide ones.
    return hidden // 64 if hidden % 64 == 0 else max(1, hidden // 8)


def _build_clip(state: dict, spec: dict, tokenizer, projection: bool, path: Path):
    """A CLIPTextModel(WithProjection) whose config is read from the converted weights' shapes."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def find(suffix: str) -> torch.Tensor:
        for k, v in state.items():
            if k.endswith(suffix):
                return v
        raise UserError(f"{path}: text encoder weights incomplete (no {suffix}); is the checkpoint complete?")

    token = find("embeddings.token_embedding.weight")
    position = find("embeddings.position_embedding.weight")
    fc1 = find("layers.0.mlp.fc1.weight")
    layers = {int(m.group(1)) for k in state for m in [re.search(r"encoder\.layers\.(\d+)\.", k)] if m}
    hidden = int(token.shape[1])
    kwargs = dict(
        vocab_size=int(token.shape[0]),
        hidden_size=hidden,
        intermediate_size=int(fc1.shape[0]),
        num_hidden_layers=len(layers),
        num_attention_heads=_heads(hidden, spec),
        max_position_embeddings=int(position.shape[0]),
        hidden_act=spec.get("hidden_act", "quick_gelu"),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    proj = state.get("text_projection.weight")
    if proj is not None:
        kwargs["projection_dim"] = int(proj.shape[0])
    config = CLIPTextConfig(**kwargs)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return _make(lambda: cls(config), lambda m: _match_text_keys(state, set(m.state_dict())), path,
                 "text encoder", True)


def _build_open_clip(checkpoint: dict, prefix: str, spec: dict, tokenizer, projection: bool, path: Path):
    """An OpenCLIP tower (SD2, SDXL's second encoder) converted with diffusers' helper."""
    from diffusers.loaders import single_file_utils as sfu

    proj = checkpoint.get(prefix + "text_projection")

    class _Cfg:  # the helper only reads config.projection_dim when the checkpoint has no projection
        projection_dim = int(proj.shape[1]) if proj is not None else 1024

    class _Stub:
        config = _Cfg()

    state = sfu.convert_open_clip_checkpoint(_Stub(), checkpoint, prefix=prefix)
    if not projection:
        state.pop("text_projection.weight", None)
    return _build_clip(state, spec, tokenizer, projection, path)


def _match_text_keys(state: dict, own: set[str]) -> dict:
    """Map ``text_model.*`` keys onto the model's own names (transformers 5 drops that level)."""
    out = {}
    for key, value in state.items():
        if key in own:
            out[key] = value
        elif key.removeprefix("text_model.") in own:
            out[key.removeprefix("text_model.")] = value
        elif "text_model." + key in own:
            out["text_model." + key] = value
    return out
