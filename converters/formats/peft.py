"""PEFT LoRA folders: ``adapter_config.json`` + ``adapter_model.safetensors`` (or a ``.bin``).

Layouts
- LLM: one PEFT folder as ``PeftModel.save_pretrained`` writes it (keys
  ``base_model.model.<module>.lora_A.weight``); canonical names drop ``base_model.model.``.
- Stable Diffusion: one PEFT folder per component in ``unet/``, ``text_encoder/`` and
  ``text_encoder_2/`` subfolders, as saving each peft-wrapped component gives. A single folder
  whose modules are UNet modules is read as the ``unet`` component.
- Our ``lora_bridge.json`` beside them records the architecture and file metadata; PEFT ignores it.

The config's ``lora_alpha``, ``alpha_pattern``, ``rank_pattern`` and ``use_rslora`` are folded
into each module's canonical alpha on read; the writer expresses per-module ranks and alphas with
patterns that match exactly one module in both old (0.13) and new PEFT pattern matching.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np

from ..atomic import atomic_dir
from ..errors import AdapterError
from ..flux_names import is_flux_transformer_path
from ..llm_names import arch_from_config
from ..model import IMAGE_FAMILIES, LoraAdapter, LoraModule, LycorisModule, require_plain_lora
from ..safetensors_io import SafetensorsFile, write_safetensors
from ..sd_names import normalize_te_path
from . import peft_lycoris

NAME = "peft"
CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
WEIGHTS_BIN = "adapter_model.bin"
SIDECAR = "lora_bridge.json"
SD_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2")  # SD and Flux.1 pipeline components
# What a PEFT folder holds (``save_pretrained`` adds README.md): --force replaces a folder of only these.
ADAPTER_FILES = frozenset((CONFIG, WEIGHTS, WEIGHTS_BIN, SIDECAR, "README.md"))
PEFT_PREFIX = "base_model.model."
_TAGS = {"lora_A": "down", "lora_B": "up", "lora_embedding_A": "down", "lora_embedding_B": "up",
         "lora_magnitude_vector": "magnitude"}
# Parts of other methods that end like weights but must not pass for modules_to_save.
_FOREIGN_PARTS = (".lora_down.", ".lora_up.", ".lora_mid.", ".hada_", ".lokr_", ".oft_", ".dora_scale")
_UNET_HEADS = ("down_blocks.", "up_blocks.", "mid_block.", "conv_in", "conv_out", "time_embedding.",
               "add_embedding.")


# ------------------------------------------------------------------------------------------ keys
def split_lora_key(key: str) -> tuple[str, str, str, bool] | None:
    """Parse one PEFT/diffusers LoRA tensor name into (module path, part, param, is_embedding).

    ``part`` is ``down``, ``up`` or ``magnitude``; ``param`` is ``weight`` or ``bias``. Accepts
    ``X.lora_A[.adapter].weight``, ``X.lora_embedding_A``, ``X.lora.down.weight``,
    ``X.lora_linear_layer.up.weight`` and the old ``...processor.to_q_lora.down.weight``.
    Returns None for tensors that are not LoRA parts (full weights, alphas).
    """
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part in _TAGS:
            rest = parts[i + 1:]
            param = rest[-1] if rest and rest[-1] in ("weight", "bias") else "weight"
            return ".".join(parts[:i]), _TAGS[part], param, part.startswith("lora_embedding")
    for i, part in enumerate(parts[:-1]):
        if part in ("lora", "lora_linear_layer") and parts[i + 1] in ("down", "up"):
            return ".".join(parts[:i]), parts[i + 1], parts[-1] if parts[-1] == "bias" else "weight", False
        if part.endswith("_lora") and parts[i + 1] in ("down", "up") and i > 0 and parts[i - 1] == "processor":
            target = part[: -len("_lora")]
            target = "to_out.0" if target == "to_out" else target
            return ".".join(parts[: i - 1] + [target]), parts[i + 1], "weight", False
    return None


def pattern_lookup(patterns: dict, module: str):
    """The value of the first PEFT pattern key matching ``module`` (PEFT's own rule), else None."""
    if not isinstance(patterns, dict):
        return None
    for key, value in patterns.items():
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        except re.error:
            if module == key or module.endswith("." + key):
                return value
    return None


def exact_pattern(module: str) -> str:
    """A pattern key that matches exactly ``module`` under both PEFT 0.13 and current matching."""
    head, sep, rest = module.partition(".")
    if not sep:
        return re.escape(module)
    return f"(?<=^{re.escape(head)}\\.){re.escape(rest)}"


# ------------------------------------------------------------------------------------------ sniff
def _component_dirs(folder: Path) -> list[tuple[str, Path]]:
    return [(c, folder / c) for c in SD_COMPONENTS if (folder / c / CONFIG).is_file()]


def sniff(path: Path) -> bool:
    """A PEFT folder, an SD folder of PEFT component folders, or a file inside a PEFT folder."""
    path = Path(path)
    if path.is_dir():
        return (path / CONFIG).is_file() or bool(_component_dirs(path))
    return path.name in (WEIGHTS, WEIGHTS_BIN) and (path.parent / CONFIG).is_file()


def non_adapter_entry(folder: Path) -> Path | None:
    """The first entry of ``folder`` that is not a PEFT adapter's file (SD: in a component subfolder), or None."""
    for entry in sorted(Path(folder).iterdir()):
        if entry.is_symlink():
            return entry
        if entry.is_dir() and entry.name in SD_COMPONENTS:
            inner = next((e for e in sorted(entry.iterdir())
                          if e.is_symlink() or not e.is_file() or e.name not in ADAPTER_FILES), None)
            if inner is not None:
                return inner
        elif not (entry.is_file() and entry.name in ADAPTER_FILES):
            return entry
    return None


# ------------------------------------------------------------------------------------------ read
def _read_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterError(f"{folder}: no {CONFIG}; not a PEFT adapter folder") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdapterError(f"{folder / CONFIG}: not valid JSON ({exc.__class__.__name__}); fix or re-save it") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{folder / CONFIG}: expected a JSON object")
    peft_type = str(config.get("peft_type") or "LORA").upper()
    if peft_type not in ("LORA", "LOHA", "LOKR"):
        known = {"IA3", "ADALORA", "BOFT", "OFT", "VERA", "FOURIERFT", "PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING"}
        shown = peft_type if peft_type in known else "this"  # a config's own text is not echoed
        raise AdapterError(f"{folder}: PEFT method {shown} is not supported; LoRA, LoHa and LoKr adapters convert")
    return config


def load_tensors(folder: Path) -> dict[str, np.ndarray]:
    """The adapter tensors of a PEFT folder; ``.bin`` only through ``torch.load(weights_only=True)``."""
    if (folder / WEIGHTS).is_file():
        return dict(SafetensorsFile(folder / WEIGHTS).items())
    if (folder / WEIGHTS_BIN).is_file():
        return _load_bin(folder / WEIGHTS_BIN)
    raise AdapterError(f"{folder}: no {WEIGHTS} or {WEIGHTS_BIN} beside {CONFIG}")


def _load_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise AdapterError(f"{path}: reading .bin adapters needs torch; convert it to safetensors first") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (pickle errors come in many types)
        reason = exc.__class__.__name__
        raise AdapterError(f"{path}: cannot read safely ({reason}); is it a PyTorch state dict?") from None
    if not isinstance(state, dict):
        raise AdapterError(f"{path}: not a state dict of tensors")
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def modules_from_tensors(
    tensors: dict[str, np.ndarray], config: dict, source: Path, prefix: str = "", te: bool = False
) -> tuple[dict[str, LoraModule], dict[str, np.ndarray]]:
    """Canonical modules (and full weights) from PEFT-style tensors and a PEFT config dict.

    ``prefix`` is prepended to canonical names (``unet.``); ``te`` inserts ``text_model.`` into
    flattened CLIP paths.
    """
    parts: dict[str, dict[str, np.ndarray]] = {}
    embedding: set[str] = set()
    full: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        raw = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        parsed = split_lora_key(raw)
        if parsed is None:
            if raw.endswith(".alpha") or ".base_layer." in raw:
                continue  # alphas live in the config; base_layer copies are base weights, not adapter
            if not raw.endswith((".weight", ".bias")) or any(t in raw for t in _FOREIGN_PARTS):
                raise AdapterError(f"{source}: tensor {key} is not a LoRA part or a full weight this tool "
                                   "understands; nothing was converted")
            full[raw] = value  # modules_to_save: a full replacement weight
            continue
        module, part, param, is_emb = parsed
        slot = part if param == "weight" else "bias" if part == "up" else f"{part}_bias"
        parts.setdefault(module, {})[slot] = value
        if is_emb:
            embedding.add(module)
    # No config at all (bare diffusers files): alpha = rank. A config without lora_alpha: PEFT's default 8.
    try:
        alpha_default: float | None = float(config["lora_alpha"]) if config.get("lora_alpha") is not None else (
            8.0 if config else None)
    except (TypeError, ValueError):
        kind = type(config.get("lora_alpha")).__name__
        raise AdapterError(f"{source}: lora_alpha is a {kind}, not a number; fix the config") from None
    rslora = bool(config.get("use_rslora"))
    modules: dict[str, LoraModule] = {}
    for module, found in parts.items():
        if "down" not in found or "up" not in found:
            raise AdapterError(f"{source}: module {module} has only one of lora_A/lora_B (truncated or corrupt file)")
        down, up = np.asarray(found["down"]), np.asarray(found["up"])
        rank = int(down.shape[0])
        alpha = pattern_lookup(config.get("alpha_pattern"), module)
        if alpha is None:
            alpha = float(rank) if alpha_default is None else alpha_default
        try:
            alpha = float(alpha)
        except (TypeError, ValueError):
            raise AdapterError(f"{source}: alpha_pattern value for {module} is not a number; fix the config") from None
        if rslora:
            alpha *= math.sqrt(rank)
        if up.ndim == 2 and down.ndim == 4:
            up = up.reshape(up.shape + (1, 1))
        magnitude = found.get("magnitude")
        name = normalize_te_path(module) if te else module
        modules[prefix + name] = LoraModule(
            down=down, up=up, alpha=alpha, magnitude=None if magnitude is None else np.asarray(magnitude).reshape(-1),
            bias=found.get("bias"), is_embedding=module in embedding,
        )
        if down.shape[0] != up.shape[1]:
            raise AdapterError(f"{source}: module {module}: lora_A rank {down.shape[0]} != lora_B rank {up.shape[1]}")
    return modules, {prefix + (normalize_te_path(k) if te else k): v for k, v in full.items()}


def _read_sidecar(folder: Path) -> dict:
    try:
        data = json.loads((folder / SIDECAR).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


_BASE_CONFIG_LIMIT = 1 << 20  # an HF config.json is a few kB


def _base_facts(folder: Path) -> str | None:
    """The arch and head counts of the HF base an adapter names, as a small JSON, or None.

    The path comes from the adapter (a downloaded file), so only a ``config.json`` of sane size is
    read, and only these facts leave it: a known model_type and integer head counts, never its text.
    """
    path = folder / "config.json"
    try:
        if not path.is_file() or path.stat().st_size > _BASE_CONFIG_LIMIT:
            return None
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(config, dict):
        return None
    inner = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    arch = arch_from_config(inner) or arch_from_config(config)
    facts: dict[str, object] = {"model_type": arch} if arch else {}
    for key in ("num_attention_heads", "num_key_value_heads", "n_head"):
        value = inner.get(key)
        if type(value) is int and 0 < value < 1 << 16:
            facts[key] = value
    return json.dumps(facts) if facts else None


def _llm_metadata(config: dict) -> dict[str, str]:
    meta: dict[str, str] = {}
    base = config.get("base_model_name_or_path")
    if base:
        meta["base_model_name_or_path"] = str(base)
        facts = _base_facts(Path(str(base)))
        if facts:
            meta["base_model_config"] = facts
    if config.get("task_type"):
        meta["peft_task_type"] = str(config["task_type"])
    return meta


_DEEP_TRANSFORMER = re.compile(r"\.transformer_blocks\.[1-9]")


def sd_arch_guess(modules: dict[str, LoraModule]) -> str | None:
    """SDXL from its unique modules; SD2 vs SD1 from real widths (cross-attention 1024 vs 768)."""
    if any(n.startswith("text_encoder_2.") or n.startswith("unet.add_embedding.") for n in modules):
        return "sdxl"
    if any(_DEEP_TRANSFORMER.search(n) for n in modules if n.startswith("unet.")):
        return "sdxl"  # SD1/SD2 UNets have one transformer block per attention, SDXL up to ten
    for name, module in modules.items():
        if not isinstance(module, LoraModule):
            continue
        if name.endswith(("attn2.to_k", "attn2.to_v")) or (name.startswith("text_encoder.") and
                                                           name.endswith("self_attn.q_proj")):
            width = int(module.down.shape[1])
            if width == 2048:
                return "sdxl"
            if width == 1024:
                return "sd2"
            if width == 768:
                return "sd1"
    return None


def read(path: Path, arch: str | None = None) -> LoraAdapter:
    """Read a PEFT folder (LLM or SD layout) into the canonical adapter."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    sidecar = _read_sidecar(folder)
    metadata = {str(k): str(v) for k, v in (sidecar.get("metadata") or {}).items()}
    components = _component_dirs(folder)
    modules: dict[str, LoraModule] = {}
    full: dict[str, np.ndarray] = {}
    if components:
        for component, sub in components:
            config = _read_config(sub)
            if str(config.get("peft_type") or "LORA").upper() != "LORA":
                found, weights = peft_lycoris.read_modules(load_tensors(sub), config, sub, component + ".",
                                                           te=is_te(component)), {}
            else:
                found, weights = modules_from_tensors(load_tensors(sub), config, sub, component + ".",
                                                      te=is_te(component))
            modules.update(found)
            full.update(weights)
        family = "flux" if "transformer" in dict(components) else "sd"
    else:
        config = _read_config(folder)
        if str(config.get("peft_type") or "LORA").upper() != "LORA":
            raise AdapterError(f"{folder}: PEFT LoHa/LoKr folders are read as SD component folders "
                               "(unet/, text_encoder/); put this one in such a folder")
        found, weights = modules_from_tensors(load_tensors(folder), config, folder)
        if found and all(n.startswith(_UNET_HEADS) for n in found):
            found = {"unet." + n: m for n, m in found.items()}
            weights = {"unet." + n: w for n, w in weights.items()}
            family = "sd"
        elif found and all(is_flux_transformer_path(n) for n in found):
            found = {"transformer." + n: m for n, m in found.items()}
            weights = {"transformer." + n: w for n, w in weights.items()}
            family = "flux"
        else:
            family = "llm"
            metadata = {**_llm_metadata(config), **metadata}
        modules, full = found, weights
    chosen = arch or sidecar.get("arch") or ("flux" if family == "flux" else None) or (
        sd_arch_guess(modules) if family == "sd" else None)
    if chosen is None and family == "sd":
        chosen = "sd1"
    return LoraAdapter(modules=modules, arch=chosen, metadata=metadata, full_weights=full)


# ------------------------------------------------------------------------------------------ write
def is_te(component: str) -> bool:
    """True for a text-encoder component (CLIP names get ``text_model.`` handling; T5 paths pass through)."""
    return component.startswith("text_encoder")


def component_path(component: str, path: str) -> str:
    """The module path written inside a component's file: canonical, so CLIP keeps ``text_model.``.

    One naming whatever transformers is installed: transformers 4 names CLIP modules
    ``text_model.encoder...``, and transformers 5 (flattened ``CLIPTextModel``) maps the
    ``text_model.`` prefix away when it loads weights, as current diffusers does for LoRA files.
    """
    return normalize_te_path(path) if component.startswith("text_encoder") else path


def target_name(module: str, te: bool) -> str:
    """A ``target_modules`` entry: CLIP paths without ``text_model.``, which PEFT matches as a suffix of
    ``text_model.encoder...`` (transformers 4) and exactly in a flattened ``encoder...`` (transformers 5)."""
    return module[len("text_model."):] if te and module.startswith("text_model.") else module


_EXPERT = re.compile(r"^(?P<head>.+\.experts)\.(?P<index>\d+)\.(?P<leaf>[^.]+)$")


def target_modules(names: list[str]) -> list[str] | str:
    """``target_modules`` for these module paths: the list itself, or, when some are per-expert MoE
    projections (``...mlp.experts.E.gate_proj``), one regex that matches exactly the same modules.

    transformers 5 fuses a layer's experts into one parameter (``...mlp.experts.gate_up_proj``) and
    PEFT >= 0.22 maps a listed target path by replacing only its leaf, so a per-expert path would name
    a parameter that does not exist there and the expert LoRA would load nowhere. The regex also accepts
    each layer's index-free path, the one PEFT probes for a fused parameter, and only where every expert
    of that layer and projection, 0 to E-1, is in the adapter (the fused parameter holds them all).
    """
    experts: dict[tuple[str, str], set[int]] = {}
    plain = []
    for name in names:
        match = _EXPERT.match(name)
        if match:
            experts.setdefault((match["head"], match["leaf"]), set()).add(int(match["index"]))
        else:
            plain.append(re.escape(name))
    if not experts:
        return names
    for (head, leaf), indices in sorted(experts.items()):
        if indices == set(range(len(indices))):
            plain.append(f"{re.escape(head)}(\\.\\d+)?\\.{re.escape(leaf)}")
        else:
            plain += [re.escape(f"{head}.{i}.{leaf}") for i in sorted(indices)]
    return "(" + "|".join(plain) + ")"


def pattern_key(module: str, te: bool) -> str:
    """A rank/alpha pattern key for exactly ``module`` under PEFT 0.13 and current matching, either CLIP naming."""
    if te and module.startswith("text_model."):
        # PEFT 0.13 matches ``.*\.{key}$``, current PEFT ``(.*\.)?({key})$``: both find the one layer.
        return re.escape(target_name(module, te))
    return exact_pattern(module)


def _component_files(
    modules: dict[str, LoraModule], full: dict[str, np.ndarray], base_name: str | None, source: Path,
    task_type: str | None = None, te: bool = False,
) -> tuple[dict, list[tuple[str, np.ndarray]]]:
    """(adapter_config dict, tensors) of one PEFT folder; module names are paths in that model.

    ``te``: a CLIP text encoder (target names and patterns that match both transformers namings).
    """
    doras = {name for name, m in modules.items() if m.magnitude is not None}
    if doras and len(doras) != len(modules):
        raise AdapterError(f"{source}: PEFT cannot mix DoRA and plain LoRA modules in one adapter")
    ranks = Counter(m.rank for m in modules.values())
    r = ranks.most_common(1)[0][0]
    alphas = Counter(float(m.alpha) for m in modules.values() if m.rank == r)
    lora_alpha = alphas.most_common(1)[0][0]
    rank_pattern, alpha_pattern = {}, {}
    for name, m in sorted(modules.items()):
        if m.rank != r or float(m.alpha) != lora_alpha:
            key = pattern_key(name, te)
            rank_pattern[key] = m.rank
            alpha_pattern[key] = _json_number(m.alpha)
    any_bias = any(m.bias is not None for m in modules.values())
    tensors: list[tuple[str, np.ndarray]] = []
    for name, m in sorted(modules.items()):
        key = PEFT_PREFIX + name
        up = m.up
        if m.is_embedding:
            tensors += [(key + ".lora_embedding_A", m.down), (key + ".lora_embedding_B", up)]
        else:
            if m.down.ndim == 4 and up.ndim == 2:
                up = up.reshape(up.shape + (1, 1))
            tensors += [(key + ".lora_A.weight", m.down), (key + ".lora_B.weight", up)]
        if any_bias:
            bias = m.bias if m.bias is not None else np.zeros(m.up.shape[0], dtype=np.float32)
            tensors.append((key + ".lora_B.bias", bias))
        if m.magnitude is not None:  # PEFT's conv DoRA keeps it as (1, out, 1, 1)
            magnitude = m.magnitude.reshape(1, -1, 1, 1) if m.down.ndim == 4 else m.magnitude
            tensors.append((key + ".lora_magnitude_vector", magnitude))
    tensors += [(PEFT_PREFIX + k, v) for k, v in sorted(full.items())]
    config = {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_name,
        "r": r,
        "lora_alpha": _json_number(lora_alpha),
        "target_modules": target_modules(sorted(target_name(n, te) for n in modules)),
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "use_rslora": False,
        "use_dora": bool(doras),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": sorted({k.rsplit(".", 1)[0] for k in full}) or None,
        "layers_to_transform": None,
        "layers_pattern": None,
    }
    if any_bias:
        config["lora_bias"] = True  # PEFT >= 0.14 only; absent otherwise so 0.13 can still load the file
    return config, tensors


def _json_number(value: float) -> float | int:
    value = float(value)
    return int(value) if value.is_integer() else value


def _write_folder(folder: Path, config: dict, tensors: list[tuple[str, np.ndarray]], dtype: str | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    write_safetensors(folder / WEIGHTS, tensors, metadata={"format": "pt"}, float_dtype=dtype)


def write(adapter: LoraAdapter, path: Path, options) -> Path:
    """Write ``adapter`` as a PEFT folder (SD: one subfolder per component)."""
    path = Path(path)
    if path.exists() and path.is_file():
        raise AdapterError(f"{path}: PEFT output is a folder but a file exists there; choose another name")
    if not adapter.modules:
        raise AdapterError(f"{path}: nothing to write (no LoRA modules)")
    base_name = adapter.metadata.get("base_model_name_or_path")
    sidecar = {"arch": adapter.arch, "metadata": {k: str(v) for k, v in {**adapter.metadata,
                                                                            **options.metadata}.items()}}
    if adapter.family in IMAGE_FAMILIES:
        groups: dict[str, tuple[dict, dict]] = {}
        for name, m in adapter.modules.items():
            component, _, rest = name.partition(".")
            if component not in SD_COMPONENTS:
                raise AdapterError(f"{name}: not a pipeline component module ({'./'.join(SD_COMPONENTS)}.)")
            groups.setdefault(component, ({}, {}))[0][component_path(component, rest)] = m
        for name, w in adapter.full_weights.items():
            component, _, rest = name.partition(".")
            groups.setdefault(component, ({}, {}))[1][component_path(component, rest)] = w
        plans = {}
        for component, (mods, full) in groups.items():
            if not mods:
                raise AdapterError(f"{path}: component {component} has full weights but no LoRA modules")
            te = is_te(component)
            if any(isinstance(m, LycorisModule) for m in mods.values()):
                if full:
                    raise AdapterError(f"{path}: PEFT LoHa/LoKr folders here carry no modules_to_save")
                plans[component] = peft_lycoris.component_files(
                    mods, base_name, path, lambda n, te=te: target_name(n, te), lambda n, te=te: pattern_key(n, te))
            else:
                plans[component] = _component_files(mods, full, base_name, path, te=te)
        with atomic_dir(path, force=options.force) as tmp:
            for component, (config, tensors) in plans.items():
                _write_folder(tmp / component, config, tensors, options.dtype)
            (tmp / SIDECAR).write_text(json.dumps(sidecar, indent=2), encoding="utf-8")
        return path
    require_plain_lora(adapter, path, "PEFT folders of LLM adapters")
    config, tensors = _component_files(adapter.modules, adapter.full_weights, base_name, path,
                                       adapter.metadata.get("peft_task_type"))
    with atomic_dir(path, force=options.force) as tmp:
        _write_folder(tmp, config, tensors, options.dtype)
        (tmp / SIDECAR).write_text(json.dumps(sidecar, indent=2), encoding="utf-8")
    return path
