"""LoRA adapter formats: one canonical model, one reader and writer per format.

This package imports nothing from ``extension`` and keeps every import relative, so a WebUI may
load it under another top-level name.
"""

from . import atomic, flux_base, gguf_check, gguf_py, llm_names, safetensors_io, sd_names
from .api import (
    base_module_shapes,
    check_against_base,
    check_against_shapes,
    convert,
    inspect_adapter,
    load_adapter,
    save_adapter,
)
from .errors import AdapterError
from .formats import FORMATS, WRITABLE, detect_format
from .model import LoraAdapter, LoraModule
from .sanity import adapter_problems

__all__ = [
    "atomic",
    "flux_base",
    "gguf_check",
    "gguf_py",
    "llm_names",
    "safetensors_io",
    "sd_names",
    "FORMATS",
    "WRITABLE",
    "AdapterError",
    "LoraAdapter",
    "LoraModule",
    "adapter_problems",
    "base_module_shapes",
    "check_against_base",
    "check_against_shapes",
    "convert",
    "detect_format",
    "inspect_adapter",
    "load_adapter",
    "save_adapter",
]
