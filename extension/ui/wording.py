"""Messages name CLI flags (``pass --force``) and config keys (``min_bucket_reso``); the tab and the REST
API name their own controls.

The converters' and the config's wording stays for CLI and YAML users; a message reaching the tab
gets the field label and where the field is, one reaching REST the JSON key of the request body.
"""

from __future__ import annotations

import re

TAB_LABELS = {"force": "Overwrite", "base": "Base model", "to": "To", "arch": "Arch", "dtype": "dtype"}
_FLAG = re.compile(r"(pass )?--(force|base|to|arch|dtype)(?![\w-])")


def for_tab(message: str) -> str:
    """``pass --to peft`` -> ``set To peft``; ``pass --force to overwrite it`` -> ``tick Overwrite to replace it``."""
    message = message.replace("pass --force to overwrite it", "tick Overwrite to replace it")
    return _FLAG.sub(lambda m: ("set " if m.group(1) else "") + TAB_LABELS[m.group(2)], message)


def for_rest(message: str) -> str:
    """``pass --base X`` -> ``send "base" X``; ``pass --force ...`` -> ``send "force": true ...``."""
    message = message.replace("pass --force", 'send "force": true')
    return _FLAG.sub(lambda m: ("send " if m.group(1) else "") + f'"{m.group(2)}"', message)


# Config keys another part of the tab sets (not the Settings / Text LoRA forms).
ELSEWHERE = {"text-to-image": {"train_data_dir": "Image folder (Dataset)", "base_model": "Base checkpoint (Model)",
                               "output_name": "LoRA name (Train)"},
             "text-generation": {"train_data_dir": "Dataset (Text LoRA)", "base_model": "Base model (Text LoRA)",
                                 "output_name": "Adapter name (Text LoRA)"}}
_KEY = re.compile(r"(?<![\w/\\.-])'?([a-z][a-z0-9]*(?:_[a-z0-9]+)+)'?(?![\w/\\-]|\.\w)")
_CLI_LINT = re.compile(r"see `?lora-bridge lint`?")


def where(key: str, task: str = "text-to-image") -> str | None:
    """A config key as the tab shows it: "Min bucket resolution (Settings → Advanced)"; None if no field."""
    from .form import field_label, schema_fields

    if key in ELSEWHERE.get(task, {}):
        return ELSEWHERE[task][key]
    field = next((f for f in schema_fields(task) if f.name == key), None)
    if field is None:
        return None
    section = "Settings" if task == "text-to-image" else "Text LoRA"
    return f"{field_label(key)} ({section}{'' if field.basic else ' → Advanced'})"


def config_for_tab(message: str, task: str = "text-to-image") -> str:
    """Config keys in a start or form message -> field labels with their place; the CLI's lint -> the Lint button.

    ``resolution 64 is below min_bucket_reso 256`` -> ``... Min bucket resolution (Settings → Advanced) 256``.
    Only snake_case keys are replaced: one-word keys (``resolution``) read as the label already.
    """
    if task == "text-to-image":
        message = _CLI_LINT.sub("press Lint dataset in Dataset", message)
    return _KEY.sub(lambda m: where(m.group(1), task) or m.group(0), message)
