"""The GGUF file llama.cpp runs a text adapter with: the base itself, or the GGUF copy of a legacy GGML base.

llama.cpp no longer loads GGML files, so a GGML base is upgraded once (3.8 GB at 7B Q4_0) and the
copy is kept where the user finds it: beside the base (``<stem>.gguf``) when that folder is
writable and ``ggml_copy_beside_base`` allows it, else in the run's output_dir. The copy records
what it was made from (file size, mtime and the GGML options) in ``lora_bridge.ggml_source``
(``ggml_upgrade.SOURCE_KEY``); a later run on the same base and options reuses it instead of writing
it again. A file of that name we did not write is never replaced.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .._converters import converters
from ..config import TrainConfig


def ggml_options(config: TrainConfig) -> dict:
    """The legacy-GGML hparams a config sets (GGML files do not store them)."""
    return {k: v for k, v in (
        ("n_kv_heads", config.ggml_n_kv_heads),
        ("rms_eps", config.ggml_rms_eps),
        ("context_length", config.ggml_context_length),
        ("rope_base", config.ggml_rope_base),
    ) if v is not None}


def is_ggml(path: Path) -> bool:
    """Whether ``path`` is a legacy GGML/GGMF/GGJT file (by its magic)."""
    if not path.is_file():
        return False
    from .ggml_legacy import GGML_MAGICS

    with open(path, "rb") as fh:
        return int.from_bytes(fh.read(4), "little") in GGML_MAGICS


def source_stamp(base: Path, options: dict) -> str:
    """What a GGUF copy is made from: name, size and mtime of the GGML file plus the options."""
    st = base.stat()
    opts = ",".join(f"{k}={options[k]}" for k in sorted(options))
    return f"{base.name}|{st.st_size}|{st.st_mtime_ns}|{opts}"


def _stamp_of(path: Path) -> str | None:
    """The ``lora_bridge.ggml_source`` of a GGUF file, or None (not ours, or unreadable)."""
    try:
        from .ggml_upgrade import SOURCE_KEY
        from .gguf_model import field_value

        # field_value, not field.contents(): Forge puts an older bundled gguf-py first on sys.path.
        field = converters.gguf_py.installed_gguf().GGUFReader(str(path)).fields.get(SOURCE_KEY)
        return None if field is None else str(field_value(field))
    except Exception:  # a truncated or foreign file: not a copy we can reuse
        return None


def _size(path: Path) -> str:
    size = path.stat().st_size
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def prepare_base_gguf(config: TrainConfig, output_dir: Path, log: Callable[[str], None]) -> Path | None:
    """The GGUF file llama.cpp uses with the adapter (None for an HF folder base); says once which copy it uses."""
    base = Path(config.base_model or "").expanduser()
    if base.is_dir():
        return None
    if not is_ggml(base):
        return base
    from .ggml_upgrade import upgrade_ggml

    options = ggml_options(config)
    stamp = source_stamp(base, options)
    beside = base.resolve().with_suffix(".gguf")
    in_output = output_dir.resolve() / beside.name
    candidates = [beside, in_output] if config.ggml_copy_beside_base and _writable(beside.parent) else [in_output]
    for target in candidates:
        if target.exists():
            found = _stamp_of(target)
            if found == stamp:
                log(f"legacy GGML base: using its GGUF copy {target} (made by an earlier run); llama.cpp runs the "
                    "adapter with that file")
                return target
            if found is None:
                continue  # a file we did not write: leave it alone
        upgrade_ggml(base, target, force=True, source_stamp=stamp, **options)
        log(f"legacy GGML base: wrote its GGUF copy {target} ({_size(target)}) for llama.cpp, which no longer "
            "loads GGML files; later runs on this base reuse it")
        return target
    target = output_dir.resolve() / f"{base.stem}.lora-bridge.gguf"  # both names taken by files we did not write
    upgrade_ggml(base, target, force=True, source_stamp=stamp, **options)
    log(f"legacy GGML base: wrote its GGUF copy {target} for llama.cpp")
    return target
