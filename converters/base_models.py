"""Module shapes of a base model, for checking that an adapter fits before anything is written."""

from __future__ import annotations

from pathlib import Path

from .errors import AdapterError


def read_base_shapes(path: Path, family: str | None = None) -> tuple[str | None, dict[str, tuple[int, ...]]]:
    """(architecture, {canonical module name: weight shape}) for a GGUF, diffusers folder or checkpoint
    (Stable Diffusion, or Flux.1 as ``flux_base`` reads it).

    Weight shapes use torch's convention: linear (out, in), conv (out, in, kh, kw),
    embedding (vocab, dim).
    """
    if not path.exists():
        raise AdapterError(f"{path}: base model not found")
    if path.suffix.lower() == ".gguf":
        from .flux_base import is_flux_gguf, read_flux_base_shapes
        from .llm_base import read_gguf_base_shapes

        if is_flux_gguf(path):
            return read_flux_base_shapes(path)
        return read_gguf_base_shapes(path)
    if path.is_dir() and (path / "config.json").exists() and not (path / "model_index.json").exists():
        from .llm_base import read_hf_base_shapes

        return read_hf_base_shapes(path)
    if path.suffix.lower() == ".safetensors":
        from .flux_base import flux_prefix, read_flux_base_shapes
        from .safetensors_io import tensor_names

        if flux_prefix(tensor_names(path)) is not None:
            return read_flux_base_shapes(path)
    if path.is_dir() or path.suffix.lower() in (".safetensors", ".ckpt"):
        from .sd_base import read_sd_base_shapes

        return read_sd_base_shapes(path)
    if _is_legacy_ggml(path):
        raise AdapterError(
            f"{path}: legacy GGML model; use its GGUF copy (a text run on it writes {path.with_suffix('.gguf').name} "
            "beside it, or make one with lora-bridge upgrade-ggml IN OUT.gguf)"
        )
    raise AdapterError(
        f"{path}: unknown base model type; give a .gguf, a diffusers folder or a .safetensors checkpoint"
    )


# ggml, ggmf, ggjt: the magics of llama.cpp's pre-GGUF files (little-endian u32 at offset 0).
_LEGACY_GGML_MAGICS = {0x67676D6C, 0x67676D66, 0x67676A74}


def _is_legacy_ggml(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        return int.from_bytes(handle.read(4), "little") in _LEGACY_GGML_MAGICS
