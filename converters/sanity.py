"""Values no consumer can apply sensibly: non-finite weights, rank 0, alpha <= 0.

``convert`` refuses an adapter with any of them (a converted file would change or lose its
effect silently); ``inspect`` lists them so a user sees why.
"""

from __future__ import annotations

import math

import numpy as np

from .model import LoraAdapter, LoraModule, LycorisModule

_CHUNK = 1 << 22  # elements checked at a time: the bool temporaries stay small for mapped files

ALPHA_ZERO_HINT = ("kohya's loader reads alpha 0 as alpha = rank but A1111's as scale 0, so the file's "
                   "effect depends on the loader; set the alpha you mean")


def _non_finite(array: np.ndarray) -> int:
    """How many NaN/inf values ``array`` holds (0 for integer arrays)."""
    flat = np.asarray(array).reshape(-1)
    if flat.dtype.kind not in "fc":
        return 0
    return sum(int(flat.size - np.count_nonzero(np.isfinite(flat[i:i + _CHUNK])))
               for i in range(0, flat.size, _CHUNK))


def _arrays(module: LoraModule | LycorisModule) -> dict[str, np.ndarray]:
    parts = dict(module.factors) if isinstance(module, LycorisModule) else {"down": module.down, "up": module.up}
    for extra in ("magnitude", "bias"):
        if getattr(module, extra, None) is not None:
            parts[extra] = getattr(module, extra)
    return parts


def adapter_problems(adapter: LoraAdapter) -> list[str]:
    """One line per module (or full weight) with non-finite values, rank 0 or alpha <= 0; empty when sound."""
    problems: list[str] = []
    for name, module in adapter.modules.items():
        has_rank = isinstance(module, LoraModule) or module.algo == "loha"
        if has_rank and module.rank == 0:
            problems.append(f"{name}: rank 0 (an empty LoRA module)")
        alpha = float(module.alpha)
        if not math.isfinite(alpha):
            problems.append(f"{name}: alpha is {alpha}")
        elif alpha < 0:
            problems.append(f"{name}: alpha {alpha:g} is negative")
        elif alpha == 0 and (has_rank or module.rank):
            problems.append(f"{name}: alpha 0 ({ALPHA_ZERO_HINT})")
        for part, array in _arrays(module).items():
            bad = _non_finite(array)
            if bad:
                problems.append(f"{name}: {bad} NaN/inf value(s) in {part}")
    for name, array in adapter.full_weights.items():
        bad = _non_finite(array)
        if bad:
            problems.append(f"{name}: {bad} NaN/inf value(s)")
    return problems
