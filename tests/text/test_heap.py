"""glibc heap settings for training: activations up to the step's largest come from the heap, and are undone."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from extension.training import heap


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mmapped_bytes_for(nbytes: int) -> int:
    """How much of a fresh ``nbytes`` tensor glibc serves with mmap (0: from the heap)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    before = libc.mallinfo2().hblkhd
    block = torch.empty(nbytes, dtype=torch.uint8)
    during = libc.mallinfo2().hblkhd
    del block
    return during - before


@pytest.mark.skipif(not sys.platform.startswith("linux") or heap._LIBC is None, reason="glibc only")
def test_activation_sized_blocks_stay_in_heap_until_restored():
    """Run in a fresh interpreter: free chunks that earlier in-process training left in glibc's bins would serve
    the probe allocations from the heap whatever the thresholds are."""
    if os.environ.get("LORA_BRIDGE_HEAP_CHILD") != "1":
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "LORA_BRIDGE_HEAP_CHILD": "1",
               "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k",
                               "stay_in_heap"], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:]
        return
    six_mb = 6 << 20
    try:
        assert heap.tune_heap_for_training()
        assert _mmapped_bytes_for(six_mb) >= six_mb  # above the 4 MB threshold: mmap
        heap.keep_activations_in_heap(six_mb)
        assert _mmapped_bytes_for(six_mb) == 0
        heap.keep_activations_in_heap(1 << 40)  # clamped to glibc's 32 MB limit, still accepted
        assert _mmapped_bytes_for(40 << 20) >= 40 << 20
    finally:
        heap.restore_heap_after_training()
    assert _mmapped_bytes_for(six_mb) >= six_mb
