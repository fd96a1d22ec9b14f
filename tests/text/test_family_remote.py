"""The remote-code families (Qwen-1, Baichuan, ChatGLM3) on tiny bases in their upstream layout, converted by
llama.cpp's own converter and quantized by its quantizer (``tiny/remote_code_bases.py``).

Per family: the torch forward on the F32 file equals the transformers model with the upstream equations
(Qwen2 for Qwen-1, LLaMA for Baichuan-7B, GLM for ChatGLM3); a 12-step run on F16, Q8_0 and Q4_K_M passes
the run's own llama.cpp check (base only and with the adapter); llama.cpp's ``convert_lora_to_gguf.py``
names the adapter's tensors as we do (given the upstream folder as the base); GGUF -> PEFT -> GGUF is exact.
"""

from __future__ import annotations

import re

import gguf
import numpy as np
import pytest
import torch
from test_families import IDS, QTYPES, _run
from textutil import HAS_LLAMA_CPP, llama_cpp_script

import converters
from extension.text.gguf_model import load_text_model
from extension.tiny.remote_code_bases import build_reference, remote_family_files, run_converter

pytestmark = pytest.mark.slow  # llama.cpp's converter and quantizer run per family (seconds each)

FAMILIES = ("qwen", "baichuan", "chatglm")


@pytest.fixture(scope="module")
def remote_bases(tmp_path_factory):
    """make(family) -> {"hf", "F32", "F16", "Q8_0", "Q4_K_M": path}, built once per family."""
    script = llama_cpp_script("convert_hf_to_gguf.py")
    if script is None:
        pytest.skip("set LORA_BRIDGE_LLAMA_CPP to the unpacked llama-cpp-python sdist (llama.cpp's converter)")
    if not HAS_LLAMA_CPP:
        pytest.skip("llama-cpp-python is not installed (llama.cpp's quantizer and check)")
    root = tmp_path_factory.mktemp("remote-families")
    cache: dict[str, dict] = {}

    def make(family: str) -> dict:
        if family not in cache:
            cache[family] = remote_family_files(family, root, script.parent)
        return cache[family]

    return make


@pytest.fixture(scope="module")
def trained(remote_bases, tmp_path_factory):
    """run(family, qtype) -> (output folder, result) of one 12-step run with the llama.cpp check, made once
    (the adapter tests reuse the F16 run: Baichuan's 32 layers make each run the slow part)."""
    cache: dict[tuple[str, str], tuple] = {}

    def run(family: str, qtype: str) -> tuple:
        if (family, qtype) not in cache:
            folder = tmp_path_factory.mktemp(f"{family}-{qtype}")
            cache[family, qtype] = _run(remote_bases(family)[qtype], folder, llama_cpp_check="on")
        return cache[family, qtype]

    return run


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_matches_reference(family, remote_bases):
    files = remote_bases(family)
    with torch.no_grad():
        want = build_reference(family)(torch.tensor([IDS])).logits[0].numpy()
        got = load_text_model(files["F32"])(torch.tensor([IDS]))[0].numpy()
    assert np.abs(got - want).max() < 1e-4


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_trains_and_llama_cpp_agrees(family, qtype, trained):
    _, result = trained(family, qtype)
    check = re.search(r"llama.cpp check: max \|Δlogit\| (\S+) with adapter \(limit (\S+)\), (\S+) base only",
                      result.message)
    assert check, result.message
    with_adapter, limit, base_only = (float(v) for v in check.groups())
    print(f"{family} {qtype}: {with_adapter:.2e} with adapter (limit {limit:.2e}), {base_only:.2e} base only"
          + (" (rounding flip)" if "rounded apart" in result.message else ""))
    assert with_adapter <= limit or "rounded apart" in result.message


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_as_llama_cpp_names_it(family, remote_bases, trained, tmp_path):
    files = remote_bases(family)
    out, _ = trained(family, "F16")
    script = llama_cpp_script("convert_lora_to_gguf.py")
    ref = tmp_path / "ref.gguf"
    done = run_converter(script.parent, script.name, family, [str(out / "tl"), "--base", str(files["hf"]),
                                                              "--outfile", str(ref), "--outtype", "f32"])
    assert done.returncode == 0, done.stderr[-2000:]
    ours = {t.name: tuple(t.shape.tolist()) for t in gguf.GGUFReader(out / "tl.gguf").tensors}
    theirs = {t.name: tuple(t.shape.tolist()) for t in gguf.GGUFReader(ref).tensors}
    assert ours == theirs
    peft_dir = converters.convert(out / "tl.gguf", tmp_path / "peft", to="peft", base=files["F16"], dtype="f32")
    again = converters.convert(peft_dir, tmp_path / "again.gguf", to="gguf", base=files["F16"], dtype="f32")
    first = {t.name: np.array(t.data) for t in gguf.GGUFReader(out / "tl.gguf").tensors}
    second = {t.name: np.array(t.data) for t in gguf.GGUFReader(again).tensors}
    assert sorted(first) == sorted(second)
    for name, data in first.items():
        np.testing.assert_array_equal(second[name], data, err_msg=name)
