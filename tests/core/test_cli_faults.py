"""Issue 22 #11: faults of the machine the user can fix (full disk, read-only or forbidden folder, too-long
name, a 0-byte model) are exit 2 with one line naming the path, never a traceback with exit 1; and
``train`` finds an unusable output folder before any model loads."""

from __future__ import annotations

import errno
import os
import tempfile

import numpy as np
import pytest
import yaml

from extension.cli import main


@pytest.fixture
def kohya_file(tmp_path):
    """A two-module kohya LoRA on SD1 attention names (the names sd-scripts writes)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    tensors = {}
    for key in ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"):
        tensors[f"{key}.lora_down.weight"] = rng.standard_normal((2, 32)).astype(np.float16)
        tensors[f"{key}.lora_up.weight"] = rng.standard_normal((32, 2)).astype(np.float16)
        tensors[f"{key}.alpha"] = np.array(2.0, dtype=np.float16)
    path = tmp_path / "src.safetensors"
    save_file(tensors, str(path), metadata={"ss_base_model_version": "sd_v1"})
    return path


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS", "EACCES"])
def test_convert_onto_a_full_read_only_or_forbidden_folder_exits_2(code, kohya_file, tmp_path, monkeypatch, capsys):
    dst = tmp_path / "out" / "dst.safetensors"
    dst.parent.mkdir()
    number = getattr(errno, code)
    real_mkstemp = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):  # root ignores chmod: the refusal is simulated where the file is made
        if str(dir) == str(dst.parent):
            raise OSError(number, os.strerror(number), str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert main(["convert", str(kohya_file), str(dst), "--to", "diffusers"]) == 2
    assert _one_line(capsys).startswith(f"lora-bridge: error: {dst}: ")
    assert list(dst.parent.iterdir()) == []


def test_disk_full_while_writing_exits_2(kohya_file, tmp_path, monkeypatch, capsys):
    from converters import atomic

    dst = tmp_path / "dst.safetensors"

    def full(src, target):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", full)
    assert main(["convert", str(kohya_file), str(dst), "--to", "diffusers"]) == 2
    assert _one_line(capsys) == (f"lora-bridge: error: {dst}: no space left on the device; free some space or "
                                 "choose another folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.safetensors"]


@pytest.mark.parametrize("to", ["diffusers", "peft"])
def test_too_long_destination_name_exits_2(to, kohya_file, tmp_path, capsys):
    dst = tmp_path / ("d" * 300 + (".safetensors" if to == "diffusers" else ""))
    assert main(["convert", str(kohya_file), str(dst), "--to", to]) == 2
    assert "too long" in _one_line(capsys)


def test_zero_byte_ggml_exits_2(tmp_path, capsys):
    empty = tmp_path / "model.bin"
    empty.write_bytes(b"")
    assert main(["upgrade-ggml", str(empty), str(tmp_path / "out.gguf")]) == 2
    assert _one_line(capsys).startswith(f"lora-bridge: error: {empty}: empty file")


def _train_config(tmp_path, **extra):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    base = tmp_path / "base.safetensors"
    base.write_bytes(b"not loaded")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"base_model": str(base), "train_data_dir": str(data), "output_name": "t",
                                    **extra}))
    return path


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if anything past the output checks runs (the run, so the model loader); no dataset lint."""
    import extension.runner as runner

    def too_far(*args, **kwargs):
        raise AssertionError("got past the output checks")

    monkeypatch.setattr(runner, "_lint_first", lambda config: None)
    monkeypatch.setattr(runner, "run_training", too_far)


def test_train_refuses_a_read_only_output_folder_before_the_model_loads(tmp_path, monkeypatch, capsys,
                                                                        no_model_load):
    out = tmp_path / "ro" / "run"
    (tmp_path / "ro").mkdir()
    real_mkstemp = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):  # what creating any file under ro/ answers
        if str(dir).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert main(["train", "--config", str(_train_config(tmp_path, output_dir=str(out)))]) == 2
    assert _one_line(capsys).startswith(f"lora-bridge: error: {out}: cannot write the run's files here (the folder is "
                                        "on a read-only file system)")


def test_train_refuses_a_long_name_and_an_existing_final_file_before_the_model_loads(tmp_path, capsys, no_model_load):
    out = tmp_path / "run"
    assert main(["train", "--config", str(_train_config(tmp_path, output_dir=str(out), output_name="n" * 250))]) == 2
    assert "too long" in _one_line(capsys)
    out.mkdir()
    (out / "t.safetensors").write_bytes(b"earlier run")
    assert main(["train", "--config", str(_train_config(tmp_path, output_dir=str(out)))]) == 2
    assert _one_line(capsys).startswith(f"lora-bridge: error: {out / 't.safetensors'}: already exists")


def test_train_refuses_a_folder_another_run_holds(tmp_path, capsys, no_model_load):
    from extension.training.run_folder import RunLock

    out = tmp_path / "run"
    out.mkdir()
    with RunLock(out):
        assert main(["train", "--config", str(_train_config(tmp_path, output_dir=str(out)))]) == 2
    assert "another run is writing into this folder" in _one_line(capsys)
