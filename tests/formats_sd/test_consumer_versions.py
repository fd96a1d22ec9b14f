"""Files written here (current transformers/diffusers) load exactly in the diffusers/peft/transformers the
WebUIs pin, using those versions' own loaders (tests/formats_sd/consumer_load.py run in their venvs).

Venvs: this one (current releases), and the hosts' stacks that .ci/ui-compat builds under
``<repo>/.ci-cache/venvs`` (gradio-3.41: diffusers 0.31.0, peft 0.13.2, transformers 4.30.2;
gradio-4.40: the same with transformers 4.46.1). ``LORA_BRIDGE_COMPAT_VENVS`` may name another
folder of venvs (e.g. one with diffusers 0.32). Missing venvs are skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from consumer_load import NO_LORA_LOADER

from converters import convert

ROOT = Path(__file__).resolve().parents[2]
LOADER = Path(__file__).with_name("consumer_load.py")


def _venvs() -> list[tuple[str, str]]:
    found = [("current", sys.executable)]
    roots = [Path(p) for p in os.environ.get("LORA_BRIDGE_COMPAT_VENVS", "").split(os.pathsep) if p]
    roots.append(ROOT / ".ci-cache" / "venvs")
    for root in roots:
        for venv in sorted(root.glob("*/bin/python")) if root.is_dir() else []:
            found.append((venv.parent.parent.name, str(venv)))
    return found


VENVS = _venvs()


def _load_with(python: str, kind: str, how: str, source: Path, tmp_path: Path) -> dict[str, np.ndarray]:
    out = tmp_path / f"deltas_{how}.npz"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run([python, str(LOADER), kind, str(out), how, str(source)], env=env, capture_output=True,
                         text=True, timeout=600)
    if run.returncode == NO_LORA_LOADER:
        pytest.skip("diffusers in this venv has no LoRA loader (its PEFT backend needs transformers >= 4.34)")
    assert run.returncode == 0, run.stderr[-3000:]
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


def _compare(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    """Every module matched; returns the worst relative error."""
    assert set(want) <= set(got), sorted(set(want) - set(got))[:5]
    extra = set(got) - set(want)
    assert all(not np.any(got[n]) for n in extra), sorted(extra)[:5]  # only zero q/k/v/out completions
    worst = 0.0
    for name, delta in want.items():
        error = float(np.linalg.norm(got[name].reshape(delta.shape) - delta) / np.linalg.norm(delta))
        worst = max(worst, error)
        assert error < 1e-5, (name, error)
    return worst


@pytest.mark.parametrize("venv", [v for v, _ in VENVS])
def test_diffusers_file_exact_in_every_diffusers(sd_cases, tmp_path, venv):
    """SDXL (UNet, both text encoders) with non-uniform ranks, alphas and rsLoRA: diffusers 0.31
    ignores lora_adapter_metadata, so the scales must be in the weights; text-encoder names must
    match transformers 4 and 5."""
    kind = "sdxl"
    case = sd_cases[kind]
    out = convert(case.peft_dir, tmp_path / "pytorch_lora_weights.safetensors", to="diffusers", dtype="f32")
    got = _load_with(dict(VENVS)[venv], kind, "diffusers", out, tmp_path)
    _compare(got, case.deltas)


@pytest.mark.parametrize("venv", [v for v, _ in VENVS])
def test_peft_folders_exact_in_every_peft(sd_cases, tmp_path, venv):
    """Every component folder, text encoders included, loads its weights in peft 0.13 + transformers 4
    and current peft + transformers 5 from one naming."""
    case = sd_cases["sdxl"]
    out = convert(case.peft_dir, tmp_path / "peft_out", to="peft", dtype="f32")
    got = _load_with(dict(VENVS)[venv], "sdxl", "peft", out, tmp_path)
    _compare(got, case.deltas)
