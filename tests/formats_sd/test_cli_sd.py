"""Bad input through `lora-bridge convert` / `inspect`: one line, exit 2, no traceback, nothing left behind."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from extension.cli import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_user_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)


@pytest.fixture()
def kohya_file(sd_cases, tmp_path):
    from converters import convert

    return convert(sd_cases["sd1"].peft_dir, tmp_path / "good.safetensors", to="kohya", arch="sd1")


def _listing(folder):
    return sorted(os.listdir(folder))


def test_truncated_file(capsys, kohya_file, tmp_path):
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(kohya_file.read_bytes()[:-100])
    before = _listing(tmp_path)
    code, _, err = _run(capsys, "convert", bad, tmp_path / "out", "--to", "peft")
    _assert_user_error(code, err, "truncated.safetensors", "truncated")
    assert _listing(tmp_path) == before


def test_corrupt_header(capsys, tmp_path):
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\x00" * 64)
    code, _, err = _run(capsys, "convert", bad, tmp_path / "o.safetensors")
    _assert_user_error(code, err, "corrupt.safetensors", "corrupt")
    assert not (tmp_path / "o.safetensors").exists()


def test_not_an_adapter(capsys, sd_cases, tmp_path):
    """A full SD checkpoint is a valid safetensors file, but not an adapter."""
    code, _, err = _run(capsys, "convert", sd_cases["sd1"].checkpoint, tmp_path / "o.safetensors")
    _assert_user_error(code, err, "not a LoRA adapter")
    assert not (tmp_path / "o.safetensors").exists()
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    code, _, err = _run(capsys, "inspect", text)
    _assert_user_error(code, err, "notes.txt")


def test_adapter_for_another_base(capsys, sd_cases, tmp_path):
    before = _listing(tmp_path)
    code, _, err = _run(capsys, "convert", sd_cases["sdxl"].peft_dir, tmp_path / "o.safetensors",
                        "--base", sd_cases["sd1"].checkpoint)
    _assert_user_error(code, err, "does not fit base")
    assert _listing(tmp_path) == before
    # The matching base passes, from a single-file checkpoint and from a diffusers folder.
    for base in (sd_cases["sdxl"].checkpoint, sd_cases["sdxl"].folder):
        code, out, err = _run(capsys, "convert", sd_cases["sdxl"].peft_dir, tmp_path / "ok.safetensors",
                              "--base", base, "--force")
        assert code == 0, err


def test_dora_to_kohya_refused(capsys, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    from extension.tiny.sd import build_tiny_sd

    torch.manual_seed(0)
    unet = build_tiny_sd("sd1")["unet"]
    model = get_peft_model(unet, LoraConfig(r=2, target_modules=["to_q", "to_v"], use_dora=True))
    model.save_pretrained(str(tmp_path / "dora" / "unet"))
    before = _listing(tmp_path)
    code, _, err = _run(capsys, "convert", tmp_path / "dora", tmp_path / "o.safetensors", "--to", "kohya")
    _assert_user_error(code, err, "DoRA")
    assert _listing(tmp_path) == before
    # ...while PEFT -> PEFT carries it.
    code, _, err = _run(capsys, "convert", tmp_path / "dora", tmp_path / "copy", "--to", "peft")
    assert code == 0, err
    config = json.loads((tmp_path / "copy" / "unet" / "adapter_config.json").read_text())
    assert config["use_dora"] is True


def test_existing_destination_needs_force(capsys, kohya_file, tmp_path):
    dst = tmp_path / "exists.safetensors"
    dst.write_bytes(b"keep me")
    code, _, err = _run(capsys, "convert", kohya_file, dst)
    _assert_user_error(code, err, "--force")
    assert dst.read_bytes() == b"keep me"
    folder = tmp_path / "peft_out"
    folder.mkdir()
    code, _, err = _run(capsys, "convert", kohya_file, folder, "--to", "peft")
    _assert_user_error(code, err, "--force")
    code, _, err = _run(capsys, "convert", kohya_file, dst, "--force")  # not an adapter: --force keeps it too
    _assert_user_error(code, err, "not an adapter")
    assert dst.read_bytes() == b"keep me"
    dst.unlink()
    assert _run(capsys, "convert", kohya_file, dst)[0] == 0
    code, _, err = _run(capsys, "convert", kohya_file, dst, "--force", "--dtype", "f32", "--name", "renamed")
    assert code == 0, err
    from converters.safetensors_io import SafetensorsFile

    assert SafetensorsFile(dst).metadata["ss_output_name"] == "renamed"
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    shutil.rmtree(folder)


def test_inspect_kohya(capsys, sd_cases, tmp_path):
    from converters import convert

    path = convert(sd_cases["sdxl"].peft_dir, tmp_path / "x.safetensors", to="kohya", arch="sdxl")
    code, out, err = _run(capsys, "inspect", path)
    assert code == 0, err
    assert "sdxl" in out and "kohya" in out
    assert "ranks: 2, 3, 4, 6" in out
    code, out, err = _run(capsys, "inspect", path, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["format"] == "kohya" and report["arch"] == "sdxl" and report["family"] == "sd"
    assert report["ranks"] == [2, 3, 4, 6] and len(report["alphas"]) > 3
    assert report["metadata"]["ss_network_alpha"] == "Dynamic"
    assert set(report["components"]) == {"unet", "text_encoder", "text_encoder_2"}
    code, out, err = _run(capsys, "inspect", path, "--base", sd_cases["sd1"].checkpoint, "--json")
    assert code == 2 and json.loads(out)["base_problems"]


def test_inspect_into_closed_pipe(kohya_file):
    """`lora-bridge inspect X | head -1`: the reader leaves early; no BrokenPipe traceback, exit 0."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen([sys.executable, "-m", "extension", "inspect", str(kohya_file)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=root)
    proc.stdout.close()  # like `head` exiting before the output arrives
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_inspect_says_how_alpha_is_carried(capsys, sd_cases, tmp_path):
    from converters import convert

    file = convert(sd_cases["sd1"].peft_dir, tmp_path / "d.safetensors", to="diffusers")
    code, out, err = _run(capsys, "inspect", file)
    assert code == 0, err
    assert "alpha: folded into weights (alpha = rank)" in out
    code, out, _ = _run(capsys, "inspect", file, "--json")
    assert json.loads(out)["alpha_form"] == "folded into weights (alpha = rank)"
    kohya = convert(sd_cases["sd1"].peft_dir, tmp_path / "k.safetensors", to="kohya")
    code, out, _ = _run(capsys, "inspect", kohya)
    assert "alpha: alpha tensors" in out
