"""#10.8 in a real browser: the tab's poll never overwrites a field the user edits, and leaves no
pending ("generating") border once idle: under gradio 3.41.2 (A1111: ``every=`` re-sends the inputs
captured at page load), gradio 4.40.0 (Forge) and this venv's gradio (``gr.Timer``).

The side-stack servers run with the venvs .ci/ui-compat builds (or LORA_BRIDGE_GRADIO3_PYTHON /
LORA_BRIDGE_GRADIO4_PYTHON);
the browser is driven from this venv (Playwright + /usr/bin/chromium).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
SIDE_VENVS = {  # the stacks .ci/ui-compat builds; an env var points elsewhere
    "gradio-3.41": Path(os.environ.get("LORA_BRIDGE_GRADIO3_PYTHON",
                                       ROOT / ".ci-cache" / "venvs" / "gradio-3.41" / "bin" / "python")),
    "gradio-4.40": Path(os.environ.get("LORA_BRIDGE_GRADIO4_PYTHON",
                                       ROOT / ".ci-cache" / "venvs" / "gradio-4.40" / "bin" / "python")),
}

pytestmark = [pytest.mark.browser, pytest.mark.slow]

VISIBLE_PENDING = """() => Array.from(document.querySelectorAll('.generating, .pending'))
    .filter(el => el.offsetParent !== null && el.getClientRects().length > 0)
    .map(el => (el.closest('[id]') || {}).id || el.className)"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright not installed")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


def _serve(python: str, work: Path, base: Path):
    port = _free_port()
    log = open(work / "server.log", "w")  # noqa: SIM115 (lives as long as the server)
    proc = subprocess.Popen([python, str(HERE / "serve_tab.py"), str(port), str(work), str(base)], cwd=work,
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}/"
    for _ in range(240):
        try:
            urllib.request.urlopen(url, timeout=5)
            return proc, url, log
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    proc.kill()
    log.close()
    pytest.fail("tab server did not answer: " + (work / "server.log").read_text()[-3000:])


@pytest.fixture(params=["gradio-3.41", "gradio-4.40", "this-venv"])
def server(request, tmp_path, tiny_base):
    if request.param in SIDE_VENVS:
        python = SIDE_VENVS[request.param]
        if not python.exists():
            pytest.skip(f"no {request.param} venv at {python} (run .ci/ui-compat, or set LORA_BRIDGE_GRADIO3_PYTHON"
                        " / LORA_BRIDGE_GRADIO4_PYTHON)")
        python = str(python)
    else:
        python = sys.executable
    proc, url, log = _serve(python, tmp_path, tiny_base)
    yield url
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    head = (tmp_path / "server.log").read_text().splitlines()[:1]
    print(head)


def _tab(page, name: str) -> None:
    page.locator(".tab-nav button, [role=tab]").filter(has_text=name).filter(visible=True).first.click()


def test_poll_keeps_typed_values_and_leaves_no_pending_border(browser, server):
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    try:
        page.goto(server)
        _tab(page, "Output")
        box = page.locator("#lora_bridge_lora_name textarea, #lora_bridge_lora_name input").first
        page.wait_for_function("(() => { const e = document.querySelector('#lora_bridge_lora_name textarea, "
                               "#lora_bridge_lora_name input'); return e && e.value === 'finished_run'; })()",
                               timeout=30_000)  # the finished run's name arrives once
        box.fill("my_own_name")
        time.sleep(5)
        assert box.input_value() == "my_own_name"
        _tab(page, "Train")
        page.wait_for_function("document.querySelector('#lora_bridge_status').innerText.includes('done')",
                               timeout=30_000)
        assert page.locator("#lora_bridge_loss_chart .lora-bridge-chart").get_attribute("data-points") == "6"
        time.sleep(3)
        assert page.evaluate(VISIBLE_PENDING) == []
        _tab(page, "Output")
        assert page.evaluate(VISIBLE_PENDING) == []
        assert box.input_value() == "my_own_name"
    finally:
        page.close()
