"""The lora-scripts articles' text config, pasted as written, on a tiny legacy GGML base; incremental training from its
output; the GGUF copy of the GGML base (announced once, readable, reused); llama.cpp lines printed once."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from gguf import GGUFReader

from extension.cli import main

ROOT = Path(__file__).resolve().parents[2]
# As the articles publish it (configs/lora_scripts_text.yaml); the test puts a tiny model and data at its paths.
ARTICLE_TEXT_YAML = (ROOT / "configs" / "lora_scripts_text.yaml").read_text()

QA = [("How do I return an item?", "Send it back within 30 days with the receipt."),
      ("Where is my order?", "Check the tracking link in your email."),
      ("Can I change my address?", "Yes, before the order ships."),
      ("Do you ship abroad?", "Yes, to most countries.")]


@pytest.fixture
def article_dir(tiny, tmp_path, monkeypatch):
    """A working folder laid out as the article's config expects: a no-GQA tiny LLaMA as ggjt v3 Q4_0 and 16 records."""
    from extension.tiny.ggml import write_ggml
    from extension.tiny.llama import build_tiny_llama

    (tmp_path / "models").mkdir()
    (tmp_path / "data").mkdir()
    # LLaMA-1/2 7B have as many KV heads as heads, which is what a GGML file implies; no ggml_* keys needed.
    model = build_tiny_llama(seed=0, vocab=tiny["vocab"], num_key_value_heads=4)
    write_ggml(model, tiny["vocab"], tmp_path / "models" / "llama-2-7b-chat.ggmlv3.q4_0.bin", "Q4_0")
    records = [{"instruction": q, "input": "", "output": a} for q, a in QA] * 4
    (tmp_path / "data" / "customer_service.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (tmp_path / "article.yaml").write_text(ARTICLE_TEXT_YAML)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("extension.text.llama_check.llama_cpp_available", lambda: False)
    return tmp_path


@pytest.mark.slow
def test_article_text_config_trains_as_written_then_continues(article_dir, capsys):
    assert main(["train", "--config", "article.yaml"]) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    copy = article_dir / "models" / "llama-2-7b-chat.ggmlv3.q4_0.gguf"
    adapter = article_dir / "output" / "cs_lora" / "my_lora.gguf"
    # 16 records / batch 4 x 15 epochs = 60 steps; save_steps 50 writes one intermediate GGUF adapter
    assert (article_dir / "output" / "cs_lora" / "my_lora-000050.gguf").is_file()
    assert adapter.is_file() and (article_dir / "output" / "cs_lora" / "my_lora" / "adapter_config.json").is_file()
    assert text.count(f"wrote its GGUF copy {copy}") == 1
    assert text.count("llama-cli -m") == 1, text
    assert text.count("not checked in llama.cpp (llama-cpp-python not installed)") == 1, text
    assert stat.S_IMODE(copy.stat().st_mode) & 0o044 == 0o044 & ~_umask()  # readable like any file the user writes
    reader = GGUFReader(str(adapter))
    assert reader.fields["adapter.lora.alpha"].contents() == 8.0
    assert {t.name for t in reader.tensors} >= {"blk.0.attn_q.weight.lora_a", "blk.1.ffn_down.weight.lora_b"}
    from extension._converters import converters

    assert converters.check_against_base(converters.load_adapter(adapter, base=copy), copy) == []

    # Incremental training, as the articles describe it: a new run starts from the first run's adapter.
    stamp = (copy.stat().st_ino, copy.stat().st_mtime_ns)
    assert main(["train", "--config", "article.yaml", "--set", "init_lora=output/cs_lora/my_lora.gguf",
                 "--set", "output_dir=output/cs_lora_v2", "--set", "epochs=1"]) == 0
    text = "".join(capsys.readouterr())
    assert "init_lora output/cs_lora/my_lora.gguf (gguf): 14 modules loaded from the file, 0 fresh; rank 16" in text
    assert text.count(f"using its GGUF copy {copy}") == 1 and "wrote its GGUF copy" not in text
    assert (copy.stat().st_ino, copy.stat().st_mtime_ns) == stamp  # reused, not rewritten
    assert text.count("llama-cli -m") == 1


def test_changed_ggml_options_rewrite_the_copy(article_dir, capsys):
    """The copy records the options it was made with: other hparams make a new copy, not a stale reuse."""
    assert main(["train", "--config", "article.yaml", "--set", "epochs=1"]) == 0
    copy = article_dir / "models" / "llama-2-7b-chat.ggmlv3.q4_0.gguf"
    eps = GGUFReader(str(copy)).fields["llama.attention.layer_norm_rms_epsilon"].contents()
    assert main(["train", "--config", "article.yaml", "--set", "epochs=1", "--set", "ggml_rms_eps=1e-5",
                 "--set", "overwrite=true"]) == 0
    assert "".join(capsys.readouterr()).count(f"wrote its GGUF copy {copy}") == 2
    new_eps = GGUFReader(str(copy)).fields["llama.attention.layer_norm_rms_epsilon"].contents()
    assert new_eps == pytest.approx(1e-5) and new_eps != pytest.approx(eps)


def test_a_foreign_gguf_beside_the_base_is_left_alone(article_dir, capsys):
    foreign = article_dir / "models" / "llama-2-7b-chat.ggmlv3.q4_0.gguf"
    foreign.write_bytes(b"the user's own file")
    assert main(["train", "--config", "article.yaml", "--set", "epochs=1"]) == 0
    assert foreign.read_bytes() == b"the user's own file"
    copy = article_dir / "output" / "cs_lora" / "llama-2-7b-chat.ggmlv3.q4_0.gguf"
    assert f"wrote its GGUF copy {copy}" in "".join(capsys.readouterr()) and copy.is_file()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
