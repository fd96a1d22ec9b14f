"""The shared torch blocks a text family's decoder is composed of (see ``families.py``).

Each block computes what the matching piece of llama.cpp's graph computes (``build_norm``,
``ggml_rope_ext``, ``build_attn``, ``build_ffn``), so a LoRA trained here learns against the model
llama.cpp runs. Optional pieces are ``None`` when the family or the file has none; the LLaMA path
runs exactly the operations it always ran.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .families import TextConfig, Yarn
from .quant import activation_rounding_active


class RMSNorm(nn.Module):
    """LLaMA's RMS norm with a frozen weight, computed in float32 like llama.cpp."""

    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight.to(torch.float32), persistent=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * self.weight).to(x.dtype)


class LayerNorm(nn.Module):
    """LayerNorm with a frozen weight and, when the file has one, bias: llama.cpp's ``LLM_NORM`` in float32."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight.to(torch.float32), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.to(torch.float32), persistent=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.layer_norm(x.to(torch.float32), self.weight.shape, self.weight, self.bias, self.eps)
        return h.to(x.dtype)


Norm = RMSNorm | LayerNorm


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): adjacent pairs, llama.cpp's NORM rope."""
    return torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)


def _same_dtype(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors in their widest dtype.

    Under CPU autocast the LoRA branch can come out in bf16 while the frozen projection stays fp32;
    torch < 2.3 (A1111 ships 2.1) refuses such mixed inputs to scaled_dot_product_attention.
    """
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t.to(dtype) for t in tensors)


class Rotary(nn.Module):
    """One rotary table: ``tables(t)`` gives cos and sin for t positions.

    Rotate-half layout (llama.cpp's NEOX rope; LLaMA's permuted Q/K rows are put back in that order
    at load time) over the first ``dims`` dimensions of each head, or with ``interleaved`` adjacent
    pairs (llama.cpp's NORM rope on rows stored unpermuted: ChatGLM). As ``ggml_rope_ext``:
    angle = pos * freq_scale * base^(-2i/dims) / factors[i], cos and sin times ``attn_factor``
    (``factors``: Llama 3.1's ``rope_freqs`` or LongRoPE's short factors). With ``yarn``, each
    dimension mixes the scaled and the unscaled angle by YaRN's ramp (``yarn_scaling``).
    """

    def __init__(self, dims: int, base: float, freq_scale: float = 1.0, factors: torch.Tensor | None = None,
                 attn_factor: float = 1.0, yarn: Yarn | None = None, interleaved: bool = False) -> None:
        super().__init__()
        self.interleaved = interleaved
        inv = 1.0 / (base ** (torch.arange(0, dims, 2, dtype=torch.float64) / dims))
        if factors is not None:
            inv = inv / factors.to(torch.float64)
        if yarn is not None:
            mix, mscale = yarn_scaling(dims, base, freq_scale, yarn)
            inv, freq_scale, attn_factor = inv * mix, 1.0, attn_factor * mscale
        self.register_buffer("inv_freq", inv.to(torch.float32), persistent=False)
        self.freq_scale = float(freq_scale)
        self.attn_factor = float(attn_factor)

    def tables(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(t, dtype=torch.float32, device=self.inv_freq.device)
        if self.freq_scale != 1.0:
            pos = pos * self.freq_scale
        freqs = torch.outer(pos, self.inv_freq)
        emb = freqs.repeat_interleave(2, dim=-1) if self.interleaved else torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos(), emb.sin()
        if self.attn_factor != 1.0:
            cos, sin = cos * self.attn_factor, sin * self.attn_factor
        return cos[None, None], sin[None, None]


def yarn_scaling(dims: int, base: float, freq_scale: float, yarn: Yarn) -> tuple[torch.Tensor, float]:
    """Per-dimension angle multiplier and cos/sin magnitude of YaRN, as llama.cpp computes them.

    ``ggml_rope_yarn_corr_dims`` bounds the ramp; ``rope_yarn`` takes angle * (freq_scale * (1 - ramp) + ramp)
    (ext_factor 1). The magnitude is llama_context's yarn_attn_factor times rope_yarn's own
    ``1 + 0.1 ln(1/freq_scale)``; the context divides that very factor out first, so what remains is
    ``get_mscale(factor, 1) / get_mscale(factor, log_mul)`` (or ``get_mscale(factor, 1)`` without a log_mul).
    """

    def corr_dim(rotations: float) -> float:
        return dims * math.log(yarn.orig_ctx / (rotations * 2 * math.pi)) / (2 * math.log(base))

    def get_mscale(scale: float, mscale: float) -> float:
        return 1.0 if scale <= 1.0 else 0.1 * mscale * math.log(scale) + 1.0

    low = max(0.0, math.floor(corr_dim(yarn.beta_fast)))
    high = min(dims - 1.0, math.ceil(corr_dim(yarn.beta_slow)))
    i = torch.arange(dims // 2, dtype=torch.float64)
    ramp = 1.0 - ((i - low) / max(0.001, high - low)).clamp(0.0, 1.0)
    factor = 1.0 / freq_scale
    mscale = get_mscale(factor, 1.0) / get_mscale(factor, yarn.log_mul) if yarn.log_mul else get_mscale(factor, 1.0)
    return freq_scale * (1.0 - ramp) + ramp, mscale


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` dimensions of each head (partial rotary leaves the rest)."""
    dims = cos.shape[-1]
    rotate = _rotate_pairs if interleaved else _rotate_half
    if dims == x.shape[-1]:
        return x * cos + rotate(x) * sin
    rot, rest = x[..., :dims], x[..., dims:]
    return torch.cat([rot * cos + rotate(rot) * sin, rest], dim=-1)


def _softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    return torch.tanh(x / cap) * cap


class Attention(nn.Module):
    """Grouped-query causal self-attention with rotate-half RoPE.

    Q, K and V come from ``q_proj``/``k_proj``/``v_proj``, or from one fused ``qkv_proj`` (``k`` and
    ``v`` None; rows Q, then K, then V as llama.cpp's ``build_qkv`` views them). Optional: per-head
    RMS norms of Q and K before the rotation (``q_norm``/``k_norm``), a Q scale other than
    1/sqrt(head_dim), Llama 4's per-position attention temperature (Mistral 3), attention logit
    soft-capping and a sliding window.
    """

    def __init__(self, cfg: TextConfig, q: nn.Module, k: nn.Module | None, v: nn.Module | None, o: nn.Module,
                 q_norm: RMSNorm | None = None, k_norm: RMSNorm | None = None, window: int = 0) -> None:
        super().__init__()
        if k is None:
            self.qkv_proj, self.o_proj = q, o
        else:
            self.q_proj, self.k_proj, self.v_proj, self.o_proj = q, k, v, o
        if q_norm is not None:
            self.q_norm, self.k_norm = q_norm, k_norm
        self.n_heads, self.n_kv, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.scale = cfg.attn_scale or None
        self.softcap = cfg.attn_softcap
        self.window = int(window)
        self.interleaved = cfg.rope_interleaved
        self.temp_scale, self.temp_floor = cfg.attn_temp_scale, cfg.attn_temp_floor

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        if hasattr(self, "qkv_proj"):
            q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv * self.head_dim
            q, k, v = self.qkv_proj(x).split([q_dim, kv_dim, kv_dim], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        whole = hasattr(self, "q_norm") and self.q_norm.weight.numel() != self.head_dim
        if whole:  # OLMo 2: one norm over all heads' Q (and K) together
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.reshape(b, t, self.n_heads, self.head_dim)
        k = k.reshape(b, t, self.n_kv, self.head_dim)
        v = v.reshape(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        if hasattr(self, "q_norm") and not whole:  # per head (Qwen3, Gemma 3)
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rotary(q.transpose(1, 2), cos, sin, self.interleaved)
        k = apply_rotary(k.transpose(1, 2), cos, sin, self.interleaved)
        if self.temp_scale:
            q = q * self._temperature(t, q.device).to(q.dtype)
        if self.n_kv != self.n_heads:
            rep = self.n_heads // self.n_kv
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        q, k, v = _same_dtype(q, k, v)
        if self.softcap or (self.window and t > self.window):
            out = self._explicit(q, k, v, t)
        elif self.scale is not None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    def _temperature(self, t: int, device: torch.device) -> torch.Tensor:
        """llama.cpp's ``llm_graph_input_attn_temp``: 1 + scale * log(floor(pos / floor) + 1), per position."""
        pos = torch.arange(t, dtype=torch.float64, device=device)
        scale = torch.log(torch.floor(pos / self.temp_floor) + 1.0) * self.temp_scale + 1.0
        return scale.to(torch.float32)[:, None]

    def _explicit(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, t: int) -> torch.Tensor:
        """Attention with a mask llama.cpp builds: causal, and ``p_q - p_k < window`` on sliding-window layers."""
        scale = self.scale if self.scale is not None else self.head_dim ** -0.5
        pos = torch.arange(t, device=q.device)
        distance = pos[:, None] - pos[None, :]
        allowed = distance >= 0
        if self.window:
            allowed = allowed & (distance < self.window)
        if not self.softcap:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)
        scores = _softcap(torch.matmul(q, k.transpose(-1, -2)) * scale, self.softcap)
        scores = scores.masked_fill(~allowed, float("-inf"))
        return torch.matmul(torch.softmax(scores.float(), dim=-1).to(v.dtype), v)


def _gelu_ggml(x: torch.Tensor) -> torch.Tensor:
    """GELU (tanh approximation) as llama.cpp's CPU computes it: a table over fp16 inputs and outputs."""
    table = F.gelu(x.to(torch.float16).to(torch.float32), approximate="tanh").to(torch.float16).to(x.dtype)
    return torch.where(x <= -10.0, torch.zeros_like(x), torch.where(x >= 10.0, x, table))


def _activation(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "silu":
        return F.silu(x)
    if activation_rounding_active():  # the llama.cpp check: reproduce its fp16 GELU table
        return _gelu_ggml(x)
    return F.gelu(x, approximate="tanh")


class MLP(nn.Module):
    """Gated feed-forward: ``down(act(gate(x)) * up(x))``, SwiGLU (silu) or GeGLU (gelu)."""

    def __init__(self, gate: nn.Module, up: nn.Module, down: nn.Module, activation: str = "silu") -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = gate, up, down
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(_activation(self.activation, self.gate_proj(x)) * self.up_proj(x))


class FusedMLP(nn.Module):
    """Phi-3's feed-forward: one ``gate_up_proj`` whose first half is the gate (llama.cpp's SWIGLU, SEQ)."""

    def __init__(self, gate_up: nn.Module, down: nn.Module, activation: str = "silu") -> None:
        super().__init__()
        self.gate_up_proj, self.down_proj = gate_up, down
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(_activation(self.activation, gate) * up)


class PlainMLP(nn.Module):
    """Non-gated feed-forward with HF's ``c_fc``/``c_proj`` names: ``c_proj(act(c_fc(x)))`` (llama.cpp's FFN_SEQ
    without a gate: StarCoder 2, GPT-2)."""

    def __init__(self, c_fc: nn.Module, c_proj: nn.Module, activation: str = "gelu") -> None:
        super().__init__()
        self.c_fc, self.c_proj = c_fc, c_proj
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(_activation(self.activation, self.c_fc(x)))


class SparseMoE(nn.Module):
    """A mixture-of-experts FFN as llama.cpp's ``build_moe_ffn`` with softmax gating.

    The router (``gate``) scores the experts, softmax gives probabilities, each token goes through its
    ``used`` most probable experts (gated FFNs, HF v4's ``mlp.experts.{e}``), whose outputs are summed
    weighted by those probabilities (divided by their sum with ``norm``, times ``scale`` unless 0 or 1).
    Only the experts some token chose run, each on its own tokens.
    """

    def __init__(self, gate: nn.Module, experts: list[MLP], used: int, norm: bool, scale: float = 0.0) -> None:
        super().__init__()
        self.gate, self.experts = gate, nn.ModuleList(experts)
        self.used, self.norm, self.scale = int(used), bool(norm), float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        probs = torch.softmax(self.gate(flat).float(), dim=-1)
        weights, chosen = probs.topk(self.used, dim=-1)
        if self.norm:  # llama.cpp clamps the sum to the smallest normal f16
            weights = weights / weights.sum(-1, keepdim=True).clamp(min=6.103515625e-5)
        if self.scale not in (0.0, 1.0):
            weights = weights * self.scale
        out = torch.zeros_like(flat)
        for index, expert in enumerate(self.experts):
            tokens, slot = torch.nonzero(chosen == index, as_tuple=True)
            if tokens.numel():
                y = expert(flat[tokens]) * weights[tokens, slot].unsqueeze(-1).to(flat.dtype)
                # in place: autograd needs no copy of ``out`` for this, and 128 experts would make 128 copies
                out.index_add_(0, tokens, y.to(out.dtype))
        return out.reshape(x.shape)


class DecoderLayer(nn.Module):
    """Transformer block: pre-norms (none in OLMo 2), Gemma's and OLMo 2's post-norms, Granite's residual scale."""

    def __init__(self, input_layernorm: Norm | None, self_attn: Attention, post_attention_layernorm: Norm | None,
                 mlp: MLP | FusedMLP | PlainMLP | SparseMoE, post_attn_norm: RMSNorm | None = None,
                 post_ffn_norm: RMSNorm | None = None, rope_index: int = 0, residual_scale: float = 1.0) -> None:
        super().__init__()
        self.input_layernorm, self.self_attn = input_layernorm, self_attn
        self.post_attention_layernorm, self.mlp = post_attention_layernorm, mlp
        self.post_attn_norm, self.post_ffn_norm = post_attn_norm, post_ffn_norm
        self.rope_index = rope_index
        self.residual_scale = residual_scale

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """``cos``/``sin`` stack one table per rotary of the model; this layer uses ``rope_index``."""
        h = self.self_attn(_maybe(self.input_layernorm, x), cos[self.rope_index], sin[self.rope_index])
        if self.post_attn_norm is not None:
            h = self.post_attn_norm(h)
        if self.residual_scale != 1.0:
            h = h * self.residual_scale
        x = x + h
        h = self.mlp(_maybe(self.post_attention_layernorm, x))
        if self.post_ffn_norm is not None:
            h = self.post_ffn_norm(h)
        if self.residual_scale != 1.0:
            h = h * self.residual_scale
        return x + h


def _maybe(norm: Norm | None, x: torch.Tensor) -> torch.Tensor:
    return x if norm is None else norm(x)


class Backbone(nn.Module):
    """Embeddings, layers and the final norm (HF's ``model.``)."""

    def __init__(self, embed_tokens: nn.Module, layers: list[DecoderLayer], norm: Norm) -> None:
        super().__init__()
        self.embed_tokens = embed_tokens
        self.layers = nn.ModuleList(layers)
        self.norm = norm
