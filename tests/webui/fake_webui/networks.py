"""Mimics extensions-builtin/Lora/networks.py: ``load_network`` groups keys by their first dot and
keeps the groups whose prefix the model knows (``KNOWN``), like A1111's network_layer_mapping."""

from types import SimpleNamespace

import network  # noqa: F401  (the real networks.py imports it too)
from safetensors import safe_open

KNOWN = set()
CALLS = []


def load_network(name, network_on_disk):
    with safe_open(network_on_disk.filename, framework="np") as handle:
        keys = list(handle.keys())
    modules = {}
    for key in keys:
        prefix = key.partition(".")[0]
        if prefix in KNOWN:
            modules[prefix] = True
    CALLS.append(("load_network", name))
    return SimpleNamespace(name=name, modules=modules)


def list_available_networks():
    CALLS.append(("list_available_networks",))
