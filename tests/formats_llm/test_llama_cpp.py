"""Our GGUF adapters in llama.cpp (llama-cpp-python) against transformers + PEFT on the tiny GQA base."""

import numpy as np
import pytest

import converters

from .conftest import peft_logits, run_llama

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.llama_cpp

TOL = 1e-3


def _convert(peft_folder, dst, base, **options):
    return converters.convert(peft_folder, dst, base=base, force=True, **options)


@pytest.mark.parametrize("kind", ["uniform", "patterns", "rslora", "embed"])
def test_matches_peft_at_f32(kind, peft_adapters, llama_files, tmp_path):
    folder, model = peft_adapters(kind)
    lora = _convert(folder, tmp_path / f"{kind}.gguf", llama_files["F32"])
    want = peft_logits(model)
    got = run_llama(llama_files["F32"], tmp_path, lora)
    assert np.abs(got - want).max() <= TOL
    # The adapter matters: without it the logits are far off (the check is not vacuous).
    assert np.abs(peft_logits(model, adapter=False) - want).max() > 100 * TOL


def test_lora_scale_half(peft_adapters, llama_files, tmp_path):
    folder, model = peft_adapters("patterns")
    lora = _convert(folder, tmp_path / "half.gguf", llama_files["F32"])
    got = run_llama(llama_files["F32"], tmp_path, lora, scale=0.5)
    want = peft_logits(model, scale=0.5)
    assert np.abs(got - want).max() <= TOL
    assert np.abs(peft_logits(model) - want).max() > 100 * TOL


def test_qwen2_is_not_permuted(peft_adapters, qwen2_files, tmp_path):
    folder, model = peft_adapters("uniform", arch="qwen2")
    lora = _convert(folder, tmp_path / "qwen2.gguf", qwen2_files["F32"])
    assert np.abs(run_llama(qwen2_files["F32"], tmp_path, lora) - peft_logits(model)).max() <= TOL


def test_heads_from_peft_base_config_without_base(peft_adapters, llama_files, tmp_path):
    """No --base: arch and head counts come from the base config.json the PEFT config points at."""
    folder, model = peft_adapters("uniform")
    lora = converters.convert(folder, tmp_path / "nobase.gguf")
    assert np.abs(run_llama(llama_files["F32"], tmp_path, lora) - peft_logits(model)).max() <= TOL


def test_f16_output(peft_adapters, llama_files, tmp_path):
    folder, model = peft_adapters("uniform")
    lora = _convert(folder, tmp_path / "f16.gguf", llama_files["F32"], dtype="f16")
    assert np.abs(run_llama(llama_files["F32"], tmp_path, lora) - peft_logits(model)).max() <= 1e-2


def test_q8_0_base_within_its_own_quantization_error(peft_adapters, llama_files, tmp_path):
    folder, model = peft_adapters("uniform")
    lora = _convert(folder, tmp_path / "q8.gguf", llama_files["Q8_0"])
    base_error = np.abs(run_llama(llama_files["Q8_0"], tmp_path) - peft_logits(model, adapter=False)).max()
    lora_error = np.abs(run_llama(llama_files["Q8_0"], tmp_path, lora) - peft_logits(model)).max()
    assert base_error > 0  # Q8_0 really is lossy here
    assert lora_error <= 2 * base_error + TOL
