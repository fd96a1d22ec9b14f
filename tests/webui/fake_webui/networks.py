"""Mimics extensions-builtin/Lora/networks.py of A1111 1.10.1 (Forge: extensions-builtin/sd_forge_lora/networks.py).

``list_available_networks()`` re-scans ``shared.cmd_opts.lora_dir`` for .pt/.ckpt/.safetensors
into ``available_networks`` (what ``/sdapi/v1/loras`` and the Lora cards list; nothing else adds a
new file). ``load_network`` groups keys by their first dot and keeps the groups whose prefix the
model knows (``KNOWN``), like A1111's network_layer_mapping; like the real one it reads any file it
is given (the real one unpickles non-safetensors files: LoRA Bridge must never hand it one).
"""

import os
from types import SimpleNamespace

import network
from safetensors import safe_open

KNOWN = set()
CALLS = []
available_networks = {}
available_network_aliases = {}


def load_network(name, network_on_disk):
    CALLS.append(("load_network", name, network_on_disk.filename))
    if not str(network_on_disk.filename).endswith(".safetensors"):
        raise RuntimeError(f"Error verifying pickled file from {network_on_disk.filename}")  # check_pt's verdict
    with safe_open(network_on_disk.filename, framework="np") as handle:
        keys = list(handle.keys())
    modules = {}
    for key in keys:
        prefix = key.partition(".")[0]
        if prefix in KNOWN:
            modules[prefix] = True
    return SimpleNamespace(name=name, modules=modules)


def _lora_dir():
    from modules import paths, shared

    return shared.cmd_opts.lora_dir or os.path.join(paths.models_path, "Lora")


def list_available_networks():
    CALLS.append(("list_available_networks",))
    available_networks.clear()
    available_network_aliases.clear()
    os.makedirs(_lora_dir(), exist_ok=True)
    for root, _, files in os.walk(_lora_dir()):
        for file in sorted(files):
            if os.path.splitext(file)[1].lower() not in (".pt", ".ckpt", ".safetensors"):
                continue
            name = os.path.splitext(file)[0]
            entry = network.NetworkOnDisk(name, os.path.join(root, file))
            available_networks[name] = entry
            available_network_aliases[name] = entry
