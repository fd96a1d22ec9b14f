"""MoE per-expert LoRA in the GGUF adapter format: canonical modules per expert (``mlp.experts.{e}.up_proj``, as
Hugging Face and PEFT name them) <-> one 3-D lora_a (experts, r, in) / lora_b (experts, out, r) per llama.cpp
expert tensor (``blk.{i}.ffn_up_exps``), which llama.cpp applies through ``mul_mat_id``."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

import converters
from converters import AdapterError, LoraAdapter, LoraModule

N_EXPERTS, RANK, HIDDEN, FF = 3, 2, 32, 64


def _adapter(skip: int | None = None, alphas: tuple[float, ...] = (4.0,)) -> LoraAdapter:
    rng = np.random.default_rng(0)
    modules = {"model.layers.0.self_attn.q_proj": LoraModule(rng.standard_normal((RANK, HIDDEN), np.float32),
                                                             rng.standard_normal((HIDDEN, RANK), np.float32), 4.0)}
    for e in range(N_EXPERTS):
        if e == skip:
            continue
        for proj, (out, inp) in (("gate_proj", (FF, HIDDEN)), ("up_proj", (FF, HIDDEN)), ("down_proj", (HIDDEN, FF))):
            modules[f"model.layers.0.mlp.experts.{e}.{proj}"] = LoraModule(
                rng.standard_normal((RANK, inp), np.float32), rng.standard_normal((out, RANK), np.float32),
                alphas[e % len(alphas)])
    return LoraAdapter(modules=modules, arch="qwen3moe")


def test_experts_written_as_3d_and_read_back(tmp_path):
    adapter = _adapter()
    path = converters.save_adapter(adapter, tmp_path / "moe.gguf", dtype="f32")
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    assert tensors["blk.0.ffn_up_exps.weight.lora_a"].shape.tolist() == [HIDDEN, RANK, N_EXPERTS]  # ggml ne
    assert tensors["blk.0.ffn_down_exps.weight.lora_b"].shape.tolist() == [RANK, HIDDEN, N_EXPERTS]
    up_b = np.array(tensors["blk.0.ffn_up_exps.weight.lora_b"].data)
    np.testing.assert_array_equal(up_b[1], adapter.modules["model.layers.0.mlp.experts.1.up_proj"].up)
    back = converters.load_adapter(path)
    assert sorted(back.modules) == sorted(adapter.modules)
    for name, module in adapter.modules.items():
        np.testing.assert_array_equal(back.modules[name].delta(), module.delta(), err_msg=name)


def test_mixed_alphas_baked_per_expert(tmp_path):
    adapter = _adapter(alphas=(4.0, 2.0))
    back = converters.load_adapter(converters.save_adapter(adapter, tmp_path / "moe.gguf", dtype="f32"))
    for name, module in adapter.modules.items():
        np.testing.assert_allclose(back.modules[name].delta(), module.delta(), rtol=1e-6, atol=1e-6, err_msg=name)


def test_an_expert_without_lora_is_refused(tmp_path):
    with pytest.raises(AdapterError, match=r"blk\.0\.ffn_(gate|up|down)_exps: experts \[1\] have no LoRA"):
        converters.save_adapter(_adapter(skip=1), tmp_path / "moe.gguf")
    assert not list(tmp_path.iterdir())
