"""`lora-bridge ui`: the LoRA Training tab in a plain gradio app on localhost."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import compat, live
from .handlers import Handlers
from .host import Host
from .tab import build_tab, read_css

log = logging.getLogger("lora_bridge.ui")


def is_local(host: str) -> bool:
    """True for an address only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def _script() -> str:
    """javascript/lora_bridge.js (the WebUI injects it itself)."""
    path = Path(__file__).resolve().parents[2] / "javascript" / "lora_bridge.js"
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def build_app(models_dir: str | None = None, output_dir: str | None = None,
              allow_dirs: Sequence[str] = (), local_only: bool = True):
    """(Blocks, Host, launch keywords) of the standalone app; ``allow_dirs``: further folders it may write to."""
    host = Host(models_dir=models_dir, output_dir=output_dir, extra_folders=allow_dirs, local_only=local_only)
    host.output_dir.mkdir(parents=True, exist_ok=True)
    css, script = read_css(), _script()
    head = f"<script>{script}</script>" if script else ""
    tab = build_tab(host)  # built outside, rendered inside: what the WebUI does with extension tabs
    with compat.blocks(css=css, title="LoRA Bridge", head=head) as app:
        tab.render()
        if script and not compat.takes_head():  # gradio 3.x: run the same script once the page is up
            compat.run_on_load(app, "() => {\n" + script + "\n}")
    # gradio serves files from these (samples, saved LoRAs) besides its own cache: the output folder (runs
    # live in it) and the --allow-dir folders a run may write to; nothing else of the machine.
    allowed = [str(host.output_dir)] + [str(folder) for folder in host.extra_folders]
    extra = {"allowed_paths": allowed, **compat.launch_kwargs(css, head)}
    return app, host, extra


def launch(host: str = "127.0.0.1", port: int = 7861, models_dir: str | None = None,
           output_dir: str | None = None, block: bool = True, allow_dirs: Sequence[str] = ()) -> int:
    """Serve the tab on ``host:port`` until interrupted; returns the exit code.

    Served beyond localhost, the tab reads only from its own folders (``PathPolicy``).
    """
    app, tab_host, extra = build_app(models_dir, output_dir, allow_dirs, local_only=is_local(host))
    print(f"LoRA Bridge UI on http://{host}:{port}", flush=True)
    serve(app, tab_host, host, port, block, **extra)
    return 0


def serve(app: Any, tab_host: Host, host: str, port: int, block: bool = True, **extra: Any) -> Any:
    """Launch ``app`` (queued), add the tab's live route to its server, then block unless ``block`` is False.

    gradio creates its FastAPI app in ``launch()``, so the route is added after it, as the WebUI
    does in ``on_app_started``; returns that FastAPI app.
    """
    app.queue()
    server, *_ = app.launch(server_name=host, server_port=port, inbrowser=False, share=False, show_error=True,
                            prevent_thread_lock=True, **extra)
    live.register(server, Handlers(tab_host).live_payload)
    if block:
        app.block_thread()
    return server
