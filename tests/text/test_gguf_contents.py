"""``gguf_check.read_gguf_contents``, the text engine's GGUF reader: the same metadata values and tensor data as
gguf-py's ``GGUFReader`` (which spends tens of seconds on a 150 k vocabulary), on llama.cpp's own files."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter

from extension.errors import UserError
from extension.text.gguf_model import field_value, read_gguf_metadata, tensor_view


def _same_as_gguf_py(path):
    reader = GGUFReader(str(path))
    want = {key: field_value(f) for key, f in reader.fields.items() if not key.startswith("GGUF.")}
    infos, meta = read_gguf_metadata(path)
    assert meta == want
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    assert [i.name for i in infos] == [t.name for t in reader.tensors]
    for info, theirs in zip(infos, reader.tensors, strict=True):
        data, ggml_type = tensor_view(mapped, path, info)
        assert ggml_type == theirs.tensor_type and info.dims == tuple(theirs.shape.tolist()), info.name
        assert data.dtype == theirs.data.dtype and data.shape == theirs.data.shape, info.name
        assert np.array_equal(data, theirs.data, equal_nan=data.dtype.kind == "f"), info.name
    return meta


@pytest.mark.slow  # llama.cpp's converter and quantizer build the files (shared with the family tests)
@pytest.mark.parametrize("family", ["llama3", "qwen3moe", "gemma3"])
def test_llama_cpp_files_read_as_gguf_py_reads_them(family, family_bases):
    files = family_bases(family)
    for qtype in ("F32", "F16", "Q8_0", "Q4_K_M"):
        meta = _same_as_gguf_py(files[qtype])
        assert len(meta["tokenizer.ggml.tokens"]) > 100


def test_a_vocabulary_with_odd_strings_reads_as_gguf_py_reads_it(tmp_path):
    path = tmp_path / "vocab.gguf"
    writer = GGUFWriter(str(path), "llama")
    tokens = ["", "a", "ñ", "\u2581the", "<|im_end|>", "\x00x", "z" * 300] + [f"t{i}" for i in range(5000)]
    writer.add_token_list(tokens)
    writer.add_token_scores([float(i) / 7 for i in range(len(tokens))])
    writer.add_token_types([1] * len(tokens))
    writer.add_token_merges(["a b", "ñ \u2581"])
    writer.add_bool("test.flag", True)
    writer.add_array("test.heads", [4, 4, 2])
    writer.add_string("tokenizer.chat_template", "{{ messages }}")
    writer.add_tensor("token_embd.weight", np.arange(32, dtype=np.float16).reshape(4, 8))
    writer.add_tensor("output.weight", np.arange(64, dtype=np.float32).reshape(8, 8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    meta = _same_as_gguf_py(path)
    assert meta["tokenizer.ggml.tokens"][:7] == tokens[:7] and meta["test.flag"] is True


def test_a_duplicated_tensor_and_a_truncated_vocabulary_are_one_line(tmp_path):
    path = tmp_path / "dup.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_token_list(["a", "b"])
    writer.add_tensor("a.weight", np.zeros(4, dtype=np.float32))
    writer.add_tensor("b.weight", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"b.weight", b"a.weight"))
    with pytest.raises(UserError, match="tensor a.weight appears twice") as err:
        read_gguf_metadata(path)
    assert "\n" not in str(err.value)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(raw[:raw.index(b"b\x0f") if b"b\x0f" in raw else 60])
    with pytest.raises(UserError, match="truncated or corrupt|too short"):
        read_gguf_metadata(cut)
