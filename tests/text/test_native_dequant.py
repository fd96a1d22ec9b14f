"""The compiled dequantizer gives the torch code's and gguf-py's values bit for bit, and is optional."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from extension.text import native
from extension.text.quant import dequantize_into, dequantize_rows, torch_dequantize_rows

Q = GGMLQuantizationType
NATIVE = sorted(native.NATIVE_TYPES)


@pytest.fixture(scope="module")
def lib():
    found = native.native_dequantizer(torch_dequantize_rows)
    if found is None:
        pytest.fail("no native dequantizer: CI has a C compiler, so the build or its self-test failed")
    return found


def _random_blocks(qtype: Q, n_blocks: int, seed: int) -> np.ndarray:
    """Random blocks whose f16 scales are finite (random quants, signs, subnormal and zero scales)."""
    rng = np.random.default_rng(seed)
    _, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    native._sane_scales(torch.from_numpy(raw), qtype)  # in place, as the self-test does
    return raw


@pytest.mark.parametrize("qtype", NATIVE, ids=lambda q: q.name)
def test_native_equals_torch_and_gguf_py(lib, qtype):
    block, _ = GGML_QUANT_SIZES[qtype]
    raw = _random_blocks(qtype, 512, int(qtype))
    got, portable = torch.empty(512 * block), torch.empty(512 * block)
    lib.into(torch.from_numpy(raw), qtype, got)
    lib.into(torch.from_numpy(raw), qtype, portable, portable=True)  # the plain C loop, not the SIMD one
    assert torch.equal(got.view(torch.int32), portable.view(torch.int32))
    reference = dequantize_rows(torch.from_numpy(raw), qtype, block, native=False).reshape(-1)
    independent = torch.from_numpy(dequantize(raw, qtype).astype(np.float32).reshape(-1))
    assert torch.equal(got.view(torch.int32), reference.view(torch.int32))
    assert torch.equal(got, independent)
    assert got.abs().max() > 0


def test_every_f16_scale_converts_exactly(lib):
    # Q8_0 blocks with quants 1 and -1: the output is the f16 scale itself, for all 63488 finite halves
    halves = np.arange(1 << 16, dtype=np.uint16)
    halves = halves[np.isfinite(halves.view(np.float16))]
    raw = np.zeros((halves.size, 34), dtype=np.uint8)
    raw[:, :2] = halves.view(np.uint8).reshape(-1, 2)
    raw[:, 2] = 1
    raw[:, 3] = 0xFF  # int8 -1
    out = torch.empty(halves.size * 32)
    lib.into(torch.from_numpy(raw), Q.Q8_0, out)
    blocks = out.view(-1, 32).numpy()
    want = halves.view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(blocks[:, 0].view(np.uint32), want.view(np.uint32))
    np.testing.assert_array_equal(blocks[:, 1], -want)


def test_packed_paths_use_it_and_agree(lib):
    raw = torch.from_numpy(_random_blocks(Q.Q4_0, 64 * 8, 7)).reshape(64, 8 * 18)
    fast = dequantize_into(raw, Q.Q4_0, 256, torch.empty(64, 256))
    slow = dequantize_rows(raw, Q.Q4_0, 256, native=False)
    assert torch.equal(fast, slow)
    with pytest.raises(ValueError, match="contiguous"):
        lib.into(raw[:, :18 * 4], Q.Q4_0, torch.empty(64, 128))  # a column slice is not contiguous


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("LORA_BRIDGE_NATIVE", "0")
    assert native.native_dequantizer(torch_dequantize_rows) is None
    raw = torch.from_numpy(_random_blocks(Q.Q4_0, 16, 3))
    assert torch.equal(dequantize_rows(raw, Q.Q4_0, 32), dequantize_rows(raw, Q.Q4_0, 32, native=False))


def test_without_a_compiler_torch_is_used(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no cc, gcc or clang either
    assert native._compiler() is None
    assert native._load(torch_dequantize_rows) is None


def test_build_is_cached_and_atomic(tmp_path):
    cc = native._compiler()
    assert cc is not None
    first = native.build_library(cc, tmp_path)
    stamp = first.stat().st_mtime_ns
    assert native.build_library(cc, tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary left behind
    assert native.NativeDequantizer(first) is not None


def test_failed_build_leaves_nothing(monkeypatch, tmp_path):
    bad = tmp_path / "bad.c"
    bad.write_text("this is not C\n")
    monkeypatch.setattr(native, "SOURCE", bad)
    with pytest.raises(RuntimeError):
        native.build_library(native._compiler(), tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
