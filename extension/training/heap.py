"""glibc heap settings for training on the CPU.

A training step allocates the same large temporaries over and over (layer activations of a few
MB, dequantized weights of tens of MB). With glibc's defaults the big ones first go to ``mmap``
and, once one is freed, the adaptive threshold moves them into the heap, where they fragment it
around long-lived blocks; the heap's top is also given back and faulted in again every step (the
kernel zeroes each page: 15% of a decoder layer's forward on a 300M model). Two fixed settings
avoid both: blocks above 4 MB (or above the step's largest activation, see
``keep_activations_in_heap``) always come from (and go back to) ``mmap``, and the heap keeps up
to 128 MB of free space at its top. After training the trim threshold goes back to glibc's
default and the free space is returned (a WebUI process lives on). Elsewhere than glibc these
calls do nothing, and so they do when training runs on a GPU (``heap_tuning_applies``): there
the step's tensors are not in the host heap.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 << 20
MAX_MMAP_THRESHOLD = 32 << 20  # glibc's upper limit on 64-bit
TRIM_THRESHOLD = 128 << 20
DEFAULT_TRIM_THRESHOLD = 128 << 10  # glibc's


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 (musl has neither)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def heap_tuning_applies(device: object = "cpu") -> bool:
    """True when glibc's heap holds a step's tensors: glibc present and training on the CPU.

    ``device`` is a ``torch.device`` or its name ("cpu", "cuda:0"); the one place this is chosen.
    """
    kind = getattr(device, "type", None) or str(device).split(":", 1)[0]
    return _LIBC is not None and kind == "cpu"


def tune_heap_for_training(device: object = "cpu") -> bool:
    """Fix glibc's mmap and trim thresholds for training on ``device``; False when that does not apply."""
    if not heap_tuning_applies(device):
        return False
    return bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        _LIBC.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def keep_activations_in_heap(largest_activation: int, device: object = "cpu") -> None:
    """Raise the mmap threshold above a step's largest activation (bytes), within glibc's 32 MB limit.

    Activations larger than the threshold come from ``mmap`` and are faulted in page by page
    every time (at 512 tokens, 8% of a 300M model's step); below it they are reused from the heap.
    """
    if heap_tuning_applies(device):
        wanted = min(MAX_MMAP_THRESHOLD, max(MMAP_THRESHOLD, int(largest_activation) + (64 << 10)))
        _LIBC.mallopt(_M_MMAP_THRESHOLD, wanted)


def restore_heap_after_training(device: object = "cpu") -> None:
    """Put glibc's trim threshold back to its default and return the heap's free pages.

    The mmap threshold goes back to 4 MB, not to glibc's adaptive one (glibc cannot return to
    that), which only means large blocks keep coming from and going back to ``mmap``.
    """
    if heap_tuning_applies(device):
        _LIBC.mallopt(_M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        _LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    release_free_heap(device)


def release_free_heap(device: object = "cpu") -> None:
    """Give the heap's free pages back to the OS (between a checkpointed forward and its backward).

    The forward's temporaries leave free but resident pages between long-lived blocks, and the
    backward only reuses part of them.
    """
    if heap_tuning_applies(device):
        _LIBC.malloc_trim(0)
