"""Optional native dequantization: ``dequant.c`` compiled on first use and called through ctypes.

Unpacking Q4_0 with torch's elementwise ops takes five passes over the weight (mask, shift,
offset, widen, scale); one C loop does it in one pass and is 2-3x faster. On a packed model
dequantization is about an eighth of a training step. The C code is plain C99 without
CPU-specific flags, so the cached library suits any machine that shares the cache.

Nothing depends on it. The torch code runs instead, with identical values, when:
- no C compiler is found (``$CC``, ``cc``, ``gcc`` or ``clang``; most Windows WebUI installs);
- the build or its self-test against the torch code fails;
- ``LORA_BRIDGE_NATIVE=0`` is set.
The library is cached in ``$LORA_BRIDGE_CACHE`` (default ``~/.cache/lora-bridge``) under a
name derived from the source and the compiler. The torch code it is tested against is passed in
(``quant.torch_dequantize_rows``), so this module imports nothing from ``quant``.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .._converters import converters

_gguf = converters.gguf_py.installed_gguf()
GGML_QUANT_SIZES, GGMLQuantizationType = _gguf.GGML_QUANT_SIZES, _gguf.GGMLQuantizationType


log = logging.getLogger("lora_bridge.text")

# The torch dequantizer the compiled one must match bit for bit: (packed rows, type, row length) -> float32.
Reference = Callable[[torch.Tensor, GGMLQuantizationType, int], torch.Tensor]

SOURCE = Path(__file__).with_name("dequant.c")
NATIVE_TYPES = frozenset({
    GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q5_0, GGMLQuantizationType.Q5_1,
    GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q6_K,
})
_TYPE_NUMBERS = frozenset(int(t) for t in NATIVE_TYPES)  # what lb_dequantize's switch handles


def cache_dir() -> Path:
    """Where compiled helpers are kept."""
    explicit = os.environ.get("LORA_BRIDGE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lora-bridge"


def _compiler() -> str | None:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def _compiler_identity(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def build_library(cc: str, target_dir: Path) -> Path:
    """Compile ``dequant.c`` with ``cc`` into ``target_dir`` (reused when already built); returns the path."""
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + cc.encode() + _compiler_identity(cc).encode()).hexdigest()[:16]
    suffix = ".dll" if sys.platform == "win32" else ".so"
    target = target_dir / f"dequant-{key}{suffix}"
    if target.exists():
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".dequant-", suffix=suffix, dir=target_dir)
    os.close(fd)
    try:
        cmd = [cc, "-O3", "-ffp-contract=off", "-shared", "-o", tmp, str(SOURCE)]
        if sys.platform != "win32":
            cmd.insert(1, "-fPIC")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError((proc.stderr.strip().splitlines() or ["compiler failed"])[-1])
        os.replace(tmp, target)  # another process may have built it meanwhile: same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


# Below this many blocks a weight is dequantized on the calling thread alone: splitting a small
# one costs more in hand-over than it gains (and, inside training, torch's OpenMP workers still
# spin for a moment after each matmul). 32K blocks are 1M Q4_0 weights, ~1 ms of work.
PARALLEL_BLOCKS = 1 << 15


class NativeDequantizer:
    """``lb_dequantize`` from a compiled ``dequant.c``.

    A large weight is split into contiguous runs of blocks, one per torch thread (the caller
    dequantizes the first run, a small pool the others): ctypes releases the GIL during the call,
    so the runs proceed in parallel. Each block is converted by the same code either way, so the
    values do not depend on the split.
    """

    def __init__(self, path: Path) -> None:
        self._lib = ctypes.CDLL(str(path))
        self._fn = self._lib.lb_dequantize
        self._fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
        self._fn.restype = ctypes.c_int
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0
        self._pool_lock = threading.Lock()

    def into(self, raw: torch.Tensor, qtype: GGMLQuantizationType, out: torch.Tensor, portable: bool = False,
             threads: int | None = None) -> None:
        """Dequantize contiguous packed bytes ``raw`` into the contiguous float32 tensor ``out``.

        ``portable`` skips the SIMD variants (Q4_0/Q8_0 on x86 with AVX2), for testing them against it.
        ``threads``: how many threads share a large weight (default: ``torch.get_num_threads()``).
        """
        block, size = GGML_QUANT_SIZES[qtype]
        n_blocks = raw.numel() // size
        if not (raw.device.type == out.device.type == "cpu" and raw.is_contiguous() and out.is_contiguous()
                and raw.dtype == torch.uint8
                and out.dtype == torch.float32 and out.numel() == n_blocks * block and raw.numel() == n_blocks * size):
            raise ValueError("native dequantization needs contiguous uint8 blocks and a matching float32 output, "
                             "on the CPU")
        if int(qtype) not in _TYPE_NUMBERS:
            raise ValueError(f"native dequantization does not handle {qtype.name}")
        n_threads = max(1, min(threads or torch.get_num_threads(), n_blocks // PARALLEL_BLOCKS or 1))
        src, dst = raw.data_ptr(), out.data_ptr()
        if n_threads == 1:
            self._run(qtype, src, dst, 0, n_blocks, portable, block, size)
            return
        bounds = [n_blocks * i // n_threads for i in range(n_threads + 1)]
        pool = self._executor(n_threads - 1)
        rest = [pool.submit(self._run, qtype, src, dst, bounds[i], bounds[i + 1], portable, block, size)
                for i in range(1, n_threads)]
        self._run(qtype, src, dst, bounds[0], bounds[1], portable, block, size)
        for future in rest:
            future.result()

    def _run(self, qtype: GGMLQuantizationType, src: int, dst: int, first: int, end: int, portable: bool,
             block: int, size: int) -> None:
        """Blocks ``first``..``end`` (exclusive) of the weight at ``src`` into the floats at ``dst``."""
        if self._fn(int(qtype), src + first * size, dst + first * block * 4, end - first, int(portable)) != 0:
            raise ValueError(f"native dequantization does not handle {qtype.name}")

    def _executor(self, workers: int) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None or self._pool_size < workers:
                if self._pool is not None:
                    self._pool.shutdown(wait=False)
                self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lora-bridge-dequant")
                self._pool_size = workers
            return self._pool


def _self_test(native: NativeDequantizer, reference: Reference) -> bool:
    """True when every native type gives the torch code's values bit for bit on random blocks."""
    gen = torch.Generator().manual_seed(0)
    for qtype in sorted(NATIVE_TYPES):
        block, size = GGML_QUANT_SIZES[qtype]
        raw = torch.randint(0, 256, (64, size), dtype=torch.uint8, generator=gen)
        _sane_scales(raw, qtype)
        expected = reference(raw, qtype, block)
        got, portable = torch.empty(64, block), torch.empty(64, block)
        native.into(raw, qtype, got)
        native.into(raw, qtype, portable, portable=True)
        if not (torch.equal(got.view(torch.int32), expected.view(torch.int32))
                and torch.equal(portable.view(torch.int32), expected.view(torch.int32))):
            log.warning("native dequantization of %s disagrees with torch's; using torch", qtype.name)
            return False
    return True


def _sane_scales(raw: torch.Tensor, qtype: GGMLQuantizationType) -> None:
    """Random blocks with f16 scales that are finite (NaN payloads need not survive a conversion)."""
    offsets = {GGMLQuantizationType.Q6_K: (208,)}.get(qtype)
    if offsets is None:
        offsets = (0, 2) if qtype in (GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q5_1,
                                      GGMLQuantizationType.Q4_K) else (0,)
    for offset in offsets:
        raw[:, offset + 1] &= 0xFB  # exponent below 31: no inf/NaN (signs, subnormals and zero stay possible)


_LOCK = threading.Lock()
_STATE: dict[str, NativeDequantizer | None] = {}


def native_for(device: torch.device | str, reference: Reference) -> NativeDequantizer | None:
    """The compiled dequantizer for blocks held on ``device``, or None.

    The one place the native library is chosen by device: C can only read host memory, so any
    other device (CUDA) gets None and dequantizes with torch ops where its tensors live; the
    library is not even built then. ``reference`` as for ``native_dequantizer``.
    """
    if torch.device(device).type != "cpu":
        return None
    return native_dequantizer(reference)


def native_dequantizer(reference: Reference) -> NativeDequantizer | None:
    """The compiled dequantizer, built and self-tested against ``reference`` on first call; None when unavailable
    or disabled."""
    if os.environ.get("LORA_BRIDGE_NATIVE", "1").strip().lower() in ("0", "off", "false", "no"):
        return None
    if "lib" in _STATE:  # every dequantization asks: no lock once decided
        return _STATE["lib"]
    with _LOCK:
        if "lib" not in _STATE:
            _STATE["lib"] = _load(reference)
        return _STATE["lib"]


def _load(reference: Reference) -> NativeDequantizer | None:
    cc = _compiler()
    if cc is None:
        log.info("no C compiler found: dequantizing with torch (slower, same values)")
        return None
    try:
        native = NativeDequantizer(build_library(cc, cache_dir()))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log.info("native dequantization unavailable (%s): dequantizing with torch", exc)
        return None
    return native if _self_test(native, reference) else None
