"""LoRA Bridge installer, run by the WebUI (A1111 / Forge) on install and on every launch.

- Independent of the working directory: every path comes from ``__file__`` or the environment.
- Fast and silent when nothing is missing: checks with ``importlib.metadata``, no pip call.
- Installs only what is missing, in versions known to coexist with the host's pins
  (A1111 1.10: diffusers 0.31.0 + peft 0.13.2; Forge already has them; Forge Neo has diffusers
  0.37, which refuses to import beside a peft older than 0.17), through a constraints file of the
  installed versions of every package the WebUI pins (``requirements_versions.txt`` in A1111 and
  Forge, ``requirements.txt`` in Neo), so pip fails rather than moving a pin (a moved pin makes
  A1111 reinstall its requirements on every launch).
- peft follows the installed diffusers and transformers: the oldest peft they accept is read from
  their files (never imported); an unpinned peft older than that is upgraded, since the WebUI
  would not start with it.
- Installs nothing on SD.Next-style hosts, which manage their own stack.
- Never builds llama-cpp-python (optional, for the Text LoRA llama.cpp check; install it yourself).
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (distribution, requirement when missing); peft is chosen by ``peft_requirement``.
DIFFUSERS = "diffusers==0.31.0"
NEEDED = (
    ("diffusers", DIFFUSERS),
    ("gguf", "gguf>=0.10"),
    ("PyYAML", "pyyaml"),
    ("safetensors", "safetensors"),
    ("tqdm", "tqdm"),
)
# Pinned even when no requirements_versions.txt is found: what the WebUIs must not see moved.
ALWAYS_PINNED = ("torch", "torchvision", "transformers", "accelerate", "safetensors", "numpy", "Pillow",
                 "protobuf", "gradio", "gradio_client", "fastapi", "starlette", "pydantic", "huggingface_hub",
                 "httpx", "tokenizers")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
# Where installed packages state the oldest peft they work with, read from their files: diffusers
# checks its table at import (0.37: "peft>=0.17.0", an ImportError otherwise); transformers checks
# MIN_PEFT_VERSION when it uses peft.
PEFT_FLOORS = (
    ("diffusers", "diffusers/dependency_versions_table.py", r'"peft":\s*"peft\s*>=\s*([0-9][0-9.]*)"'),
    ("transformers", "transformers/integrations/peft.py", r'MIN_PEFT_VERSION\s*=\s*"([0-9][0-9.]*)"'),
)
# peft releases tested beside the WebUIs' diffusers (0.31 in A1111/Forge, 0.36-0.37 in Neo), oldest first:
# the first one at or above the floor is installed.
TESTED_PEFT = ("0.13.2", "0.17.1")
# Host requirement files whose names are kept as they are (A1111/Forge pin in the first, Neo in the second).
HOST_REQUIREMENTS = ("requirements_versions.txt", "requirements.txt")


def _roots() -> list[Path]:
    """Where the WebUI may live: cwd (A1111), PYTHONPATH (A1111 sets it to the webui root), and the
    folder above extensions/ (SD.Next runs install.py from the extension folder)."""
    out = [Path.cwd()]
    out += [Path(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if HERE.parent.name == "extensions":
        out.append(HERE.parent.parent)
    seen, unique = set(), []
    for root in out:
        key = str(root.resolve()) if root.exists() else str(root)
        if key not in seen:
            seen.add(key)
            unique.append(root)
    return unique


def is_sdnext(roots: list[Path]) -> bool:
    """SD.Next ships ``installer.py`` at its root and manages every package itself."""
    return any((root / "installer.py").is_file() and (root / "modules").is_dir() for root in roots)


def host_pins(roots: list[Path]) -> list[str]:
    """ALWAYS_PINNED plus the names in HOST_REQUIREMENTS of the first root that has any of them."""
    names = list(ALWAYS_PINNED)
    for root in roots:
        files = [root / name for name in HOST_REQUIREMENTS if (root / name).is_file()]
        for req in files:
            for line in req.read_text(encoding="utf-8", errors="replace").splitlines():
                line = line.split("#", 1)[0].strip()
                match = _NAME.match(line)
                if match and not line.startswith("-"):
                    names.append(match.group(1))
        if files:
            break
    return names


def installed_version(name: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string (``0.17.0rc1`` -> (0, 17, 0)); enough to compare floors."""
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.group() != piece:
            break
    return tuple(parts)


def peft_floors() -> dict[str, str]:
    """{distribution: oldest peft it accepts} for the installed diffusers/transformers, read from their files."""
    floors = {}
    for dist, rel_path, pattern in PEFT_FLOORS:
        if installed_version(dist) is None:
            continue
        try:
            text = Path(metadata.distribution(dist).locate_file(rel_path)).read_text(encoding="utf-8")
        except OSError:
            continue
        match = re.search(pattern, text)
        if match:
            floors[dist] = match.group(1)
    return floors


def peft_requirement(pinned: list[str]) -> str | None:
    """What to install for peft: None when the installed one is fine or pinned by the host.

    Without diffusers (A1111) peft comes with ``DIFFUSERS`` as the pair tested there. With diffusers,
    an installed peft is replaced only below diffusers' floor (diffusers would refuse to import, and
    the WebUI with it); a missing or replaced one is the first TESTED_PEFT at or above every floor,
    or ``peft>=floor`` beyond them.
    """
    installed = installed_version("peft")
    if installed_version("diffusers") is None:
        return None if installed is not None else f"peft=={TESTED_PEFT[0]}"
    floors = peft_floors()
    if installed is not None:
        enforced = floors.get("diffusers")
        if enforced is None or _release(installed) >= _release(enforced):
            return None
        if _key("peft") in {_key(name) for name in pinned}:
            return None  # the host's own pin: never moved (pip would refuse anyway)
    floor = max(floors.values(), key=_release, default=None)
    for version in TESTED_PEFT:
        if floor is None or _release(version) >= _release(floor):
            return f"peft=={version}"
    return f"peft>={floor}"


def missing_requirements(pinned: list[str] | None = None) -> list[str]:
    """Requirements of NEEDED whose distribution is not installed, and peft when missing or too old."""
    missing = [req for dist, req in NEEDED if installed_version(dist) is None]
    peft = peft_requirement(pinned if pinned is not None else host_pins(_roots()))
    return missing + ([peft] if peft else [])


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints(names: list[str]) -> list[str]:
    """``name==version`` for every installed package among ``names`` (pip may not move them)."""
    lines, seen = [], set()
    for name in names:
        key = _key(name)
        version = installed_version(name)
        if version and key not in seen:
            seen.add(key)
            lines.append(f"{name}=={version}")
    return lines


def _pip(args: list[str], desc: str) -> None:
    """``launch.run_pip`` inside the WebUI (its index/proxy settings), else ``python -m pip``."""
    try:
        import launch  # the WebUI's launch.py (PYTHONPATH = webui root)

        run_pip = launch.run_pip
    except Exception:
        run_pip = None
    if run_pip is not None:
        run_pip(" ".join(f'"{a}"' if (" " in a or ">" in a or "<" in a) else a for a in args), desc)
        return
    subprocess.run([sys.executable, "-m", "pip", *args, "--prefer-binary"], check=True)


def main() -> int:
    """Install what is missing; returns 0 also when pip fails (the WebUI only prints our output)."""
    roots = _roots()
    names = host_pins(roots)
    missing = missing_requirements(names)
    if not missing:
        return 0
    if is_sdnext(roots):
        print(f"[LoRA Bridge] SD.Next manages its own packages; not installing {', '.join(missing)}")
        return 0
    pins = constraints(names)
    with tempfile.TemporaryDirectory(prefix="lora-bridge-install-") as tmp:
        path = Path(tmp) / "constraints.txt"
        path.write_text("\n".join(pins) + "\n", encoding="utf-8")
        print(f"[LoRA Bridge] installing {', '.join(missing)} (keeping {len(pins)} pinned packages as they are)")
        try:
            _pip(["install", *missing, "-c", str(path)], f"LoRA Bridge requirements: {', '.join(missing)}")
        except Exception as exc:
            print(f"[LoRA Bridge] could not install {', '.join(missing)} without moving the WebUI's pinned packages: "
                  f"{exc}\n[LoRA Bridge] training is unavailable until they are installed; conversion still works.")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
