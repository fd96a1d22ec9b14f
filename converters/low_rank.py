"""``--svd-rank R``: the rank-R LoRA nearest a module's delta (truncated SVD, Frobenius norm).

Two kinds of modules are approximated:
- LoHa/LoKr modules (any family), for targets that take plain LoRA only;
- Flux.1 LoRA modules whose rank in a BFL-named file exceeds R. Fusing q/k/v (and a single block's
  MLP) adds the parts' ranks, so a fused ``img_attn.qkv`` of three rank-16 parts is rank 48; its
  best rank-R LoRA (one dense ``up``, one shared ``down``) is split back into the canonical parts,
  each holding that ``down``, and fuses again at rank R when written as kohya/BFL.
"""

from __future__ import annotations

import numpy as np

from . import flux_layout
from .errors import AdapterError
from .flux_names import bfl_modules
from .model import LoraAdapter, LoraModule, LycorisModule


def _truncate(u: np.ndarray, s: np.ndarray, vt: np.ndarray, rank: int,
              shape: tuple[int, ...]) -> tuple[LoraModule, float]:
    """LoraModule (alpha = rank, scale 1) from an SVD ``u s vt`` of a delta of ``shape``, and its relative error."""
    r = min(rank, len(s))
    root = np.sqrt(s[:r])
    up = (u[:, :r] * root).astype(np.float32)
    down = (root[:, None] * vt[:r]).astype(np.float32).reshape((r,) + tuple(shape[1:]))
    if down.ndim == 4:
        up = up.reshape(up.shape + (1, 1))
    total = float(np.sum(s.astype(np.float64) ** 2))
    error = float(np.sqrt(np.sum(s[r:].astype(np.float64) ** 2) / total)) if total else 0.0
    return LoraModule(down=down, up=up, alpha=float(r)), error


def nearest_lora_of_delta(delta: np.ndarray, rank: int) -> tuple[LoraModule, float]:
    """The rank-``rank`` LoRA nearest ``delta`` (flattened to (out, rest)) and its relative error."""
    delta = np.asarray(delta, np.float64)
    u, s, vt = np.linalg.svd(delta.reshape(delta.shape[0], -1), full_matrices=False)
    return _truncate(u, s, vt, rank, delta.shape)


def nearest_lower_rank(module: LoraModule, rank: int) -> tuple[LoraModule, float]:
    """The rank-``rank`` LoRA nearest a plain linear LoRA's delta, without forming the (out, in) delta.

    ``up = Qu Ru`` and ``down^T = Qd Rd`` (QR), so ``delta = scale Qu (Ru Rd^T) Qd^T`` and only the
    small (r, r) core needs an SVD.
    """
    up = np.asarray(module.up, np.float64)
    down = np.asarray(module.down, np.float64)
    qu, ru = np.linalg.qr(up)
    qd, rd = np.linalg.qr(down.T)
    u, s, vt = np.linalg.svd(ru @ rd.T * module.scale)
    return _truncate(qu @ u, s, vt @ qd.T, rank, (up.shape[0], down.shape[1]))


def _lycoris_to_lora(adapter: LoraAdapter, rank: int, stats: _Stats) -> None:
    for name, module in list(adapter.modules.items()):
        if not isinstance(module, LycorisModule):
            continue
        if module.magnitude is not None:
            raise AdapterError(f"{name}: a DoRA {module.algo} module has no LoRA approximation; convert --to peft")
        adapter.modules[name], error = nearest_lora_of_delta(module.delta(), rank)
        stats.add(name, error)


def _flux_to_rank(adapter: LoraAdapter, rank: int, stats: _Stats) -> None:
    """Flux modules of rank > R as BFL fuses them become rank R (split back into canonical parts)."""
    transformer = {n: m for n, m in adapter.modules.items()
                   if n.startswith("transformer.") and isinstance(m, LoraModule)}
    fused = flux_layout.bfl_from_canonical(transformer, "adapter")
    table = bfl_modules()
    for path, module in fused.items():
        if module.rank <= rank or module.magnitude is not None or module.bias is not None:
            continue
        low, error = nearest_lower_rank(module, rank)
        bfl = table[path]
        for part in bfl.parts:
            adapter.modules.pop(part, None)
        parts, _ = flux_layout.split_module(bfl, low, "adapter")
        adapter.modules.update(parts)
        stats.add(path, error)
    for name, module in list(adapter.modules.items()):  # CLIP-L / T5 modules are never fused
        if not name.startswith("transformer.") and isinstance(module, LoraModule) and module.rank > rank \
                and module.magnitude is None and module.down.ndim == 2 and not module.is_embedding:
            adapter.modules[name], error = nearest_lower_rank(module, rank)
            stats.add(name, error)


class _Stats:
    """Modules replaced and the worst relative error ``|D - D_R| / |D|`` with its module."""

    def __init__(self) -> None:
        self.count, self.worst, self.worst_name = 0, 0.0, ""

    def add(self, name: str, error: float) -> None:
        self.count += 1
        if error >= self.worst:
            self.worst, self.worst_name = error, name


def approximate_as_lora(adapter: LoraAdapter, rank: int) -> dict:
    """Replace (in place) every LoHa/LoKr module, and for Flux every module whose rank as BFL fuses it
    exceeds ``rank``, by the nearest rank-``rank`` LoRA.

    Returns ``svd_modules`` (modules replaced; a fused BFL module counts once), ``svd_worst_rel_error``
    and ``svd_worst_module``.
    """
    if rank < 1:
        raise AdapterError(f"--svd-rank must be at least 1, not {rank}")
    stats = _Stats()
    _lycoris_to_lora(adapter, rank, stats)
    if adapter.family == "flux":
        _flux_to_rank(adapter, rank, stats)
        if stats.count == 0:
            raise AdapterError(f"--svd-rank {rank}: every module of this Flux adapter is rank {rank} or less "
                               "already (fused modules counted as BFL fuses them)")
    elif stats.count == 0:
        raise AdapterError("--svd-rank applies to LoHa/LoKr adapters; this one is plain LoRA already")
    return {"svd_modules": stats.count, "svd_worst_rel_error": stats.worst, "svd_worst_module": stats.worst_name}
