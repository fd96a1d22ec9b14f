"""Errors name files and positions, never their content: a secret planted in each kind of file never shows.

``metadata_path`` (and other path settings) may name any file the WebUI user can read, so a reader's
message must not carry its text to whoever sent the request (REST body, CLI stderr, tab).
"""

from __future__ import annotations

import json
import struct

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from extension.api import PREFIX, register
from extension.cli import main
from extension.errors import UserError
from extension.jobs import JobManager
from extension.ui.host import Host

SECRET = "SECRET-7f3a9c"
PASSWD = f"root:x:0:0:{SECRET}:/root:/bin/bash\ndaemon:x:1:1:{SECRET}:/usr/sbin\n"


@pytest.fixture
def client(tmp_path, runner_factory):
    host = Host(output_dir=tmp_path / "loras", jobs=JobManager(runner=runner_factory()), extra_folders=[tmp_path])
    app = FastAPI()
    register(app, host)
    return TestClient(app)


def test_metadata_path_to_any_file_rest(client, tmp_path, dataset, tiny_base):
    passwd = tmp_path / "passwd"
    passwd.write_text(PASSWD)
    answer = client.post(f"{PREFIX}/start", json={"base_model": str(tiny_base), "train_data_dir": str(dataset),
                                                  "metadata_path": str(passwd), "output_name": "x",
                                                  "output_dir": str(tmp_path / "run"), "max_train_steps": 2})
    assert answer.status_code == 400, answer.text
    assert "passwd" in answer.json()["error"] and "line 1" in answer.json()["error"]
    assert SECRET not in answer.text and "root:x" not in answer.text


def test_metadata_path_to_any_file_cli(tmp_path, capsys, dataset, tiny_base):
    passwd = tmp_path / "passwd"
    passwd.write_text(PASSWD)
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"base_model": str(tiny_base), "train_data_dir": str(dataset),
                                  "metadata_path": str(passwd), "output_name": "x",
                                  "output_dir": str(tmp_path / "run"), "max_train_steps": 2}))
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "passwd" in err and SECRET not in err and "root:x" not in err, err


@pytest.mark.parametrize("kind", ["csv rows", "jsonl rows", "jsonl not json", "not utf-8"])
def test_caption_metadata_rows_are_not_echoed(tmp_path, kind):
    from extension.data.scan import scan_folder

    root = tmp_path / "data"
    root.mkdir()
    meta = tmp_path / ("m.csv" if kind == "csv rows" else "m.jsonl")
    if kind == "csv rows":
        meta.write_text(f"file_name,text\n{SECRET}.png,a cat\n")
    elif kind == "jsonl rows":
        meta.write_text(json.dumps({"file_name": f"{SECRET}.png", "text": "a cat"}) + "\n")
    elif kind == "jsonl not json":
        meta.write_text(f'{{"file_name": "{SECRET}\n')
    else:
        meta.write_bytes(SECRET.encode() + b"\xff\xfe" + SECRET.encode())
    try:
        result = scan_folder(root, metadata_path=str(meta))
        text = " ".join(f"{p.path} {p.detail}" for p in result.problems)
        assert "m.csv:2" in text or "m.jsonl:1" in text, text
    except UserError as exc:
        text = str(exc)
        assert "m.jsonl" in text
    assert SECRET not in text, text


def test_yaml_config_errors_give_position_only(tmp_path, capsys):
    for body in (f"a: !{SECRET} 1\n", f"a: [{SECRET}\n", f'a: "\\q{SECRET}"\n', f"{SECRET}: [\n"):
        config = tmp_path / "c.yaml"
        config.write_text(body)
        assert main(["train", "--config", str(config)]) == 2
        err = capsys.readouterr().err
        assert "c.yaml" in err and "line" in err and SECRET not in err, err


@pytest.mark.parametrize("body", [f'{{"peft_type": "{SECRET}"}}', f'{{"lora_alpha": "{SECRET}"}}',
                                  f'{{"r": 4, {SECRET}'])
def test_peft_config_errors_do_not_echo(tmp_path, capsys, body):
    import numpy as np

    from converters.safetensors_io import write_safetensors

    folder = tmp_path / "adapter"
    folder.mkdir()
    write_safetensors(folder / "adapter_model.safetensors", {
        "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight": np.zeros((2, 8), np.float32),
        "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight": np.zeros((8, 2), np.float32)})
    (folder / "adapter_config.json").write_text(body)
    assert main(["inspect", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "adapter" in err and SECRET not in err, err


def test_safetensors_header_text_is_not_echoed(tmp_path, capsys):
    blob = ('{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "' + SECRET + '"').encode()
    path = tmp_path / "s.safetensors"
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * 4)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "s.safetensors" in err and SECRET not in err, err


def test_peft_base_config_is_not_copied_into_outputs(tmp_path, capsys):
    """base_model_name_or_path names a folder: only arch and head counts may come from its config.json."""
    import numpy as np

    from converters.safetensors_io import write_safetensors

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "llama", "num_attention_heads": 4,
                                                  "num_key_value_heads": 2, "api_token": SECRET}))
    folder = tmp_path / "adapter"
    folder.mkdir()
    write_safetensors(folder / "adapter_model.safetensors", {
        "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight": np.zeros((2, 8), np.float32),
        "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight": np.zeros((8, 2), np.float32)})
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["v_proj"],
        "base_model_name_or_path": str(base), "task_type": "CAUSAL_LM"}))
    assert main(["inspect", str(folder), "--json"]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    facts = json.loads(json.loads(out)["metadata"]["base_model_config"])
    assert facts == {"model_type": "llama", "num_attention_heads": 4, "num_key_value_heads": 2}
    dst = tmp_path / "a.gguf"
    assert main(["convert", str(folder), str(dst), "--to", "gguf"]) == 0, capsys.readouterr().err
    assert SECRET.encode() not in dst.read_bytes()


@pytest.mark.parametrize("kind", ["file", "hf folder"])
def test_text_base_model_content_is_not_echoed(tmp_path, capsys, kind):
    if kind == "file":
        base = tmp_path / "base.gguf"
        base.write_text(f"Q9z!{SECRET}\n")
    else:
        base = tmp_path / "hf"
        base.mkdir()
        (base / "config.json").write_text(json.dumps({"model_type": SECRET, "num_attention_heads": 2}))
        (base / "model.safetensors").write_bytes(b"")
    data = tmp_path / "t.txt"
    data.write_text("hello world\n")
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"task_type": "text-generation", "base_model": str(base), "train_data_dir": str(data),
                                  "output_dir": str(tmp_path / "run")}))
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert base.name in err and SECRET not in err and "Q9z!" not in err, err
