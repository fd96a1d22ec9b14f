"""The README's config reference is exactly the block generated from the schema."""

from __future__ import annotations

from pathlib import Path

from extension.config import FIELDS
from extension.config_doc import END, START, config_reference_markdown, replace_block

ROOT = Path(__file__).resolve().parents[2]


def _block(text: str) -> str:
    assert START in text and END in text, "config reference markers missing"
    return START + text.split(START, 1)[1].split(END, 1)[0] + END + "\n"


def test_readme_block_is_generated():
    expected = config_reference_markdown()
    hint = "run `python -m extension.config_doc --write`"
    assert _block((ROOT / "README.md").read_text(encoding="utf-8")) == expected, hint
    assert _block((ROOT / "docs" / "config-reference.md").read_text(encoding="utf-8")) == expected, hint


def test_block_lists_every_key():
    block = config_reference_markdown()
    for name in FIELDS:
        assert f"| `{name}` |" in block


def test_replace_block_keeps_surroundings():
    text = f"# T\n\nintro\n\n{START}\nold\n{END}\n\nafter\n"
    out = replace_block(text, config_reference_markdown())
    assert out.startswith("# T\n\nintro\n\n") and out.endswith(f"{END}\n\nafter\n") and "\nold\n" not in out
