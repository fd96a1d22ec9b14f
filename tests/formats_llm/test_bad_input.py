"""Bad LLM adapter input: one line on stderr, exit 2, no traceback, nothing written."""

import json
import shutil

import numpy as np
import pytest

import converters
from converters.model import LoraAdapter, LoraModule
from extension.cli import main


def _cli_fails(capsys, argv, *words):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


def _no_leftovers(folder, dst):
    assert not dst.exists()
    assert not list(folder.glob(".*.tmp")) and not list(folder.glob(f".{dst.name}*"))


@pytest.fixture(scope="module")
def our_gguf(peft_adapters, llama_files, tmp_path_factory):
    folder, _ = peft_adapters("uniform")
    return converters.convert(folder, tmp_path_factory.mktemp("bad") / "good.gguf", base=llama_files["F32"])


def test_truncated_gguf_adapter(capsys, our_gguf, tmp_path):
    data = our_gguf.read_bytes()
    for size in (len(data) // 2, 40, 6):
        bad = tmp_path / f"cut{size}.gguf"
        bad.write_bytes(data[:size])
        _cli_fails(capsys, ["convert", str(bad), str(tmp_path / "out"), "--to", "peft"], str(bad))
        _no_leftovers(tmp_path, tmp_path / "out")


def test_gguf_model_is_not_an_adapter(capsys, llama_files, tmp_path):
    _cli_fails(capsys, ["convert", str(llama_files["F32"]), str(tmp_path / "out")], "not a LoRA adapter", "--base")
    _cli_fails(capsys, ["inspect", str(llama_files["Q8_0"])], "not a LoRA adapter")


def test_adapter_given_as_base(capsys, peft_adapters, our_gguf, tmp_path):
    folder, _ = peft_adapters("uniform")
    dst = tmp_path / "x.gguf"
    _cli_fails(capsys, ["convert", str(folder), str(dst), "--base", str(our_gguf)], "not a base model")
    _no_leftovers(tmp_path, dst)


def test_other_hidden_size(capsys, peft_adapters, tmp_path):
    from extension.tiny.llama import build_tiny_llama, write_tiny_gguf

    small = write_tiny_gguf(build_tiny_llama(hidden_size=32, intermediate_size=64), tmp_path / "small.gguf")
    folder, _ = peft_adapters("uniform")
    dst = tmp_path / "out.gguf"
    _cli_fails(capsys, ["convert", str(folder), str(dst), "--base", str(small)], "does not fit", str(small))
    _no_leftovers(tmp_path, dst)


def test_llama_adapter_on_qwen2_base(capsys, peft_adapters, our_gguf, qwen2_files, tmp_path):
    dst = tmp_path / "out.gguf"
    # our GGUF adapter records llama; the PEFT one points at a llama config.json
    _cli_fails(capsys, ["convert", str(our_gguf), str(dst), "--base", str(qwen2_files["F32"]), "--force"],
               "llama", "qwen2")
    folder, _ = peft_adapters("uniform")
    _cli_fails(capsys, ["convert", str(folder), str(dst), "--base", str(qwen2_files["F32"])], "llama", "qwen2")
    _cli_fails(capsys, ["convert", str(folder), str(dst), "--base", str(qwen2_files["hf"])], "llama", "qwen2")
    _no_leftovers(tmp_path, dst)


def test_no_head_counts_anywhere(capsys, peft_adapters, tmp_path):
    """A PEFT adapter whose base is only a hub id: llama vs qwen2 and the head counts are unknown."""
    folder, _ = peft_adapters("uniform")
    copy = tmp_path / "hub-adapter"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "some-org/some-model"
    (copy / "adapter_config.json").write_text(json.dumps(config))
    dst = tmp_path / "out.gguf"
    _cli_fails(capsys, ["convert", str(copy), str(dst)], "--base")
    _cli_fails(capsys, ["convert", str(copy), str(dst), "--arch", "llama"], "head counts", "--base")
    _no_leftovers(tmp_path, dst)


def test_existing_destination_needs_force(capsys, peft_adapters, llama_files, our_gguf, tmp_path):
    folder, _ = peft_adapters("uniform")
    dst = tmp_path / "exists.gguf"
    dst.write_bytes(b"keep me")
    _cli_fails(capsys, ["convert", str(folder), str(dst), "--base", str(llama_files["F32"])], "--force")
    assert dst.read_bytes() == b"keep me"
    _cli_fails(capsys, ["convert", str(folder), str(dst), "--base", str(llama_files["F32"]), "--force"],
               "not an adapter")  # --force replaces only an adapter
    assert dst.read_bytes() == b"keep me"
    dst.unlink()
    assert main(["convert", str(folder), str(dst), "--base", str(llama_files["F32"])]) == 0
    assert main(["convert", str(folder), str(dst), "--base", str(llama_files["F32"]), "--force"]) == 0


def test_dora_refused(capsys, llama_files, tmp_path):
    peft = pytest.importorskip("peft")
    from extension.tiny.llama import build_tiny_llama

    model = peft.get_peft_model(build_tiny_llama(), peft.LoraConfig(r=2, target_modules=["v_proj"], use_dora=True))
    model.save_pretrained(tmp_path / "dora")
    dst = tmp_path / "dora.gguf"
    _cli_fails(capsys, ["convert", str(tmp_path / "dora"), str(dst), "--base", str(llama_files["F32"])], "DoRA")
    _no_leftovers(tmp_path, dst)


def test_sd_adapter_refused(tmp_path):
    module = LoraModule(down=np.ones((2, 8), np.float32), up=np.ones((8, 2), np.float32), alpha=2.0)
    adapter = LoraAdapter(modules={"unet.down_blocks.0.attentions.0.proj_in": module}, arch="sd1")
    with pytest.raises(converters.AdapterError, match="Stable Diffusion"):
        converters.save_adapter(adapter, tmp_path / "sd.gguf")
    assert not (tmp_path / "sd.gguf").exists()


def test_truncated_ggla(capsys, tmp_path):
    bad = tmp_path / "old.bin"
    import struct

    bad.write_bytes(b"ggla"[::-1] + struct.pack("<iii", 1, 4, 8) + struct.pack("<iii", 2, 20, 0) + b"\0" * 10)
    _cli_fails(capsys, ["convert", str(bad), str(tmp_path / "new.gguf")], "truncated")
    _no_leftovers(tmp_path, tmp_path / "new.gguf")


def test_legacy_ggml_base_names_its_gguf_copy(capsys, peft_adapters, tmp_path):
    """A GGML .bin given as --base (the file a text run trained on) says how to get the GGUF llama.cpp needs."""
    base = tmp_path / "tiny.ggmlv3.q4_0.bin"
    base.write_bytes((0x67676A74).to_bytes(4, "little") + (3).to_bytes(4, "little") + bytes(64))
    folder, _ = peft_adapters("uniform")
    dst = tmp_path / "a.gguf"
    _cli_fails(capsys, ["convert", str(folder), str(dst), "--base", str(base)],
               "legacy GGML", "tiny.ggmlv3.q4_0.gguf", "upgrade-ggml")
    _no_leftovers(tmp_path, dst)
    _cli_fails(capsys, ["inspect", str(folder), "--base", str(base)], "legacy GGML")
