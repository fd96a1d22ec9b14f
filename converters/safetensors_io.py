"""A small safetensors reader and writer on numpy: memory-mapped, streaming, bf16-aware.

The ``safetensors`` package's numpy API cannot hold bf16 and loads whole files; this one maps
the file and converts one tensor at a time, which keeps conversions of large adapters cheap.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from .atomic import atomic_file
from .errors import AdapterError

_NUMPY_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # raw bits; widened to float32 on read
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_SAFETENSORS_NAMES = {
    np.dtype("<f8"): "F64",
    np.dtype("<f4"): "F32",
    np.dtype("<f2"): "F16",
    np.dtype("<i8"): "I64",
    np.dtype("<i4"): "I32",
    np.dtype("<i2"): "I16",
    np.dtype("i1"): "I8",
    np.dtype("u1"): "U8",
    np.dtype("?"): "BOOL",
}
FLOAT_DTYPES = ("f32", "f16", "bf16")
_MAX_HEADER = 100 * 1024 * 1024
# ``.sft``: the name BFL first released flux1-dev / ae under; Forge Neo lists it among its text encoders and VAEs.
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """Widen raw bfloat16 bit patterns (uint16) to float32, exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (round to nearest even) and return the uint16 bits."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + rounding) >> 16).astype(np.uint16)


class SafetensorsFile:
    """A read-only view of one ``.safetensors`` file; tensors are mapped, not loaded."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.header, self._data_start = read_header(self.path)
        self.metadata: dict[str, str] = dict(self.header.pop("__metadata__", None) or {})
        self._map: np.memmap | None = None

    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return list(self.header)

    def __contains__(self, name: str) -> bool:
        return name in self.header

    def dtype_name(self, name: str) -> str:
        """The safetensors dtype of ``name`` (``F16``, ``BF16``, ...)."""
        return self.header[name]["dtype"]

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of ``name`` without reading its data."""
        return tuple(self.header[name]["shape"])

    def raw(self, name: str) -> np.ndarray:
        """The tensor as stored (bf16 as uint16 bits), memory-mapped."""
        info = self.header[name]
        if info["dtype"] not in _NUMPY_DTYPES:
            raise AdapterError(f"{self.path}: tensor {name!r} is {info['dtype']}; LoRA Bridge reads only "
                               f"{', '.join(_NUMPY_DTYPES)} tensors")
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        begin, end = info["data_offsets"]
        buf = self._map[self._data_start + begin : self._data_start + end]
        return buf.view(_NUMPY_DTYPES[info["dtype"]]).reshape(info["shape"])

    def get(self, name: str) -> np.ndarray:
        """The tensor as a numpy array; bf16 is widened to float32."""
        if name not in self.header:
            raise AdapterError(f"{self.path}: has no tensor {name!r}")
        array = self.raw(name)
        if self.header[name]["dtype"] == "BF16":
            return bf16_bits_to_f32(array)
        return array

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        """(name, array) pairs in file order."""
        for name in self.header:
            yield name, self.get(name)


def tensor_names(path: Path) -> list[str]:
    """The tensor names of a readable ``.safetensors`` file; [] for anything else (for sniffing)."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() != ".safetensors":
        return []
    try:
        header, _ = read_header(path)
    except AdapterError:
        return []
    return [k for k in header if k != "__metadata__"]


def has_tensor_prefix(path: Path, prefixes: str | tuple[str, ...]) -> bool:
    """Whether ``path`` is a readable ``.safetensors`` with a tensor named with one of ``prefixes`` (for sniffing)."""
    return any(k.startswith(prefixes) for k in tensor_names(path))


# Item sizes in bits of every dtype the safetensors library knows (its Dtype::bitsize), so a
# header is validated as the library validates it even for dtypes this reader cannot convert.
_DTYPE_BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
               "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
               "I64": 64, "U64": 64, "F64": 64}
_USIZE = 2**64


def _is_usize(value: object) -> bool:
    return type(value) is int and 0 <= value < _USIZE


def _check_entry(path: Path, name: str, info: object) -> tuple[int, int, int]:
    """(begin, end, bytes the shape needs) of a tensor entry, or AdapterError as the library would refuse it."""
    if not isinstance(info, dict):
        raise AdapterError(f"{path}: corrupt safetensors header (entry of tensor {name!r} is not an object)")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in _DTYPE_BITS:
        raise AdapterError(f"{path}: corrupt safetensors header (tensor {name!r} has no known dtype)")
    if not isinstance(shape, list) or not all(_is_usize(d) for d in shape):
        raise AdapterError(f"{path}: corrupt safetensors header (tensor {name!r}: shape must be non-negative integers)")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_usize(o) for o in offsets)):
        raise AdapterError(f"{path}: corrupt safetensors header (tensor {name!r}: data_offsets must be two "
                           "non-negative integers)")
    count = 1
    for dim in shape:
        count *= dim
    nbits = count * _DTYPE_BITS[dtype]
    if nbits >= _USIZE or nbits % 8:
        raise AdapterError(f"{path}: corrupt safetensors header (tensor {name!r}: shape overflows "
                           "or is not whole bytes)")
    return offsets[0], offsets[1], nbits // 8


def read_header(path: Path) -> tuple[dict, int]:
    """Parse and validate a safetensors header as the safetensors library does; return (header, data offset).

    The library's rules: header length within the file (and at most 100 MB), a UTF-8 JSON object,
    ``__metadata__`` a str -> str map, every tensor a known dtype with non-negative integer shape
    and offsets, and the tensors' byte ranges, sorted, tiling the data buffer exactly (no gap, no
    overlap, nothing past the end or after the last tensor). Messages never quote the header text.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise AdapterError(f"{path}: too short to be a safetensors file (truncated?)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(_MAX_HEADER, size - 8):
                raise AdapterError(f"{path}: not a safetensors file or truncated (bad header length)")
            raw = handle.read(header_len)
        if not raw.startswith(b"{"):
            raise AdapterError(f"{path}: not a safetensors file or corrupt header (not a JSON object)")
        header = json.loads(raw.decode("utf-8"))
    except AdapterError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise AdapterError(f"{path}: corrupt safetensors header ({exc.__class__.__name__})") from None
    except OSError as exc:
        raise AdapterError(f"{path}: cannot read ({exc.strerror})") from None
    if not isinstance(header, dict):
        raise AdapterError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.get("__metadata__")
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(v, str) for v in metadata.values())):
        raise AdapterError(f"{path}: corrupt safetensors header (__metadata__ must map strings to strings)")
    data_start = 8 + header_len
    spans = sorted((*_check_entry(path, name, info), name) for name, info in header.items() if name != "__metadata__")
    end_of_last = 0
    for begin, end, nbytes, name in spans:
        if begin != end_of_last or end < begin:
            raise AdapterError(f"{path}: corrupt safetensors header (tensor {name!r} has overlapping or "
                               "out-of-order data_offsets)")
        if end - begin != nbytes:
            raise AdapterError(f"{path}: corrupt safetensors header (tensor {name!r}: data_offsets do not match "
                               "its shape and dtype)")
        end_of_last = end
    if data_start + end_of_last != size:
        raise AdapterError(f"{path}: the tensors do not cover the data exactly "
                           f"({size - data_start} bytes stored, {end_of_last} described); truncated or damaged file")
    return header, data_start


def _stored_name(dtype: np.dtype, float_dtype: str | None) -> str:
    """The safetensors dtype a numpy dtype is written as, given the requested float format."""
    if dtype.kind == "f" and float_dtype is not None:
        return {"f32": "F32", "f16": "F16", "bf16": "BF16"}[float_dtype]
    name = _SAFETENSORS_NAMES.get(dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype)
    if name is None:
        raise AdapterError(f"cannot store a tensor of dtype {dtype} in safetensors")
    return name


def _encode(array: np.ndarray, stored: str) -> np.ndarray:
    """``array`` converted to the stored dtype, little-endian and contiguous."""
    if stored == "BF16":
        return f32_to_bf16_bits(array)
    return np.ascontiguousarray(array, dtype=_NUMPY_DTYPES[stored])


def write_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
    metadata: Mapping[str, str] | None = None,
    float_dtype: str | None = None,
    force: bool = True,
    keep_dtype: Iterable[str] = (),
) -> Path:
    """Write tensors atomically; floats are stored as ``float_dtype`` (f32/f16/bf16) if given.

    Tensors named in ``keep_dtype`` keep their own dtype (kohya alphas stay float32).

    Tensors are converted one at a time while writing, so memory stays near the largest single
    tensor even for memory-mapped inputs.
    """
    if float_dtype is not None and float_dtype not in FLOAT_DTYPES:
        raise AdapterError(f"unknown dtype {float_dtype!r}; use one of {', '.join(FLOAT_DTYPES)}")
    items = list(tensors.items() if isinstance(tensors, Mapping) else tensors)
    header: dict[str, object] = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(v, str)]
        if bad:
            raise AdapterError(f"safetensors metadata values must be strings: {bad[:3]}")
        header["__metadata__"] = dict(metadata)
    offset = 0
    stored_names = []
    keep = set(keep_dtype)
    for name, array in items:
        stored = _stored_name(np.asarray(array).dtype, None if name in keep else float_dtype)
        stored_names.append(stored)
        nbytes = int(np.prod(np.shape(array), dtype=np.int64)) * _NUMPY_DTYPES[stored].itemsize
        header[name] = {"dtype": stored, "shape": list(np.shape(array)), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with atomic_file(path, force=force) as tmp, open(tmp, "wb") as out:
        out.write(struct.pack("<Q", len(blob)))
        out.write(blob)
        for (_, array), stored in zip(items, stored_names, strict=True):
            out.write(memoryview(_encode(np.asarray(array), stored).reshape(-1)).cast("B"))
    return Path(path)
