"""Our safetensors reader/writer against the safetensors package itself."""

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from converters.errors import AdapterError
from converters.safetensors_io import SafetensorsFile, bf16_bits_to_f32, f32_to_bf16_bits, write_safetensors


def test_roundtrip_matches_reference_library(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "a": rng.standard_normal((3, 5)).astype(np.float32),
        "b": rng.standard_normal((2, 4, 1, 1)).astype(np.float16),
        "c": np.arange(7, dtype=np.int64),
        "scalar": np.array(2.5, dtype=np.float32),
    }
    path = write_safetensors(tmp_path / "x.safetensors", tensors, {"k": "v"})
    loaded = load_file(str(path))
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype
        np.testing.assert_array_equal(loaded[name], value)
    ours = SafetensorsFile(path)
    assert ours.metadata == {"k": "v"}
    assert ours.shape("scalar") == ()
    for name, value in tensors.items():
        np.testing.assert_array_equal(ours.get(name), value)


def test_reads_files_written_by_reference_library(tmp_path):
    tensors = {"w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)}
    save_file(tensors, str(tmp_path / "ref.safetensors"), metadata={"m": "1"})
    ours = SafetensorsFile(tmp_path / "ref.safetensors")
    np.testing.assert_array_equal(ours.get("w"), tensors["w"])
    assert ours.metadata == {"m": "1"}


def test_bf16_matches_torch_rounding(tmp_path):
    torch = pytest.importorskip("torch")
    values = np.random.default_rng(1).standard_normal(1000).astype(np.float32) * 100
    ours = bf16_bits_to_f32(f32_to_bf16_bits(values))
    theirs = torch.from_numpy(values).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(ours, theirs)
    write_safetensors(tmp_path / "b.safetensors", {"x": values}, float_dtype="bf16")
    from safetensors.torch import load_file as torch_load

    np.testing.assert_array_equal(torch_load(str(tmp_path / "b.safetensors"))["x"].float().numpy(), theirs)


@pytest.mark.parametrize("cut", [4, 20, -3])
def test_truncated_file_is_one_clear_error(tmp_path, cut):
    path = write_safetensors(tmp_path / "t.safetensors", {"w": np.ones((8, 8), np.float32)})
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(AdapterError, match="t.safetensors"):
        SafetensorsFile(path)


def test_garbage_is_one_clear_error(tmp_path):
    path = tmp_path / "g.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"not json at all!")
    with pytest.raises(AdapterError, match="corrupt"):
        SafetensorsFile(path)


def test_existing_destination_needs_force(tmp_path):
    path = write_safetensors(tmp_path / "e.safetensors", {"w": np.zeros(2, np.float32)})
    with pytest.raises(AdapterError, match="--force"):
        write_safetensors(path, {"w": np.ones(2, np.float32)}, force=False)
    np.testing.assert_array_equal(SafetensorsFile(path).get("w"), np.zeros(2, np.float32))


# ---- malformed headers: the safetensors library refuses each, and so do we, with one line ----
_DOWN = "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight"
_UP = "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight"


def _entry(shape, begin, end, dtype="F32"):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def _raw_file(path, header, data_len):
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\x01" * data_len)
    return path


_MALFORMED = {
    "negative offset": ({_DOWN: _entry([2, 4], -32, 0), _UP: _entry([4, 2], 0, 32)}, 32),
    "overlapping offsets": ({_DOWN: _entry([2, 4], 0, 32), _UP: _entry([4, 2], 0, 32)}, 32),
    "gap between tensors": ({_DOWN: _entry([2, 4], 0, 32), _UP: _entry([4, 2], 40, 72)}, 72),
    "bytes after the last tensor": ({_DOWN: _entry([2, 4], 0, 32), _UP: _entry([4, 2], 32, 64)}, 80),
    "end before begin": ({_DOWN: _entry([0], 8, 0), _UP: _entry([4, 2], 0, 32)}, 32),
    "negative dim": ({_DOWN: _entry([-2, 4], 0, 32), _UP: _entry([4, 2], 32, 64)}, 64),
    "overflowing dims": ({_DOWN: _entry([2**62, 2**62], 0, 32), _UP: _entry([4, 2], 32, 64)}, 64),
    "float offsets": ({_DOWN: _entry([2, 4], 0.0, 32.0), _UP: _entry([4, 2], 32, 64)}, 64),
    "float dims": ({_DOWN: _entry([2.0, 4], 0, 32), _UP: _entry([4, 2], 32, 64)}, 64),
    "unknown dtype": ({_DOWN: _entry([2, 4], 0, 32, "F33"), _UP: _entry([4, 2], 32, 64)}, 64),
    "no dtype": ({_DOWN: {"shape": [2, 4], "data_offsets": [0, 32]}, _UP: _entry([4, 2], 32, 64)}, 64),
    "size mismatch": ({_DOWN: _entry([2, 4], 0, 16), _UP: _entry([4, 2], 16, 48)}, 48),
    "metadata is a number": ({"__metadata__": 5, _DOWN: _entry([2, 4], 0, 32), _UP: _entry([4, 2], 32, 64)}, 64),
    "metadata value not a string": ({"__metadata__": {"ss_network_dim": 4}, _DOWN: _entry([2, 4], 0, 32),
                                     _UP: _entry([4, 2], 32, 64)}, 64),
    "header is a list": ([1, 2], 8),
    "entry is a string": ({_DOWN: "x"}, 8),
    "deep nesting": (b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}", 0),
}


@pytest.mark.parametrize("case", sorted(_MALFORMED))
def test_malformed_header_refused_like_the_library(tmp_path, capsys, case):
    from safetensors import safe_open

    from extension.cli import main

    header, data_len = _MALFORMED[case]
    path = _raw_file(tmp_path / "bad.safetensors", header, data_len)
    # the library's own error types differ by version
    with pytest.raises(Exception), safe_open(str(path), framework="numpy") as handle:  # noqa: B017
        for key in list(handle.keys()):  # noqa: SIM118 - safe_open is not a mapping
            handle.get_tensor(key)
    with pytest.raises(AdapterError, match="bad.safetensors"):
        SafetensorsFile(path)
    code = main(["convert", str(path), str(tmp_path / "out.safetensors"), "--to", "kohya", "--arch", "sd1"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "bad.safetensors" in err, err
    assert not (tmp_path / "out.safetensors").exists()


def test_valid_raw_header_still_reads(tmp_path):
    header = {"__metadata__": {"k": "v"}, _UP: _entry([4, 2], 32, 64), _DOWN: _entry([2, 4], 0, 32)}
    path = _raw_file(tmp_path / "ok.safetensors", header, 64)
    ours = SafetensorsFile(path)
    assert ours.shape(_UP) == (4, 2) and ours.metadata == {"k": "v"}
