"""The LoRA files of a run: ``name-000100.safetensors`` saves (keep-last-N) and the final ``name.safetensors``."""

from __future__ import annotations

import re
from pathlib import Path

from .._converters import converters

_DTYPES = {"fp16": "f16", "bf16": "bf16", "fp32": "f32", "f16": "f16", "f32": "f32"}


def kohya_dtype(save_precision: str | None) -> str:
    """The writer's dtype name for the config's ``save_precision``."""
    return _DTYPES.get(str(save_precision or "fp16").lower(), "f16")


class OutputFiles:
    """Writes kohya files through the format layer (atomic, hashed) and prunes old intermediate saves."""

    def __init__(self, out_dir: Path, name: str, keep_last: int, is_writer: bool = True,
                 save_precision: str = "fp16") -> None:
        self.out_dir = Path(out_dir)
        self.name = name
        self.keep_last = keep_last
        self.is_writer = is_writer
        self.dtype = kohya_dtype(save_precision)
        self.written: list[str] = []

    def path_for(self, step: int | None) -> Path:
        """``name-000100.safetensors`` for a step save, ``name.safetensors`` for the final file."""
        return self.out_dir / (f"{self.name}.safetensors" if step is None else f"{self.name}-{step:06d}.safetensors")

    def intermediate(self) -> list[Path]:
        """Step saves of this name on disk, oldest first."""
        pattern = re.compile(re.escape(self.name) + r"-(\d{6,})\.safetensors$")
        found = [(int(m.group(1)), p) for p in self.out_dir.glob(f"{self.name}-*.safetensors")
                 if (m := pattern.match(p.name))]
        return [p for _, p in sorted(found)]

    def save(self, adapter, step: int | None) -> list[str]:
        """Write ``adapter`` for ``step`` (None = final); returns the paths written (none on non-writers)."""
        if not self.is_writer:
            return []
        path = self.path_for(step)
        converters.save_adapter(adapter, path, to="kohya", name=self.name, metadata=adapter.metadata,
                                dtype=self.dtype, force=True)
        self.written.append(str(path))
        if step is not None and self.keep_last > 0:
            for old in self.intermediate()[: -self.keep_last]:
                old.unlink(missing_ok=True)
                if str(old) in self.written:
                    self.written.remove(str(old))
        return [str(path)]
