"""``convert --force`` replaces only an adapter (issue 22, item 1): never a folder holding anything else,
never a code file, never something that is not an adapter; the CLI too (it is the same function)."""

from __future__ import annotations

import os

import pytest

from converters import AdapterError, convert
from extension.cli import main


@pytest.fixture
def kohya_file(sd_cases, tmp_path):
    return convert(sd_cases["sd1"].peft_dir, tmp_path / "good.safetensors", to="kohya", arch="sd1")


def _cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def _one_line_refusal(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)


def test_force_onto_a_folder_with_unrelated_files_is_refused_and_they_survive(capsys, kohya_file, tmp_path):
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "notes.txt").write_text("mine")
    (victim / "sub" / "deep.bin").write_bytes(b"\x00" * 8)
    code, err = _cli(capsys, "convert", kohya_file, victim, "--to", "peft", "--force")
    _one_line_refusal(code, err, str(victim), "--force replaces only a LoRA adapter")
    assert (victim / "notes.txt").read_text() == "mine" and (victim / "sub" / "deep.bin").is_file()


def test_force_onto_a_peft_folder_with_an_extra_file_is_refused(kohya_file, tmp_path):
    folder = convert(kohya_file, tmp_path / "adapter", to="peft")
    (folder / "unet" / "train.py").write_text("print('hi')")
    with pytest.raises(AdapterError, match="not part of an adapter"):
        convert(kohya_file, folder, to="peft", force=True)
    assert (folder / "unet" / "train.py").is_file()


def test_force_onto_a_code_file_is_refused_and_it_is_unchanged(capsys, kohya_file, tmp_path):
    script = tmp_path / "install.py"
    script.write_text("import os\n")
    code, err = _cli(capsys, "convert", kohya_file, script, "--to", "kohya", "--force")
    _one_line_refusal(code, err, "install.py", ".py file")
    assert script.read_text() == "import os\n"


def test_force_onto_a_file_that_is_no_adapter_is_refused(kohya_file, tmp_path):
    other = tmp_path / "model.safetensors"
    other.write_bytes(b"not a safetensors file at all")
    with pytest.raises(AdapterError, match="not an adapter LoRA Bridge can read"):
        convert(kohya_file, other, to="kohya", force=True)
    assert other.read_bytes() == b"not a safetensors file at all"


def test_force_onto_a_link_is_refused(kohya_file, tmp_path):
    target = tmp_path / "elsewhere.safetensors"
    convert(kohya_file, target, to="kohya")
    link = tmp_path / "link.safetensors"
    os.symlink(target, link)
    with pytest.raises(AdapterError, match="is a link"):
        convert(kohya_file, link, to="kohya", force=True)


def test_force_file_onto_a_peft_folder_is_one_line(kohya_file, tmp_path):
    folder = convert(kohya_file, tmp_path / "adapter", to="peft")
    with pytest.raises(AdapterError, match="is a folder, the output would be a file"):
        convert(kohya_file, folder, to="kohya", force=True)
    assert (folder / "unet" / "adapter_config.json").is_file()


def test_force_replaces_an_adapter_file_and_an_adapter_folder(capsys, kohya_file, tmp_path):
    dst = tmp_path / "again.safetensors"
    convert(kohya_file, dst, to="kohya")
    assert _cli(capsys, "convert", kohya_file, dst, "--force", "--name", "renamed")[0] == 0
    folder = convert(kohya_file, tmp_path / "adapter", to="peft")
    assert convert(kohya_file, folder, to="peft", force=True) == folder
    assert (folder / "unet" / "adapter_config.json").is_file() and (folder / "lora_bridge.json").is_file()
