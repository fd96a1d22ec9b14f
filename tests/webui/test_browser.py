"""Headless Chromium against `lora-bridge ui`: choose the tiny demo model and dataset, Start, watch
progress and the loss chart move, see the file appear, use the <lora:…:0.7> button; keep a screenshot."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # stop_server of the poll test
from test_browser_poll import stop_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]

SETTINGS_YAML = """\
resolution: 64
min_bucket_reso: 64
max_bucket_reso: 64
lora_rank: 4
lora_alpha: 4
learning_rate: 0.002
batch_size: 2
max_train_steps: 8
sample_every_n_steps: 4
sample_prompts:
- a red circle
sample_steps: 2
seed: 1
"""

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def playwright_sync():
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright not installed")
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from extension.demo import build_demo_base, make_shape_dataset

    work = tmp_path_factory.mktemp("ui")
    base = build_demo_base(work / "models")
    data = make_shape_dataset(work / "dataset")
    port = _free_port()
    log = open(work / "server.log", "w")  # noqa: SIM115 (lives as long as the server)
    proc = subprocess.Popen([sys.executable, "-m", "extension", "ui", "--host", "127.0.0.1", "--port", str(port),
                             "--models-dir", str(work / "models"), "--output-dir", str(work / "loras")],
                            cwd=work, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    url = f"http://127.0.0.1:{port}/"
    for _ in range(240):
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("lora-bridge ui did not answer")
    if proc.poll() is not None:
        pytest.fail("lora-bridge ui exited: " + (work / "server.log").read_text()[-3000:])
    yield {"url": url, "base": base, "data": data, "work": work}
    stop_server(proc, log)


def _tab(page, name: str) -> None:
    """Click a tab button (gradio 6 also renders hidden copies for its overflow menu)."""
    page.get_by_role("tab", name=name, exact=True).filter(visible=True).first.click()


def _box(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def test_train_from_the_browser(playwright_sync, server):
    browser = playwright_sync.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    try:
        page.goto(server["url"])
        _tab(page, "Dataset")
        _box(page, "lora_bridge_data_dir").fill(str(server["data"]))
        page.locator("#lora_bridge_load").click()
        page.wait_for_function("document.querySelectorAll('#lora_bridge_gallery img').length >= 4", timeout=60_000)

        _tab(page, "Model")
        model = _box(page, "lora_bridge_model")
        model.click()
        page.get_by_role("option", name=server["base"].name).click()
        page.wait_for_function("document.querySelector('#lora_bridge_model_info').innerText.includes('sd1')",
                               timeout=60_000)

        _tab(page, "Settings")
        page.get_by_text("YAML (shared config schema").click()
        _box(page, "lora_bridge_yaml").fill(SETTINGS_YAML)
        page.get_by_role("button", name="Import YAML into form").click()
        page.wait_for_function("document.body.innerText.includes('imported YAML')", timeout=60_000)

        _tab(page, "Train")
        _box(page, "lora_bridge_output_name").fill("browser_lora")
        page.locator("#lora_bridge_start").click()
        page.wait_for_function("document.body.innerText.includes('started training browser_lora')", timeout=60_000)
        chart = "#lora_bridge_loss_chart .lora-bridge-chart"
        page.wait_for_function(f"Number(document.querySelector('{chart}')?.dataset.points) >= 1", timeout=600_000)
        first = int(page.locator(chart).get_attribute("data-points"))
        page.wait_for_function(f"Number(document.querySelector('{chart}').dataset.points) > {first}",
                               timeout=600_000)  # the chart moves
        step = page.locator("#lora_bridge_progress .lora-bridge-progress").get_attribute("data-step")
        assert int(step) >= 1
        page.wait_for_selector("#lora_bridge_progress .lora-bridge-progress[data-state='done']", timeout=900_000)
        published = server["work"] / "loras" / "browser_lora.safetensors"
        assert published.is_file()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "webui-train.png"), full_page=True)

        _tab(page, "Output")
        page.wait_for_function("document.querySelector('#lora_bridge_output').innerText.includes('modules match')",
                               timeout=60_000)
        # The LoRA box is filled by the result tick's own change event, which may land after the output text's.
        page.wait_for_function("(() => { const e = document.querySelector('#lora_bridge_lora_name textarea, "
                               "#lora_bridge_lora_name input'); return e && e.value === 'browser_lora'; })()",
                               timeout=60_000)
        assert _box(page, "lora_bridge_lora_name").input_value() == "browser_lora"
        page.locator("#lora_bridge_send").click()
        page.wait_for_function("(() => { const e = document.querySelector('#lora_bridge_prompt textarea, "
                               "#lora_bridge_prompt input'); return e && e.value === '<lora:browser_lora:0.7>'; })()",
                               timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "webui-output.png"), full_page=True)
        docs = ROOT / "docs"
        if docs.is_dir() and os.environ.get("LORA_BRIDGE_UPDATE_DOCS") == "1":  # else a test run edits a tracked file
            shutil.copy(ARTIFACTS / "webui-train.png", docs / "webui-tab.png")
    finally:
        try:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "webui-last.png"), full_page=True)
        finally:
            browser.close()
