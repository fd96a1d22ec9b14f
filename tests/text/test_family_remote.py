"""The remote-code families (Qwen-1, Baichuan, ChatGLM3) on tiny bases in their upstream layout, converted by
llama.cpp's own converter and quantized by its quantizer (``tiny/remote_code_bases.py``).

Per family: the torch forward on the F32 file equals the transformers model with the upstream equations
(Qwen2 for Qwen-1, LLaMA for Baichuan-7B, GLM for ChatGLM3); a 12-step run on F16, Q8_0 and Q4_K_M passes
the run's own llama.cpp check (base only and with the adapter); llama.cpp's ``convert_lora_to_gguf.py``
names the adapter's tensors as we do (given the upstream folder as the base); GGUF -> PEFT -> GGUF is exact.
"""

from __future__ import annotations

import pytest
from family_checks import (
    assert_llama_cpp_check,
    assert_names_as_llama_cpp,
    assert_peft_round_trip_exact,
    family_base_factory,
    logits_gap,
)
from test_families import IDS, QTYPES, _run
from textutil import llama_cpp_script

from extension.text.gguf_model import load_text_model
from extension.tiny.remote_code_bases import build_reference, remote_family_files, run_converter

pytestmark = pytest.mark.slow  # llama.cpp's converter and quantizer run per family (seconds each)

FAMILIES = ("qwen", "baichuan", "chatglm")


@pytest.fixture(scope="module")
def remote_bases(tmp_path_factory):
    """make(family) -> {"hf", "F32", "F16", "Q8_0", "Q4_K_M": path}, built once per family."""
    return family_base_factory(tmp_path_factory, "remote-families", remote_family_files)


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
    assert logits_gap(build_reference(family), load_text_model(files["F32"]), IDS) < 1e-4


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_trains_and_llama_cpp_agrees(family, qtype, trained):
    _, result = trained(family, qtype)
    assert_llama_cpp_check(result, f"{family} {qtype}")


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_as_llama_cpp_names_it(family, remote_bases, trained, tmp_path):
    files = remote_bases(family)
    out, _ = trained(family, "F16")
    script = llama_cpp_script("convert_lora_to_gguf.py")
    ref = tmp_path / "ref.gguf"
    done = run_converter(script.parent, script.name, family, [str(out / "tl"), "--base", str(files["hf"]),
                                                              "--outfile", str(ref), "--outtype", "f32"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert_names_as_llama_cpp(out / "tl.gguf", ref)
    assert_peft_round_trip_exact(out / "tl.gguf", files["F16"], tmp_path)
