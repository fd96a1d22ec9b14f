"""GGUF files whose counts promise more than they hold, or far more than any model needs: one line, fast.

Files are written byte by byte here, since gguf-py's writer would itself spend the memory.
"""

import resource
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import converters
from extension.cli import main

_ROOT = Path(__file__).resolve().parents[2]


def _str(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _kv_string(key: str, value: str) -> bytes:
    return _str(key) + struct.pack("<I", 8) + _str(value)


def _kv_string_array(key: str, count: int) -> bytes:
    return _str(key) + struct.pack("<I", 9) + struct.pack("<IQ", 8, count) + b"\0" * 8 * count


def _gguf(path: Path, *kvs: bytes, n_tensors: int = 0, tail: bytes = b"") -> Path:
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kvs)) + b"".join(kvs) + tail)
    return path


def _limited_cli(*argv: str) -> subprocess.CompletedProcess:
    """The CLI in a child held to 3 GB of address space (torch included) and 120 s."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    return subprocess.run([sys.executable, "-m", "extension", *argv], cwd=_ROOT, capture_output=True, text=True,
                          timeout=120, preexec_fn=limit, env={"PYTHONPATH": str(_ROOT), "PATH": "/usr/bin:/bin"})


def test_three_million_empty_strings_refused_before_parsing(tmp_path):
    path = _gguf(tmp_path / "vocab.gguf", _kv_string("general.type", "adapter"),
                 _kv_string_array("tokenizer.ggml.tokens", 3_000_000))
    done = _limited_cli("inspect", str(path))
    err = done.stderr.strip()
    assert done.returncode == 2, err
    assert len(err.splitlines()) == 1 and "vocab.gguf" in err and "vocabulary" in err, err


def test_model_sized_array_in_a_base_refused(tmp_path):
    path = _gguf(tmp_path / "base.gguf", _kv_string("general.architecture", "llama"),
                 _kv_string_array("tokenizer.ggml.tokens", 3_000_000))
    with pytest.raises(converters.AdapterError, match="3000000 elements"):
        converters.gguf_check.check_gguf(path)
    from extension.errors import UserError
    from extension.text.gguf_model import read_gguf_metadata

    with pytest.raises(UserError, match="base.gguf"):
        read_gguf_metadata(path)


@pytest.mark.parametrize("case", ["string length", "array count", "kv count", "tensor count", "tensor data"])
def test_counts_past_the_end_refused(tmp_path, capsys, case):
    general = _kv_string("general.type", "adapter")
    if case == "string length":
        path = _gguf(tmp_path / "bad.gguf", general, _str("k") + struct.pack("<IQ", 8, 1 << 40) + b"x" * 16)
    elif case == "array count":
        path = _gguf(tmp_path / "bad.gguf", general, _str("k") + struct.pack("<I", 9) + struct.pack("<IQ", 6, 1 << 50))
    elif case == "kv count":
        path = tmp_path / "bad.gguf"
        path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1 << 60) + general)
    elif case == "tensor count":
        path = _gguf(tmp_path / "bad.gguf", general, n_tensors=1 << 60)
    else:  # a 2 x 1 M float32 tensor in a file of a few hundred bytes
        info = _str("blk.0.attn_q.weight.lora_a") + struct.pack("<I", 2) + struct.pack("<QQ", 1 << 20, 2)
        info += struct.pack("<IQ", 0, 0)
        path = _gguf(tmp_path / "bad.gguf", general, n_tensors=1, tail=info + b"\0" * 64)
    with pytest.raises(converters.AdapterError, match="bad.gguf"):
        converters.gguf_check.check_gguf(path)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.gguf" in err, err


def test_real_files_pass(llama_files, tmp_path, peft_adapters):
    for path in llama_files.values():
        if str(path).endswith(".gguf"):
            converters.gguf_check.check_gguf(path)
    folder, _ = peft_adapters("uniform")
    out = converters.convert(folder, tmp_path / "a.gguf", base=llama_files["F32"])
    converters.gguf_check.check_gguf(out)
    assert converters.load_adapter(out, base=llama_files["F32"]).modules
