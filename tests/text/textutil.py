"""Helpers shared by the text tests (fixtures live in conftest.py)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed")


def llama_cpp_script(name: str) -> Path | None:
    """A script from llama.cpp's sources: LORA_BRIDGE_LLAMA_CPP is the unpacked llama-cpp-python sdist
    (as .ci/run makes it) or its vendor/llama.cpp folder; None when unset or absent."""
    where = os.environ.get("LORA_BRIDGE_LLAMA_CPP")
    if not where:
        return None
    for folder in (Path(where), Path(where) / "vendor" / "llama.cpp"):
        if (folder / name).is_file():
            return folder / name
    return None


GGML_CONVERTER = llama_cpp_script("convert_llama_ggml_to_gguf.py")
needs_ggml_converter = pytest.mark.skipif(
    GGML_CONVERTER is None, reason="set LORA_BRIDGE_LLAMA_CPP to the unpacked llama-cpp-python sdist")


def text_config(base, data, out, **extra):
    """A TrainConfig for a short text run."""
    from extension.config import config_from_dict

    values = dict(task_type="text-generation", base_model=str(base), train_data_dir=str(data), output_dir=str(out),
                  output_name="tl", lora_rank=8, lora_alpha=16, learning_rate=1e-2, max_train_steps=30,
                  batch_size=2, seed=1, llama_cpp_check="off", lr_scheduler="constant", weight_decay=0.0)
    values.update(extra)
    return config_from_dict(values)
