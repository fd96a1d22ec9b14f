"""The one way ``extension`` reaches the ``converters`` package.

A WebUI process may already hold an unrelated top-level module named ``converters`` (from another
extension). The WebUI entry script loads ours under ``lora_bridge_converters``; outside the WebUI
the plain name is ours. Inside ``extension`` write ``from ._converters import converters``
(or ``from .._converters import converters``), never ``import converters``.
"""

import importlib
import sys

ALIAS = "lora_bridge_converters"

converters = sys.modules.get(ALIAS) or importlib.import_module("converters")
