"""The Flux.1 text encoders and VAE the tab offers: the host's files sorted by what they hold.

Forge lists every file of models/text_encoder and models/VAE in one "VAE / Text Encoder" box and
tells them apart when it loads them; a Flux run needs each in its own key (``clip_l``, ``t5xxl``,
``ae``), so each file's header says which one it is (``converters.flux_base.flux_part_kind``).
"""

from __future__ import annotations

from .._converters import converters
from .host import Host

PARTS = ("clip_l", "t5xxl", "ae")


def _kinds(paths: list[str]) -> dict[str, str]:
    """{path: part} of the files that are a Flux text encoder or VAE."""
    out = {}
    for path in paths:
        kind = converters.flux_base.flux_part_kind(path)
        if kind:
            out[path] = kind
    return out


def flux_picks(host: Host) -> dict[str, list[str]]:
    """{``clip_l``/``t5xxl``/``ae``: the host's files of that kind} (dropdown choices; any path is taken too)."""
    kinds = _kinds(host.flux_part_files())
    return {part: [p for p, kind in kinds.items() if kind == part] for part in PARTS}


def flux_defaults(host: Host) -> dict[str, str]:
    """The files selected in the host (Forge's top bar) for each part it holds, else the only file of a kind."""
    chosen = {kind: path for path, kind in _kinds(host.selected_flux_parts()).items()}
    for part, files in flux_picks(host).items():
        if part not in chosen and len(files) == 1:
            chosen[part] = files[0]
    return chosen
