"""Mirrors ``modules/ui_loadsave.py`` (A1111 1.10.1; Forge's is the same): the ui-config.json defaults.

The WebUI walks every tab with ``add_block(tab, tab_id)`` and keys each component by
``"{tab_id}/{label}/{field}"``. The first component with a key stores its value; every later component
with the same key gets that value set on it (a Radio/Dropdown only when the value is one of its choices).
A component with ``do_not_save_to_config`` is skipped. Only the ``value`` field is mirrored here.
"""

from __future__ import annotations

from typing import Any


def _choices(x: Any) -> list[Any]:
    """``modules.ui_components.radio_choices``: choices as plain values (gradio 4 keeps (label, value) pairs)."""
    return [c[1] if isinstance(c, (tuple, list)) else c for c in (getattr(x, "choices", None) or [])]


class UiLoadsave:
    def __init__(self, ui_settings: dict[str, Any] | None = None) -> None:
        self.ui_settings: dict[str, Any] = dict(ui_settings or {})
        self.component_mapping: dict[str, Any] = {}

    def add_component(self, path: str, x: Any) -> None:
        import gradio as gr

        def apply_field(obj: Any, field: str, condition=None) -> None:
            key = f"{path}/{field}"
            if getattr(obj, "do_not_save_to_config", False):
                return
            saved_value = self.ui_settings.get(key, None)
            if saved_value is None:
                self.ui_settings[key] = getattr(obj, field)
            elif condition and not condition(saved_value):
                pass
            else:
                if isinstance(obj, gr.Textbox) and field == "value":
                    saved_value = str(saved_value)
                elif isinstance(obj, gr.Number) and field == "value":
                    saved_value = float(saved_value)
                setattr(obj, field, saved_value)
            if field == "value" and key not in self.component_mapping:
                self.component_mapping[key] = obj

        if type(x) in (gr.Radio, gr.Dropdown):
            apply_field(x, "value", lambda val: val in _choices(x))
        if type(x) in (gr.Checkbox, gr.Textbox, gr.Number, gr.Slider):
            apply_field(x, "value")

    def add_block(self, x: Any, path: str = "") -> None:
        import gradio as gr

        if hasattr(x, "children"):
            if isinstance(x, gr.Tabs) and x.elem_id is not None:
                self.add_component(f"{path}/Tabs@{x.elem_id}", x)
            for c in x.children:
                self.add_block(c, path)
        elif getattr(x, "label", None) is not None:
            self.add_component(f"{path}/{x.label}", x)
        elif isinstance(x, gr.Button) and x.value is not None:
            self.add_component(f"{path}/{x.value}", x)
