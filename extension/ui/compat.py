"""The one place that knows gradio 3.41 (A1111 1.10) from 4.x (Forge) and later (standalone).

Everything else in ``extension/ui`` builds with the common subset and goes through these helpers
when the versions differ: ``_js=`` vs ``js=``, ``show_progress`` values, keyword
arguments a component does not know, and ``css=`` on Blocks vs on ``launch``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any


def gradio() -> Any:
    """The gradio module, imported lazily with a clear message when absent."""
    try:
        import gradio as gr
    except ImportError as exc:  # pragma: no cover - depends on the environment
        from ..errors import UserError

        raise UserError("gradio is not installed; run `pip install gradio` (or use the WebUI tab)") from exc
    return gr


def major() -> int:
    """gradio's major version (3, 4, 5, 6 ...)."""
    return int(str(gradio().__version__).split(".")[0])


def js_kwargs(code: str | None) -> dict[str, Any]:
    """Keyword for a client-side function on an event listener."""
    if not code:
        return {}
    return {"_js": code} if major() < 4 else {"js": code}


def _accepted(factory: Callable[..., Any]) -> set[str] | None:
    """Names ``factory`` accepts, or None when it takes **kwargs."""
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


def make(name: str, *args: Any, **kwargs: Any) -> Any:
    """``gr.<name>(*args, **kwargs)`` minus the keywords this gradio does not know."""
    cls = getattr(gradio(), name)
    names = _accepted(cls.__init__)
    if names is not None:
        kwargs = {k: v for k, v in kwargs.items() if k in names}
    return cls(*args, **kwargs)


def line(**kwargs: Any) -> Any:
    """A one-line text input: gradio 3.41 and 4.x render a Textbox as ``<input>`` only with ``lines=1`` and
    ``max_lines=1``; otherwise it is a resizable ``<textarea>`` (a path or a name is never several lines)."""
    return make("Textbox", lines=1, max_lines=1, **kwargs)


def update(**kwargs: Any) -> Any:
    """``gr.update`` (exists in 3.41 and later; ``gr.X.update`` does not survive 4.x)."""
    return gradio().update(**kwargs)


def on(event: Any, fn: Callable[..., Any], inputs: Sequence[Any] | None, outputs: Sequence[Any] | None,
       js: str | None = None, **kwargs: Any) -> Any:
    """Attach ``fn`` to a bound event listener (``button.click`` ...) with version-correct keywords."""
    kwargs.update(js_kwargs(js))
    names = _accepted(event)
    if names is not None:
        kwargs = {k: v for k, v in kwargs.items() if k in names}
    return event(fn, inputs or [], outputs or [], **kwargs)


def poll_button(fn: Callable[..., Any], outputs: Sequence[Any], button_id: str) -> Any:
    """A hidden button that runs ``fn`` (no inputs) into ``outputs``; javascript/lora_bridge.js clicks it.

    The same on every gradio version: no ``every=`` (3.41 re-sends the inputs captured at page load
    and runs a server loop per open page) and no ``gr.Timer`` (a queued event per second, shown
    or not). The script decides when to click (see ``ui/live.py``).
    """
    button = make("Button", "refresh", elem_id=button_id, elem_classes=["lora-bridge-tick"])
    return on(button.click, fn, None, outputs, show_progress=hidden_progress())


def hidden_progress() -> Any:
    """``show_progress`` value that hides the loading status: False in 3.x, "hidden" from 4.0."""
    return False if major() < 4 else "hidden"


def _on_launch(name: str) -> bool:
    """gradio 6 takes ``css``/``head`` in ``launch()``; 3.41 and 4.x in ``Blocks()``."""
    return name in inspect.signature(gradio().Blocks.launch).parameters


def blocks(css: str | None = None, title: str | None = None, head: str | None = None) -> Any:
    """A ``gr.Blocks`` with analytics off, and ``css``/``head`` where this gradio takes them."""
    gr = gradio()
    kwargs: dict[str, Any] = {"analytics_enabled": False}
    if title:
        kwargs["title"] = title
    if css and not _on_launch("css"):
        kwargs["css"] = css
    if head and not _on_launch("head") and "head" in inspect.signature(gr.Blocks.__init__).parameters:
        kwargs["head"] = head
    return gr.Blocks(**kwargs)


def takes_head() -> bool:
    """Whether this gradio can put a <script> in the page head (4.x ``Blocks(head=)``, 6 ``launch(head=)``)."""
    return _on_launch("head") or "head" in inspect.signature(gradio().Blocks.__init__).parameters


def run_on_load(blocks: Any, code: str) -> Any:
    """Run client-side ``code`` (a JS function) once the page has loaded (gradio 3.x has no ``head=``)."""
    return blocks.load(None, None, None, **js_kwargs(code))


def launch_kwargs(css: str | None = None, head: str | None = None) -> dict[str, Any]:
    """``launch()`` keywords that gradio 6 moved there from ``Blocks``."""
    out: dict[str, Any] = {}
    if css and _on_launch("css"):
        out["css"] = css
    if head and _on_launch("head"):
        out["head"] = head
    return out


def file_path(value: Any) -> str | None:
    """A gr.File value as a path: a tempfile object in 3.x, a str (or dict) in 4.x and later."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return value.get("path") or value.get("name")
    return getattr(value, "name", None) or getattr(value, "path", None)
