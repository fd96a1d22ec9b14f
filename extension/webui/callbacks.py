"""Registration with the WebUI: the tab (``on_ui_tabs``), settings (``on_ui_settings``), API (``on_app_started``)."""

from __future__ import annotations

import logging
from typing import Any

from .host import WebUIHost, webui_is_local

log = logging.getLogger("lora_bridge.webui")

SECTION = ("lora_training", "LoRA Training")
CATEGORY = ("training", "Training")  # modules/shared_options.py registers it in A1111 1.10 and Forge, not in Neo
TAB = ("LoRA Training", "lora_training")

_HOST: WebUIHost | None = None


def get_host() -> WebUIHost:
    """The process-wide WebUI host (kept across Reload UI, like the job it guards)."""
    global _HOST
    if _HOST is None:
        _HOST = WebUIHost()
    return _HOST


def on_ui_tabs() -> list[tuple[Any, str, str]]:
    """Build the LoRA Training tab for the WebUI, starting with the preset chosen in Settings."""
    from modules import shared

    from ..ui.tab import build_tab

    preset = getattr(shared.opts, "lora_bridge_default_preset", None)
    return [(build_tab(get_host(), default_preset=preset), *TAB)]


TEXT_EXCLUSIVE = ("auto", "always", "never")


def settings_category() -> str | None:
    """The settings category of our section: the host's ``training`` (A1111 1.10, Forge); Forge Neo
    registers no such category, so it is registered here (the settings page would list the section
    under "Extensions" otherwise). None on a host without categories (the section is then uncategorised)."""
    try:
        from modules.options import categories
    except Exception:
        return None
    category_id, label = CATEGORY
    if category_id not in getattr(categories, "mapping", {}):
        categories.register_category(category_id, label)
    return category_id


def on_ui_settings() -> None:
    """Settings → Training → LoRA Training (labels say what this host really does)."""
    import gradio as gr
    from modules import shared

    from ..ui.presets import PRESETS
    from .host import EXTRA_FOLDERS_OPTION, is_forge

    check_label = ("After every save, check the file's keys against the base model (LoRA Bridge's own kohya "
                   "mapping: Forge's Lora loader is not used)" if is_forge() else
                   "After every save, load the file with the WebUI's Lora loader and report matched keys")
    options = {
        "lora_bridge_default_preset": shared.OptionInfo(
            next(iter(PRESETS)), "Preset the tab starts with (applies at the next Reload UI)", gr.Radio,
            {"choices": list(PRESETS)}, section=SECTION),
        "lora_bridge_free_vram": shared.OptionInfo(
            True, "Free the WebUI's model from VRAM while training an image LoRA (restored afterwards)",
            section=SECTION),
        "lora_bridge_text_exclusive": shared.OptionInfo(
            "auto", "Text LoRA runs hold the generation queue and free the WebUI's model: auto = only when "
            "training on a GPU (on CPU both fit; txt2img keeps working)", gr.Radio,
            {"choices": list(TEXT_EXCLUSIVE)}, section=SECTION),
        "lora_bridge_check_with_loader": shared.OptionInfo(True, check_label, section=SECTION),
        # Not settable through /sdapi/v1/options (restrict_api), and read-only under --hide-ui-dir-config.
        EXTRA_FOLDERS_OPTION: shared.OptionInfo(
            "", "Extra folders LoRA Bridge may write to (Convert, Save YAML, runs), one per line; under "
            "--listen/--share also the only folders besides the model folders it reads datasets and models from",
            gr.Textbox, {"lines": 3}, section=SECTION, restrict_api=True),
    }
    category = settings_category()
    for key, info in options.items():
        info.category_id = category  # the settings page lists the section under Training, not "Extensions"
        shared.opts.add_option(key, info)
    restricted = getattr(shared, "restricted_opts", None)  # the --hide-ui-dir-config list (a set)
    if isinstance(restricted, set):
        restricted.add(EXTRA_FOLDERS_OPTION)


def on_app_started(_demo: Any, app: Any) -> None:
    """The tab's live route (always: the page polls it; WebUI login or --api-auth), and the /lora-bridge/v1
    routes when the WebUI serves its API (--api), guarded by --api-auth."""
    from modules import shared

    from ..api import register as register_api
    from ..ui import live
    from ..ui.handlers import Handlers

    cmd_opts = shared.cmd_opts
    api_auth = lambda: getattr(shared.cmd_opts, "api_auth", None)  # noqa: E731 (read at request time)
    live.register(app, Handlers(get_host()).live_payload, api_auth=api_auth)
    if not (getattr(cmd_opts, "api", False) or getattr(cmd_opts, "nowebui", False)):
        return
    register_api(app, get_host(), api_auth=api_auth, origins=lambda: allowed_origins(shared.cmd_opts),
                 local_only=lambda: webui_is_local(shared.cmd_opts))


def allowed_origins(cmd_opts: Any) -> list[str]:
    """Origins the user let call the WebUI's API (``--cors-allow-origins`` list, ``--cors-allow-origins-regex``
    as ``re:PATTERN``), as modules/cmd_args.py defines them; the API then accepts them too."""
    out = [item.strip() for item in (getattr(cmd_opts, "cors_allow_origins", None) or "").split(",") if item.strip()]
    regex = getattr(cmd_opts, "cors_allow_origins_regex", None)
    return out + ([f"re:{regex}"] if regex else [])


def register() -> None:
    """Called by scripts/lora_bridge.py on every (re)load of the WebUI's scripts."""
    from modules import script_callbacks

    script_callbacks.on_ui_tabs(on_ui_tabs)
    script_callbacks.on_ui_settings(on_ui_settings)
    script_callbacks.on_app_started(on_app_started)
