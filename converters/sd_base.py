"""Module weight shapes of a Stable Diffusion base (diffusers folder or single-file LDM checkpoint).

Only headers are read: safetensors shapes come from the JSON header, so even a 7 GB checkpoint is
checked in milliseconds. Names come back canonical (``unet.<diffusers path>``,
``text_encoder.text_model...``), so they compare directly with an adapter's modules.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from .errors import AdapterError
from .safetensors_io import read_header
from .sd_names import normalize_te_path, unet_module_names, unet_to_ldm

_UNET = "model.diffusion_model."
_TE_PREFIXES = {
    "cond_stage_model.transformer.": ("text_encoder", "clip"),
    "conditioner.embedders.0.transformer.": ("text_encoder", "clip"),
    "cond_stage_model.model.": ("text_encoder", "openclip"),
    "conditioner.embedders.1.model.": ("text_encoder_2", "openclip"),
}
_OPENCLIP_LEAVES = {"attn.out_proj": "self_attn.out_proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def read_sd_base_shapes(path: Path) -> tuple[str | None, dict[str, tuple[int, ...]]]:
    """(arch, {canonical module name: weight shape}) of a diffusers folder or single-file checkpoint."""
    path = Path(path)
    if path.is_dir():
        return _folder_shapes(path)
    if path.suffix.lower() == ".safetensors":
        header, _ = read_header(path)
        shapes = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    elif path.suffix.lower() == ".ckpt":
        shapes = _ckpt_shapes(path)
    else:
        raise AdapterError(f"{path}: not a diffusers folder, .safetensors or .ckpt checkpoint")
    return _checkpoint_shapes(path, shapes)


def _ckpt_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    try:
        import torch
    except ImportError:
        raise AdapterError(f"{path}: reading .ckpt needs torch; use the .safetensors version") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001
        raise AdapterError(f"{path}: cannot read checkpoint safely ({exc.__class__.__name__})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


# ------------------------------------------------------------------------------------ diffusers folder
def _component_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of one diffusers/transformers component folder (safetensors, sharded or not)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise AdapterError(f"{folder}: no .safetensors weights (convert .bin components to safetensors first)")
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        header, _ = read_header(file)
        shapes.update({k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"})
    return shapes


def _folder_shapes(folder: Path) -> tuple[str | None, dict[str, tuple[int, ...]]]:
    if not (folder / "model_index.json").is_file():
        raise AdapterError(f"{folder}: not a diffusers pipeline folder (no model_index.json)")
    out: dict[str, tuple[int, ...]] = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        sub = folder / component
        if not sub.is_dir():
            continue
        for key, shape in _component_shapes(sub).items():
            if key.endswith(".weight"):
                module = key[: -len(".weight")]
                if component != "unet":
                    module = normalize_te_path(module)
                out[f"{component}.{module}"] = shape
    if not any(k.startswith("unet.") for k in out):
        raise AdapterError(f"{folder}: has no unet weights")
    return _folder_arch(folder), out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _folder_arch(folder: Path) -> str:
    if (folder / "text_encoder_2").is_dir():
        return "sdxl"
    te = _read_json(folder / "text_encoder" / "config.json")
    if te.get("hidden_act") == "gelu":
        sched = _read_json(folder / "scheduler" / "scheduler_config.json")
        return "sd2-v" if sched.get("prediction_type") == "v_prediction" else "sd2"
    return "sd1"


# ------------------------------------------------------------------------------------ single file
@lru_cache(maxsize=2)
def _ldm_to_diffusers(sdxl: bool) -> dict[str, str]:
    """LDM UNet module path -> diffusers path, from the grammar of real module names."""
    up_attn = frozenset(range(8)) if sdxl else None
    table = {}
    for name in unet_module_names():
        table[unet_to_ldm(name, 2, up_attn)] = name
    return table


def _checkpoint_shapes(path: Path, shapes: dict[str, tuple[int, ...]]) -> tuple[str, dict[str, tuple[int, ...]]]:
    if not any(k.startswith(_UNET) for k in shapes):
        raise AdapterError(f"{path}: not a Stable Diffusion checkpoint (no model.diffusion_model.* weights)")
    if any(k.startswith("conditioner.embedders.1.") for k in shapes):
        arch = "sdxl"
    elif any(k.startswith("cond_stage_model.model.") for k in shapes):
        arch = "sd2-v" if _sidecar_says_v(path) else "sd2"
    else:
        arch = "sd1"
    table = _ldm_to_diffusers(arch == "sdxl")
    out: dict[str, tuple[int, ...]] = {}
    for key, shape in shapes.items():
        if key.startswith(_UNET) and key.endswith(".weight"):
            module = table.get(key[len(_UNET): -len(".weight")])
            if module:
                out["unet." + module] = shape
            continue
        for prefix, (component, style) in _TE_PREFIXES.items():
            if key.startswith(prefix):
                out.update(_te_shapes(component, style, key[len(prefix):], shape))
                break
    return arch, out


def _te_shapes(component: str, style: str, key: str, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    if style == "clip":
        if key.endswith(".weight"):
            return {f"{component}.{normalize_te_path(key[:-len('.weight')])}": shape}
        return {}
    if key == "text_projection" and component == "text_encoder_2" and len(shape) == 2:
        return {f"{component}.text_projection": (shape[1], shape[0])}  # OpenCLIP stores x @ P, HF a Linear
    parts = key.split(".")
    if len(parts) < 5 or parts[:2] != ["transformer", "resblocks"]:
        return {}
    layer, rest = parts[2], ".".join(parts[3:])
    head = f"{component}.text_model.encoder.layers.{layer}."
    if rest == "attn.in_proj_weight":
        hidden = shape[0] // 3
        return {head + f"self_attn.{p}_proj": (hidden, shape[1]) for p in "qkv"}
    for src, dst in _OPENCLIP_LEAVES.items():
        if rest == src + ".weight":
            return {head + dst: shape}
    return {}


def _sidecar_says_v(path: Path) -> bool:
    yaml_path = path.with_suffix(".yaml")
    try:
        text = yaml_path.read_text(encoding="utf-8")
    except OSError:
        return False
    return "parameterization: v" in text or 'parameterization: "v"' in text
