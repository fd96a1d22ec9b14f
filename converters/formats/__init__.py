"""Format registry: one reader/writer module per adapter format (hub and spoke).

Each format module defines ``NAME``, ``sniff(path) -> bool``, ``read(path, arch) -> LoraAdapter``
and, if it can be written, ``write(adapter, path, options) -> Path``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from ..errors import AdapterError
from . import bfl, diffusers_file, ggla, gguf_adapter, kohya, lycoris, peft, xlabs

# Sniff order matters: the most specific signatures first.
FORMATS: dict[str, ModuleType] = {
    module.NAME: module for module in (peft, gguf_adapter, ggla, kohya, lycoris, xlabs, bfl, diffusers_file)
}
WRITABLE = tuple(name for name, module in FORMATS.items() if hasattr(module, "write"))


@dataclass
class WriteOptions:
    """What a writer may be asked besides the adapter itself."""

    dtype: str | None = None  # f32 / f16 / bf16; None = the format's default
    name: str | None = None  # output name shown to users (kohya ss_output_name, GGUF general.name)
    force: bool = False
    arch: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)  # extra metadata from the caller
    base: str | None = None  # base model path given with --base (GGUF writer: arch and head counts)


def detect_format(path: str | Path) -> str:
    """Name the format of the adapter at ``path``, or raise AdapterError."""
    path = Path(path)
    if not path.exists():
        raise AdapterError(f"{path}: no such file or folder")
    for name, module in FORMATS.items():
        if module.sniff(path):
            return name
    raise AdapterError(
        f"{path}: not a LoRA adapter this tool knows (expected a PEFT folder, a diffusers, kohya, BFL/ComfyUI Flux, "
        "XLabs Flux or LyCORIS .safetensors, or a GGUF/ggla adapter)"
    )


def format_for_destination(path: str | Path) -> str:
    """Guess the target format from a destination path when --to is not given."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".gguf":
        return "gguf"
    if suffix == ".safetensors":
        return "kohya"
    if suffix == "":
        return "peft"
    raise AdapterError(f"{path}: cannot tell the target format from the name; pass --to peft|diffusers|kohya|bfl|gguf")
