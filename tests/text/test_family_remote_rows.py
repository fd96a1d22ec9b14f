"""The rows of the remote-code families read GGUF metadata as llama.cpp does (fast; the slow end-to-end
checks are in test_family_remote.py)."""

from __future__ import annotations

import math

import pytest
import torch

from extension.errors import UserError
from extension.text.blocks import Rotary, apply_rotary
from extension.text.families import config_from_gguf


def _meta(arch: str, **extra) -> dict:
    return {"general.architecture": arch, f"{arch}.embedding_length": 256, f"{arch}.feed_forward_length": 1024,
            f"{arch}.block_count": 2, f"{arch}.attention.head_count": 4, **{f"{arch}.{k}": v for k, v in extra.items()}}


def test_qwen_ffn_width_is_half_the_stated_length():
    # llama.cpp's qwen loader: ffn_up/ffn_gate are {n_embd, n_ff/2}
    assert config_from_gguf("q.gguf", _meta("qwen")).intermediate_size == 512


@pytest.mark.parametrize("layers", [40, 2])
def test_baichuan_depths_llama_cpp_does_not_rotate_are_refused(layers):
    with pytest.raises(UserError, match="rotates only its 32-layer") as err:
        config_from_gguf("b.gguf", _meta("baichuan", block_count=layers))
    assert "\n" not in str(err.value)
    assert config_from_gguf("b.gguf", _meta("baichuan", block_count=32)).num_layers == 32


def test_chatglm_rotates_adjacent_pairs_of_half_of_each_head():
    cfg = config_from_gguf("c.gguf", _meta("chatglm", **{"rope.dimension_count": 32}))
    assert cfg.rope_interleaved and cfg.rope_dims == 32
    rotary = Rotary(cfg.rope_dims, 10000.0, interleaved=True)
    cos, sin = rotary.tables(5)
    x = torch.randn(1, 1, 5, 64)
    got = apply_rotary(x, cos, sin, interleaved=True)
    want = x.clone()
    for pos in range(5):  # ggml_rope NORM: (x[2i], x[2i+1]) rotated by pos * base^(-2i/n_rot)
        for i in range(16):
            theta = pos * 10000.0 ** (-2 * i / 32)
            a, b = x[0, 0, pos, 2 * i], x[0, 0, pos, 2 * i + 1]
            want[0, 0, pos, 2 * i] = a * math.cos(theta) - b * math.sin(theta)
            want[0, 0, pos, 2 * i + 1] = a * math.sin(theta) + b * math.cos(theta)
    assert torch.allclose(got, want, atol=1e-5)
