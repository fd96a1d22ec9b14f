"""Reader for llama.cpp's old ``ggla`` LoRA adapter (``ggml-adapter-model.bin``, 2023), for upgrading.

Layout, as the old ``convert-lora-to-ggml.py`` wrote it (little endian):
``b"algg"`` (the u32 'ggla'), i32 version 1, i32 rank, i32 alpha; then until EOF per tensor:
i32 n_dims, i32 name length, i32 type (0 f32, 1 f16), n_dims x i32 dims in ggml order (numpy
shape reversed), the name, zero padding to a 32-byte file offset, the data. Names are
``blk.N.attn_q.weight.loraA`` / ``.loraB`` (GGUF era) or ``layers.N.attention.wq.weight.loraA``
(earlier). ``loraA`` holds PEFT's A transposed (in, r), ``loraB`` PEFT's B (out, r). That script
did not permute Q/K rows, so both are in Hugging Face order and map onto the canonical form as is.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

from ..errors import AdapterError
from ..llm_names import gguf_to_hf
from ..model import LoraAdapter, LoraModule

NAME = "ggla"
MAGIC = b"ggla"[::-1]
_TYPES = {0: np.dtype("<f4"), 1: np.dtype("<f2")}
_LEGACY = {
    "attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj",
}
_NAME = re.compile(r"^(.+)\.weight\.lora([AB])$")


def sniff(path: Path) -> bool:
    """A file starting with the ggla magic."""
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        return handle.read(4) == MAGIC


def _module_name(base: str, arch: str) -> str:
    """Canonical HF module for a ggla base name (GGUF-style or the older LLaMA names)."""
    match = re.match(r"^layers\.(\d+)\.(.+)$", base)
    if match and match.group(2) in _LEGACY:
        return f"model.layers.{match.group(1)}.{_LEGACY[match.group(2)]}"
    return gguf_to_hf(base, arch)


def _tensors(path: Path, data: memoryview):
    """Yield (name, numpy array view) for every tensor in the file."""
    size = len(data)
    offset = 16
    while offset < size:
        if offset + 12 > size:
            raise AdapterError(f"{path}: truncated ggla file (tensor header cut off)")
        n_dims, name_len, kind = struct.unpack_from("<iii", data, offset)
        offset += 12
        if not 1 <= n_dims <= 4 or not 0 < name_len < 4096 or kind not in _TYPES:
            raise AdapterError(f"{path}: corrupt ggla tensor header at byte {offset - 12}")
        if offset + 4 * n_dims + name_len > size:
            raise AdapterError(f"{path}: truncated ggla file (tensor header cut off)")
        dims = struct.unpack_from(f"<{n_dims}i", data, offset)
        offset += 4 * n_dims
        name = bytes(data[offset : offset + name_len]).decode("utf-8", errors="replace")
        offset += name_len
        offset = (offset + 31) & -32
        shape = tuple(reversed(dims))
        nbytes = int(np.prod(shape)) * _TYPES[kind].itemsize
        if min(shape) <= 0 or offset + nbytes > size:
            raise AdapterError(f"{path}: truncated ggla file (tensor {name} cut off); re-convert the adapter")
        yield name, np.frombuffer(data, dtype=_TYPES[kind], count=int(np.prod(shape)), offset=offset).reshape(shape)
        offset += nbytes


def read(path: Path, arch: str | None = None) -> LoraAdapter:
    """Read a ggla adapter into the canonical form (arch defaults to llama; the file does not say)."""
    arch = arch or "llama"
    blob = path.read_bytes()
    if len(blob) < 16 or blob[:4] != MAGIC:
        raise AdapterError(f"{path}: not a ggla LoRA adapter (bad magic or too short)")
    version, rank, alpha = struct.unpack_from("<iii", blob, 4)
    if version != 1:
        raise AdapterError(f"{path}: ggla version {version} is not supported (only version 1 exists)")
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for name, array in _tensors(path, memoryview(blob)):
        match = _NAME.match(name)
        if not match:
            raise AdapterError(f"{path}: unexpected tensor {name!r} in a ggla adapter")
        pairs.setdefault(match.group(1), {})[match.group(2)] = array
    modules: dict[str, LoraModule] = {}
    for base, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"{path}: {base} lacks lora{'B' if 'A' in pair else 'A'}; the file is incomplete")
        down, up = pair["A"].T, pair["B"]
        if down.shape[0] != up.shape[1]:
            raise AdapterError(f"{path}: {base}: loraA rank {down.shape[0]} != loraB rank {up.shape[1]}")
        modules[_module_name(base, arch)] = LoraModule(down=np.ascontiguousarray(down), up=up, alpha=float(alpha))
    metadata = {"ggla.rank": str(rank), "ggla.alpha": str(alpha)}
    return LoraAdapter(modules=modules, arch=arch, metadata=metadata)
