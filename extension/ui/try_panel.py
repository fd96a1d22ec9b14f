"""The Text LoRA sub-tab's Try panel: one prompt, the base's and the adapter's answers side by side.

The work is ``Host.try_adapter`` (``text/try_adapter.py``); this module only lays the panel out and
turns widget values into its arguments. Stop is an unqueued event, so it reaches the server while
Generate is still running.
"""

from __future__ import annotations

import html
from typing import Any

from . import compat
from .handlers import friendly
from .host import Host

ELEM = "lora_bridge_try"


class TryHandlers:
    """Generate and Stop of one tab instance."""

    def __init__(self, host: Host) -> None:
        self.host = host

    @friendly(lambda msg: (msg, "", ""))
    def generate(self, base: str, adapter: str, prompt: str, chat: bool, system: str, scale: float,
                 max_tokens: float, temperature: float, top_k: float, top_p: float, seed: float,
                 backend: str) -> tuple[str, str, str]:
        """(what answered, the base's answer, the adapter's answer)."""
        from ..errors import UserError
        from ..text.generate import Sampling

        if not str(base or "").strip():
            raise UserError("no base model chosen; pick the GGUF the adapter was trained on in Text LoRA")
        if not str(adapter or "").strip():
            raise UserError("no adapter given; train one (it lands in the adapter box) or give a GGUF/PEFT path")
        sampling = Sampling(max_new_tokens=_whole(max_tokens, 64), temperature=float(temperature or 0.0),
                            top_k=_whole(top_k, 0), top_p=float(top_p if top_p is not None else 1.0),
                            seed=_whole(seed, 0))
        result = self.host.try_adapter(str(base).strip(), str(adapter).strip(), str(prompt or ""),
                                       scale=float(scale), chat=bool(chat), system=str(system or ""),
                                       sampling=sampling, backend=str(backend or "auto"))
        s = sampling
        how = "greedy" if s.temperature == 0 else (f"temperature {s.temperature:g}, top-k {s.top_k}, "
                                                   f"top-p {s.top_p:g}, seed {s.seed}")
        info = (f"Answered by **{result.backend}** ({html.escape(result.reason)}) in {result.seconds:g} s · "
                f"adapter scale {result.scale:g} · {how}, the same for both")
        if result.stopped:
            info += " · **stopped** (the answers so far)"
        if chat:
            info += "\n\nPrompt as the model saw it:\n```\n" + result.prompt.replace("```", "'''") + "\n```"
        return info, result.base, result.adapter

    @staticmethod
    def stop() -> str:
        """Ask the running generation to end."""
        from ..text.try_adapter import request_stop

        return "stopping: the answers so far follow" if request_stop() else "no generation is running"


def _whole(value: Any, default: int) -> int:
    """A gradio Number (float in some versions, None when cleared) as an int."""
    return default if value is None or value == "" else int(round(float(value)))


def build_try_panel(host: Host, base: Any, adapter: Any) -> TryHandlers:
    """The panel under the Text LoRA form; ``base``/``adapter`` are that sub-tab's base dropdown and adapter box."""
    gr = compat.gradio()
    h = TryHandlers(host)
    with gr.Accordion("Try: the base's and the adapter's answers to one prompt", open=True):
        with gr.Row():
            prompt = compat.make("Textbox", label="Prompt", lines=3, scale=3, elem_id=f"{ELEM}_prompt")
            with gr.Column(scale=1):
                chat = compat.make("Checkbox", value=False, label="Chat (the base's chat template)",
                                   elem_id=f"{ELEM}_chat")
                system = compat.line(label="System message (chat only)", elem_id=f"{ELEM}_system")
        with gr.Row():
            scale = compat.make("Slider", minimum=0.0, maximum=2.0, step=0.05, value=1.0, label="Adapter scale",
                                elem_id=f"{ELEM}_scale")
            max_tokens = compat.make("Number", value=64, precision=0, label="Max new tokens", elem_id=f"{ELEM}_max")
            temperature = compat.make("Number", value=0.0, label="Temperature (0 = greedy)",
                                      elem_id=f"{ELEM}_temperature")
            top_k = compat.make("Number", value=40, precision=0, label="Top-k", elem_id=f"{ELEM}_top_k")
            top_p = compat.make("Number", value=0.95, label="Top-p", elem_id=f"{ELEM}_top_p")
            seed = compat.make("Number", value=0, precision=0, label="Sampling seed", elem_id=f"{ELEM}_seed")
            backend = compat.make("Dropdown", choices=["auto", "llama.cpp", "torch"], value="auto", label="Backend",
                                  info="auto: llama.cpp when llama-cpp-python is installed", elem_id=f"{ELEM}_backend")
        with gr.Row():
            go = compat.make("Button", "Generate", variant="primary", elem_id=f"{ELEM}_generate")
            stop = compat.make("Button", "Stop", elem_id=f"{ELEM}_stop")
        info = gr.Markdown("", elem_id=f"{ELEM}_info")
        with gr.Row():
            base_out = compat.make("Textbox", label="Base", lines=6, interactive=False, elem_id=f"{ELEM}_base")
            adapter_out = compat.make("Textbox", label="Base + adapter", lines=6, interactive=False,
                                      elem_id=f"{ELEM}_adapter")
    inputs = [base, adapter, prompt, chat, system, scale, max_tokens, temperature, top_k, top_p, seed, backend]
    compat.on(go.click, h.generate, inputs, [info, base_out, adapter_out])
    compat.on(stop.click, h.stop, None, [info], queue=False)
    return h
