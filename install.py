"""LoRA Bridge installer, run by the WebUI (A1111 / Forge) on install and on every launch.

- Independent of the working directory: every path comes from ``__file__`` or the environment.
- Fast and silent when nothing is missing: checks with ``importlib.metadata``, no pip call.
- Installs only what is missing, in versions known to coexist with the host's pins
  (A1111 1.10: diffusers 0.31.0 + peft 0.13.2; Forge already has them), through a constraints
  file of the installed versions of every package the WebUI pins, so pip fails rather than
  moving a pin (a moved pin makes A1111 reinstall its requirements on every launch).
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

# (distribution, requirement when missing)
NEEDED = (
    ("diffusers", "diffusers==0.31.0"),
    ("peft", "peft==0.13.2"),
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
    """Names the WebUI pins (requirements_versions.txt of the first root that has one) plus ALWAYS_PINNED."""
    names = list(ALWAYS_PINNED)
    for root in roots:
        req = root / "requirements_versions.txt"
        if req.is_file():
            for line in req.read_text(encoding="utf-8", errors="replace").splitlines():
                line = line.split("#", 1)[0].strip()
                match = _NAME.match(line)
                if match and not line.startswith("-"):
                    names.append(match.group(1))
            break
    return names


def installed_version(name: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def missing_requirements() -> list[str]:
    """Requirements of NEEDED whose distribution is not installed."""
    return [req for dist, req in NEEDED if installed_version(dist) is None]


def constraints(names: list[str]) -> list[str]:
    """``name==version`` for every installed package among ``names`` (pip may not move them)."""
    lines, seen = [], set()
    for name in names:
        key = re.sub(r"[-_.]+", "-", name).lower()
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
    missing = missing_requirements()
    if not missing:
        return 0
    if is_sdnext(roots):
        print(f"[LoRA Bridge] SD.Next manages its own packages; not installing {', '.join(missing)}")
        return 0
    pins = constraints(host_pins(roots))
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
