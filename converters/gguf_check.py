"""Bounds of a GGUF file checked before gguf-py parses it.

gguf-py's ``GGUFReader`` builds two numpy views per array element, about 1.6 KB and 30 us each,
and trusts every count in the file: a 24 MB file holding one array of 3 M empty strings costs
~5 GB and ~100 s. This walk reads only the counts and lengths, checks each fits in the bytes left
(count x smallest element size), refuses arrays larger than any real model needs, and checks
every tensor's data lies inside the file, all before gguf-py allocates anything.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import AdapterError
from .gguf_py import installed_gguf

# Real vocabularies stay under 300 k tokens (Gemma 3: 262 144); with scores, types and merges a
# model holds about 1 M array elements (Command-R), an adapter none.
MAX_ARRAY = 1 << 20
MAX_ARRAY_TOTAL = 1 << 21
MAX_STRING = 1 << 26  # a chat template or a long description fits many times over
_MAX_DIMS = 4
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUFValueType -> bytes
_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_KEPT_ARRAY = 4096  # read_gguf_header keeps number arrays up to this long (per-layer head counts), skips the rest


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file: ggml dims (fastest first), ggml type, absolute data offset, bytes."""

    name: str
    dims: tuple[int, ...]
    ggml_type: int
    offset: int
    n_bytes: int | None


class _Walk:
    """A cursor over the mapped file that refuses any count or length the remaining bytes cannot hold."""

    def __init__(self, path: Path, data: mmap.mmap | bytes, order: str, array_limit: int, too_many: str | None):
        self.path, self.data, self.pos, self.order = path, data, 0, order
        self.array_total, self.array_limit, self.too_many = 0, array_limit, too_many
        self.kept: dict[str, object] | None = None  # read_gguf_header: top-level values read as they are walked
        self.whole = False  # read_gguf_contents: every top-level array too (the vocabulary)

    def fail(self, what: str) -> AdapterError:
        return AdapterError(f"{self.path}: truncated or corrupt GGUF file ({what} at byte {self.pos}); "
                            "re-download or re-convert it")

    def take(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise self.fail("ends early")
        (value,) = struct.unpack_from(self.order + fmt, self.data, self.pos)
        self.pos += size
        return value

    def skip(self, count: int, size: int, what: str) -> None:
        if count * size > len(self.data) - self.pos:
            raise self.fail(f"{what} of {count} x {size} bytes runs past the end")
        self.pos += count * size

    def string(self, what: str) -> None:
        length = self.take("Q")
        if length > MAX_STRING:
            raise AdapterError(f"{self.path}: {what} is a string of {length} bytes, more than any GGUF "
                               f"needs ({MAX_STRING}); the file is corrupt or hostile")
        self.skip(length, 1, what)

    def value(self, vtype: int, key: str, depth: int = 0) -> None:
        keep = self.kept is not None and depth == 0
        if vtype in _FIXED and keep:
            self.kept[key] = self.take(_FORMATS[vtype])
        elif vtype in _FIXED:
            self.skip(1, _FIXED[vtype], key)
        elif vtype == _STRING:
            start = self.pos + 8
            self.string(f"value of {key}")
            if keep:
                self.kept[key] = bytes(self.data[start:self.pos]).decode("utf-8", errors="replace")
        elif vtype == _ARRAY and depth < 2:  # gguf-py reads arrays of arrays; nothing writes deeper ones
            self.array(key, depth)
        else:
            raise self.fail(f"unknown or too deeply nested value type {vtype} for key {key}")

    def array(self, key: str, depth: int) -> None:
        itype, count = self.take("I"), self.take("Q")
        self.array_total += count
        if self.array_total > self.array_limit and self.too_many:
            raise AdapterError(f"{self.path}: {self.too_many}")
        if count > MAX_ARRAY or self.array_total > self.array_limit:
            raise AdapterError(f"{self.path}: metadata array {key} has {count} elements, more than any model "
                               f"needs ({MAX_ARRAY}, {self.array_limit} in all); the file is corrupt or hostile")
        if itype in _FIXED:
            start = self.pos
            self.skip(count, _FIXED[itype], f"array {key}")
            if self.kept is not None and depth == 0 and (count <= _KEPT_ARRAY or self.whole):
                self.kept[key] = list(struct.unpack_from(f"{self.order}{count}{_FORMATS[itype]}", self.data, start))
            return
        if itype == _STRING and self.whole and depth == 0:
            self.kept[key] = self.strings(count, key)
            return
        self.skip(count, 8, f"array {key}")  # strings and arrays take at least their 8-byte length each
        self.pos -= count * 8
        for _ in range(count):
            self.value(itype, key, depth + 1)


    def strings(self, count: int, key: str) -> list[str]:
        """``count`` strings from here (what gguf-py turns into two numpy views each), decoded as gguf-py does."""
        self.skip(count, 8, f"array {key}")
        self.pos -= count * 8
        data, unpack, out = self.data, struct.Struct(self.order + "Q").unpack_from, []
        for _ in range(count):
            (length,) = unpack(data, self.pos)
            if length > MAX_STRING or self.pos + 8 + length > len(data):
                self.pos += 8
                raise self.fail(f"string in array {key} runs past the end")
            out.append(str(data[self.pos + 8:self.pos + 8 + length], "utf-8", errors="replace"))
            self.pos += 8 + length
        return out


def _tensor_bytes(n_elements: int, ggml_type: int) -> int | None:
    """Bytes of a tensor of ``ggml_type``, or None for a type gguf-py does not know."""
    gguf = installed_gguf()
    try:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        return None
    return (n_elements + block - 1) // block * size


def check_gguf(path: str | Path, array_limit: int = MAX_ARRAY_TOTAL, too_many: str | None = None) -> None:
    """Walk a GGUF file's header, metadata and tensor infos; AdapterError (one line) for anything out of bounds.

    ``array_limit``: metadata array elements allowed in all; ``too_many`` the refusal (after the
    path) when there are more, else a generic one.
    """
    _walk_file(Path(path), array_limit, too_many, keep=False)


def _walk_file(path: Path, array_limit: int, too_many: str | None, keep: bool, whole: bool = False
               ) -> tuple[dict[str, object], list[TensorInfo]]:
    try:
        with open(path, "rb") as handle:
            if path.stat().st_size < 24:
                raise AdapterError(f"{path}: too short to be a GGUF file (truncated?)")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _check(path, data, array_limit, too_many, keep, whole)
    except OSError as exc:
        raise AdapterError(f"{path}: cannot read ({exc.strerror})") from None


def read_gguf_header(path: str | Path) -> tuple[dict[str, object], list[tuple[str, tuple[int, ...]]]]:
    """(top-level metadata values, [(tensor name, ggml shape)]) of a GGUF file, with ``check_gguf``'s checks.

    Strings and numbers are read; number arrays up to a few thousand long (per-layer head counts) too; longer
    and string arrays (the vocabulary) are skipped, which gguf-py's reader would turn into ~2 numpy views per
    element (tens of seconds for a 128 k vocabulary). For what needs only names, shapes and hyper-parameters.
    """
    meta, tensors = _walk_file(Path(path), MAX_ARRAY_TOTAL, None, keep=True)
    return meta, [(t.name, t.dims) for t in tensors]


def read_gguf_contents(path: str | Path) -> tuple[dict[str, object], list[TensorInfo]]:
    """(every metadata value, tensor infos) of a little-endian GGUF file, with ``check_gguf``'s checks.

    The values are what gguf-py's reader gives (arrays as lists of str or numbers), read in one pass over the
    mapped header: a 152 k-token vocabulary with its merges takes about a second where gguf-py's reader takes
    tens. AdapterError for a duplicated tensor name (gguf-py refuses those too).
    """
    meta, tensors = _walk_file(Path(path), MAX_ARRAY_TOTAL, None, keep=True, whole=True)
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise AdapterError(f"{path}: tensor {duplicate} appears twice; re-convert the file")
    return meta, tensors


def _check(path: Path, data: mmap.mmap, array_limit: int, too_many: str | None, keep: bool = False,
           whole: bool = False) -> tuple[dict[str, object], list[TensorInfo]]:
    if data[:4] != b"GGUF":
        raise AdapterError(f"{path}: not a GGUF file (bad magic)")
    (version,) = struct.unpack_from("<I", data, 4)
    order = ">" if version & 0xFFFF == 0 else "<"  # gguf-py's test for a big-endian file
    walk = _Walk(path, data, order, array_limit, too_many)
    walk.kept = {} if keep or whole else None
    walk.whole = whole
    if whole and order == ">":
        raise AdapterError(f"{path}: is a big-endian GGUF (made for s390x); llama.cpp on this computer cannot "
                           "load it either: use the little-endian file")
    walk.pos = 4
    version = walk.take("I")
    if version not in (2, 3):
        raise AdapterError(f"{path}: GGUF version {version} is not supported (2 and 3 are); re-convert the file")
    n_tensors, n_kv = walk.take("Q"), walk.take("Q")
    walk.skip(n_kv, 8 + 4 + 1, "metadata list")  # key length, value type, smallest value
    walk.pos -= n_kv * 13
    alignment = 32
    for _ in range(n_kv):
        start = walk.pos
        walk.string("a metadata key")
        key = bytes(data[start + 8:walk.pos]).decode("utf-8", errors="replace")
        vtype = walk.take("I")
        if key == "general.alignment" and vtype == 4:
            alignment = walk.take("I") or 32
            if walk.kept is not None:
                walk.kept[key] = alignment
            continue
        walk.value(vtype, key)
    walk.skip(n_tensors, 8 + 4 + 4 + 8, "tensor list")  # name length, n_dims, type, offset
    walk.pos -= n_tensors * 24
    spans, tensors = [], []
    for _ in range(n_tensors):
        start = walk.pos + 8
        walk.string("a tensor name")
        name = bytes(data[start:walk.pos]).decode("utf-8", errors="replace") if keep or whole else ""
        n_dims = walk.take("I")
        if n_dims > _MAX_DIMS:
            raise walk.fail(f"tensor with {n_dims} dimensions")
        dims = tuple(walk.take("Q") for _ in range(n_dims))
        count = 1
        for dim in dims:
            count *= dim
        ggml_type, offset = walk.take("I"), walk.take("Q")
        spans.append((offset, _tensor_bytes(count, ggml_type)))
        if keep or whole:
            tensors.append((name, dims, ggml_type))
    data_start = -(-walk.pos // alignment) * alignment
    for offset, nbytes in spans:
        if nbytes is not None and data_start + offset + nbytes > len(data):
            raise AdapterError(f"{path}: truncated GGUF file (tensor data runs past the end); "
                               "re-download or re-convert it")
    infos = [TensorInfo(name, dims, ggml_type, data_start + offset, nbytes)
             for (name, dims, ggml_type), (offset, nbytes) in zip(tensors, spans, strict=False)]
    return walk.kept or {}, infos
