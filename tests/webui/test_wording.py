"""Converter messages reworded for the tab's fields and REST's body keys (extension/ui/wording.py)."""

from __future__ import annotations

from extension.ui.wording import for_rest, for_tab

GGUF = "a.gguf: needs the base model; pass --base BASE.gguf (or the base's Hugging Face folder)"


def test_flags_become_fields_and_keys():
    assert for_tab(GGUF).endswith("set Base model BASE.gguf (or the base's Hugging Face folder)")
    assert for_rest(GGUF).endswith('send "base" BASE.gguf (or the base\'s Hugging Face folder)')
    assert for_tab("x: unknown arch; pass --arch sd1|sdxl") == "x: unknown arch; set Arch sd1|sdxl"
    exists = "x: already exists; pass --force to overwrite it"
    assert for_rest(exists) == 'x: already exists; send "force": true to overwrite it'
    assert for_tab(exists) == "x: already exists; tick Overwrite to replace it"


def test_other_flags_stay():
    """Flags the tab/REST have no control for, and longer flags that start alike, are left alone."""
    for message in ("pass --svd-rank R to approximate", "set n_kv_heads to 2 (--n-kv-heads / ggml_n_kv_heads)",
                    "use --base-model X", "--tokenizer"):
        assert for_tab(message) == message and for_rest(message) == message
