"""Scale-out: two CPU processes (gloo) under ``accelerate launch`` train one config and save one file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from extension._converters import converters

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_process_accelerate_launch(bases, shapes, tmp_path):
    if shutil.which("accelerate") is None and not Path(sys.executable).with_name("accelerate").exists():
        pytest.skip("accelerate CLI not installed")
    config = tmp_path / "ddp.yaml"
    out = tmp_path / "out"
    config.write_text(yaml.safe_dump(dict(
        base_model=str(bases["sd1"]), train_data_dir=str(shapes), output_dir=str(out), output_name="t",
        resolution=64, min_bucket_reso=64, max_bucket_reso=64, lora_rank=2, lora_alpha=2, batch_size=1,
        max_train_steps=2, save_steps=1,
    )))
    launcher = str(Path(sys.executable).with_name("accelerate"))
    # --multi_gpu selects torch.distributed; without CUDA accelerate runs it on CPU with gloo.
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "extension", "train", "--config", str(config)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "x 2 processes" in proc.stdout + proc.stderr
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["t-000001.safetensors", "t.safetensors"]
    assert (proc.stdout.count("use it in the WebUI")) == 1
    adapter = converters.load_adapter(out / "t.safetensors")
    assert adapter.metadata["ss_total_batch_size"] == "2" and adapter.metadata["ss_steps"] == "2"
