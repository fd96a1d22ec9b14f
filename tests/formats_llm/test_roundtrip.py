"""PEFT -> GGUF -> PEFT keeps every module's effective delta; old ggla adapters upgrade to GGUF."""

import struct

import numpy as np
import pytest

import converters

from .conftest import peft_logits, run_llama


def _assert_same_deltas(a, b):
    assert sorted(a.modules) == sorted(b.modules)
    for name, module in a.modules.items():
        np.testing.assert_allclose(b.modules[name].delta(), module.delta(), rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("kind", ["uniform", "patterns", "rslora", "embed"])
def test_peft_gguf_peft(kind, peft_adapters, llama_files, tmp_path):
    folder, model = peft_adapters(kind)
    gguf_file = converters.convert(folder, tmp_path / "a.gguf", base=llama_files["F32"])
    back = converters.convert(gguf_file, tmp_path / "back")
    original = converters.load_adapter(folder)
    _assert_same_deltas(original, converters.load_adapter(back))
    # PEFT itself loads the result and reproduces the original model's logits.
    peft = pytest.importorskip("peft")
    from extension.tiny.llama import build_tiny_llama

    reloaded = peft.PeftModel.from_pretrained(build_tiny_llama(seed=0), back).eval()
    np.testing.assert_allclose(peft_logits(reloaded), peft_logits(model), atol=1e-4)


def test_gguf_reads_back_without_base(peft_adapters, llama_files, tmp_path):
    """Our files record the head counts, so reading them needs no --base."""
    folder, _ = peft_adapters("patterns")
    gguf_file = converters.convert(folder, tmp_path / "a.gguf", base=llama_files["F32"])
    adapter = converters.load_adapter(gguf_file)
    assert adapter.arch == "llama"
    _assert_same_deltas(converters.load_adapter(folder), adapter)


def write_ggla(path, adapter, rank, alpha, legacy_names=False):
    """A ggla file laid out like the old convert-lora-to-ggml.py wrote it (A transposed, B as is)."""
    from converters.llm_names import hf_to_gguf

    legacy = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
              "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
              "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2", "mlp.up_proj": "feed_forward.w3"}
    with open(path, "wb") as out:
        out.write(b"ggla"[::-1])
        out.write(struct.pack("<iii", 1, rank, alpha))
        for name, module in adapter.modules.items():
            if legacy_names:
                layer, rest = name.split(".")[2], ".".join(name.split(".")[3:])
                base = f"layers.{layer}.{legacy[rest]}"
            else:
                base = hf_to_gguf(name, "llama")
            for suffix, array in (("A", np.asarray(module.down, np.float32).T), ("B", np.asarray(module.up))):
                array = np.ascontiguousarray(array, dtype=np.float16 if suffix == "A" else np.float32)
                tname = f"{base}.weight.lora{suffix}".encode()
                out.write(struct.pack("<iii", array.ndim, len(tname), 1 if array.dtype == np.float16 else 0))
                out.write(struct.pack(f"<{array.ndim}i", *array.shape[::-1]))
                out.write(tname)
                out.seek((out.tell() + 31) & -32)
                array.tofile(out)


@pytest.mark.parametrize("legacy_names", [False, True])
def test_ggla_reads_like_peft(legacy_names, peft_adapters, tmp_path):
    folder, _ = peft_adapters("uniform")
    original = converters.load_adapter(folder)
    write_ggla(tmp_path / "old.bin", original, rank=4, alpha=8, legacy_names=legacy_names)
    adapter = converters.load_adapter(tmp_path / "old.bin")
    assert adapter.source_format == "ggla"
    for name, module in original.modules.items():
        # lora_A went through f16 in the file
        np.testing.assert_allclose(adapter.modules[name].delta(), module.delta(), atol=2e-3, err_msg=name)


@pytest.mark.llama_cpp
def test_ggla_upgrade_runs_in_llama_cpp(peft_adapters, llama_files, tmp_path):
    pytest.importorskip("llama_cpp")
    folder, model = peft_adapters("uniform")
    write_ggla(tmp_path / "old.bin", converters.load_adapter(folder), rank=4, alpha=8)
    from extension.cli import main

    assert main(["convert", str(tmp_path / "old.bin"), str(tmp_path / "new.gguf"),
                 "--base", str(llama_files["F32"])]) == 0
    got = run_llama(llama_files["F32"], tmp_path, tmp_path / "new.gguf")
    assert np.abs(got - peft_logits(model)).max() <= 5e-3  # lora_A was stored as f16 in the ggla file


def test_convert_path_does_not_import_torch(peft_adapters, llama_files, tmp_path):
    """PEFT -> GGUF runs on numpy + gguf-py alone (fast start, small memory)."""
    import subprocess
    import sys

    folder, _ = peft_adapters("patterns")
    code = ("import sys; from extension.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, "convert", str(folder), str(tmp_path / "a.gguf"),
                           "--base", str(llama_files["F32"])], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
