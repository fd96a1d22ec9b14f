"""The command line is a contract: subcommands, flags and exit codes."""

import subprocess
import sys

import pytest

from extension.cli import build_parser, main


def test_every_documented_subcommand_parses():
    parser = build_parser()
    parser.parse_args(["demo"])
    parser.parse_args(["train", "--config", "f.yaml", "--set", "a=1", "--set", "b=2"])
    parser.parse_args(["convert", "a", "b", "--to", "gguf", "--base", "m.gguf", "--arch", "llama",
                       "--dtype", "f16", "--force", "--name", "n"])
    parser.parse_args(["inspect", "p", "--base", "b", "--json"])
    parser.parse_args(["lint", "dir"])
    parser.parse_args(["caption", "dir", "--model", "m"])
    parser.parse_args(["upgrade-ggml", "in.bin", "out.gguf"])
    parser.parse_args(["ui", "--host", "127.0.0.1", "--port", "7000"])


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["convert", "only-one-arg"])
    assert info.value.code == 2


def test_missing_source_is_user_error_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "extension", "convert", str(tmp_path / "nope.safetensors"), str(tmp_path / "o.gguf")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "nope.safetensors" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.gguf").exists()


def test_not_an_adapter_is_user_error(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    assert main(["inspect", str(junk)]) == 2


def test_inspect_target_names_keep_sequential_index():
    from converters.api import _target_name

    assert _target_name("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0") == "to_out.0"
    assert _target_name("model.layers.0.self_attn.q_proj") == "q_proj"
