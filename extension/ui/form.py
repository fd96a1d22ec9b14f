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

# Values a task's form starts with instead of the schema default (which YAML, the CLI and REST keep), with the
# sentence its help adds. Text: at the schema's 1e-4 (LLaMA-Factory's rate, but it pairs it with alpha = 2 x rank,
# a 4x larger update than alpha/rank 0.5 here) a run of the form's 10 epochs over a 10-line corpus (100 steps) learns
# nothing; at 1e-3 the tiny LLaMA follows a 40-line corpus after 80 steps (README, Text LoRA).
FORM_START: dict[str, dict[str, tuple[Any, str]]] = {
    "text-generation": {"learning_rate": (1e-3, "This form starts at 1e-3 (YAML/CLI default 1e-4) so a small "
                                                "dataset learns within its 10 epochs.")},
}


def form_start(task_type: str) -> dict[str, Any]:
    """The values ``task_type``'s form starts with where they differ from the schema default."""
    return {name: value for name, (value, _) in FORM_START.get(task_type, {}).items()}


@dataclass
class FormField:
    """One schema field as the form shows it."""

    name: str
    kind: str  # bool | bool_auto | int | float | choice | list | dict | text | optional_int | optional_float
    default: Any
    choices: tuple[str, ...] = ()
    help: str = ""
    group: str = "common"
    minimum: float | None = None

    @property
    def basic(self) -> bool:
        """Shown outside the Advanced accordion."""
        return self.name in BASIC

    @property
    def zero_unset(self) -> bool:
        """An optional whole number that can never be 0 (``max_train_steps``): a number input, 0 or empty = unset.

        Other optional numbers stay text inputs: an empty number input may come back as 0, and 0 is a
        value for them (``sample_seed``, ``text_encoder_lr``).
        """
        return self.kind == "optional_int" and self.minimum is not None and self.minimum >= 1


KINDS = {"bool": "bool", "int": "int", "float": "float", "str": "text", "list[str]": "list", "mapping": "dict",
         "int?": "optional_int", "float?": "optional_float", "str?": "text", "bool or auto": "bool_auto"}
# A true/false/auto key is a dropdown of these words (a checkbox has no third state).
BOOL_AUTO = {"auto": "auto", "on": True, "off": False}


def schema_fields(task_type: str = "text-to-image") -> list[FormField]:
    """Form fields for ``task_type`` (common keys plus that task's group), minus keys other sections own."""
    from ..config import fields_for_task, schema

    keep = set(fields_for_task(task_type))
    out = []
    for spec in schema(task_type):
        if spec.name not in keep or spec.name in OWNED_ELSEWHERE:
            continue
        kind = "choice" if spec.choices else KINDS.get(spec.type_name, "text")
        note = FORM_START.get(task_type, {}).get(spec.name, (None, ""))[1]
        choices = tuple(BOOL_AUTO) if kind == "bool_auto" else tuple(spec.choices or ())
        out.append(FormField(spec.name, kind, spec.default, choices, f"{spec.doc} {note}" if note else spec.doc,
                             spec.group, spec.minimum))
    out.sort(key=lambda f: (not f.basic, BASIC.index(f.name) if f.basic else 0))
    return out


def field_label(name: str) -> str:
    """A schema key in words: ``lora_rank`` -> "LoRA rank", ``te_lr`` -> "TE lr"."""
    words = name.split("_")
    special = {"lora": "LoRA", "lr": "LR", "te": "TE", "snr": "SNR", "ema": "EMA", "vae": "VAE", "gguf": "GGUF",
               "ggml": "GGML", "cpp": "cpp", "kv": "KV", "rms": "RMS", "eps": "eps", "reso": "resolution",
               "dir": "folder", "n": "N", "dtype": "dtype", "id": "ID", "fp16": "fp16", "bf16": "bf16"}
    out = [special.get(w, w) for w in words]
    text = " ".join(out)
    return text[0].upper() + text[1:] if text and text[0].islower() else text


def to_widget(field: FormField, value: Any) -> Any:
    """A config value as the input shows it."""
    if field.kind == "list":
        return "\n".join(str(v) for v in (value or []))
    if field.kind == "dict":
        import yaml

        return yaml.safe_dump(dict(value), default_flow_style=True, sort_keys=True).strip() if value else ""
    if field.zero_unset:
        return value  # a number input; None shows empty
    if field.kind in ("optional_int", "optional_float", "text"):
        return "" if value is None else str(value)
    if field.kind == "choice":
        return "" if value is None else str(value)
    if field.kind == "bool_auto":
        return next((word for word, v in BOOL_AUTO.items() if v is value or v == value), "auto")
    return value


def from_widget(field: FormField, value: Any) -> Any:
    """An input's value as the config expects it (strings parsed, blanks to None)."""
    if field.kind == "bool":
        return bool(value)
    if field.kind == "bool_auto":  # the dropdown's word; a checkbox-style bool from a preset or old state
        return value if isinstance(value, bool) else BOOL_AUTO.get(str(value or "auto").strip().lower(), "auto")
    if field.kind == "int":
        return int(value) if value not in (None, "") else field.default
    if field.kind == "float":
        return float(value) if value not in (None, "") else field.default
    if field.kind in ("optional_int", "optional_float"):
        text = str(value if value is not None else "").strip()
        if not text or (field.zero_unset and text in ("0", "0.0")):
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
