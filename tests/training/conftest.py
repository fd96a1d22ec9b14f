"""Tiny SD bases (single-file and diffusers folders) and a tiny image dataset, built once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from image_setup import tiny_checkpoint  # noqa: E402

from extension.demo import make_shape_dataset


@pytest.fixture(scope="session")
def bases(tmp_path_factory) -> dict[str, Path]:
    """``sd1``/``sdxl`` single files and ``sd1-dir``/``sdxl-dir`` diffusers folders of the tiny models."""
    from extension.tiny.sd import save_tiny_sd_pipeline

    root = tmp_path_factory.mktemp("bases")
    out = {kind: tiny_checkpoint(kind, root / kind) for kind in ("sd1", "sdxl", "sd2-v")}
    for kind in ("sd1", "sdxl"):
        out[f"{kind}-dir"] = save_tiny_sd_pipeline(kind, root / f"{kind}-dir", seed=0)
    return out


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> Path:
    """Four 64 px coloured-shape images with .txt captions."""
    return make_shape_dataset(tmp_path_factory.mktemp("shapes") / "data", size=64, per_shape=1)
