"""A tiny Flux.1 saved as the files Forge users hold, a tiny image dataset, and one real CLI run, built once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "formats_flux"))  # flux_consumer: diffusers' loader as oracle
from flux_training_setup import flux_config, write_yaml  # noqa: E402


@pytest.fixture(scope="session")
def flux_files(tmp_path_factory) -> dict[str, Path]:
    """BFL transformer (dev) + clip_l + t5xxl + ae files, tokenizers beside them."""
    from extension.tiny.flux import save_tiny_flux

    return save_tiny_flux(tmp_path_factory.mktemp("flux") / "models")


@pytest.fixture(scope="session")
def flux_data(tmp_path_factory) -> Path:
    """Four 64 px coloured-shape images with .txt captions."""
    from extension.demo import make_shape_dataset

    return make_shape_dataset(tmp_path_factory.mktemp("flux_shapes") / "data", size=64, per_shape=1)


@pytest.fixture(scope="session")
def trained(flux_files, flux_data, tmp_path_factory) -> Path:
    """The output folder of one ``lora-bridge train --config`` run on the tiny Flux (8 steps, fp32 file)."""
    from extension.cli import main

    out = tmp_path_factory.mktemp("flux_run") / "out"
    config = write_yaml(flux_config(flux_files, flux_data, out), out.parent / "flux.yaml")
    assert main(["train", "--config", str(config)]) == 0
    return out
