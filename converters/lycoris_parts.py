"""Per-module tensor parts of kohya-named and LyCORIS files, and how they become canonical modules.

A module is a group of tensors ``<module>.<part>``. Understood parts:
- LoRA/LoCon: ``lora_down.weight``, ``lora_up.weight``, ``alpha``; Tucker LoCon adds
  ``lora_mid.weight`` (r, r, kh, kw) beside a 1x1 ``lora_down``. Its forward is down -> mid -> up,
  so it folds exactly into a plain conv LoRA: ``down' = mid . down`` (r, in, kh, kw).
- DoRA: LyCORIS ``dora_scale`` (per output row when its shape is (out, 1, ...)) and diffusers'
  ``convert_state_dict_to_kohya`` spelling ``lora_magnitude_vector`` (out,).
- LoHa ``hada_*`` and LoKr ``lokr_*`` (LyCORIS names), kept as ``LycorisModule``.
Anything else is not understood: the caller stops the read naming the key.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import AdapterError
from .model import LoraModule, LycorisModule

LORA_PARTS = ("lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha", "dora_scale",
              "lora_magnitude_vector")
LOHA_PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR_PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
_ALL = tuple(sorted(LORA_PARTS + LOHA_PARTS + LOKR_PARTS, key=len, reverse=True))
# Leaves of SD UNet modules that are 3x3 convolutions (LoHa/LoKr store their factors flattened).
_CONV3_LEAVES = ("conv1", "conv2", "conv", "conv_in", "conv_out", "op", "in_layers_2", "out_layers_3")
# ...and 1x1 convolutions (SD1's attention projections are convs, SD2/SDXL's are linear).
_CONV1_LEAVES = ("conv_shortcut", "skip_connection")
_SD1_CONV1_LEAVES = ("proj_in", "proj_out")


def split_part(key: str) -> tuple[str, str] | None:
    """(module name, part) of a tensor name, or None when the part is not one this tool understands.

    The module name has every ``.`` turned into ``_``: diffusers' kohya converter leaves the last dot
    of the module path in its ``lora_magnitude_vector`` keys (``..._attn1.to_q.lora_magnitude_vector``).
    """
    for part in _ALL:
        if key.endswith("." + part):
            return key[: -len(part) - 1].replace(".", "_"), part
    return None


def _f32(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


def _alpha(parts: dict[str, np.ndarray], rank: int) -> float:
    # kohya/LyCORIS convention: a missing alpha means alpha = rank. A stored 0 is kept as read:
    # kohya takes it as alpha = rank, A1111 as scale 0, so convert refuses it (sanity.py).
    if "alpha" not in parts:
        return float(rank)
    return float(np.asarray(parts["alpha"], dtype=np.float32))


def module_from_parts(name: str, parts: dict[str, np.ndarray], source: Path,
                      arch: str | None = None) -> LoraModule | LycorisModule:
    """One canonical module from its parts (LoRA/LoCon/Tucker/DoRA, LoHa or LoKr) of an ``arch`` model."""
    if any(p in parts for p in LOHA_PARTS):
        return _loha(name, parts, source, arch)
    if any(p in parts for p in LOKR_PARTS):
        return _lokr(name, parts, source, arch)
    if "lora_down.weight" not in parts or "lora_up.weight" not in parts:
        raise AdapterError(f"{source}: {name} has only some of lora_down/lora_up (truncated or corrupt file)")
    down, up = parts["lora_down.weight"], parts["lora_up.weight"]
    rank = int(down.shape[0])
    if up.shape[1] != rank:
        raise AdapterError(f"{source}: {name}: lora_down rank {rank} != lora_up rank {up.shape[1]}")
    if "lora_mid.weight" in parts:
        down = _fold_tucker(name, _f32(down), _f32(parts["lora_mid.weight"]), source)
    if up.ndim == 4 and down.ndim == 2:  # a linear module stored with conv-shaped up (some tools)
        up = up.reshape(up.shape[:2])
    magnitude = _magnitude(name, parts, int(up.shape[0]), down, source)
    return LoraModule(down=down, up=up, alpha=_alpha(parts, rank), magnitude=magnitude)


def _fold_tucker(name: str, down: np.ndarray, mid: np.ndarray, source: Path) -> np.ndarray:
    """down' = mid o down: (r, r, kh, kw) after (r, in, 1, 1) is one (r, in, kh, kw) convolution."""
    rank = down.shape[0]
    if mid.ndim != 4 or mid.shape[:2] != (rank, rank) or down.ndim != 4 or down.shape[2:] != (1, 1):
        raise AdapterError(f"{source}: {name}: lora_mid {mid.shape} does not fit lora_down {down.shape} "
                           "(expected Tucker LoCon: (r, r, kh, kw) after a 1x1 down)")
    return np.einsum("abhw,bi->aihw", mid, down.reshape(rank, -1))


def _magnitude(name: str, parts: dict[str, np.ndarray], out: int, down: np.ndarray,
               source: Path) -> np.ndarray | None:
    if "lora_magnitude_vector" in parts:
        magnitude = _f32(parts["lora_magnitude_vector"]).reshape(-1)
        if magnitude.shape[0] != out:
            raise AdapterError(f"{source}: {name}: lora_magnitude_vector has {magnitude.shape[0]} values "
                               f"for {out} output rows")
        return magnitude
    if "dora_scale" not in parts:
        return None
    scale = _f32(parts["dora_scale"])
    if scale.shape[0] == out and all(d == 1 for d in scale.shape[1:]):
        return scale.reshape(-1)  # LyCORIS wd_on_out=True: one magnitude per output row, as PEFT's DoRA
    raise AdapterError(f"{source}: {name}: dora_scale of shape {tuple(scale.shape)} is per input column, which "
                       "neither PEFT nor diffusers can express; re-export with LyCORIS wd_on_out=True")


def _conv_shape(name: str, out: int, flat_in: int, arch: str | None) -> tuple[int, ...]:
    """Weight shape of a LoHa/LoKr half stored flattened, from the SD UNet's conv leaves."""
    if name.endswith(_CONV3_LEAVES) and flat_in % 9 == 0:
        return (out, flat_in // 9, 3, 3)
    if name.endswith(_CONV1_LEAVES) or (arch == "sd1" and name.endswith(_SD1_CONV1_LEAVES)):
        return (out, flat_in, 1, 1)
    return (out, flat_in)


def _loha(name: str, parts: dict[str, np.ndarray], source: Path, arch: str | None) -> LycorisModule:
    needed = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
    missing = [p for p in needed if p not in parts]
    if missing:
        raise AdapterError(f"{source}: {name} (LoHa) lacks {missing[0]} (truncated or corrupt file)")
    factors = {k: _f32(v) for k, v in parts.items() if k in LOHA_PARTS}
    rank = int(factors["hada_w1_b"].shape[0])
    if "hada_t1" in factors:  # Tucker: w_a (r, out), w_b (r, in), t (r, r, kh, kw)
        shape = (factors["hada_w1_a"].shape[1], factors["hada_w1_b"].shape[1]) + tuple(factors["hada_t1"].shape[2:])
    else:
        shape = _conv_shape(name, factors["hada_w1_a"].shape[0], factors["hada_w1_b"].shape[1], arch)
    magnitude = _magnitude(name, parts, shape[0], factors["hada_w1_b"], source)
    return LycorisModule("loha", factors, _alpha(parts, rank), tuple(int(d) for d in shape), magnitude)


def _lokr(name: str, parts: dict[str, np.ndarray], source: Path, arch: str | None) -> LycorisModule:
    factors = {k: _f32(v) for k, v in parts.items() if k in LOKR_PARTS}
    if "lokr_w1" not in factors and not {"lokr_w1_a", "lokr_w1_b"} <= set(factors):
        raise AdapterError(f"{source}: {name} (LoKr) lacks lokr_w1 (truncated or corrupt file)")
    if "lokr_w2" not in factors and not {"lokr_w2_a", "lokr_w2_b"} <= set(factors):
        raise AdapterError(f"{source}: {name} (LoKr) lacks lokr_w2 (truncated or corrupt file)")
    # LyCORIS and ComfyUI: the rank is that of the low-rank half; with both halves full, scale is 1.
    if "lokr_w2_b" in factors:
        rank: int | None = int(factors["lokr_w2_b"].shape[0])
    elif "lokr_w1_b" in factors:
        rank = int(factors["lokr_w1_b"].shape[0])
    else:
        rank = None
    alpha = _alpha(parts, rank) if rank is not None else 1.0
    module = LycorisModule("lokr", factors, alpha, (), None, lokr_rank=rank)
    w1 = module.lokr_half(1)
    if "lokr_w2" in factors or "lokr_t2" in factors:
        w2_shape = module.lokr_half(2).shape
    else:
        out_k, flat = factors["lokr_w2_a"].shape[0], factors["lokr_w2_b"].shape[1]
        w2_shape = _conv_shape(name, out_k, flat, arch)
    module.shape = (w1.shape[0] * w2_shape[0], w1.shape[1] * w2_shape[1]) + tuple(w2_shape[2:])
    module.shape = tuple(int(d) for d in module.shape)
    module.magnitude = _magnitude(name, parts, module.shape[0], w1, source)
    return module
