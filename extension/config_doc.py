"""The README's config reference, generated from the schema so docs and code cannot drift.

``python -m extension.config_doc`` prints the block; ``--write`` refreshes README.md (between the
markers) and docs/config-reference.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .config import ALIASES, TASKS, schema

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"
_GROUP_TITLES = {"common": "All tasks", "image": "text-to-image (image LoRA)", "text": "text-generation (text LoRA)"}


def _cell(text: str) -> str:
    """Markdown table cell text: pipes escaped, one line."""
    return text.replace("|", "\\|").replace("\n", " ")


def _default(value: object) -> str:
    """How a default looks in the table."""
    if value is None:
        return "*(none)*"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return "`[" + ", ".join(value) + "]`" if value else "`[]`"
    if isinstance(value, dict):
        return "`{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}`"
    if isinstance(value, str) and not value:
        return '`""`'
    return f"`{value}`"


def config_reference_markdown() -> str:
    """The config reference block, markers included, ending with a newline."""
    lines = [START, "", "Keys of the training config (YAML for `lora-bridge train --config`, `--set key=value`, the "
             "WebUI tab's import/export and the REST API). Unknown keys are rejected with the nearest valid name.",
             f"`task_type` is one of {', '.join(f'`{t}`' for t in TASKS)} (`image-generation`, the lora-scripts "
             "name, means `text-to-image`); keys of the other task are ignored with a warning. "
             "`max_train_steps`, when set, overrides `epochs`.", ""]
    specs = schema()
    for group, title in _GROUP_TITLES.items():
        lines += [f"### {title}", "", "| key | type | default | description |", "|---|---|---|---|"]
        for spec in specs:
            if spec.group != group:
                continue
            doc = spec.doc
            if spec.choices:
                doc += " Choices: " + ", ".join(f"`{c}`" for c in spec.choices) + "."
            lines.append(f"| `{spec.name}` | {spec.type_name} | {_cell(_default(spec.default))} | {_cell(doc)} |")
        lines.append("")
    aliases = ", ".join(f"`{a}` → `{k}`" for a, k in sorted(ALIASES.items()))
    lines += [f"kohya sd-scripts names accepted as aliases: {aliases}. Setting an alias and its key together is "
              "an error.", "", END]
    return "\n".join(lines) + "\n"


def replace_block(text: str, block: str) -> str:
    """``text`` with the marked block replaced (or appended under a heading when missing)."""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        return head + block.rstrip("\n") + tail
    return text.rstrip("\n") + "\n\n## Config reference\n\n" + block


def write_docs(root: Path) -> None:
    """Refresh README.md and docs/config-reference.md under ``root``."""
    from ._converters import converters

    atomic = converters.atomic
    block = config_reference_markdown()
    readme = root / "README.md"
    old = readme.read_text(encoding="utf-8") if readme.exists() else "# LoRA Bridge\n"
    with atomic.atomic_file(readme) as tmp:
        tmp.write_text(replace_block(old, block), encoding="utf-8")
    (root / "docs").mkdir(exist_ok=True)
    with atomic.atomic_file(root / "docs" / "config-reference.md") as tmp:
        tmp.write_text("# Config reference\n\n" + block, encoding="utf-8")


if __name__ == "__main__":  # pragma: no cover
    if "--write" in sys.argv:
        write_docs(Path(__file__).resolve().parent.parent)
    else:
        sys.stdout.write(config_reference_markdown())
