"""The checks the family test files share: tiny bases made by llama.cpp's converter, the run's llama.cpp check
figures, our forward against a reference model, our adapter against llama.cpp's ``convert_lora_to_gguf.py``."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from textutil import HAS_LLAMA_CPP, llama_cpp_script

import converters

CHECK_LINE = re.compile(r"llama.cpp check: max \|Δlogit\| (\S+) with adapter \(limit (\S+)\), (\S+) base only")


def family_base_factory(tmp_path_factory, folder: str,
                        build: Callable[[str, Path, Path], dict]) -> Callable[[str], dict]:
    """make(family) -> build(family, root, llama.cpp's source folder), built once per family; skips without
    llama.cpp's converter (LORA_BRIDGE_LLAMA_CPP) or llama-cpp-python (its quantizer and check)."""
    script = llama_cpp_script("convert_hf_to_gguf.py")
    if script is None:
        pytest.skip("set LORA_BRIDGE_LLAMA_CPP to the unpacked llama-cpp-python sdist (llama.cpp's converter)")
    if not HAS_LLAMA_CPP:
        pytest.skip("llama-cpp-python is not installed (llama.cpp's quantizer and check)")
    root = tmp_path_factory.mktemp(folder)
    cache: dict[str, dict] = {}

    def make(family: str) -> dict:
        if family not in cache:
            cache[family] = build(family, root, script.parent)
        return cache[family]

    return make


def logits_gap(reference, ours, ids: list[int]) -> float:
    """Max |Δlogit| on ``ids`` between a transformers model (``reference``) and one of ours."""
    with torch.no_grad():
        want = reference(torch.tensor([ids])).logits[0].numpy()
        got = ours(torch.tensor([ids]))[0].numpy()
    return float(np.abs(got - want).max())


def assert_llama_cpp_check(result, label: str, flip_allowed: bool = True) -> None:
    """The run's llama.cpp check line is there and its gap with the adapter is within its limit (or, where
    ``flip_allowed``, the check says the two rounded apart); prints the figures under ``label``."""
    check = CHECK_LINE.search(result.message)
    assert check, result.message
    with_adapter, limit, base_only = (float(v) for v in check.groups())
    print(f"{label}: {with_adapter:.2e} with adapter (limit {limit:.2e}), {base_only:.2e} base only"
          + (" (rounding flip)" if "rounded apart" in result.message else ""))
    assert with_adapter <= limit or (flip_allowed and "rounded apart" in result.message)


def convert_lora_with_llama_cpp(peft_folder: Path, hf_folder: Path, out: Path) -> subprocess.CompletedProcess:
    """llama.cpp's ``convert_lora_to_gguf.py`` (its own gguf-py) on our PEFT folder, as f32 GGUF ``out``."""
    script = llama_cpp_script("convert_lora_to_gguf.py")
    return subprocess.run([sys.executable, str(script), str(peft_folder), "--base", str(hf_folder),
                           "--outfile", str(out), "--outtype", "f32"], capture_output=True, text=True,
                          env={"PYTHONPATH": str(script.parent / "gguf-py"), "PATH": "/usr/bin:/bin"}, timeout=600)


def assert_names_as_llama_cpp(ours: Path, theirs: Path) -> dict[str, tuple[int, ...]]:
    """Our adapter GGUF has the tensors (names, shapes) of llama.cpp's; returns ours {name: ggml ne}."""
    names = {t.name: tuple(t.shape.tolist()) for t in gguf.GGUFReader(ours).tensors}
    assert names == {t.name: tuple(t.shape.tolist()) for t in gguf.GGUFReader(theirs).tensors}
    return names


def assert_peft_round_trip_exact(adapter: Path, base: Path, tmp_path: Path) -> None:
    """GGUF -> PEFT -> GGUF against ``base`` gives back every tensor bit for bit."""
    peft_dir = converters.convert(adapter, tmp_path / "peft", to="peft", base=base, dtype="f32")
    again = converters.convert(peft_dir, tmp_path / "again.gguf", to="gguf", base=base, dtype="f32")
    first = {t.name: np.array(t.data) for t in gguf.GGUFReader(adapter).tensors}
    second = {t.name: np.array(t.data) for t in gguf.GGUFReader(again).tensors}
    assert sorted(first) == sorted(second)
    for name, data in first.items():
        np.testing.assert_array_equal(second[name], data, err_msg=name)
