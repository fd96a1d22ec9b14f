"""gguf-py as pip installed it, also inside Forge and Forge Neo.

Both WebUIs put an older copy of gguf-py of their own first on ``sys.path`` at startup, under the same
top-level name ``gguf`` (Forge: ``packages_3rdparty/gguf``; Forge Neo: ``modules_forge/packages/gguf``, put there
by ``modules_forge/initialization.py``), and their own GGUF loaders use that copy. Those copies predate
architectures LoRA Bridge trains (no qwen3, gemma3, ...). ``installed_gguf()`` returns the installed distribution's
package: when the name ``gguf`` would give another copy, the installed one is imported once on its own, with the
host's ``gguf`` modules set aside meanwhile and put back afterwards, so the host keeps its copy and LoRA Bridge
uses the one install.py checked. Use ``installed_gguf()`` instead of ``import gguf`` everywhere.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType

_LOCK = threading.Lock()
_LOADED: list[ModuleType] = []


def _installed_dir() -> Path | None:
    """The folder of the installed ``gguf`` distribution's package, None when it is not installed."""
    try:
        init = Path(str(importlib.metadata.distribution("gguf").locate_file("gguf/__init__.py")))
    except importlib.metadata.PackageNotFoundError:
        return None
    return init.parent.resolve() if init.is_file() else None


def _from(origin: str | None, folder: Path) -> bool:
    return origin is not None and Path(origin).resolve().parent == folder


def _gguf_modules() -> list[str]:
    return [name for name in sys.modules if name == "gguf" or name.startswith("gguf.")]


def _import_beside_host(folder: Path) -> ModuleType:
    """Import the package in ``folder`` as ``gguf`` while the host's ``gguf`` modules are set aside; put them back."""
    saved = {name: sys.modules.pop(name) for name in _gguf_modules()}
    try:
        spec = importlib.util.spec_from_file_location("gguf", folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["gguf"] = module
        spec.loader.exec_module(module)  # its own absolute ``import gguf`` / ``from gguf.x`` bind to this copy
        return module
    finally:
        for name in _gguf_modules():
            del sys.modules[name]
        sys.modules.update(saved)


def installed_gguf() -> ModuleType:
    """The installed gguf-py package (ImportError when it is not installed, as ``import gguf`` raises)."""
    if _LOADED:
        return _LOADED[0]
    with _LOCK:
        if not _LOADED:
            folder = _installed_dir()
            current = sys.modules.get("gguf")
            if current is not None:
                plain = folder is None or _from(getattr(current, "__file__", None), folder)
            else:
                spec = importlib.util.find_spec("gguf")
                plain = folder is None or spec is None or _from(spec.origin, folder)
            _LOADED.append(importlib.import_module("gguf") if plain else _import_beside_host(folder))
    return _LOADED[0]
