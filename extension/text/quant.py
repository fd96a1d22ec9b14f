"""Frozen base weights that stay in their GGUF/GGML block format and dequantize on use.

A ``PackedWeight`` holds one 2-D weight as the file's raw rows (uint8 blocks, or f16/bf16/f32
values) and rebuilds the float matrix only inside a layer's forward and backward, so the model
in memory is about as large as the file. Dequantization runs in torch for F32, F16, BF16, Q8_0,
Q4_0, Q4_1, Q5_0, Q5_1, Q4_K and Q6_K. Other K-quants (Q2_K, Q3_K, Q5_K) and IQ types stay
packed as well but dequantize through gguf-py's numpy code, which is slower (a few hundred M
elements/s) but exact.

Values are the ones llama.cpp's reference dequantization produces, so a LoRA trained here learns
against the weights llama.cpp runs.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings
from collections.abc import Iterator

import numpy as np
import torch

from .._converters import converters
from .native import NATIVE_TYPES, NativeDequantizer, native_for
from .recompute import KeptMatmul, LayerMemo, active_memo

_gguf = converters.gguf_py.installed_gguf()
GGML_QUANT_SIZES, GGMLQuantizationType = _gguf.GGML_QUANT_SIZES, _gguf.GGMLQuantizationType


Q = GGMLQuantizationType
TORCH_TYPES = (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q6_K)


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """Reinterpret pairs of uint8 (last axis) as float16 and widen to float32."""
    return raw.contiguous().view(torch.float16).to(torch.float32)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(n, 16) packed bytes -> (n, 32): low nibbles first, then high nibbles (ggml order)."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=-1)


def _high_bits(qh: torch.Tensor) -> torch.Tensor:
    """(n, 4) bytes of a little-endian u32 -> (n, 32) bits, bit j for element j."""
    shifts = torch.arange(8, dtype=torch.uint8, device=qh.device)
    bits = (qh.unsqueeze(-1) >> shifts) & 1  # (n, 4, 8): byte b, bit k -> element 8b + k
    return bits.reshape(qh.shape[0], 32)


class _Buffers(threading.local):
    """Per-thread reusable scratch tensors.

    Dequantizing into fresh tensors on every forward and backward left glibc's heap fragmented
    (hundreds of MB of peak RSS on a 300M model); reusing a fixed set of buffers does not.
    Thread-local so a model used from two threads never shares a buffer.
    """

    def __init__(self) -> None:
        self.scratch: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}


_BUF = _Buffers()


def scratch(tag: str, shape: tuple[int, ...], dtype: torch.dtype,
            device: torch.device | str = "cpu") -> torch.Tensor:
    """This thread's reusable tensor ``tag`` on ``device`` as ``shape``, for temporaries that never leave the caller.

    Valid until ``tag`` is asked for again (on that device) or ``release_buffers()`` runs.
    """
    n = 1
    for dim in shape:
        n *= int(dim)
    key = (tag, dtype, torch.device(device))
    buf = _BUF.scratch.get(key)
    if buf is None or buf.numel() < n:
        buf = _BUF.scratch[key] = torch.empty(n, dtype=dtype, device=key[2])
    return buf[:n].view(shape)


def _block_scales(b: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """The f16 scale at byte ``offset`` of each block as float32 (n, 1), through scratch space."""
    half = scratch("d16", (b.shape[0], 2), torch.uint8, b.device)
    half.copy_(b[:, offset:offset + 2])
    scale = scratch("d32", (b.shape[0], 1), torch.float32, b.device)
    return scale.copy_(half.view(torch.float16))


def _q8_0_into(b: torch.Tensor, out: torch.Tensor) -> None:
    o = out.view(b.shape[0], 32)
    o.copy_(b[:, 2:].view(torch.int8))
    o.mul_(_block_scales(b))


def _q4_0_into(b: torch.Tensor, out: torch.Tensor) -> None:
    # nibble - 8 in uint8 wraps to the right int8 value, so one int8 -> float copy and one multiply
    # remain: about 3x faster than a table lookup, and exact.
    # Nibbles are split two bytes at a time (int16 lanes; the 18-byte blocks keep them 2-aligned).
    n = b.shape[0]
    nib = scratch("nib", (n, 2, 16), torch.uint8, b.device)
    try:
        qs = b.view(torch.int16)[:, 1:]
    except RuntimeError:  # odd storage offset: byte by byte
        torch.bitwise_and(b[:, 2:], 15, out=nib[:, 0])
        torch.bitwise_right_shift(b[:, 2:], 4, out=nib[:, 1])
    else:
        lanes = nib.view(torch.int16)
        torch.bitwise_and(qs, 0x0F0F, out=lanes[:, 0])
        torch.bitwise_right_shift(qs, 4, out=lanes[:, 1])
        lanes[:, 1].bitwise_and_(0x0F0F)
    nib.sub_(8)
    o = out.view(n, 2, 16)
    o.copy_(nib.view(torch.int8))
    o.mul_(_block_scales(b).view(n, 1, 1))


_BLOCK_INTO = {Q.Q8_0: _q8_0_into, Q.Q4_0: _q4_0_into}


def _dequant_q8_0(b: torch.Tensor) -> torch.Tensor:
    out = torch.empty(b.shape[0], 32, device=b.device)
    _q8_0_into(b, out)
    return out


def _dequant_q4_0(b: torch.Tensor) -> torch.Tensor:
    out = torch.empty(b.shape[0], 32, device=b.device)
    _q4_0_into(b, out)
    return out


def _dequant_q4_1(b: torch.Tensor) -> torch.Tensor:
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    return d * _nibbles(b[:, 4:]).to(torch.float32) + m


def _dequant_q5_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b[:, :2])
    q = _nibbles(b[:, 6:]) | (_high_bits(b[:, 2:6]) << 4)
    return d * (q.to(torch.float32) - 16.0)


def _dequant_q5_1(b: torch.Tensor) -> torch.Tensor:
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    q = _nibbles(b[:, 8:]) | (_high_bits(b[:, 4:8]) << 4)
    return d * q.to(torch.float32) + m


def _k_scale_min(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack Q4_K/Q5_K's 12 bytes of 6-bit scales and mins into (n, 8) each."""
    s = scales.to(torch.int32)
    lo_sc = s[:, 0:4] & 63
    lo_mn = s[:, 4:8] & 63
    hi_sc = (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)
    hi_mn = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return torch.cat([lo_sc, hi_sc], 1).to(torch.float32), torch.cat([lo_mn, hi_mn], 1).to(torch.float32)


def _dequant_q4_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _k_scale_min(b[:, 4:16])
    qs = b[:, 16:144].reshape(n, 4, 32)  # 4 chunks of 32 bytes -> 64 values each (low, high nibbles)
    q = torch.stack([qs & 0x0F, qs >> 4], dim=2).reshape(n, 8, 32).to(torch.float32)
    return ((d * sc).unsqueeze(-1) * q - (dmin * mn).unsqueeze(-1)).reshape(n, 256)


def _dequant_q6_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    ql = b[:, 0:128].reshape(n, 2, 64).to(torch.int32)
    qh = b[:, 128:192].reshape(n, 2, 32).to(torch.int32)
    scales = b[:, 192:208].contiguous().view(torch.int8).to(torch.float32).reshape(n, 2, 8)
    d = _f16(b[:, 208:210]).reshape(n, 1, 1)
    q1 = (ql[:, :, 0:32] & 0x0F) | (((qh >> 0) & 3) << 4)
    q2 = (ql[:, :, 32:64] & 0x0F) | (((qh >> 2) & 3) << 4)
    q3 = (ql[:, :, 0:32] >> 4) | (((qh >> 4) & 3) << 4)
    q4 = (ql[:, :, 32:64] >> 4) | (((qh >> 6) & 3) << 4)
    q = torch.stack([q1, q2, q3, q4], dim=2).to(torch.float32) - 32.0  # (n, 2, 4, 32)
    s = scales.reshape(n, 2, 4, 2).repeat_interleave(16, dim=-1)  # scale per 16 values
    return (d.unsqueeze(-1) * s * q).reshape(n, 256)


_BLOCK_DEQUANT = {
    Q.Q8_0: _dequant_q8_0,
    Q.Q4_0: _dequant_q4_0,
    Q.Q4_1: _dequant_q4_1,
    Q.Q5_0: _dequant_q5_0,
    Q.Q5_1: _dequant_q5_1,
    Q.Q4_K: _dequant_q4_k,
    Q.Q6_K: _dequant_q6_k,
}


def row_bytes(qtype: GGMLQuantizationType, n_cols: int) -> int:
    """Bytes one row of ``n_cols`` values takes in ``qtype``."""
    block, size = GGML_QUANT_SIZES[qtype]
    if n_cols % block:
        raise ValueError(f"row length {n_cols} is not a multiple of the {qtype.name} block size {block}")
    return n_cols // block * size


def dequant_backend(qtype: GGMLQuantizationType, device: torch.device | str) -> str:
    """Which code dequantizes ``qtype`` blocks held on ``device`` (the one place this is chosen).

    "native": the compiled C helper, for host memory only (``native.native_for``); "torch": torch
    ops on the blocks' own device, so on CUDA the blocks never leave the GPU; "numpy": gguf-py's
    reference code through host memory (rare types: Q2_K, Q3_K, Q5_K, IQ*).
    """
    if qtype in NATIVE_TYPES and native_for(device, torch_dequantize_rows) is not None:
        return "native"
    return "torch" if qtype in TORCH_TYPES else "numpy"


def _native_for(qtype: GGMLQuantizationType, raw: torch.Tensor) -> NativeDequantizer | None:
    if raw.dtype != torch.uint8 or not raw.is_contiguous() or dequant_backend(qtype, raw.device) != "native":
        return None
    return native_for(raw.device, torch_dequantize_rows)


def dequantize_rows(raw: torch.Tensor, qtype: GGMLQuantizationType, n_cols: int, native: bool = True) -> torch.Tensor:
    """Float32 matrix (rows, n_cols) from packed rows ``raw`` (uint8 (rows, row_bytes) or float).

    ``native=False`` forces the torch code (the reference the compiled helper is tested against).
    """
    rows = raw.shape[0]
    fast = _native_for(qtype, raw) if native else None
    if fast is not None:
        out = torch.empty(rows, n_cols)
        fast.into(raw, qtype, out)
        return out
    if qtype == Q.F32:
        return raw if raw.dtype == torch.float32 else raw.contiguous().view(torch.float32).reshape(rows, n_cols)
    if qtype == Q.F16:
        return raw.contiguous().view(torch.float16).reshape(rows, n_cols).to(torch.float32)
    if qtype == Q.BF16:
        return raw.contiguous().view(torch.bfloat16).reshape(rows, n_cols).to(torch.float32)
    fn = _BLOCK_DEQUANT.get(qtype)
    if fn is not None:
        block, size = GGML_QUANT_SIZES[qtype]
        return fn(raw.reshape(-1, size)).reshape(rows, n_cols)
    dequantize = converters.gguf_py.installed_gguf().quants.dequantize

    values = dequantize(raw.cpu().numpy(), qtype)
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(rows, n_cols).to(raw.device)


def torch_dequantize_rows(raw: torch.Tensor, qtype: GGMLQuantizationType, n_cols: int) -> torch.Tensor:
    """``dequantize_rows`` with the torch code only: the reference the compiled helper must match."""
    return dequantize_rows(raw, qtype, n_cols, native=False)

def dequantize_into(raw: torch.Tensor, qtype: GGMLQuantizationType, n_cols: int, out: torch.Tensor) -> torch.Tensor:
    """Like ``dequantize_rows`` but writes into the float32 tensor ``out`` (rows, n_cols); returns it."""
    fast = _native_for(qtype, raw)
    if fast is not None and out.is_contiguous() and out.device.type == "cpu":
        fast.into(raw, qtype, out)
        return out
    fn = _BLOCK_INTO.get(qtype)
    if fn is None:
        out.copy_(dequantize_rows(raw, qtype, n_cols))
    else:
        fn(raw.reshape(-1, GGML_QUANT_SIZES[qtype][1]), out)
    return out


def release_buffers() -> None:
    """Drop this thread's scratch space (between a forward and its backward, or after training)."""
    _BUF.__init__()


class PackedWeight(torch.nn.Module):
    """One frozen 2-D weight (out, in) kept in its file format; ``dequantize()`` gives float32.

    F32 weights are stored as a float tensor; every other type as raw little-endian bytes.
    """

    def __init__(self, raw: torch.Tensor, qtype: GGMLQuantizationType, shape: tuple[int, int]) -> None:
        super().__init__()
        self.qtype = GGMLQuantizationType(qtype)
        self.shape = (int(shape[0]), int(shape[1]))
        self.register_buffer("raw", raw, persistent=False)

    @classmethod
    def from_numpy(cls, data: np.ndarray, qtype: GGMLQuantizationType, shape: tuple[int, int]) -> PackedWeight:
        """Wrap file data for weight ``shape`` (out, in) without copying it.

        ``data`` is usually a read-only memory map of the model file: the weights then live in the
        page cache, counted once, and training never writes to them.
        """
        rows = int(shape[0])
        arr = np.asarray(data)
        if qtype == Q.F32:
            arr = arr.view(np.float32) if arr.dtype == np.uint8 else arr.astype(np.float32, copy=False)
            arr = np.ascontiguousarray(arr).reshape(shape)
        else:
            arr = np.ascontiguousarray(arr).view(np.uint8).reshape(rows, -1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "non-writable array": we never write to it
            raw = torch.from_numpy(arr)
        return cls(raw, qtype, shape)

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return self.raw.numel() * self.raw.element_size()

    def dequantize(self) -> torch.Tensor:
        """The whole weight as float32 (out, in)."""
        return dequantize_rows(self.raw, self.qtype, self.shape[1])

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Float32 rows ``index`` only (embedding lookup without the whole table)."""
        return dequantize_rows(self.raw[index.reshape(-1)], self.qtype, self.shape[1]).reshape(
            *index.shape, self.shape[1]
        )

    def split_rows(self, parts: int) -> list[PackedWeight]:
        """``parts`` weights over equal blocks of rows, sharing this one's data (no copy).

        A 3-D GGUF tensor (experts, out, in), such as an MoE's ``ffn_up_exps``, is held as one
        (experts * out, in) weight: its blocks are the experts, each dequantized only when used.
        """
        rows = self.shape[0] // parts
        if rows * parts != self.shape[0]:
            raise ValueError(f"cannot split {self.shape[0]} rows into {parts} equal parts")
        shape = (rows, self.shape[1])
        return [PackedWeight(self.raw[i * rows:(i + 1) * rows], self.qtype, shape) for i in range(parts)]

    def permute_rows(self, order: torch.Tensor) -> None:
        """Reorder the rows in place (undoing llama.cpp's Q/K rotary permutation works on packed rows)."""
        self.raw = self.raw[order].contiguous()

    def extra_repr(self) -> str:
        return f"{self.qtype.name}, shape={self.shape}"


# Up to this size a weight is dequantized whole into scratch space and multiplied in one matmul,
# the same matmul as on a float model. Row chunks cost more than their dequantization saves: each
# output chunk is copied, and small chunks make small matmuls (1M-weight chunks made a 7B MLP
# projection's forward + backward 35% slower than one matmul; whole, it is within 2-5% of the
# matmul alone). 100M elements covers every projection up to 13B (7B's MLP: 45M, 180 MB of scratch)
# but not a 32K-vocabulary output layer (131M at 7B: 0.5 GB; the loss slices it, see lm_loss.py).
_WHOLE_ELEMENTS = 100_000_000
_CHUNK_ELEMENTS = 1 << 24  # larger weights go by chunks of ~16M weights (64 MB)
# On a GPU each chunk costs kernel launches rather than cache misses: every projection of a 7B
# model (up to 45M elements, 180 MB as float32) is dequantized whole, larger ones 16M at a time.
_CUDA_CHUNK_ELEMENTS = 1 << 24
_CUDA_WHOLE_ELEMENTS = 1 << 26


def matmul_chunking(device: torch.device | str) -> tuple[int, int]:
    """(elements per row chunk, largest weight dequantized whole) for weights held on ``device``."""
    if torch.device(device).type == "cuda":
        return _CUDA_CHUNK_ELEMENTS, _CUDA_WHOLE_ELEMENTS
    return _CHUNK_ELEMENTS, _WHOLE_ELEMENTS


def _row_chunks(packed: PackedWeight):
    """(first row, last row + 1) spans of about ``matmul_chunking``'s chunk size each."""
    rows, cols = packed.shape
    step = max(1, matmul_chunking(packed.raw.device)[0] // max(1, cols))
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


def _chunk(packed: PackedWeight, r0: int, r1: int, dtype: torch.dtype) -> torch.Tensor:
    """Float rows r0:r1 of W in scratch space (valid until the next call)."""
    buf = scratch("chunk", (r1 - r0, packed.shape[1]), torch.float32, packed.raw.device)
    return dequantize_into(packed.raw[r0:r1], packed.qtype, packed.shape[1], buf).to(dtype)


def _whole(packed: PackedWeight, dtype: torch.dtype) -> torch.Tensor | None:
    """The whole float weight (F32 as stored, else dequantized into scratch space), or None when too big."""
    if packed.qtype == Q.F32:
        return packed.raw.to(dtype)
    if packed.shape[0] * packed.shape[1] > matmul_chunking(packed.raw.device)[1]:
        return None
    return _chunk(packed, 0, packed.shape[0], dtype)


def packed_matmul(x: torch.Tensor, packed: PackedWeight, out: torch.Tensor | None = None) -> torch.Tensor:
    """x @ W.T (into ``out`` when given): one matmul with the whole float W when it fits, else by row chunks."""
    weight = _whole(packed, x.dtype)
    if weight is not None:
        return torch.matmul(x, weight.t(), out=out) if out is not None else x @ weight.t()
    if out is None:
        out = x.new_empty(*x.shape[:-1], packed.shape[0])
    x2, out2 = x.reshape(-1, x.shape[-1]), out.view(-1, packed.shape[0])
    for r0, r1 in _row_chunks(packed):
        part = scratch("mm", (x2.shape[0], r1 - r0), x.dtype, x.device)
        torch.mm(x2, _chunk(packed, r0, r1, x.dtype).t(), out=part)
        out2[:, r0:r1] = part
    return out


def packed_matmul_t(grad: torch.Tensor, packed: PackedWeight) -> torch.Tensor:
    """grad @ W, with the whole float W when it fits, else chunk by chunk of W's rows."""
    weight = _whole(packed, grad.dtype)
    if weight is not None:
        return grad @ weight
    out = grad.new_zeros(*grad.shape[:-1], packed.shape[1])
    g2, out2 = grad.reshape(-1, grad.shape[-1]), out.view(-1, packed.shape[1])
    for r0, r1 in _row_chunks(packed):
        out2.addmm_(g2[:, r0:r1], _chunk(packed, r0, r1, grad.dtype))
    return out


class _PackedMatmul(torch.autograd.Function):
    """y = x @ W.T with W rebuilt from packed blocks in forward and again in backward.

    Autograd would otherwise keep every layer's float weight alive until backward, which is the
    float32 model in memory. ``out`` (a 1-tuple, hidden from autograd) is a buffer to write y into.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, packed: PackedWeight, out: tuple[torch.Tensor] | tuple[()] = ()) -> torch.Tensor:  # type: ignore[override]
        ctx.packed = packed
        return packed_matmul(x, packed, *out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return packed_matmul_t(grad, ctx.packed), None, None


def _frozen_matmul(x: torch.Tensor, packed: PackedWeight, out: tuple[torch.Tensor] | tuple[()] = ()) -> torch.Tensor:
    """x @ W.T (into ``out[0]`` when given), through autograd only when x needs a gradient."""
    return _PackedMatmul.apply(x, packed, out) if x.requires_grad else packed_matmul(x, packed, *out)


_EMULATE = {"on": False}
_Q8_0_DOT = (Q.Q4_0, Q.Q5_0, Q.Q8_0)  # llama.cpp multiplies these with activations rounded to Q8_0
_Q8_1_DOT = (Q.Q4_1, Q.Q5_1)  # ... and these with Q8_1 (same values, scale kept as f16 too)
_Q8_K_DOT = (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K)  # ... these with Q8_K (blocks of 256, float32 scale)


@contextlib.contextmanager
def ggml_activation_rounding() -> Iterator[None]:
    """Within this block, packed layers round their inputs the way llama.cpp's CPU matmuls do.

    llama.cpp quantizes activations to Q8_0/Q8_1 blocks before multiplying them with Q4/Q5/Q8
    weights; reproducing that makes torch's reference logits comparable to llama.cpp's at ~1e-3
    instead of ~1e-1. Used by the llama.cpp check only, never in training.
    """
    before = _EMULATE["on"]
    _EMULATE["on"] = True
    try:
        yield
    finally:
        _EMULATE["on"] = before


def activation_rounding_active() -> bool:
    """True inside ``ggml_activation_rounding()``."""
    return _EMULATE["on"]


def _round_activations(x: torch.Tensor) -> torch.Tensor:
    """x rounded to Q8_0 blocks of 32: f16(max|x|/127) * round(x * (127/max|x|)), ties to even as AVX."""
    shape = x.shape
    blocks = x.float().reshape(-1, 32)
    amax = blocks.abs().amax(dim=1, keepdim=True)
    d = amax / 127.0
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))  # llama.cpp's SIMD path: 127/max, not 1/d
    q = torch.round(blocks * inv)
    return (d.to(torch.float16).to(torch.float32) * q).reshape(shape).to(x.dtype)


def _round_activations_q8_k(x: torch.Tensor) -> torch.Tensor:
    """x rounded to Q8_K blocks of 256 as ``quantize_row_q8_K_ref``: scale -127/x[argmax|x|], ties to even."""
    shape = x.shape
    blocks = x.float().reshape(-1, 256)
    peak = blocks.gather(1, blocks.abs().argmax(dim=1, keepdim=True))  # the signed value of largest magnitude
    iscale = torch.where(peak != 0, -127.0 / peak, torch.zeros_like(peak))
    q = torch.round(iscale * blocks).clamp(max=127.0)
    d = torch.where(peak != 0, 1.0 / iscale, torch.zeros_like(iscale))
    return (d * q).reshape(shape).to(x.dtype)


def ggml_input_rounding(x: torch.Tensor, qtype: GGMLQuantizationType) -> torch.Tensor:
    """x as llama.cpp's CPU matmul with a ``qtype`` weight sees it (its ``vec_dot_type``): F16 and BF16
    weights take f16/bf16 activations, Q4/Q5/Q8_0 ones Q8_0 blocks, K-quants Q8_K blocks; F32 as is."""
    cols = x.shape[-1]
    if qtype == Q.F16:
        return x.to(torch.float16).to(x.dtype)
    if qtype == Q.BF16:
        return x.to(torch.bfloat16).to(x.dtype)
    if qtype in _Q8_0_DOT + _Q8_1_DOT and cols % 32 == 0:
        return _round_activations(x)
    if qtype in _Q8_K_DOT and cols % 256 == 0:
        return _round_activations_q8_k(x)
    return x


class PackedLinear(torch.nn.Module):
    """A frozen linear layer on a ``PackedWeight`` with an optional float bias (Qwen2 q/k/v)."""

    def __init__(self, weight: PackedWeight, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weight = weight
        self.out_features, self.in_features = weight.shape
        self.keep_output = False  # under checkpointing, keep the output for the recompute (recompute.py)
        if bias is not None:
            self.register_buffer("bias", bias, persistent=False)
        else:
            self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _EMULATE["on"]:
            x = ggml_input_rounding(x, self.weight.qtype)
        memo = active_memo()
        y = self._memo_matmul(memo, x) if memo is not None else _frozen_matmul(x, self.weight)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y

    def _memo_matmul(self, memo: LayerMemo, x: torch.Tensor) -> torch.Tensor:
        """x @ W.T inside a checkpointed layer: recorded in the first run, taken back in the recompute."""
        call = memo.next_call()
        if memo.replaying:
            kept = memo.kept_output(call)
            if kept is not None:
                if not x.requires_grad:
                    return kept
                return KeptMatmul.apply(x, (kept,), functools.partial(packed_matmul_t, packed=self.weight))
            # Recomputed in backward: the weight is dequantized again for its gradient. Keeping the
            # recompute's float weights for that (as before) held two of them during the peak of the
            # step, 23 MB on a 300M model, and measured no faster once dequantization was native.
            return _frozen_matmul(x, self.weight)
        out = (memo.output_buffer(call, x, self.out_features),) if self.keep_output else ()
        return _frozen_matmul(x, self.weight, out)


class PackedEmbedding(torch.nn.Module):
    """A frozen embedding table that dequantizes only the looked-up rows."""

    def __init__(self, weight: PackedWeight) -> None:
        super().__init__()
        self.weight = weight
        self.num_embeddings, self.embedding_dim = weight.shape

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight.rows(ids)
