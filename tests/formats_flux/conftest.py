"""Fixtures for Flux.1 adapter formats: a tiny random Flux transformer and a non-uniform LoRA on it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from flux_cases import flux_adapter  # noqa: E402
from flux_consumer import tiny_transformer  # noqa: E402


@pytest.fixture(scope="session")
def flux_model():
    """A tiny random ``FluxTransformer2DModel`` (1 double block, 1 single block, width 16)."""
    return tiny_transformer()


@pytest.fixture()
def flux_lora(flux_model):
    """A LoRA on every linear layer of the tiny Flux, ranks 2-5 and alphas varying per module."""
    return flux_adapter(flux_model)
