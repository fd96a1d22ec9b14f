"""`lora-bridge ui` serves the tab: the app launches under this gradio and answers on localhost."""

from __future__ import annotations

import socket
import urllib.request

from extension.ui.standalone import build_app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_standalone_app_serves_the_tab(tmp_path, tiny_base):
    app, host, extra = build_app(str(tiny_base.parent), str(tmp_path / "out"))
    assert host.checkpoints() == [tiny_base.name]
    port = free_port()
    app.queue()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, show_error=True, **extra)
    try:
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read().decode()
        assert "LoRA Bridge" in page or "gradio" in page.lower()
        config = urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30).read().decode()
        assert "lora_bridge_start" in config and "LoRA Training" in config
    finally:
        app.close()
