"""The Settings form, derived from the shared config schema (``config.schema()``) so no key can drift.

Every schema field of the task becomes one input; a few well-known ones are "basic", the rest
"advanced". Values travel as plain Python between the form, presets, YAML and ``config_from_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Set by other parts of the tab (Dataset, Model, Output), not by the Settings form.
OWNED_ELSEWHERE = ("train_data_dir", "metadata_path", "base_model", "output_dir", "task_type", "output_name")
BASIC = ("overwrite", "resolution", "lora_rank", "lora_alpha", "learning_rate", "batch_size", "epochs",
         "max_train_steps", "save_steps", "seed", "trigger_word", "sample_prompts", "sample_every_n_steps",
         "max_length", "data_format")


@dataclass
class FormField:
    """One schema field as the form shows it."""

    name: str
    kind: str  # bool | int | float | choice | list | dict | text | optional_int | optional_float
    default: Any
    choices: tuple[str, ...] = ()
    help: str = ""
    group: str = "common"

    @property
    def basic(self) -> bool:
        """Shown outside the Advanced accordion."""
        return self.name in BASIC


KINDS = {"bool": "bool", "int": "int", "float": "float", "str": "text", "list[str]": "list", "mapping": "dict",
         "int?": "optional_int", "float?": "optional_float", "str?": "text"}


def schema_fields(task_type: str = "text-to-image") -> list[FormField]:
    """Form fields for ``task_type`` (common keys plus that task's group), minus keys other sections own."""
    from ..config import fields_for_task, schema

    keep = set(fields_for_task(task_type))
    out = []
    for spec in schema(task_type):
        if spec.name not in keep or spec.name in OWNED_ELSEWHERE:
            continue
        kind = "choice" if spec.choices else KINDS.get(spec.type_name, "text")
        out.append(FormField(spec.name, kind, spec.default, tuple(spec.choices or ()), spec.doc, spec.group))
    out.sort(key=lambda f: (not f.basic, BASIC.index(f.name) if f.basic else 0))
    return out


def to_widget(field: FormField, value: Any) -> Any:
    """A config value as the input shows it."""
    if field.kind == "list":
        return "\n".join(str(v) for v in (value or []))
    if field.kind == "dict":
        import yaml

        return yaml.safe_dump(dict(value), default_flow_style=True, sort_keys=True).strip() if value else ""
    if field.kind in ("optional_int", "optional_float", "text"):
        return "" if value is None else str(value)
    if field.kind == "choice":
        return "" if value is None else str(value)
    return value


def from_widget(field: FormField, value: Any) -> Any:
    """An input's value as the config expects it (strings parsed, blanks to None)."""
    if field.kind == "bool":
        return bool(value)
    if field.kind == "int":
        return int(value) if value not in (None, "") else field.default
    if field.kind == "float":
        return float(value) if value not in (None, "") else field.default
    if field.kind in ("optional_int", "optional_float"):
        text = str(value if value is not None else "").strip()
        if not text:
            return None
        try:
            number = float(text)
        except ValueError:
            from ..errors import UserError

            raise UserError(f"setting {field.name}: {text!r} is not a number") from None
        return int(number) if field.kind == "optional_int" and number.is_integer() else number
    if field.kind == "list":
        return [line.strip() for line in str(value or "").splitlines() if line.strip()]
    if field.kind == "dict":
        import yaml

        text = str(value or "").strip()
        parsed = yaml.safe_load(text) if text else {}
        if not isinstance(parsed, dict):
            from ..errors import UserError

            raise UserError(f"setting {field.name}: write a mapping like {{d_coef: 0.5}}, got {text!r}")
        return parsed
    text = "" if value is None else str(value)
    if field.kind == "choice":
        return text or field.default
    return text if text or field.default not in (None,) else None
