"""Which paths the tab, the REST API and Convert may read and write.

The rule (README, Security):

- **Writes** only inside the host's own folders (WebUI: its Lora folder, ``models/LLM``,
  ``outputs/lora-bridge``; standalone: its output and models folders) and the folders the user
  adds (WebUI Settings → LoRA Training, ``lora-bridge ui --allow-dir``).
- **Reads** from anywhere while the server listens on localhost only; when it is reachable from
  the network (A1111's ``--listen``/``--share``/``--server-name``/``--ngrok`` without
  ``--enable-insecure-extension-access``, its own rule for extension installs), only from those
  folders and the host's model folders that users pick from.
- The CLI is the user's own shell and takes no policy.

The policy takes plain values; the WebUI's flags are read in ``extension/webui/host.py``.
Writes are compared after resolving symlinks and ``..``, so a link inside an allowed folder that
points outside it does not count as inside. Reads also accept a path that lies in a folder as
written, without ``..``: users link checkpoints into ``models/`` from shared folders, and only the
user can make links there (nothing here writes one).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError

MAX_PATH = 4096  # Linux PATH_MAX
MAX_NAME = 255  # bytes of one path component on common file systems

# TrainConfig keys that name something a run reads, and folders it writes into.
READ_KEYS = ("base_model", "train_data_dir", "metadata_path", "tokenizer_path", "init_lora", "resume",
             "clip_l", "t5xxl", "ae")
WRITE_KEYS = ("output_dir", "logging_dir")
RESUME_WORDS = ("auto", "none", "")


def clean_path(value: Any, what: str) -> str:
    """``value`` as a path string, or one UserError line (non-string, empty, NUL, over-long)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise UserError(f"{what} must be a path (a string), got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise UserError(f"{what} is empty; give a path")
    if "\x00" in text:
        raise UserError(f"{what} contains a NUL character; give a plain path")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_PATH:
        raise UserError(f"{what} is longer than {MAX_PATH} bytes; give a shorter path")
    for part in Path(text).parts:
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME:
            raise UserError(f"{what}: the name {part[:40]}… is longer than {MAX_NAME} bytes; shorten it")
    return text


def resolve(path: str | os.PathLike) -> Path:
    """Absolute path with ``~``, ``..`` and symlinks resolved (the missing tail kept as written)."""
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def _absolute(path: str | os.PathLike) -> Path:
    """Absolute path as written (``~`` expanded, symlinks kept)."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _inside(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


@dataclass(frozen=True)
class PathPolicy:
    """Folders a front end may write into and read from (see the module docstring).

    ``write_roots``: where writes may go. ``read_roots``: further folders readable when reads are
    restricted (model folders). ``read_anywhere``: the server listens on localhost only.
    ``why_restricted``: the flag that restricts reads, for the message. ``hint``: how to add a folder.
    """

    write_roots: tuple[Path, ...] = ()
    read_roots: tuple[Path, ...] = ()
    read_anywhere: bool = True
    why_restricted: str = ""
    hint: str = "add the folder in Settings → LoRA Training"

    @classmethod
    def build(cls, write_roots: Iterable[str | os.PathLike], read_roots: Iterable[str | os.PathLike] = (),
              read_anywhere: bool = True, why_restricted: str = "", hint: str | None = None) -> PathPolicy:
        """A policy from plain folders (resolved once here; empty entries skipped)."""
        def roots(items: Iterable[str | os.PathLike]) -> tuple[Path, ...]:
            out: list[Path] = []
            for item in items:
                if item and str(item).strip() and "\x00" not in str(item):
                    for root in (resolve(str(item).strip()), _absolute(str(item).strip())):
                        if root not in out:
                            out.append(root)
            return tuple(out)

        extra = {"hint": hint} if hint else {}
        return cls(write_roots=roots(write_roots), read_roots=roots(read_roots), read_anywhere=read_anywhere,
                   why_restricted=why_restricted, **extra)

    def writable(self, path: Any, what: str) -> Path:
        """``path`` resolved, if it lies inside a write folder; else one UserError line naming it."""
        target = resolve(clean_path(path, what))
        if not _inside(target, self.write_roots):
            folders = ", ".join(dict.fromkeys(str(r) for r in self.write_roots)) or "(none)"
            raise UserError(f"{path}: {what} is outside the folders LoRA Bridge writes to ({folders}); "
                            f"choose a path inside one, or {self.hint}")
        return target

    def may_write(self, path: Any) -> bool:
        """Whether ``path`` lies inside a write folder (no message: for choices, not refusals)."""
        try:
            self.writable(path, "path")
        except UserError:
            return False
        return True

    def readable(self, path: Any, what: str) -> Path:
        """``path`` resolved, if it may be read; else one UserError line naming it."""
        text = clean_path(path, what)
        target, roots = resolve(text), self.write_roots + self.read_roots
        if self.read_anywhere or _inside(target, roots):
            return target
        if ".." not in Path(text).parts and _inside(_absolute(text), roots):
            return target  # a link the user put into an allowed folder (a checkpoint kept elsewhere)
        folders = ", ".join(dict.fromkeys(str(r) for r in roots)) or "(none)"
        raise UserError(f"{path}: {what} is outside the folders LoRA Bridge reads while the WebUI is reachable "
                        f"from the network ({self.why_restricted}): {folders}; move it into one, or {self.hint}")

    def check_config(self, cfg: Any) -> None:
        """Every path of a training config (a ``TrainConfig``): reads readable, output folders writable."""
        for key in READ_KEYS:
            value = getattr(cfg, key, None)
            if value is None or (key == "resume" and str(value).strip().lower() in RESUME_WORDS):
                continue
            self.readable(value, key)
        for key in WRITE_KEYS:
            value = getattr(cfg, key, None)
            if value is not None:
                self.writable(value, key)


def parse_folders(text: Any) -> list[str]:
    """The Settings text of extra folders (one per line, or separated by commas) as a list."""
    if not isinstance(text, str):
        return [str(item) for item in text or [] if str(item).strip()]
    items = [part.strip() for line in text.splitlines() for part in line.split(",")]
    return [item for item in items if item]


def save_yaml_path(policy: PathPolicy, path: Any) -> Path:
    """Where the tab's "Save YAML" may write: a ``.yaml``/``.yml`` file inside a write folder.

    An existing file is replaced only when it is a YAML file (not a folder, not a link elsewhere).
    """
    text = clean_path(path, "YAML file")
    if Path(text).suffix.lower() not in (".yaml", ".yml"):
        raise UserError(f"{text}: the YAML is saved only as a .yaml or .yml file; end the name with .yaml")
    target = policy.writable(text, "YAML file")
    if target.suffix.lower() not in (".yaml", ".yml"):  # a .yaml link to another file
        raise UserError(f"{text}: links to {target.name}, not a YAML file; choose another name")
    if target.exists() and not target.is_file():
        raise UserError(f"{text}: is a folder; choose a file name ending in .yaml")
    return target


def check_convert_paths(policy: PathPolicy, src: Any, dst: Any, base: Any = None) -> dict[str, str]:
    """``{"src", "dst", "base"?}`` of a Convert (tab or REST) as clean strings, checked against ``policy``."""
    out = {"src": clean_path(src, "source adapter"), "dst": clean_path(dst, "destination")}
    policy.readable(out["src"], "source adapter")
    policy.writable(out["dst"], "destination")
    if base is not None and not (isinstance(base, str) and not base.strip()):
        out["base"] = clean_path(base, "base model")
        policy.readable(out["base"], "base model")
    return out
