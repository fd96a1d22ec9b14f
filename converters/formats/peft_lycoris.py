"""PEFT LoHa and LoKr folders (``peft_type`` LOHA / LOKR) for LyCORIS LoHa/LoKr adapters.

LoHa: PEFT keeps LyCORIS' parameters as they are (``hada_w1_a`` ...; a 3x3 conv with Tucker factors
is PEFT's ``use_effective_conv2d``), so the factors are copied and the per-module rank and alpha go
into ``rank_pattern``/``alpha_pattern``.

LoKr: PEFT decides from ``r`` and the layer shape whether each Kronecker half is full or low rank,
so the folder stores both halves full (``lokr_w1``, ``lokr_w2``, the module's scale multiplied into
``lokr_w2``) with ``r = alpha = max(w2 dims)``: PEFT then builds full halves and scale 1 for every
layer. Both tools split each dimension with the same factorization; a file whose split differs is refused.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import AdapterError
from ..model import LycorisModule

PEFT_PREFIX = "base_model.model."


def factorization(dimension: int) -> tuple[int, int]:
    """PEFT's and LyCORIS' default split of a dimension (factor -1): divisors nearest its square root."""
    m, n = 1, dimension
    length = m + n
    while m < n:
        new_m = m + 1
        while dimension % new_m != 0:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > length or new_m > dimension:
            break
        m, n = new_m, new_n
    return (n, m) if m > n else (m, n)


def _patterns(ranks: dict[str, int], alphas: dict[str, float], key_of) -> tuple[int, float, dict, dict]:
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(a for n, a in alphas.items() if ranks[n] == r).most_common(1)[0][0]
    rank_pattern, alpha_pattern = {}, {}
    for name in sorted(ranks):
        if ranks[name] != r or alphas[name] != alpha:
            rank_pattern[key_of(name)] = ranks[name]
            alpha_pattern[key_of(name)] = alphas[name]
    return r, alpha, rank_pattern, alpha_pattern


def _base_config(peft_type: str, targets: list[str], base_name: str | None) -> dict:
    return {"peft_type": peft_type, "task_type": None, "base_model_name_or_path": base_name,
            "target_modules": targets, "rank_dropout": 0.0, "module_dropout": 0.0, "init_weights": True,
            "inference_mode": True, "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None}


def component_files(modules: dict[str, LycorisModule], base_name: str | None, source: Path, target_of,
                    key_of) -> tuple[dict, list[tuple[str, np.ndarray]]]:
    """(adapter_config dict, tensors) of one PEFT LoHa or LoKr folder; names are paths in the component."""
    algos = {m.algo for m in modules.values()}
    if len(algos) != 1 or not all(isinstance(m, LycorisModule) for m in modules.values()):
        raise AdapterError(f"{source}: PEFT holds one method per adapter; this component mixes "
                           f"{', '.join(sorted(algos | {'lora'}))} modules")
    if any(m.magnitude is not None for m in modules.values()):
        raise AdapterError(f"{source}: PEFT LoHa/LoKr have no DoRA; this LyCORIS file has dora_scale")
    algo = algos.pop()
    targets = sorted(target_of(n) for n in modules)
    if algo == "loha":
        return _loha(modules, base_name, source, targets, key_of)
    return _lokr(modules, base_name, source, targets, key_of)


def _loha(modules, base_name, source, targets, key_of):
    tucker = {n for n, m in modules.items() if "hada_t1" in m.factors}
    convs3 = {n for n, m in modules.items() if len(m.shape) == 4 and m.shape[2:] != (1, 1)}
    if tucker and tucker != convs3:
        raise AdapterError(f"{source}: PEFT LoHa uses Tucker factors for every 3x3 conv or for none; "
                           "this file mixes both")
    ranks = {n: m.rank for n, m in modules.items()}
    alphas = {n: float(m.alpha) for n, m in modules.items()}
    r, alpha, rank_pattern, alpha_pattern = _patterns(ranks, alphas, key_of)
    config = _base_config("LOHA", targets, base_name)
    config.update(r=r, alpha=alpha, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
                  use_effective_conv2d=bool(tucker))
    tensors = [(f"{PEFT_PREFIX}{name}.{part}", value)
               for name, m in sorted(modules.items()) for part, value in sorted(m.factors.items())]
    return config, tensors


def _lokr(modules, base_name, source, targets, key_of):
    ranks, alphas, tensors = {}, {}, []
    for name, m in sorted(modules.items()):
        w1 = m.lokr_half(1)
        out_k, in_k = m.shape[0] // w1.shape[0], m.shape[1] // w1.shape[1]
        if (factorization(m.shape[0]), factorization(m.shape[1])) != ((w1.shape[0], out_k), (w1.shape[1], in_k)):
            raise AdapterError(f"{source}: {name}: LoKr split {w1.shape[0]}x{out_k} / {w1.shape[1]}x{in_k} is not "
                               "the default factorization PEFT uses (LyCORIS factor was set); no exact PEFT form")
        w2 = m.lokr_half(2).reshape((out_k, in_k) + tuple(m.shape[2:])) * m.scale
        ranks[name] = max(out_k, in_k)  # r >= max/2: PEFT builds lokr_w2 full; alpha = r: scale 1
        alphas[name] = float(ranks[name])
        tensors += [(f"{PEFT_PREFIX}{name}.lokr_w1", w1.astype(np.float32)),
                    (f"{PEFT_PREFIX}{name}.lokr_w2", w2.astype(np.float32))]
    r, alpha, rank_pattern, alpha_pattern = _patterns(ranks, alphas, key_of)
    config = _base_config("LOKR", targets, base_name)
    config.update(r=r, alpha=alpha, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
                  use_effective_conv2d=False, decompose_both=False, decompose_factor=-1)
    return config, tensors


def read_modules(tensors: dict[str, np.ndarray], config: dict, source: Path, prefix: str,
                 te: bool) -> dict[str, LycorisModule]:
    """Canonical LoHa/LoKr modules of one PEFT LoHa/LoKr component folder (scale = alpha / r per module)."""
    from ..lycoris_parts import LOHA_PARTS, LOKR_PARTS, module_from_parts
    from ..sd_names import normalize_te_path
    from .peft import pattern_lookup

    algo = str(config.get("peft_type")).upper()
    known = LOHA_PARTS if algo == "LOHA" else LOKR_PARTS
    grouped: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        raw = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        module, _, part = raw.rpartition(".")
        if part not in known:
            raise AdapterError(f"{source}: tensor {key} is not a {algo} part this tool understands")
        grouped.setdefault(module, {})[part] = value
    out: dict[str, LycorisModule] = {}
    for module, parts in grouped.items():
        r = pattern_lookup(config.get("rank_pattern"), module) or config.get("r", 8)
        alpha = pattern_lookup(config.get("alpha_pattern"), module) or config.get("alpha", 8)
        name = prefix + (normalize_te_path(module) if te else module)
        found = module_from_parts(name, {**parts, "alpha": np.asarray(float(alpha), np.float32)}, source)
        # PEFT's scale is alpha / r for every layer, also when both LoKr halves are full.
        if found.rank != int(r):
            w2 = "lokr_w2" if "lokr_w2" in found.factors else None
            if w2 is None or found.rank != 0:
                raise AdapterError(f"{source}: {module}: factor rank {found.rank} != configured r {r}")
            found.factors[w2] = found.factors[w2] * (float(alpha) / float(r))
            found.alpha = 1.0
        out[name] = found
    return out
