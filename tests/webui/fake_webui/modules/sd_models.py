"""Mimics modules/sd_models.py of A1111 1.10.1 (commit 82a973c0) and of Forge (main): the checkpoint
registry and the VRAM functions LoRA Bridge calls.

Same behaviour as the real files where it matters:
- ``CheckpointInfo(filename)``: ``name`` (path under models/Stable-diffusion, else the basename),
  ``title`` = ``name`` until the file is hashed, then ``"name [shorthash]"``; ``ids`` aliases;
  ``register()`` keys ``checkpoints_list`` by title and ``checkpoint_aliases`` by every id;
  ``calculate_shorthash()`` renames the ``checkpoints_list`` key in place (``replace_key``), as both
  hosts do at the first generation with a model.
- ``checkpoint_tiles()``: A1111 returns titles, Forge returns names (``FLAVOR`` picks which).
- ``get_closet_checkpoint_match(s)``: alias lookup, then substring of a title, then without checksum.
"""

import hashlib
import os
import re
from types import SimpleNamespace

CALLS = []
FLAVOR = "a1111"  # or "forge": the only difference we mirror is checkpoint_tiles()
model_path = os.path.abspath(os.path.join("models", "Stable-diffusion"))  # tests point it elsewhere

checkpoints_list = {}
checkpoint_aliases = {}
checkpoint_alisases = checkpoint_aliases  # the real module keeps the old misspelt name too


def replace_key(d, key, new_key, value):
    keys = list(d.keys())
    d[new_key] = value
    if key not in keys:
        return d
    keys[keys.index(key)] = new_key
    new_d = {k: d[k] for k in keys}
    d.clear()
    d.update(new_d)
    return d


class CheckpointInfo:
    def __init__(self, filename):
        self.filename = filename
        abspath = os.path.abspath(filename)
        if abspath.startswith(model_path):
            name = abspath.replace(model_path, "")
        else:
            name = os.path.basename(filename)
        if name.startswith(("\\", "/")):
            name = name[1:]
        self.name = name
        self.name_for_extra = os.path.splitext(os.path.basename(filename))[0]
        self.model_name = os.path.splitext(name.replace("/", "_").replace("\\", "_"))[0]
        self.hash = "0badc0de"
        self.sha256 = None  # not hashed until the first generation (or a cache hit)
        self.shorthash = None
        self.title = name
        self.short_title = self.name_for_extra
        self.ids = [self.hash, self.model_name, self.title, name, self.name_for_extra, f"{name} [{self.hash}]"]

    def register(self):
        checkpoints_list[self.title] = self
        for id_ in self.ids:
            checkpoint_aliases[id_] = self

    def calculate_shorthash(self):
        with open(self.filename, "rb") as handle:
            self.sha256 = hashlib.sha256(handle.read()).hexdigest()
        shorthash = self.sha256[0:10]
        if self.shorthash == shorthash:
            return self.shorthash
        self.shorthash = shorthash
        if self.shorthash not in self.ids:
            self.ids += [self.shorthash, self.sha256, f"{self.name} [{self.shorthash}]",
                         f"{self.name_for_extra} [{self.shorthash}]"]
        old_title = self.title
        self.title = f"{self.name} [{self.shorthash}]"
        self.short_title = f"{self.name_for_extra} [{self.shorthash}]"
        replace_key(checkpoints_list, old_title, self.title, self)
        self.register()
        return self.shorthash


def checkpoint_tiles(use_short=False):
    if FLAVOR == "forge":
        return [x.short_title if use_short else x.name for x in checkpoints_list.values()]
    return [x.short_title if use_short else x.title for x in checkpoints_list.values()]


def list_models(filenames=()):
    """The real one scans the model folders; tests pass the files."""
    checkpoints_list.clear()
    checkpoint_aliases.clear()
    for filename in filenames:
        CheckpointInfo(filename).register()


re_strip_checksum = re.compile(r"\s*\[[^]]+]\s*$")


def get_closet_checkpoint_match(search_string):
    if not search_string:
        return None
    checkpoint_info = checkpoint_aliases.get(search_string)
    if checkpoint_info is not None:
        return checkpoint_info
    found = sorted([info for info in checkpoints_list.values() if search_string in info.title],
                   key=lambda x: len(x.title))
    if found:
        return found[0]
    search_string_without_checksum = re.sub(re_strip_checksum, "", search_string)
    found = sorted([info for info in checkpoints_list.values() if search_string_without_checksum in info.title],
                   key=lambda x: len(x.title))
    if found:
        return found[0]
    return None


class FakeModel:
    device = "cuda"


model_data = SimpleNamespace(sd_model=FakeModel())


def unload_model_weights(sd_model=None, info=None):
    CALLS.append(("unload_model_weights", sd_model))
    (sd_model or model_data.sd_model).device = "cpu"
    return sd_model


def send_model_to_device(m):
    CALLS.append(("send_model_to_device", m))
    m.device = "cuda"
