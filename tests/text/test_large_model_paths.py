"""Code paths that only large (7B-class) bases take, exercised on small weights with the limits lowered."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from extension.text import native, quant
from extension.text.quant import PackedWeight, packed_matmul, packed_matmul_t

Q = GGMLQuantizationType


def _blocks(qtype: Q, n_blocks: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    raw = torch.from_numpy(rng.integers(0, 256, size=(n_blocks, GGML_QUANT_SIZES[qtype][1]), dtype=np.uint8))
    native._sane_scales(raw, qtype)
    return raw


@pytest.mark.parametrize("qtype", sorted(native.NATIVE_TYPES), ids=lambda q: q.name)
def test_threaded_dequantization_is_bit_identical(monkeypatch, qtype):
    lib = native.native_dequantizer(quant.torch_dequantize_rows)
    if lib is None:
        pytest.fail("no native dequantizer: CI has a C compiler, so the build or its self-test failed")
    monkeypatch.setattr(native, "PARALLEL_BLOCKS", 8)  # 101 blocks: split 3 ways into uneven runs
    raw = _blocks(qtype, 101, int(qtype))
    block = GGML_QUANT_SIZES[qtype][0]
    one, three = torch.empty(101 * block), torch.empty(101 * block)
    lib.into(raw, qtype, one, threads=1)
    lib.into(raw, qtype, three, threads=3)
    assert torch.equal(one.view(torch.int32), three.view(torch.int32))
    reference = quant.dequantize_rows(raw, qtype, block, native=False).reshape(-1)
    assert torch.equal(three.view(torch.int32), reference.view(torch.int32))


def _packed(rows: int, cols: int, seed: int = 0) -> PackedWeight:
    raw = _blocks(Q.Q4_0, rows * cols // 32, seed).numpy()
    raw[:, :2] = np.array([0.01], dtype=np.float16).view(np.uint8)  # unit-sized weights: tolerances mean something
    raw = raw.reshape(rows, -1)
    return PackedWeight.from_numpy(raw, Q.Q4_0, (rows, cols))


def test_whole_weight_product_is_the_float_models_matmul():
    packed = _packed(96, 64)
    dense = packed.dequantize()
    x, g = torch.randn(5, 64), torch.randn(5, 96)
    assert torch.equal(packed_matmul(x, packed), x @ dense.t())
    assert torch.equal(packed_matmul_t(g, packed), g @ dense)


def test_weights_above_the_whole_limit_go_by_chunks(monkeypatch):
    monkeypatch.setattr(quant, "_WHOLE_ELEMENTS", 1000)
    monkeypatch.setattr(quant, "_CHUNK_ELEMENTS", 64 * 10)  # 10-row chunks: 96 rows end in a partial one
    packed = _packed(96, 64)
    assert quant._whole(packed, torch.float32) is None
    dense = packed.dequantize()
    x, g = torch.randn(2, 5, 64), torch.randn(2, 5, 96)
    out = torch.empty(2, 5, 96)
    torch.testing.assert_close(packed_matmul(x, packed, out), x @ dense.t(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, x @ dense.t(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed_matmul_t(g, packed), g @ dense, rtol=1e-5, atol=1e-5)


def test_ggml_q_and_k_are_not_read_through_the_file_map(tiny, monkeypatch):
    """Q/K are reordered into copies; their file pages must not also stay mapped into the process."""
    from extension.text import gguf_model
    from extension.text.gguf_model import load_ggml_model

    seen: dict[str, np.ndarray] = {}
    build = gguf_model.build_model

    def spy(cfg, tensors, permuted_qk):
        seen.update({name: entry[0] for name, entry in tensors.items()})
        return build(cfg, tensors, permuted_qk)

    monkeypatch.setattr(gguf_model, "build_model", spy)
    load_ggml_model(tiny["ggml-Q4_0"], n_kv_heads=2, rms_eps=1e-5)

    def mapped(array: np.ndarray) -> bool:
        while array is not None:
            if isinstance(array, np.memmap):
                return True
            array = array.base if isinstance(array.base, np.ndarray) else None
        return False

    qk = [n for n in seen if n.endswith(("q_proj.weight", "k_proj.weight"))]
    assert qk and not any(mapped(seen[n]) for n in qk)
    assert mapped(seen["model.layers.0.mlp.up_proj.weight"])  # the rest stays in the page cache, mapped


def test_kept_outputs_fit_the_budget_best_first():
    from extension.text.recompute import plan_kept

    widths = {"q_proj": 32 * 4096, "k_proj": 32 * 4096, "v_proj": 32 * 4096, "o_proj": 32 * 4096,
              "down_proj": 32 * 4096}
    assert plan_kept(widths, tokens=256, budget=256 << 20) == ["down_proj", "o_proj"]  # 7B, batch 4 x 64
    assert plan_kept(widths, tokens=16, budget=256 << 20) == ["down_proj", "o_proj", "q_proj", "k_proj", "v_proj"]
    assert plan_kept(widths, tokens=4096, budget=256 << 20) == []


def test_model_turns_off_what_does_not_fit(tiny):
    from extension.text.gguf_model import load_text_model
    from extension.text.lora import inject_lora
    from extension.text.quant import PackedLinear

    model = load_text_model(tiny["Q4_0"])
    inject_lora(model, ["q_proj", "down_proj"], 2, 2)
    hidden = model.config.hidden_size * model.config.num_layers * 4  # bytes per token of one kept projection
    kept = model.limit_kept_outputs(tokens=10, budget=hidden * 10 * 2)
    assert kept == ["down_proj", "o_proj"]
    on = {n.split(".")[-1] if not n.endswith(".base") else n.split(".")[-2]
          for n, m in model.named_modules() if isinstance(m, PackedLinear) and m.keep_output}
    assert on == {"down_proj", "o_proj"}
    assert model.limit_kept_outputs(tokens=10) == ["down_proj", "o_proj"]  # never turned back on
