"""Helpers shared by the text tests (fixtures live in conftest.py)."""

from __future__ import annotations

import importlib.util

import pytest

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed")


def text_config(base, data, out, **extra):
    """A TrainConfig for a short text run."""
    from extension.config import config_from_dict

    values = dict(task_type="text-generation", base_model=str(base), train_data_dir=str(data), output_dir=str(out),
                  output_name="tl", lora_rank=8, lora_alpha=16, learning_rate=1e-2, max_train_steps=30,
                  batch_size=2, seed=1, llama_cpp_check="off", lr_scheduler="constant", weight_decay=0.0)
    values.update(extra)
    return config_from_dict(values)
