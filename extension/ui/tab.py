"""The LoRA Training tab: one layout for the WebUI (gradio 3.41 / 4.40) and the standalone app.

Only the common gradio subset is used (no ``.style()``, no ``gr.Box``, ``gr.update`` for updates);
what differs between versions goes through ``compat``. The logic lives in ``handlers``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import compat, live
from .flux_parts import flux_picks
from .form import FormField, field_label, form_start, to_widget
from .handlers import IMAGE_TASK, NO_CAPTIONER_LINE, TEXT_TASK, Handlers
from .host import Host
from .presets import PRESETS
from .try_panel import build_try_panel

POLL_BUTTON = "lora_bridge_poll"  # javascript/lora_bridge.js clicks it (see live.py for when)
ELEM = "lora_bridge"
NO_CAPTIONER = "**Auto-caption**: " + NO_CAPTIONER_LINE[0].upper() + NO_CAPTIONER_LINE[1:] + "."
REFRESH_WIDTH = 100  # px: the 🔄 buttons next to a model dropdown stay narrow

# Client side (javascript/lora_bridge.js when loaded; inline fallback otherwise).
SEND_JS = ("(name, weight) => (window.loraBridgeSendToTxt2img ? window.loraBridgeSendToTxt2img(name, weight)"
           " : [name, weight])")
REFRESH_JS = "() => { if (window.loraBridgeRefreshCards) { window.loraBridgeRefreshCards(); } return []; }"


def help_text(doc: str) -> str:
    """Help under an input: plain words (gradio shows ``info`` as text, so no Markdown backticks)."""
    text = doc.replace("`", "")
    return text if len(text) <= 200 else text[:197].rsplit(" ", 1)[0] + "…"


def _field_widget(field: FormField, prefix: str, initial: dict[str, Any] | None = None,
                  picks: dict[str, list[str]] | None = None) -> Any:
    """One input for a schema field (``initial``: values that replace the schema default, e.g. a preset);
    a field in ``picks`` is a dropdown of those paths that also takes any path."""
    label = field_label(field.name)
    value = to_widget(field, (initial or {}).get(field.name, field.default))
    common = {"label": label, "info": help_text(field.help), "elem_id": f"{ELEM}_{prefix}_{field.name}"}
    if picks and field.name in picks:
        return compat.make("Dropdown", choices=picks[field.name], value=value or None, allow_custom_value=True,
                           **common)
    if field.kind == "bool":
        return compat.make("Checkbox", value=bool(value), **common)
    if field.kind in ("int", "float") or field.zero_unset:
        return compat.make("Number", value=value, precision=0 if field.kind.endswith("int") else None, **common)
    if field.kind in ("choice", "bool_auto"):
        return compat.make("Dropdown", choices=list(field.choices), value=value, **common)
    if field.kind == "list":
        return compat.make("Textbox", value=value, lines=3, **{**common, "label": f"{label} (one per line)"})
    return compat.line(value=value, **common)


def _displays(*names: tuple[str, str], initial: dict[str, str]) -> list[Any]:
    """gr.HTML boxes for live displays (``live.KEYS`` key, elem_id suffix), each holding its ``live.wrap`` div."""
    gr = compat.gradio()
    return [gr.HTML(live.wrap(key, initial[key]), elem_id=f"{ELEM}_{suffix}") for key, suffix in names]


def _lora_files(folder: Path) -> list[str]:
    """The kohya LoRA files of the Lora folder (``init_lora`` picks), newest first."""
    try:
        files = sorted(Path(folder).rglob("*.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return []
    return [str(p) for p in files]


def _fields(fields: list[FormField], prefix: str, initial: dict[str, Any] | None = None,
            picks: dict[str, list[str]] | None = None) -> list[Any]:
    """Basic fields in two columns, the rest in an Advanced accordion; returns widgets in field order."""
    gr = compat.gradio()
    widgets: dict[str, Any] = {}
    basic = [f for f in fields if f.basic]
    advanced = [f for f in fields if not f.basic]
    with gr.Row():
        for column in (basic[::2], basic[1::2]):
            with gr.Column():
                for f in column:
                    widgets[f.name] = _field_widget(f, prefix, initial, picks)
    with gr.Accordion("Advanced", open=False), gr.Row():
        for column in (advanced[::2], advanced[1::2]):
            with gr.Column():
                for f in column:
                    widgets[f.name] = _field_widget(f, prefix, initial, picks)
    return [widgets[f.name] for f in fields]


def build_tab(host: Host, default_preset: str | None = None) -> Any:
    """Build the tab's ``gr.Blocks`` for ``host``; ``Handlers`` does the work."""
    gr = compat.gradio()
    h = Handlers(host)
    initial_view = h.view_parts()
    start_preset = default_preset if default_preset in PRESETS else next(iter(PRESETS))
    with compat.blocks() as tab:
        gr.Markdown("## LoRA Training — LoRA Bridge")
        with gr.Tabs():
            # ---- Dataset ----------------------------------------------------------------
            with gr.Tab("Dataset"):
                with gr.Row():
                    data_dir = compat.line(label="Image folder (png/jpg/webp + .txt captions or "
                                           "metadata.csv; N_name repeat folders)", elem_id=f"{ELEM}_data_dir",
                                           scale=4)
                    load_btn = compat.make("Button", "Load", elem_id=f"{ELEM}_load", scale=1)
                data_summary = gr.Markdown("")
                gallery = compat.make("Gallery", label="Images (click one to edit its caption)", columns=6,
                                      height=360, allow_preview=False, elem_id=f"{ELEM}_gallery")
                with gr.Row():
                    image_path = compat.line(label="Selected image", interactive=False, scale=2,
                                             elem_id=f"{ELEM}_image_path")
                    caption = compat.make("Textbox", label="Caption", lines=2, scale=4, elem_id=f"{ELEM}_caption")
                    save_caption_btn = compat.make("Button", "Save caption", scale=1)
                caption_msg = gr.Markdown("")
                captioners = host.captioners()
                if not captioners:  # Forge Neo and the standalone app: no BLIP/DeepBooru to offer
                    gr.Markdown(NO_CAPTIONER, elem_id=f"{ELEM}_caption_hint")
                with gr.Row():
                    captioner = compat.make("Dropdown", choices=captioners, value=captioners[0] if captioners
                                            else None, label="Auto-caption with", scale=2, visible=bool(captioners))
                    overwrite = compat.make("Checkbox", value=False, label="Replace existing captions",
                                            visible=bool(captioners))
                    caption_btn = compat.make("Button", "Auto-caption", scale=1, visible=bool(captioners))
                    lint_btn = compat.make("Button", "Lint dataset", scale=1)
                lint_report = compat.make("Textbox", label="Report", lines=6, interactive=False)

            # ---- Model ------------------------------------------------------------------
            with gr.Tab("Model"):
                choices = _safe(host.checkpoints, [])
                current = _safe(host.current_checkpoint, None)
                initial = current if current in choices else (choices[0] if choices else None)
                with gr.Row():
                    model = compat.make("Dropdown", choices=choices, value=initial, allow_custom_value=True,
                                        label="Base checkpoint" + ("" if host.in_webui else
                                                                   " (from --models-dir, or a full path)"),
                                        elem_id=f"{ELEM}_model", scale=4)
                    refresh_btn = compat.make("Button", "🔄 Refresh", elem_id=f"{ELEM}_refresh", scale=0,
                                              min_width=REFRESH_WIDTH)
                model_info = gr.Markdown(h.detect_model(initial) if initial else "", elem_id=f"{ELEM}_model_info")

            # ---- Settings ---------------------------------------------------------------
            with gr.Tab("Settings"):
                with gr.Row():
                    preset = compat.make("Radio", choices=list(PRESETS), value=start_preset, label="Preset",
                                         info="the form below holds this preset's values until you change them",
                                         scale=3)
                    preset_btn = compat.make("Button", "Apply preset", scale=1)
                picks = {"init_lora": _lora_files(host.lora_dir()), **_safe(lambda: flux_picks(host), {})}
                image_widgets = _fields(h.image_fields, "img", h.preset_dict(start_preset), picks)
                with gr.Accordion("YAML (shared config schema: the same file as lora-bridge train --config)",
                                  open=False):
                    yaml_box = compat.make("Textbox", label="YAML, or the path of a .yaml file", lines=10,
                                           elem_id=f"{ELEM}_yaml")
                    with gr.Row():
                        export_btn = compat.make("Button", "Export form to YAML")
                        import_btn = compat.make("Button", "Import YAML into form")
                        yaml_path = compat.line(label="Save as", placeholder="my_lora.yaml",
                                                elem_id=f"{ELEM}_yaml_path")
                        save_yaml_btn = compat.make("Button", "Save YAML file")
                    yaml_msg = gr.Markdown("")

            # ---- Train ------------------------------------------------------------------
            with gr.Tab("Train"):
                with gr.Row():
                    output_name = compat.line(value="my_lora", label="LoRA name (file name in the "
                                              "Lora folder)", elem_id=f"{ELEM}_output_name", scale=3)
                    start_btn = compat.make("Button", "Start", variant="primary", elem_id=f"{ELEM}_start", scale=1)
                    stop_btn = compat.make("Button", "Stop & save", elem_id=f"{ELEM}_stop", scale=1)
                    cancel_btn = compat.make("Button", "Cancel", variant="stop", elem_id=f"{ELEM}_cancel", scale=1)
                train_msg = gr.Markdown("", elem_id=f"{ELEM}_train_msg")
                progress, status, loss_chart = _displays(("image_progress", "progress"), ("image_status", "status"),
                                                         ("image_chart", "loss_chart"), initial=initial_view)
                samples = compat.make("Gallery", label="Samples", columns=4, height=260, allow_preview=True,
                                      elem_id=f"{ELEM}_samples")

            # ---- Output -----------------------------------------------------------------
            with gr.Tab("Output"):
                (output_md,) = _displays(("output", "output"), initial=initial_view)
                with gr.Row():
                    lora_name = compat.line(label="LoRA", elem_id=f"{ELEM}_lora_name", scale=2)
                    weight = compat.make("Slider", minimum=-1.0, maximum=2.0, step=0.05, value=0.7, label="Weight",
                                         scale=2)
                    send_btn = compat.make("Button", "Send <lora:…> to txt2img" if host.in_webui
                                           else "Copy <lora:…> tag", elem_id=f"{ELEM}_send", scale=1)
                prompt = compat.line(label="Prompt tag", elem_id=f"{ELEM}_prompt")
                with gr.Row():
                    refresh_cards_btn = compat.make("Button", "Refresh Lora cards")
                    check_path = compat.line(label="Check any LoRA file with the loader", scale=3,
                                             elem_id=f"{ELEM}_check_path")
                    check_btn = compat.make("Button", "Check")
                check_msg = gr.Markdown("")

            # ---- Convert ----------------------------------------------------------------
            with gr.Tab("Convert"):
                with gr.Row():
                    conv_src = compat.line(label="Source adapter (PEFT folder, kohya/diffusers .safetensors, GGUF)",
                                           elem_id=f"{ELEM}_conv_src")
                    conv_dst = compat.line(label="Destination", elem_id=f"{ELEM}_conv_dst")
                with gr.Row():
                    conv_to = compat.make("Dropdown", choices=["", "kohya", "peft", "diffusers", "bfl", "gguf"],
                                          value="", label="To (empty: from the destination)")
                    conv_base = compat.line(label="Base model to validate against (optional)",
                                            elem_id=f"{ELEM}_conv_base")
                    conv_arch = compat.line(label="Arch when the file does not say (optional)",
                                            elem_id=f"{ELEM}_conv_arch")
                    conv_dtype = compat.make("Dropdown", choices=["", "f32", "f16", "bf16"], value="", label="dtype")
                    conv_force = compat.make("Checkbox", value=False, label="Overwrite")
                with gr.Row():
                    conv_btn = compat.make("Button", "Convert", variant="primary")
                    inspect_btn = compat.make("Button", "Inspect source")
                conv_out = compat.make("Textbox", label="Result", lines=12, interactive=False)

            # ---- Text LoRA --------------------------------------------------------------
            with gr.Tab("Text LoRA"):
                text_choices = _safe(host.text_models, [])
                with gr.Row():
                    text_base = compat.make("Dropdown", choices=text_choices, value=text_choices[0] if text_choices
                                            else None, allow_custom_value=True,
                                            label="Base model (GGUF, or legacy GGML LLaMA .bin)", scale=4)
                    text_refresh = compat.make("Button", "🔄 Refresh", elem_id=f"{ELEM}_text_refresh", scale=0,
                                               min_width=REFRESH_WIDTH)
                text_data = compat.line(label="Dataset (.txt, or .jsonl instruction/chat; file or folder)",
                                        elem_id=f"{ELEM}_text_data")
                text_name = compat.line(value="my_text_lora", label="Adapter name", elem_id=f"{ELEM}_text_name")
                text_widgets = _fields(h.text_fields, "txt", initial=form_start(TEXT_TASK))
                with gr.Row():
                    text_start = compat.make("Button", "Start text training", variant="primary")
                    text_stop = compat.make("Button", "Stop & save")
                    text_cancel = compat.make("Button", "Cancel")
                text_msg = gr.Markdown("", elem_id=f"{ELEM}_text_msg")
                text_progress, text_status, text_chart, text_result = _displays(
                    ("text_progress", "text_progress"), ("text_status", "text_status"),
                    ("text_chart", "text_loss_chart"), ("text_result", "text_result"), initial=initial_view)
                with gr.Row():
                    text_adapter = compat.line(label="GGUF adapter (llama.cpp check, Try)", scale=3,
                                               elem_id=f"{ELEM}_text_adapter")
                    text_check = compat.make("Button", "llama.cpp check")
                text_check_msg = gr.Markdown("")
                try_handlers = build_try_panel(host, text_base, text_adapter)

        # Written by the poll only; hidden by style.css. Their change events redraw the visible parts.
        ticks = [compat.make("Textbox", value="", show_label=False, container=False, elem_id=f"{ELEM}_tick_{n}",
                             elem_classes=["lora-bridge-tick"]) for n in ("view", "samples", "result")]

        # ---- events ---------------------------------------------------------------------
        compat.on(load_btn.click, h.load_dataset, [data_dir], [gallery, data_summary, image_path, caption])
        def on_select(evt):  # type: ignore[no-untyped-def]
            return h.select_image(getattr(evt, "index", None))

        on_select.__annotations__ = {"evt": gr.SelectData}  # gradio injects by the real class, not a string
        compat.on(gallery.select, on_select, None, [image_path, caption])
        compat.on(save_caption_btn.click, h.save_caption, [data_dir, image_path, caption], [caption_msg])
        compat.on(caption_btn.click, h.auto_caption, [data_dir, captioner, overwrite], [caption_msg])
        compat.on(lint_btn.click, h.lint, [data_dir], [lint_report])
        compat.on(refresh_btn.click, h.refresh_models, [model], [model])
        compat.on(model.change, h.detect_model, [model], [model_info])
        compat.on(preset_btn.click, h.apply_preset, [preset], image_widgets)
        compat.on(export_btn.click, h.export_yaml, [data_dir, model, output_name, *image_widgets], [yaml_box])
        compat.on(import_btn.click, h.import_yaml, [yaml_box],
                  [yaml_msg, data_dir, model, output_name, *image_widgets])
        compat.on(save_yaml_btn.click, h.save_yaml, [yaml_box, yaml_path], [yaml_msg])
        compat.on(start_btn.click, h.start, [data_dir, model, output_name, *image_widgets], [train_msg])
        compat.on(stop_btn.click, h.stop, None, [train_msg])
        compat.on(cancel_btn.click, h.cancel, None, [train_msg])
        compat.on(send_btn.click, h.lora_tag, [lora_name, weight], [prompt], js=SEND_JS)
        refresh_dep = compat.on(refresh_cards_btn.click, h.refresh_loras, None, [check_msg])
        compat.on(refresh_dep.then, None, None, None, js=REFRESH_JS)
        compat.on(check_btn.click, h.check_file, [check_path], [check_msg])
        compat.on(conv_btn.click, h.convert, [conv_src, conv_dst, conv_to, conv_base, conv_arch, conv_dtype,
                                             conv_force], [conv_out])
        compat.on(inspect_btn.click, h.inspect, [conv_src, conv_base], [conv_out])
        compat.on(text_refresh.click, h.refresh_text_models, [text_base], [text_base])
        compat.on(text_start.click, h.start_text, [text_base, text_data, text_name, *text_widgets], [text_msg])
        compat.on(text_stop.click, h.stop, None, [text_msg])
        compat.on(text_cancel.click, h.cancel, None, [text_msg])
        compat.on(text_check.click, h.llama_cpp_check, [text_base, text_adapter], [text_check_msg])

        compat.poll_button(h.ticks, ticks, POLL_BUTTON)
        quiet = {"show_progress": compat.hidden_progress()}
        compat.on(ticks[0].change, h.view, None, [progress, status, loss_chart, output_md, text_progress,
                                                  text_status, text_chart, text_result], **quiet)
        compat.on(ticks[1].change, h.samples_view, None, [samples], **quiet)
        result_dep = compat.on(ticks[2].change, h.result_view, None, [lora_name, text_adapter], **quiet)
        compat.on(result_dep.then, None, None, None, js=REFRESH_JS)
    keep_saved_values_apart(tab)
    tab.lora_bridge_handlers = h  # tests reach the handlers of a built tab
    tab.lora_bridge_try = try_handlers
    return tab


# Fields whose saved ui-config.json value would override a newer derived default: earlier versions saved the
# bucket bounds' old defaults (256/1024), which refuse a 64 px run although the form now derives them.
NOT_RESTORED = ("Min bucket resolution", "Max bucket resolution")


def keep_saved_values_apart(tab: Any) -> None:
    """Mark every component whose label an earlier one in the tab already has ``do_not_save_to_config``,
    and the fields in ``NOT_RESTORED``.

    The WebUI's ui-config.json keys components by tab and label (``lora_training/Mixed precision/value``),
    so the Text LoRA form's "Mixed precision" would otherwise be set to the image form's value. Components
    are visited in the WebUI's own order (``ui_loadsave.add_block``), so the first keeps its saved value.
    """
    seen: set[str] = set()

    def visit(block: Any) -> None:
        if hasattr(block, "children"):
            for child in block.children:
                visit(child)
            return
        label = getattr(block, "label", None)
        if label is None:
            return
        if label in seen or label in NOT_RESTORED:
            block.do_not_save_to_config = True
        seen.add(label)

    visit(tab)


def _safe(fn: Any, default: Any) -> Any:
    """A host query that must not stop the tab from building."""
    try:
        return fn()
    except Exception:
        return default


def read_css() -> str:
    """style.css of the extension root (the WebUI loads it itself; the standalone passes it)."""
    path = Path(__file__).resolve().parents[2] / "style.css"
    return path.read_text(encoding="utf-8") if path.is_file() else ""


__all__ = ["build_tab", "read_css", "IMAGE_TASK", "TEXT_TASK"]
