"""Names, shapes, KV and values of our GGUF adapters against llama.cpp's own convert_lora_to_gguf.py.

Needs LORA_BRIDGE_LLAMA_CPP (see conftest.py); skipped otherwise.
"""

import os
import subprocess
import sys

import gguf
import numpy as np
import pytest

import converters

pytestmark = pytest.mark.slow  # each run of llama.cpp's converter takes a few seconds (torch import)

SHARED_KV = ("general.architecture", "general.type", "adapter.type")


def _reference(src, folder, hf, out):
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, str(src / "convert_lora_to_gguf.py"), str(folder), "--base", str(hf),
           "--outfile", str(out), "--outtype", "f32"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def _tensors(path):
    reader = gguf.GGUFReader(path)
    return reader, {t.name: (tuple(t.shape.tolist()), int(t.tensor_type), np.array(t.data)) for t in reader.tensors}


@pytest.mark.parametrize("kind", ["uniform", "embed", "patterns"])
def test_same_tensors_as_llama_cpp(kind, peft_adapters, llama_files, llama_cpp_src, tmp_path):
    folder, _ = peft_adapters(kind)
    ref = _reference(llama_cpp_src, folder, llama_files["hf"], tmp_path / "ref.gguf")
    ours = converters.convert(folder, tmp_path / "ours.gguf", base=llama_files["hf"], dtype="f32")
    ref_reader, ref_tensors = _tensors(ref)
    our_reader, our_tensors = _tensors(ours)
    assert sorted(our_tensors) == sorted(ref_tensors)
    for name, (shape, kind_id, data) in ref_tensors.items():
        assert our_tensors[name][:2] == (shape, kind_id), name
        if kind != "patterns":  # llama.cpp's converter ignores alpha_pattern; ours bakes it into lora_b
            np.testing.assert_allclose(our_tensors[name][2], data, rtol=0, atol=1e-7, err_msg=name)
    for key in SHARED_KV:
        assert our_reader.fields[key].contents() == ref_reader.fields[key].contents(), key
    ref_alpha = ref_reader.fields["adapter.lora.alpha"].contents()
    our_alpha = our_reader.fields["adapter.lora.alpha"].contents()
    assert our_alpha == (0.0 if kind == "patterns" else ref_alpha)


def test_reads_llama_cpp_output(peft_adapters, llama_files, llama_cpp_src, tmp_path):
    """A file from llama.cpp's converter reads back (with --base for the head counts) to PEFT's deltas."""
    folder, _ = peft_adapters("embed")
    ref = _reference(llama_cpp_src, folder, llama_files["hf"], tmp_path / "ref.gguf")
    with pytest.raises(converters.AdapterError, match="--base"):
        converters.load_adapter(ref)
    back = converters.load_adapter(ref, base=llama_files["F32"])
    original = converters.load_adapter(folder)
    assert sorted(back.modules) == sorted(original.modules)
    for name, module in original.modules.items():
        np.testing.assert_allclose(back.modules[name].delta(), module.delta(), atol=1e-6, err_msg=name)
