"""Our safetensors reader/writer against the safetensors package itself."""

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
