"""The MoE block (``blocks.SparseMoE``) and 3-D expert tensors held packed (``PackedWeight.split_rows``)."""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import quantize
from torch.nn import functional as F

from extension.text.blocks import MLP, SparseMoE
from extension.text.quant import PackedLinear, PackedWeight

E, H, FF, K = 4, 32, 64, 2


def _linear(out: int, inp: int) -> tuple[torch.Tensor, PackedLinear]:
    w = torch.randn(out, inp)
    return w, PackedLinear(PackedWeight(w, Q.F32, (out, inp)))


def test_sparse_moe_equals_every_expert_weighted():
    """Only the chosen experts run, yet the output is the dense sum with llama.cpp's weights: softmax over the
    router's logits, kept for the top-k experts, divided by their sum."""
    torch.manual_seed(0)
    router_w, router = _linear(E, H)
    weights, experts = [], []
    for _ in range(E):
        (g, gl), (u, ul), (d, dl) = _linear(FF, H), _linear(FF, H), _linear(H, FF)
        weights.append((g, u, d))
        experts.append(MLP(gl, ul, dl))
    x = torch.randn(2, 7, H)
    got = SparseMoE(router, experts, K, norm=True)(x)
    flat = x.reshape(-1, H)
    probs = torch.softmax(flat @ router_w.T, dim=-1)
    top = probs.topk(K, dim=-1)
    mix = torch.zeros_like(probs).scatter(1, top.indices, top.values)
    mix = mix / mix.sum(-1, keepdim=True)
    want = sum(mix[:, e:e + 1] * ((F.silu(flat @ g.T) * (flat @ u.T)) @ d.T) for e, (g, u, d) in enumerate(weights))
    # float32 sums in another order (a thread count changes the kernel): 5e-5 seen; a wrong expert or weight is O(1)
    torch.testing.assert_close(got, want.reshape(x.shape), rtol=1e-4, atol=2e-4)


def test_split_rows_views_each_expert_without_copy():
    rng = np.random.default_rng(0)
    stacked = rng.standard_normal((E, FF, H)).astype(np.float32)  # (experts, out, in) as a GGUF 3-D tensor
    raw = quantize(stacked.reshape(E * FF, H), Q.Q8_0)
    whole = PackedWeight.from_numpy(raw, Q.Q8_0, (E * FF, H))
    parts = whole.split_rows(E)
    assert [p.shape for p in parts] == [(FF, H)] * E
    assert parts[2].raw.data_ptr() == whole.raw[2 * FF].data_ptr()  # a view of the file's rows
    torch.testing.assert_close(parts[2].dequantize(), whole.dequantize()[2 * FF:3 * FF], rtol=0, atol=0)
