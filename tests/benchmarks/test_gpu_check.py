"""benchmarks/gpu_check.sh without a GPU: the clean no-CUDA exit, the dequantization probe, the builder, the dry run."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _load(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run(*args: str, timeout: float, **env_extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, **env_extra}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_exits_77_with_one_clear_line():
    proc = _run(timeout=300)
    assert proc.returncode == 77, proc.stderr[-2000:]
    assert "no CUDA device" in proc.stderr and "--dry-run" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_defaults_follow_the_mode():
    gpu_check = _load("gpu_check")
    full = gpu_check.parse_args([])
    assert (full.size, full.resolution, full.precisions) == ("full", 512, ["fp16", "bf16"])
    dry = gpu_check.parse_args(["--dry-run"])
    assert (dry.size, dry.resolution) == ("tiny", 64)
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--precisions", "fp8"])


def test_probe_sees_the_device_of_every_dispatch():
    gpu_check = _load("gpu_check")
    from gguf import GGMLQuantizationType as Q

    from extension.text import quant

    with gpu_check.DequantProbe() as probe:
        quant.dequantize_rows(torch.zeros(2, 18, dtype=torch.uint8), Q.Q4_0, 32)
        assert quant.dequant_backend(Q.Q4_0, torch.device("cuda")) == "torch"  # what a GPU run records
    kinds = {(qtype, device) for qtype, device, _ in probe.dispatch}
    assert kinds == {("Q4_0", "cpu"), ("Q4_0", "cuda")}
    assert probe.dispatch[("Q4_0", "cuda", "torch")] == 1
    assert quant.dequant_backend.__name__ == "dequant_backend"  # restored


def test_q4_builder_writes_a_base_the_engine_loads(tmp_path):
    builder = _load("q4_builder")
    from extension.text.gguf_model import load_text_model

    assert builder.LLAMA2_7B.q4_bytes() == 3_790_209_024  # LLaMA-2-7B Q4_0 without the norms
    path = builder.write_random_q4_gguf(tmp_path / "tiny.gguf", builder.TINY)
    model = load_text_model(path)
    cfg = model.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.num_kv_heads, cfg.vocab_size) == (64, 128, 2, 2,
                                                                                                        512)
    assert model.model.layers[0].mlp.up_proj.weight.qtype.name == "Q4_0"
    weight = model.model.layers[0].mlp.up_proj.weight.dequantize()
    assert torch.isfinite(weight).all() and 0.005 < float(weight.std()) < 0.05  # about the requested 0.02


def test_text_dry_run_with_torch_dequantization():
    """Without the C helper the CPU run dequantizes as a GPU run does (torch ops): the probe shows it."""
    proc = _run("--dry-run", "--skip-image", "--skip-flux", "--text-steps", "2", "--no-profile", timeout=600,
                LORA_BRIDGE_NATIVE="0")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Q4_0/cpu/torch" in proc.stdout and "native" not in proc.stdout.split("dispatches")[1].split("\n")[0]
    assert "compiled CPU helper calls: 0" in proc.stdout


@pytest.mark.slow
def test_dry_run_passes_on_the_cpu():
    proc = _run("--dry-run", "--precisions", "bf16", "--image-steps", "4", "--text-steps", "3", "--skip-flux",
                timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "DRY RUN PASSED" in proc.stdout
    assert "[FAIL]" not in proc.stdout
    assert "every Q4_0 dequantization on cpu" in proc.stdout


@pytest.mark.slow
def test_flux_dry_run_trains_on_fp8_and_gguf_q4_0():
    proc = _run("--dry-run", "--skip-image", "--skip-text", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "flux fp8:" in proc.stdout and "flux Q4_0:" in proc.stdout and "DRY RUN PASSED" in proc.stdout
