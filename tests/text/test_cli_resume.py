"""Through ``lora-bridge train --config``: bad input exits 2 with one line and keeps old files; kill -9 + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from gguf import GGUFReader

from extension.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _write_config(path: Path, **values) -> Path:
    base = dict(task_type="text-generation", output_name="tl", lora_rank=4, lora_alpha=8, learning_rate=1e-2,
                max_train_steps=4, batch_size=2, seed=1, llama_cpp_check="off")
    base.update({k: str(v) if isinstance(v, Path) else v for k, v in values.items()})
    path.write_text(yaml.safe_dump(base))
    return path


@pytest.fixture
def lines(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("the cat sat on the mat\nthe dog ran to the mat\na cat and a dog\n")
    return data


def _run_fails(cfg: Path, capsys, expect: str) -> None:
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err


@pytest.fixture
def precious(tmp_path):
    """An earlier run's adapter in the output folder: must survive every failed run (even with overwrite)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "tl.gguf").write_bytes(b"earlier adapter")
    return out


def test_truncated_gguf(tiny, tmp_path, lines, precious, capsys):
    data = tiny["F32"].read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])
    _run_fails(_write_config(tmp_path / "c.yaml", base_model=cut, train_data_dir=lines, output_dir=precious,
                              overwrite=True),
               capsys, "cut.gguf")
    assert (precious / "tl.gguf").read_bytes() == b"earlier adapter"


def test_unsupported_architecture(tmp_path, lines, precious, capsys):
    import gguf

    from extension.text.families import SUPPORTED_ARCHES

    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    _run_fails(_write_config(tmp_path / "c.yaml", base_model=path, train_data_dir=lines, output_dir=precious,
                              overwrite=True),
               capsys, "supported: " + ", ".join(SUPPORTED_ARCHES))
    assert (precious / "tl.gguf").read_bytes() == b"earlier adapter"


def test_broken_jsonl_and_empty_data(tiny, tmp_path, precious, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n{oops\n")
    _run_fails(_write_config(tmp_path / "c.yaml", base_model=tiny["F32"], train_data_dir=bad, output_dir=precious,
                              overwrite=True),
               capsys, "line 2: not valid JSON")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    _run_fails(_write_config(tmp_path / "c.yaml", base_model=tiny["F32"], train_data_dir=empty, output_dir=precious,
                              overwrite=True),
               capsys, "no usable training samples")
    assert (precious / "tl.gguf").read_bytes() == b"earlier adapter"


def test_state_that_does_not_fit(tiny, tmp_path, lines, capsys):
    out = tmp_path / "out"
    cfg = _write_config(tmp_path / "c.yaml", base_model=tiny["F32"], train_data_dir=lines, output_dir=out)
    assert main(["train", "--config", str(cfg)]) == 0
    capsys.readouterr()
    before = (out / "tl.gguf").read_bytes()
    cfg = _write_config(tmp_path / "c2.yaml", base_model=tiny["F32"], train_data_dir=lines, output_dir=out,
                        lora_rank=8, resume="auto", max_train_steps=8, overwrite=True)
    _run_fails(cfg, capsys, "does not fit this model")
    assert (out / "tl.gguf").read_bytes() == before


def _train_process(cfg: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "extension", "train", "--config", str(cfg), *extra], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _adapter_tensors(path: Path) -> dict[str, bytes]:
    return {t.name: np.asarray(t.data).tobytes() for t in GGUFReader(str(path)).tensors}


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_same_adapter(tiny, tmp_path, lines):
    common = dict(base_model=tiny["Q4_0"], train_data_dir=lines, max_train_steps=60, save_steps=5, batch_size=1,
                  gradient_accumulation_steps=2, lora_dropout=0.1, lr_scheduler="cosine", lr_warmup_steps=3,
                  gradient_checkpointing=True)  # kept projection outputs and dropout masks across a kill
    straight = _write_config(tmp_path / "a.yaml", output_dir=tmp_path / "a", **common)
    proc = _train_process(straight)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()

    cfg = _write_config(tmp_path / "b.yaml", output_dir=tmp_path / "b", **common)
    proc = _train_process(cfg)
    state = tmp_path / "b" / "tl-state" / "step-00000020"
    deadline = time.monotonic() + 600
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "b" / "tl.gguf").exists()
    resumed = _train_process(cfg, "--set", "resume=auto")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert _adapter_tensors(tmp_path / "b" / "tl.gguf") == _adapter_tensors(tmp_path / "a" / "tl.gguf")


def test_resuming_the_same_run_replaces_its_own_adapter_without_overwrite(tiny, tmp_path, lines, capsys):
    """A resume of this run's own state continues into its own files; a fresh run, or one resuming another run's
    state, still needs overwrite to replace them."""
    out = tmp_path / "out"
    first = _write_config(tmp_path / "c.yaml", base_model=tiny["F32"], train_data_dir=lines, output_dir=out,
                          max_train_steps=2)
    assert main(["train", "--config", str(first)]) == 0
    before = (out / "tl.gguf").read_bytes()
    capsys.readouterr()
    _run_fails(first, capsys, "tl.gguf: already exists; choose another output_name, or set overwrite: true")
    other = _write_config(tmp_path / "o.yaml", base_model=tiny["F32"], train_data_dir=lines, output_dir=out,
                          output_name="other", max_train_steps=2)
    assert main(["train", "--config", str(other)]) == 0
    capsys.readouterr()
    _run_fails(_write_config(tmp_path / "x.yaml", base_model=tiny["F32"], train_data_dir=lines, output_dir=out,
                             resume=out / "other-state", max_train_steps=4), capsys, "tl.gguf: already exists")
    longer = _write_config(tmp_path / "c2.yaml", base_model=tiny["F32"], train_data_dir=lines, output_dir=out,
                           resume="auto", max_train_steps=4)
    assert main(["train", "--config", str(longer)]) == 0, capsys.readouterr().err
    assert (out / "tl.gguf").read_bytes() != before
    assert (out / "tl-state" / "step-00000004").is_dir()
