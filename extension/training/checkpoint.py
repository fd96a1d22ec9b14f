"""Full training state for an exact resume: LoRA weights, optimizer, scheduler, counters, RNG.

Each state is a folder ``<state_root>/step-00000100`` written through ``atomic_dir`` (a temp
folder renamed into place), so a killed run leaves either a complete state or none; its temp folder
is removed by the next save (``atomic_dir`` removes temps whose writer's pid is gone, never a live run's). Loading uses
``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._converters import converters
from ..errors import UserError

_STATE_RE = re.compile(r"^step-(\d{8})$")
_FORMAT = 1


@dataclass
class TrainingState:
    """What ``load_training_state`` returns; the caller restores it into its own objects."""

    path: Path
    step: int
    epoch: int
    batch_in_epoch: int
    lora: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    generators: dict[str, torch.Tensor] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    rng: dict = field(default_factory=dict)


def capture_rng() -> dict:
    """Python, numpy and torch global RNG states in a JSON-friendly form (torch as a list of bytes)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }


def restore_rng(state: dict) -> None:
    """Put back what ``capture_rng`` returned."""
    if not state:
        return
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def state_root(config: Any) -> Path:
    """Where a run keeps its states: ``<output_dir>/<output_name>-state`` (text), ``<output_dir>/state`` (image runs,
    whose states name their run in ``extra["output_name"]``)."""
    out = Path(str(config.output_dir)).expanduser()
    if str(config.task_type) == "text-generation":
        return out / f"{config.output_name}-state"
    return out / "state"


def resumed_state(config: Any) -> Path | None:
    """The complete state folder ``config.resume`` continues from (``auto``: the newest of the run's own), or None
    for a fresh run."""
    resume = str(config.resume or "")
    if resume.lower() in ("", "none", "no", "false"):
        return None
    path = state_root(config) if resume.lower() == "auto" else Path(resume).expanduser()
    return path if (path / "state.json").is_file() else latest_state(path)


def resumes_own_run(config: Any) -> bool:
    """True when ``config`` resumes a state this same run saved: under its own state root (same output folder and
    name), for image runs also naming its ``output_name``. Its finished files are then the run's own."""
    state = resumed_state(config)
    if state is None or state.resolve().parent != state_root(config).resolve():
        return False
    if str(config.task_type) == "text-generation":
        return True
    try:
        extra = json.loads((state / "state.json").read_text()).get("extra") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return extra.get("output_name") == str(config.output_name)


def list_states(state_root: str | Path) -> list[Path]:
    """Complete state folders under ``state_root``, oldest first (temp folders are ignored)."""
    root = Path(state_root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STATE_RE.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(_STATE_RE.match(p.name).group(1)))


def latest_state(state_root: str | Path) -> Path | None:
    """The newest complete state folder, or None."""
    states = list_states(state_root)
    return states[-1] if states else None


def save_training_state(
    state_root: str | Path,
    *,
    step: int,
    epoch: int,
    batch_in_epoch: int,
    lora: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generators: dict[str, torch.Generator] | None = None,
    extra: dict | None = None,
    keep_last: int = 2,
) -> Path:
    """Write one complete state folder atomically, then drop all but the newest ``keep_last``."""
    root = Path(state_root)
    root.mkdir(parents=True, exist_ok=True)
    dst = root / f"step-{step:08d}"
    with converters.atomic.atomic_dir(dst, force=True) as tmp:
        tensors = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in lora.items()}
        torch.save(tensors, tmp / "lora.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict() if scheduler is not None else {}, tmp / "scheduler.pt")
        torch.save({k: g.get_state() for k, g in (generators or {}).items()}, tmp / "generators.pt")
        meta = {
            "format": _FORMAT,
            "step": int(step),
            "epoch": int(epoch),
            "batch_in_epoch": int(batch_in_epoch),
            "rng": capture_rng(),
            "extra": extra or {},
        }
        # state.json last: its presence marks the folder complete even if the rename is ever skipped.
        (tmp / "state.json").write_text(json.dumps(meta))
    if keep_last > 0:
        for old in list_states(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return dst


def load_training_state(path: str | Path) -> TrainingState:
    """Read a state folder (or the newest one under a state root) written by ``save_training_state``."""
    path = Path(path)
    if not (path / "state.json").is_file():
        newest = latest_state(path)
        if newest is None:
            raise UserError(f"{path}: no saved training state to resume from; start without resume")
        path = newest
    try:
        meta = json.loads((path / "state.json").read_text())
        lora = torch.load(path / "lora.pt", map_location="cpu", weights_only=True)
        optimizer = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        scheduler = torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True)
        generators = torch.load(path / "generators.pt", map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: training state is unreadable ({exc.__class__.__name__}); delete it or "
                        "resume from an older one") from None
    return TrainingState(
        path=path,
        step=int(meta["step"]),
        epoch=int(meta["epoch"]),
        batch_in_epoch=int(meta["batch_in_epoch"]),
        lora=lora,
        optimizer=optimizer,
        scheduler=scheduler,
        generators=generators,
        extra=meta.get("extra", {}),
        rng=meta.get("rng", {}),
    )

