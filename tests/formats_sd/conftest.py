"""Fixtures for SD adapter formats: tiny SD1/SD2/SDXL models with PEFT adapters, built once per run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from sd_cases import build_case  # noqa: E402


@pytest.fixture(scope="session")
def sd_cases(tmp_path_factory):
    """Non-uniform PEFT adapters on tiny SD1, SD2 and SDXL models."""
    root = tmp_path_factory.mktemp("sd_cases")
    return {kind: build_case(kind, root / kind) for kind in ("sd1", "sd2", "sdxl")}


@pytest.fixture(scope="session")
def sd_uniform_cases(tmp_path_factory):
    """Uniform-alpha PEFT adapters (diffusers' kohya loader is exact only then)."""
    root = tmp_path_factory.mktemp("sd_uniform")
    return {kind: build_case(kind, root / kind, uniform=True) for kind in ("sd1", "sdxl")}
