"""kohya/WebUI metadata for SD LoRA files: ``ss_*``, ``modelspec.*`` and the ``sshs_*`` hashes.

The hashes follow kohya sd-scripts: ``sshs_model_hash`` is the sha256 of the file bytes after the
header (so it does not depend on metadata); ``sshs_legacy_hash`` is the first 8 hex digits of the
sha256 of bytes 0x100000..0x110000 of the file as it would be saved with only the ``ss_*``
metadata. Tensors are laid out as the safetensors library lays them out (dtype descending, then
name), so both hashes equal what kohya computes for the same tensors.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np

from .safetensors_io import f32_to_bf16_bits

ARCH_INFO = {
    # arch: (ss_base_model_version, ss_v2, modelspec.architecture, resolution, prediction type)
    "sd1": ("sd_v1", "False", "stable-diffusion-v1/lora", "512x512", "epsilon"),
    "sd2": ("sd_v2", "True", "stable-diffusion-v2-512/lora", "512x512", "epsilon"),
    "sd2-v": ("sd_v2_v", "True", "stable-diffusion-v2-768-v/lora", "768x768", "v"),
    "sdxl": ("sdxl_base_v1-0", "False", "stable-diffusion-xl-v1-base/lora", "1024x1024", "epsilon"),
    # sd-scripts' Flux.1 values (flux_train_network.py, sai_model_spec.py); Flux has no prediction type there.
    # "flux-1" is sai_model_spec's ARCH_FLUX_1_UNKNOWN; a known variant is named by ``flux_spec``.
    "flux": ("flux1", "False", "flux-1/lora", "1024x1024", ""),
}
FLUX_SPEC = {"dev": "flux-1-dev/lora", "schnell": "flux-1-schnell/lora", "chroma": "chroma/lora"}
_IMPLEMENTATION = {"sdxl": "https://github.com/Stability-AI/generative-models",
                   "flux": "https://github.com/black-forest-labs/flux"}
# Order of the safetensors library's Dtype enum; it writes tensors by dtype descending, then name.
_DTYPE_ORDER = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64",
                "I64", "U64"]
_LEGACY_START, _LEGACY_LEN = 0x100000, 0x10000


def arch_from_metadata(meta: Mapping[str, str]) -> str | None:
    """The SD architecture a kohya file's metadata declares, or None."""
    version = str(meta.get("ss_base_model_version", ""))
    if version.startswith("flux1") or str(meta.get("modelspec.architecture", "")).startswith("flux-1"):
        return "flux"
    if version.startswith("sdxl"):
        return "sdxl"
    if version.startswith("sd_v2"):
        return "sd2-v" if version.endswith("_v") or meta.get("ss_v_parameterization") == "True" else "sd2"
    if version.startswith("sd_v1"):
        return "sd1"
    spec = str(meta.get("modelspec.architecture", ""))
    if spec.startswith("stable-diffusion-xl"):
        return "sdxl"
    if spec.startswith("stable-diffusion-v2"):
        return "sd2-v" if "-v/" in spec or spec.endswith("-v") else "sd2"
    if spec.startswith("stable-diffusion-v1"):
        return "sd1"
    if meta.get("ss_v2") == "True":
        return "sd2-v" if meta.get("ss_v_parameterization") == "True" else "sd2"
    return None


def _uniform(values: Iterable[float]) -> str:
    counted = Counter(values)
    if not counted:
        return "0"
    if len(counted) == 1:
        value = float(next(iter(counted)))
        return str(int(value)) if value.is_integer() else str(value)
    return "Dynamic"


def build_metadata(
    arch: str,
    name: str,
    ranks: dict[str, int],
    alphas: dict[str, float],
    conv_names: set[str],
    source: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
    variant: str | None = None,
) -> dict[str, str]:
    """Metadata for a kohya file (no hashes yet); ``extra`` from the caller wins over computed keys.

    A Flux.1 file's ``modelspec.architecture`` is the source's, else the ``variant`` (dev/schnell/chroma) as
    sd-scripts' sai_model_spec names it, else sd-scripts' unknown ``flux-1/lora`` (never a guessed dev).

    As in sd-scripts, ``ss_network_dim``/``ss_network_alpha`` describe the linear and 1x1 modules and
    ``conv_dim``/``conv_alpha`` (in ``ss_network_args``) the ``conv_names`` (kernels larger than 1x1).
    """
    version, v2, spec, resolution, prediction = ARCH_INFO[arch]
    declared = str((source or {}).get("modelspec.architecture", ""))
    if arch == "flux" and declared.startswith(("flux-1", "chroma")):
        spec = declared  # a schnell or Chroma LoRA stays one
    elif arch == "flux" and variant:
        spec = FLUX_SPEC[variant]
    meta = {k: str(v) for k, v in (source or {}).items()
            if k.startswith(("ss_", "modelspec.")) and not k.startswith("sshs_") and k != "ss_network_args"}
    meta.update({
        "ss_network_module": "networks.lora_flux" if arch == "flux" else "networks.lora",
        "ss_network_dim": _uniform(r for n, r in ranks.items() if n not in conv_names),
        "ss_network_alpha": _uniform(a for n, a in alphas.items() if n not in conv_names),
        "ss_v2": v2,
        "ss_base_model_version": version,
        "ss_output_name": name,
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": spec,
        "modelspec.implementation": _IMPLEMENTATION.get(arch, "diffusers"),
        "modelspec.title": name,
        "modelspec.resolution": resolution,
        "modelspec.prediction_type": prediction,
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
    })
    if not prediction:
        del meta["modelspec.prediction_type"]
    if arch == "sd2-v":
        meta["ss_v_parameterization"] = "True"
    if conv_names:
        meta["ss_network_args"] = json.dumps({
            "conv_dim": _uniform(ranks[n] for n in conv_names),
            "conv_alpha": _uniform(alphas[n] for n in conv_names),
        })
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return meta


def dtype_name(array: np.ndarray, float_dtype: str | None) -> str:
    """The safetensors dtype ``array`` is stored as."""
    if array.dtype.kind == "f" and float_dtype:
        return {"f32": "F32", "f16": "F16", "bf16": "BF16"}[float_dtype]
    return {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("float64"): "F64"}.get(
        array.dtype, "F32")


def stored_bytes(array: np.ndarray, dtype: str) -> memoryview:
    """The little-endian bytes ``array`` occupies in a file when stored as ``dtype``."""
    if dtype == "BF16":
        data = f32_to_bf16_bits(np.asarray(array, dtype=np.float32))
    else:
        data = np.ascontiguousarray(array, dtype={"F32": "<f4", "F16": "<f2", "F64": "<f8"}[dtype])
    return memoryview(data.reshape(-1)).cast("B")


def safetensors_order(items: Iterable[tuple[str, np.ndarray, str]]) -> list[tuple[str, np.ndarray, str]]:
    """(name, array, dtype) in the order the safetensors library writes them."""
    return sorted(items, key=lambda t: (-_DTYPE_ORDER.index(t[2]), t[0]))


def _header_bytes(items: list[tuple[str, np.ndarray, str]], metadata: Mapping[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, array, dtype in items:
        size = int(np.prod(array.shape, dtype=np.int64)) * {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}[dtype]
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob


def hashes(items: list[tuple[str, np.ndarray, str]], metadata: Mapping[str, str]) -> dict[str, str]:
    """``sshs_model_hash`` and ``sshs_legacy_hash`` for tensors written in ``items`` order."""
    model = hashlib.sha256()
    legacy = hashlib.sha256()
    prefix = _header_bytes(items, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    _legacy_update(legacy, prefix, 0)
    position = len(prefix)
    for _, array, dtype in items:
        data = stored_bytes(array, dtype)
        model.update(data)
        _legacy_update(legacy, data, position)
        position += len(data)
    return {"sshs_model_hash": model.hexdigest(), "sshs_legacy_hash": legacy.hexdigest()[:8]}


def _legacy_update(digest, data: memoryview | bytes, start: int) -> None:
    """Feed the part of ``data`` (at file offset ``start``) inside the legacy window."""
    lo = max(_LEGACY_START, start)
    hi = min(_LEGACY_START + _LEGACY_LEN, start + len(data))
    if lo < hi:
        digest.update(data[lo - start: hi - start])
