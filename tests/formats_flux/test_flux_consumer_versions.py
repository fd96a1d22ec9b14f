"""Flux files written here load with the same deltas in the diffusers the WebUI hosts pin (Forge: 0.31;
Forge Neo: 0.37), through those versions' own ``FluxLoraLoaderMixin`` (flux_consumer.py run in their venvs,
built by .ci/ui-compat under ``<repo>/.ci-cache/venvs`` or in the folders ``LORA_BRIDGE_COMPAT_VENVS`` names;
missing venvs are skipped).

diffusers 0.31 reads sd-scripts files only when every module has one rank (it gives every module the most
common rank's scale) and only their block modules, and has no reader for ComfyUI's ``diffusion_model.`` files.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from flux_cases import block_deltas, deltas, flux_adapter, worst_error
from flux_consumer import NO_LORA_LOADER

from converters import save_adapter

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("flux_consumer.py")
_ROOTS = [Path(p) for p in os.environ.get("LORA_BRIDGE_COMPAT_VENVS", "").split(os.pathsep) if p]
VENVS = {p.parent.parent.name: p for root in _ROOTS + [ROOT / ".ci-cache" / "venvs"] for p in sorted(
    root.glob("*/bin/python"))}


@pytest.mark.slow
@pytest.mark.parametrize("venv", sorted(VENVS) or [pytest.param("none", marks=pytest.mark.skip("no host venvs"))])
def test_host_diffusers_apply_our_flux_files(flux_model, tmp_path, venv):
    full = flux_adapter(flux_model)
    blocks = flux_adapter(flux_model, seed=1, blocks_only=True, rank=4)
    files = {"diffusers": (save_adapter(full, tmp_path / "diffusers.safetensors", to="diffusers", dtype="f32"),
                           deltas(full)),
             "kohya": (save_adapter(blocks, tmp_path / "kohya.safetensors", to="kohya", dtype="f32"),
                       block_deltas(blocks))}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    run = subprocess.run([str(VENVS[venv]), str(SCRIPT), str(tmp_path)] + [str(f) for f, _ in files.values()],
                         env=env, capture_output=True, text=True, timeout=900)
    if run.returncode == NO_LORA_LOADER:
        pytest.skip("diffusers in this venv has no LoRA loader (its PEFT backend needs transformers >= 4.34)")
    assert run.returncode == 0, run.stderr[-3000:]
    for name, (path, want) in files.items():
        with np.load(tmp_path / (path.stem + ".npz")) as data:
            got = {k: data[k] for k in data.files}
        assert worst_error(got, want) <= 1e-4, name
