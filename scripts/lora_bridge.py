"""WebUI entry script (A1111 1.10 / Forge): registers the LoRA Training tab, its settings and REST API.

Our packages are loaded under private names (``lora_bridge_converters``, ``lora_bridge_extension``),
so another extension's top-level ``extension`` or ``converters`` module cannot shadow them, and
ours cannot shadow theirs. Reload UI re-runs this file: the packages stay in ``sys.modules``, so a
running job and its state survive.
"""

import importlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# converters first: extension/_converters.py looks this alias up when extension is imported.
PACKAGES = (("lora_bridge_converters", "converters"), ("lora_bridge_extension", "extension"))


def _load_package(alias: str, folder: str):
    """Import ROOT/<folder> as the top-level package ``alias`` (once per process)."""
    if alias in sys.modules:
        return sys.modules[alias]
    location = ROOT / folder
    spec = importlib.util.spec_from_file_location(alias, location / "__init__.py",
                                                  submodule_search_locations=[str(location)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(alias, None)
        raise
    return module


for _alias, _folder in PACKAGES:
    _load_package(_alias, _folder)

importlib.import_module("lora_bridge_extension.webui.callbacks").register()
